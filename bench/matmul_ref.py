"""PyTorch reference for bench/matmul.ts: fp16 and bf16 matmul TF/s (CUDA events, median) on the same
shapes and layouts. Usage: python3 bench/matmul_ref.py [out.json]"""
import json, sys, torch

def bench(fn, flops, iters=50):
    for _ in range(5):
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
    ms = sorted(times)[len(times) // 2]
    return ms, flops / ms / 1e9

shapes = [  # name, layout, batch, M, N, K
    ("4096^3", "NN", 1, 4096, 4096, 4096), ("4096^3", "NT", 1, 4096, 4096, 4096), ("4096^3", "TN", 1, 4096, 4096, 4096),
    ("mlp up", "NN", 1, 2048, 11008, 2048), ("mlp down", "NN", 1, 2048, 2048, 11008), ("dW", "TN", 1, 2048, 11008, 2048),
    ("dX", "NT", 1, 2048, 2048, 11008), ("lm head", "NT", 1, 2048, 151936, 1024), ("attn QK^T", "NT", 16, 1024, 1024, 128),
    ("odd", "NN", 1, 1000, 3000, 1000),
]
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
for dt in (torch.float16, torch.bfloat16):
    for name, lay, b, M, N, K in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        A = torch.randn((b, K, M) if lay[0] == "T" else (b, M, K), device="cuda", dtype=dt, generator=g)
        B = torch.randn((b, N, K) if lay[1] == "T" else (b, K, N), device="cuda", dtype=dt, generator=g)
        a = A.transpose(1, 2) if lay[0] == "T" else A
        bb = B.transpose(1, 2) if lay[1] == "T" else B
        if b == 1:
            a, bb = a[0], bb[0]
        ms, tf = bench(lambda: torch.matmul(a, bb), 2 * b * M * N * K)
        r = {"dtype": str(dt).split(".")[-1], "name": name, "layout": lay, "shape": [b, M, N, K], "ms": ms, "tflops": tf}
        out["results"].append(r)
        print(f"{r['dtype']:9s} {name:10s} {lay} {b}x{M}x{N}x{K}: {ms:.3f} ms {tf:.1f} TF/s", flush=True)
        del A, B, a, bb
if len(sys.argv) > 1:
    json.dump(out, open(sys.argv[1], "w"), indent=1)
