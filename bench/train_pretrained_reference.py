"""PyTorch reference for `triad bench train --pretrained`: a pretrained Llama (SmolLM2-135M) trained
on the same weights, the same token batches and the same step as triad's side.

triad writes the model it loaded (`model.safetensors` with Hugging Face names, and a Hugging Face
`config.json`) into a folder; this script builds the same Llama (RoPE in Hugging Face's
rotate-half form, RMSNorm, SwiGLU, grouped-query attention, tied embeddings) in eager PyTorch,
loads those weights and times full training steps: forward, cross-entropy, backward, clipping at
1.0, AdamW with decoupled weight decay on matmul weights only. Batches are a fixed formula of
(step, position), the one triad uses, so the first step's loss must agree between the two sides:
that is the check that both ran the same model on the same data.

Prints one JSON line: tokens/s (median over steps), model FLOPs per token, MFU against the given
peak, peak resident memory and the first step's loss.

Usage: python train_pretrained_reference.py --weights DIR --batch 4 --context 128 --steps 5
"""

import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_common import adamw, print_result, time_training


def read_safetensors(path):
    """The safetensors format is an 8-byte header length, a JSON header, then raw little-endian
    data: read with numpy, so the benchmark needs nothing beyond torch and numpy."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RmsNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.heads, self.kv_heads, self.head_dim = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = Mlp(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        assert c.get("tie_word_embeddings", False), "the benchmark models tie their embeddings"
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        self.head_dim, self.theta = c["head_dim"], c["rope_theta"]

    def forward(self, idx):
        T = idx.shape[1]
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) @ self.embed_tokens.weight.T


def batch(step, rows, context, vocab):
    """Inputs and next-token targets, a fixed formula of (step, position): the same as triad's."""
    n = np.arange(rows * context + 1, dtype=np.int64) + step * 1_000_003
    tokens = (n * 7919 + 17) % vocab
    inputs = torch.from_numpy(tokens[:-1].reshape(rows, context))
    targets = torch.from_numpy(tokens[1:].reshape(rows, context))
    return inputs, targets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-gflops", type=float, default=200.0)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    with open(os.path.join(a.weights, "config.json")) as f:
        config = json.load(f)
    model = Llama(config)
    weights = read_safetensors(os.path.join(a.weights, "model.safetensors"))
    state = {name.removeprefix("model."): tensor for name, tensor in weights.items() if name != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    opt = adamw(model, lambda n, p: p.dim() >= 2 and "embed" not in n, lr=1e-5)
    vocab = config["vocab_size"]
    seconds, first_loss, _ = time_training(model, opt, lambda step: batch(step, a.batch, a.context, vocab), vocab, a.warmup, a.steps)
    n_params = sum(p.numel() for p in model.parameters())
    # 6N per token for the matmuls (the tied embedding counts once, as the LM head), plus
    # attention's 12 * layers * context * (heads * head_dim) (PaLM appendix B).
    width = config["num_attention_heads"] * config["head_dim"]
    flops_per_token = 6 * n_params + 12 * config["num_hidden_layers"] * a.context * width
    print_result(a.batch * a.context / seconds, flops_per_token, a.peak_gflops, first_loss=first_loss)

if __name__ == "__main__":
    main()
