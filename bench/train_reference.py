"""PyTorch reference for `triad bench train`: the identical GPT-2 style model and step.

Same architecture as triad's Gpt family (learned positions, pre-LayerNorm, tanh-GELU MLP, tied
embeddings, biases, no dropout), same workload (vocabulary 4096, context 256, 4 layers, 4 heads,
width 256, batch 8, f32, AdamW with decoupled weight decay on matmul weights only, gradient
clipping at 1.0), eager mode, 2 threads. Prints one JSON line: tokens/s (median over steps),
model FLOPs per token, MFU against the given peak, and peak resident memory.

Usage: python train_reference.py --steps 20 --warmup 3 --peak-gflops 200
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_common import adamw, print_result, time_training


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
    opt = adamw(model, lambda n, p: p.dim() >= 2 and "wte" not in n and "wpe" not in n, lr=1e-3)
    g = torch.Generator().manual_seed(1)

    def batch_at(_step):
        return (torch.randint(0, a.vocab, (a.batch, a.context), generator=g),
                torch.randint(0, a.vocab, (a.batch, a.context), generator=g))

    seconds, _, last_loss = time_training(model, opt, batch_at, a.vocab, a.warmup, a.steps)
    n_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    # 6N per token for the matmuls, plus attention: 12 * layers * context * width (PaLM appendix B).
    flops_per_token = 6 * n_params + 12 * a.layers * a.context * a.width
    print_result(a.batch * a.context / seconds, flops_per_token, a.peak_gflops, loss=last_loss)

if __name__ == "__main__":
    main()
