"""What the PyTorch reference scripts of `triad bench` share."""

import json
import statistics
import time


def peak_rss_mib():
    """Peak resident memory of this process, MiB. VmHWM, not getrusage: ru_maxrss survives
    execve, so it would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def adamw(model, decayed, lr):
    """AdamW as triad's: weight decay 0.1 on the parameters `decayed(name, param)` picks, betas
    (0.9, 0.95)."""
    import torch
    params = list(model.named_parameters())
    decay = [p for n, p in params if decayed(n, p)]
    no_decay = [p for n, p in params if not decayed(n, p)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def time_training(model, opt, batch_at, vocab, warmup, steps):
    """Runs `warmup + steps` training steps (forward, cross-entropy, backward, clipping at 1.0,
    AdamW) on the batches `batch_at(step)` gives; returns the median seconds of the timed steps
    and the first and last losses."""
    import torch
    import torch.nn.functional as F
    times, losses = [], []
    for step in range(warmup + steps):
        x, y = batch_at(step)
        start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return statistics.median(times), losses[0], losses[-1]


def print_result(tokens_per_s, flops_per_token, peak_gflops, **extra):
    """The JSON line `triad bench` reads: throughput, model FLOP utilisation, peak memory."""
    import torch
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager",
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token,
        "mfu": tokens_per_s * flops_per_token / (peak_gflops * 1e9),
        "peak_rss_mib": peak_rss_mib(),
        **extra,
    }))
