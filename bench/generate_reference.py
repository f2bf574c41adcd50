"""PyTorch reference for `triad bench generate`: the identical GPT-2 style model, generating.

Same architecture as triad's Gpt family and as train_reference.py (learned positions,
pre-LayerNorm, tanh-GELU MLP, tied embeddings, biases), random init, written by hand with its own
key/value cache: buffers (B, H, prompt + new, d) allocated once per call and written in place,
as triad's. Batch of random prompts, one prefill pass, then one token per step, greedy; eager
mode under torch.inference_mode, 2 threads. Prints one JSON line: new tokens/s over the whole
call (prefill included, median over repeats after warm-up) and peak resident memory.

Usage: python generate_reference.py --batch 8 --prompt 16 --new-tokens 128 --repeats 5
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_common import peak_rss_mib


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x, cache, pos):
        """x: (B, T, C) at positions pos..pos+T; cache: this layer's (k, v) buffers."""
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        k_buf, v_buf = cache
        k_buf[:, :, pos:pos + T] = k
        v_buf[:, :, pos:pos + T] = v
        k, v = k_buf[:, :, :pos + T], v_buf[:, :, :pos + T]
        # The prompt pass is causal; a single new token sees every cached key.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, d):
        super().__init__()
        self.heads = heads
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx, caches, pos):
        """Logits of the last position, (B, V), for idx (B, T) at positions pos..pos+T."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T, device=idx.device))
        for block, cache in zip(self.h, caches):
            x = block(x, cache, pos)
        return self.ln_f(x[:, -1]) @ self.wte.weight.T

    def generate(self, prompts, new_tokens):
        B, P = prompts.shape
        d = self.wte.weight.shape[1] // self.heads
        caches = [tuple(torch.empty(B, self.heads, P + new_tokens, d) for _ in range(2)) for _ in self.h]
        out = []
        logits = self(prompts, caches, 0)
        for step in range(new_tokens):
            token = logits.argmax(dim=-1, keepdim=True)
            out.append(token)
            if step + 1 < new_tokens:
                logits = self(token, caches, P + step)
        return torch.cat(out, dim=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt(a.vocab, a.context, a.layers, a.heads, a.width).eval()
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, a.vocab, (a.batch, a.prompt), generator=g)
    times = []
    with torch.inference_mode():
        for repeat in range(a.warmup + a.repeats):
            start = time.perf_counter()
            tokens = model.generate(prompts, a.new_tokens)
            if repeat >= a.warmup:
                times.append(time.perf_counter() - start)
    assert tokens.shape == (a.batch, a.new_tokens)
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager",
        "tokens_per_s": a.batch * a.new_tokens / statistics.median(times),
        "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()
