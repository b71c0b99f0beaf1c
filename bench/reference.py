#!/usr/bin/env python3
"""PyTorch reference for bench/train-step.ts, run in the same GPU-box call (torch + transformers, no network).

Same shapes with random weights (AutoModelForCausalLM.from_config, eager attention), batch 1:
  - a full fine-tuning step (forward with labels, backward, torch.optim.AdamW) in fp32, bf16, and bf16 with
    gradient checkpointing, at seq 512 and 2048 -> ms/step, tokens/s, torch.cuda.max_memory_allocated;
  - greedy decoding with `generate` (KV cache, no early stop) in fp32 and bf16 -> tokens/s;
  - the attention micro-bench of train-step.ts (Qwen3-0.6B heads: 16 query, 8 KV, head_dim 128, seq 2048,
    causal), forward and forward + backward: eager matmul-softmax-matmul as transformers' eager attention
    (repeat_kv, softmax in fp32) and F.scaled_dot_product_attention, in fp32 and bf16.
fp32 matmuls run in true fp32 (TF32 off, PyTorch's default), like tfjs's. One JSON line per measurement on
stdout, also appended to --out. Every case catches its own errors (OOM included) and the run goes on; cases
that would start after --budget-s are recorded as skipped.

  python3 bench/reference.py --out $OUT/ref.json            # on the GPU box
  python3 bench/reference.py --small --device cpu           # a smoke run anywhere torch is installed
"""
import argparse
import gc
import json
import sys
import time
import traceback

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config


def qwen(arch, hidden, layers, heads, kv_heads, mlp, vocab=151936, head_dim=None):
    """The config.json numbers that differ between the benchmarked shapes (as `qwen` in train-step.ts)."""
    return dict(arch=arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, **({'head_dim': head_dim} if head_dim else {}),
                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768)


# Same keys and numbers as MODELS in bench/train-step.ts; qwen3-4b runs in full too (bf16 fits).
SHAPES = {
    'qwen3-0.6b': qwen('qwen3', 1024, 28, 16, 8, 3072, head_dim=128),
    'qwen3-4b-12of36L': qwen('qwen3', 2560, 12, 32, 8, 9728, head_dim=128),
    'qwen2.5-3b': qwen('qwen2', 2048, 36, 16, 2, 11008),
    'qwen3-4b': qwen('qwen3', 2560, 36, 32, 8, 9728, head_dim=128),
}
SMALL_SHAPES = {
    'tiny-qwen3': qwen('qwen3', 64, 2, 4, 2, 128, vocab=512, head_dim=16),
    'tiny-qwen2': qwen('qwen2', 64, 2, 4, 2, 128, vocab=512),
}
# (dtype, gradient checkpointing) per training case
VARIANTS = [('fp32', False), ('bf16', False), ('bf16', True)]
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


class Bench:
    def __init__(self, args):
        self.args = args
        self.started = time.perf_counter()
        self.device = torch.device(args.device)
        self.gpu = torch.cuda.get_device_name() if self.device.type == 'cuda' else 'cpu'
        if args.out:
            open(args.out, 'w').close()

    def emit(self, **record):
        line = json.dumps({'source': 'pytorch', **record, 'device': self.gpu})
        print(line, flush=True)
        if self.args.out:
            with open(self.args.out, 'a') as f:
                f.write(line + '\n')

    def over_budget(self):
        return time.perf_counter() - self.started > self.args.budget_s

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def reset_peak(self):
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device.type == 'cuda' else None

    def timed(self, step, steps):
        """Mean ms of `step` after one warm-up run; fewer timed runs when the warm-up says they won't fit."""
        self.sync()
        t0 = time.perf_counter()
        step()
        self.sync()
        warmup = time.perf_counter() - t0
        left = self.args.budget_s - (time.perf_counter() - self.started)
        n = max(1, min(steps, int(left / max(warmup, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        self.sync()
        return (time.perf_counter() - t0) * 1000 / n, n, warmup * 1000


def error_text(e):
    return ' | '.join(traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[:2])[:300]


def make_model(shape, dtype, device):
    cfg = dict(shape)
    arch, theta = cfg.pop('arch'), cfg.pop('rope_theta')
    cls = Qwen3Config if arch == 'qwen3' else Qwen2Config
    try:  # transformers 5: rope_parameters
        config = cls(rope_parameters={'rope_type': 'default', 'rope_theta': theta}, **cfg)
    except TypeError:
        config = cls(rope_theta=theta, **cfg)
    config.use_cache = False
    with device:  # initialise on the device: random weights of a 4B model in seconds
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], attn_implementation='eager')
        except TypeError:  # transformers 4 spells it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=DTYPES[dtype], attn_implementation='eager')
    return model.to(device=device, dtype=DTYPES[dtype])


def train_cases(b, key, shape, seqs):
    for dtype in ('fp32', 'bf16'):
        base = dict(bench='train', model=key, layers=shape['num_hidden_layers'], dtype=dtype)
        ckpts = [ckpt for d, ckpt in VARIANTS if d == dtype]
        if b.over_budget():
            for ckpt in ckpts:
                for seq in seqs:
                    b.emit(**base, ckpt=ckpt, seq=seq, error='skipped: time budget')
            continue
        model = opt = None
        try:
            b.reset_peak()
            model = make_model(shape, dtype, b.device)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
            params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        except Exception as e:  # noqa: BLE001 - OOM and friends: record, go on
            for ckpt in ckpts:
                for seq in seqs:
                    b.emit(**base, ckpt=ckpt, seq=seq, error=error_text(e))
            del model, opt
            continue
        for ckpt in ckpts:
            if ckpt:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
            for seq in seqs:
                if b.over_budget():
                    b.emit(**base, ckpt=ckpt, seq=seq, error='skipped: time budget')
                    continue
                ids = torch.randint(0, shape['vocab_size'], (1, seq), device=b.device)
                losses = []

                def step():
                    out = model(input_ids=ids, labels=ids)
                    out.loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(out.loss.detach())

                try:
                    b.reset_peak()
                    ms, n, warm = b.timed(step, b.args.steps)
                    b.emit(**base, ckpt=ckpt, seq=seq, batch=1, params_m=params_m, ms_per_step=round(ms, 2),
                           tokens_per_s=round(seq / ms * 1000, 1), steps=n, warmup_ms=round(warm, 1),
                           peak_gib=b.peak_gib(), loss=round(float(losses[-1]), 4))
                except Exception as e:  # noqa: BLE001
                    b.emit(**base, ckpt=ckpt, seq=seq, error=error_text(e))
                finally:
                    opt.zero_grad(set_to_none=True)
                    del ids, losses
                    b.reset_peak()
        # decoding with the same weights (as train-step.ts decodes after training)
        decode_case(b, key, shape, model, dtype)
        del model, opt
        b.reset_peak()


class LoraLinear(torch.nn.Module):
    """PEFT's LoRA on one nn.Linear (r, alpha, dropout; A kaiming-uniform, B zeros), without the peft package."""

    def __init__(self, base, r=8, alpha=32, dropout=0.05):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.lora_A = torch.nn.Linear(base.in_features, r, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B = torch.nn.Linear(r, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=5 ** 0.5)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale


def add_lora(model):
    """LoRA r8 on every linear layer but lm_head (ms-swift's all-linear); the base frozen. Returns the adapter params."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split('.')[-1].endswith('_proj')]
    for n in names:
        parent, child = model.get_submodule(n.rsplit('.', 1)[0]), n.rsplit('.', 1)[1]
        setattr(parent, child, LoraLinear(getattr(parent, child)))
    return [p for n, p in model.named_parameters() if 'lora_' in n]


def case_bench(b, spec):
    """One --cases entry, model:full|lora:seq:fp32|bf16[:ckpt], in a fresh model (the same keys as train-step.ts --cases)."""
    key, mode, seq, dtype, *rest = spec.split(':')
    seq, ckpt = int(seq), rest == ['ckpt']
    shape = SHAPES[key]
    base = dict(bench='train', model=key, layers=shape['num_hidden_layers'], mode=mode, seq=seq, dtype=dtype, ckpt=ckpt)
    if b.over_budget():
        b.emit(**base, error='skipped: time budget')
        return
    model = opt = None
    try:
        b.reset_peak()
        model = make_model(shape, dtype, b.device)
        params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        params = add_lora(model) if mode == 'lora' else list(model.parameters())
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        ids = torch.randint(0, shape['vocab_size'], (1, seq), device=b.device)
        losses = []

        def step():
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())

        b.reset_peak()
        ms, n, warm = b.timed(step, b.args.steps)
        b.emit(**base, batch=1, params_m=params_m, trainable_m=round(sum(p.numel() for p in params) / 1e6, 2),
               ms_per_step=round(ms, 2), tokens_per_s=round(seq / ms * 1000, 1), steps=n, warmup_ms=round(warm, 1),
               peak_gib=b.peak_gib(), loss=round(float(losses[-1]), 4))
    except Exception as e:  # noqa: BLE001 - OOM and friends: record, go on
        b.emit(**base, error=error_text(e))
    finally:
        del model, opt
        b.reset_peak()


def decode_case(b, key, shape, model, dtype):
    base = dict(bench='decode', model=key, layers=shape['num_hidden_layers'], dtype=dtype)
    if b.over_budget():
        b.emit(**base, error='skipped: time budget')
        return
    try:
        model.eval()
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
        n = b.args.decode_tokens
        prompt = torch.tensor([[(t * 7919 + 13) % shape['vocab_size'] for t in range(16)]], device=b.device)

        def gen(k):
            with torch.no_grad():
                return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k, min_new_tokens=k,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)

        gen(2)
        b.sync()
        t0 = time.perf_counter()
        out = gen(n)
        b.sync()
        ms = (time.perf_counter() - t0) * 1000
        new = out.shape[1] - prompt.shape[1]
        b.emit(**base, prompt=prompt.shape[1], new_tokens=new, ms_per_token=round(ms / new, 2),
               tokens_per_s=round(new / ms * 1000, 2))
    except Exception as e:  # noqa: BLE001
        b.emit(**base, error=error_text(e))


def attention_cases(b, H, KV, T, D):
    """Causal GQA attention fwd and fwd+bwd, eager (as transformers' eager_attention_forward) and SDPA."""
    scale = 1 / D ** 0.5
    causal = torch.full((T, T), float('-inf'), device=b.device).triu(1)

    def eager(q, k, v):
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        w = torch.matmul(q, k.transpose(2, 3)) * scale + causal.to(q.dtype)
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(w, v)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)

    fwd_flops = 4 * H * T * T * D / 2  # causal; fwd+bwd counts 3.5x (FlashAttention's convention), as train-step.ts
    for dtype in ('fp32', 'bf16'):
        g = torch.Generator(device=b.device).manual_seed(0)
        q, k, v, dy = (torch.randn(1, h, T, D, device=b.device, dtype=DTYPES[dtype], generator=g)
                       for h in (H, KV, KV, H))
        for impl, f in (('eager', eager), ('sdpa', sdpa)):
            for pass_ in ('fwd', 'fwd+bwd'):
                base = {'bench': 'attention', 'impl': impl, 'dtype': dtype, 'pass': pass_, 'seq': T, 'heads': H,
                        'kv_heads': KV, 'head_dim': D}
                if b.over_budget():
                    b.emit(**base, error='skipped: time budget')
                    continue
                qi, ki, vi = (x.detach().requires_grad_(pass_ == 'fwd+bwd') for x in (q, k, v))

                def step():
                    if pass_ == 'fwd':
                        with torch.no_grad():
                            f(qi, ki, vi)
                    else:
                        f(qi, ki, vi).backward(dy)

                try:
                    b.reset_peak()
                    ms, n, _ = b.timed(step, 10)
                    flops = fwd_flops if pass_ == 'fwd' else 3.5 * fwd_flops
                    b.emit(**base, ms=round(ms, 3), tflops=round(flops / ms / 1e9, 2), steps=n, peak_gib=b.peak_gib())
                except Exception as e:  # noqa: BLE001
                    b.emit(**base, error=error_text(e))
        del q, k, v, dy
        b.reset_peak()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='also append the JSON lines to this file (emptied first)')
    p.add_argument('--small', action='store_true', help='tiny shapes (as train-step.ts --small)')
    p.add_argument('--models', help='comma list of shapes (default: all)')
    p.add_argument('--seqs', help='comma list (default 512,2048; small 32,64)')
    p.add_argument('--steps', type=int, default=3, help='timed training steps per case (after one warm-up)')
    p.add_argument('--decode-tokens', type=int, default=32)
    p.add_argument('--budget-s', type=float, default=90.0, help='cases that would start later are skipped')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--no-attention', action='store_true')
    p.add_argument('--cases', help='comma list of model:full|lora:seq:fp32|bf16[:ckpt] (instead of --models; clip 1.0 + AdamW as the trainer)')
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    b = Bench(args)
    shapes = SMALL_SHAPES if args.small else SHAPES
    seqs = [int(s) for s in (args.seqs or ('32,64' if args.small else '512,2048')).split(',')]
    b.emit(bench='meta', torch=torch.__version__, transformers=transformers.__version__, small=args.small,
           steps=args.steps, budget_s=args.budget_s, date=time.strftime('%Y-%m-%dT%H:%M:%S'))
    if not args.no_attention:
        attention_cases(b, *((4, 2, 128, 64) if args.small else (16, 8, 2048, 128)))
    if args.cases:
        for spec in args.cases.split(','):
            case_bench(b, spec)
    else:
        for key in (args.models.split(',') if args.models else shapes):
            train_cases(b, key, shapes[key], seqs)
    print(f'reference bench: {time.perf_counter() - b.started:.1f} s on {b.gpu}', file=sys.stderr, flush=True)


if __name__ == '__main__':
    main()
