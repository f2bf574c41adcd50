"""PyTorch reference for `triad bench train`: the identical GPT-2 style model and step.

Same architecture as triad's Gpt family (learned positions, pre-LayerNorm, tanh-GELU MLP, tied
embeddings, biases, no dropout), same workload (vocabulary 4096, context 256, 4 layers, 4 heads,
width 256, batch 8, f32, AdamW with decoupled weight decay on matmul weights only, gradient
clipping at 1.0), eager mode, 2 threads. Prints one JSON line: tokens/s (median over steps),
model FLOPs per token, MFU against the given peak, and peak resident memory.

Usage: python train_reference.py --steps 20 --warmup 3 --peak-gflops 200
"""

import argparse
import json
import math
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

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-gflops", type=float, default=200.0)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt(a.vocab, a.context, a.layers, a.heads, a.width)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.warmup + a.steps):
        x = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
        y = torch.randint(0, a.vocab, (a.batch, a.context), generator=g)
        start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, a.vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    tokens = a.batch * a.context
    n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    # 6N per token for the matmuls, plus attention: 12 * layers * context * width (PaLM appendix B).
    flops_per_token = 6 * n_params + 12 * a.layers * a.context * a.width
    tokens_per_s = tokens / statistics.median(times)
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager",
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "mfu": tokens_per_s * flops_per_token / (a.peak_gflops * 1e9),
        "peak_rss_mib": peak_rss_mib(),
        "loss": loss.item(),
    }))


if __name__ == "__main__":
    main()
