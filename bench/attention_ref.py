"""PyTorch reference for bench/attention.ts: causal GQA attention at B=1, head_dim 128, forward and
forward + backward, fp32 and bf16, eager (matmul-softmax-matmul with the KV heads repeated, as
transformers' eager attention) and SDPA (is_causal, enable_gqa). CUDA events, median of 5 rounds.
Usage: python3 bench/attention_ref.py [out.jsonl]"""
import json, sys, torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

def bench(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / iters)
    return sorted(times)[len(times) // 2]

def eager(q, k, v):
    H, KV, T, D = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    s = (q @ k.transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v

def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

out = open(sys.argv[1], "a") if len(sys.argv) > 1 else None
shapes = [("qwen3-0.6b", 16, 8, 2048), ("qwen3-0.6b", 16, 8, 512), ("qwen2.5-3b", 16, 2, 2048), ("qwen3-4b", 32, 8, 2048)]
for name, H, KV, T in shapes:
    D = 128
    fwd_flops = 4 * H * T * T * D / 2
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, H, T, D, device="cuda", dtype=dt, generator=g, requires_grad=True)
        k = torch.randn(1, KV, T, D, device="cuda", dtype=dt, generator=g, requires_grad=True)
        v = torch.randn(1, KV, T, D, device="cuda", dtype=dt, generator=g, requires_grad=True)
        dy = torch.randn(1, H, T, D, device="cuda", dtype=dt, generator=g)
        for impl, f in (("eager", eager), ("sdpa", sdpa)):
            for p in ("fwd", "fwd+bwd"):
                def run():
                    if p == "fwd":
                        with torch.no_grad():
                            f(q, k, v)
                    else:
                        torch.autograd.grad(f(q, k, v), (q, k, v), dy)
                try:
                    ms = bench(run, 10 if T >= 2048 else 20)
                    r = {"bench": "attention-ref", "name": name, "heads": H, "kv_heads": KV, "seq": T, "head_dim": D,
                         "impl": f"torch {impl} {str(dt).split('.')[-1]}", "pass": p, "ms": round(ms, 4),
                         "tflops": round((1 if p == "fwd" else 3.5) * fwd_flops / ms / 1e9, 2), "device": torch.cuda.get_device_name()}
                except Exception as e:  # noqa: BLE001
                    r = {"bench": "attention-ref", "name": name, "seq": T, "impl": f"torch {impl} {dt}", "pass": p, "error": str(e)[:300]}
                print(json.dumps(r), flush=True)
                if out:
                    out.write(json.dumps(r) + "\n"); out.flush()
        del q, k, v, dy
        torch.cuda.empty_cache()
