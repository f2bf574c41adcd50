"""PyTorch reference for `triad bench train --model t5`: `transformers`' T5ForConditionalGeneration
trained on the same weights, the same batches and the same step as triad's side.

triad writes its freshly initialised T5 v1.1 (gated GELU, untied head) as a Hugging Face folder;
this script loads it with `T5ForConditionalGeneration.from_pretrained` and times full training
steps: encoder, teacher-forced decoder, cross-entropy over the labels (transformers' `labels`
loss), backward, clipping at 1.0, AdamW (betas 0.9, 0.95, weight decay 0.1 on matrices only, as
triad's). Batches are a fixed formula of (step, position), the one triad uses, so the first
step's loss must agree between the two sides: the check that both ran the same model on the
same data.

Prints one JSON line: tokens/s (source and target tokens, median over steps), peak resident
memory and the first step's loss.

Usage: python train_t5_reference.py --weights DIR --batch 8 --source 128 --target 128 --steps 5
"""

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from bench_common import adamw, print_result


def batch(step, rows, source, target, vocab):
    """Source ids, decoder inputs (the labels shifted right behind token 0) and labels."""
    n = np.arange(rows * (source + target), dtype=np.int64) + step * 1_000_003
    tokens = (n * 7919 + 17) % vocab
    x = torch.from_numpy(tokens[: rows * source].reshape(rows, source))
    labels = torch.from_numpy(tokens[rows * source :].reshape(rows, target))
    decoder = torch.cat([torch.zeros((rows, 1), dtype=torch.int64), labels[:, :-1]], dim=1)
    return x, decoder, labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", type=int, default=128)
    parser.add_argument("--target", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = T5ForConditionalGeneration.from_pretrained(args.weights, attn_implementation="eager")
    model.train()
    vocab = model.config.vocab_size
    opt = adamw(model, lambda name, p: "layer_norm" not in name, args.lr)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        x, decoder, labels = batch(step, args.batch, args.source, args.target, vocab)
        start = time.perf_counter()
        loss = model(input_ids=x, decoder_input_ids=decoder, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    tokens = args.batch * (args.source + args.target)
    print_result(tokens / statistics.median(times), 0.0, 1.0, first_loss=losses[0])


if __name__ == "__main__":
    main()
