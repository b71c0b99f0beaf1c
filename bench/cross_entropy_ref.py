"""PyTorch reference for bench/cross-entropy.ts, on the same shapes in the same GPU-box call.

Cross-entropy over logits [2048, 151936]: F.cross_entropy, forward and forward + backward, logits fp32 and
bf16 (eager). LM head + cross-entropy from hidden states [2048, H] (H = 1024, 2048) against W [151936, H],
forward and forward + backward to h and W: fp32 (TF32 off, PyTorch's default) and bf16 autocast as
transformers trains (bf16 matmul, logits upcast to fp32 for the loss, fp32 master h and W).

    python3 bench/cross_entropy_ref.py --out ref.json [--small] [--reps 5]

Prints one JSON line per measurement {name, ms, reference, torch, device}; --out writes them as a JSON array.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F


def timed(fn, reps):
    """Mean ms per call over `reps` calls after one warm-up, with CUDA events."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        raise SystemExit("cross_entropy_ref.py: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    N, V = (64, 1000) if args.small else (2048, 151936)
    hs = [64] if args.small else [1024, 2048]
    name = torch.cuda.get_device_name(0)
    lines = []

    def emit(n, ms, reference):
        line = {"name": n, "ms": round(ms, 4), "reference": reference, "torch": torch.__version__, "device": name}
        lines.append(line)
        print(json.dumps(line), flush=True)

    g = torch.Generator(device=dev).manual_seed(0)
    y = torch.randint(0, V, (N,), device=dev, generator=g)

    # over logits
    for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = (torch.rand(N, V, device=dev, generator=g) * 16 - 8).to(dtype).requires_grad_(True)
        with torch.no_grad():
            emit(f"ce_logits_fwd_{tag}", timed(lambda: F.cross_entropy(x, y), args.reps), f"pytorch F.cross_entropy {tag} eager")

        def fwd_bwd():
            x.grad = None
            F.cross_entropy(x, y).backward()

        emit(f"ce_logits_fwd_bwd_{tag}", timed(fwd_bwd, args.reps), f"pytorch F.cross_entropy {tag} eager")
        del x
        torch.cuda.empty_cache()

    # from hidden states
    for H in hs:
        h = (torch.rand(N, H, device=dev, generator=g) * 2 - 1).requires_grad_(True)
        w = ((torch.rand(V, H, device=dev, generator=g) * 2 - 1) * 0.05).requires_grad_(True)
        for tag in ("fp32", "bf16"):
            def loss():
                if tag == "fp32":
                    return F.cross_entropy(F.linear(h, w), y)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = F.linear(h, w)
                return F.cross_entropy(logits.float(), y)

            ref = "pytorch linear + F.cross_entropy fp32 (TF32 off)" if tag == "fp32" else "pytorch bf16 autocast linear + F.cross_entropy on fp32-upcast logits"
            with torch.no_grad():
                emit(f"ce_hidden_fwd_{tag}_H{H}", timed(loss, args.reps), ref)

            def fwd_bwd():
                h.grad = None
                w.grad = None
                loss().backward()

            emit(f"ce_hidden_fwd_bwd_{tag}_H{H}", timed(fwd_bwd, args.reps), ref + ", backward to h and W")
        del h, w
        torch.cuda.empty_cache()

    if args.out:
        with open(args.out, "w") as f:
            json.dump(lines, f, indent=1)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"cross_entropy_ref.py: {time.time() - t0:.1f} s", flush=True)
