# transformers' `generate` on the shapes of bench/decode.ts (random weights, greedy, no early stop):
# decode tokens/s after the prefill, at batch 1 and 8, for a side-by-side table on the same GPU.
#
#   python3 bench/decode_hf.py [--shapes qwen3-0.6b,qwen2.5-3b] [--batch 1,8] [--tokens 32] [--prompt 32] [--dtype float32]
import argparse
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

SHAPES = {
    'qwen3-0.6b': lambda: Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                                      rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True),
    'qwen2.5-3b': lambda: Qwen2Config(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                      num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                                      rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True),
}


def timed(model, ids, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   eos_token_id=None, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--shapes', default='qwen3-0.6b,qwen2.5-3b')
    p.add_argument('--batch', default='1,8')
    p.add_argument('--tokens', type=int, default=32)
    p.add_argument('--prompt', type=int, default=32)
    p.add_argument('--dtype', default='float32')
    a = p.parse_args()
    rows = []
    for shape in a.shapes.split(','):
        model = AutoModelForCausalLM.from_config(SHAPES[shape](), torch_dtype=getattr(torch, a.dtype)).cuda().eval()
        for b in map(int, a.batch.split(',')):
            ids = torch.randint(0, 151936, (b, a.prompt), device='cuda')
            timed(model, ids, 4)                                  # warm-up
            prefill = timed(model, ids, 1)
            total = timed(model, ids, a.tokens + 1)
            s = total - prefill
            rows.append(f'| {shape} | transformers {a.dtype} | {b} | {a.tokens} | {b * a.tokens / s:.1f} | {1000 * s / a.tokens:.1f} |')
            print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    print('\n| shape | engine | batch | steps | decode tok/s | ms/step |\n|---|---|---|---|---|---|\n' + '\n'.join(rows))


if __name__ == '__main__':
    main()
