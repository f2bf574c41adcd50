"""TRL reference for `triad bench grpo`: TRL's GRPOTrainer on the weights, prompts, group size,
response length, temperature, reward and KL penalty triad's GRPO stage runs in the same invocation.

triad writes SmolLM2-135M-Instruct as it loaded it (`model.safetensors` with Hugging Face names,
`config.json`, `tokenizer.json`) and the prompts in the order its stage draws them: each row is
the prompt rendered in the model's chat template, triad's token ids for it and the reference
solution. This script checks that the tokenizer gives those very ids for every prompt (as TRL
tokenizes a text prompt), then trains with `shuffle_dataset=False` so that step s sees rows
[s * P, (s + 1) * P), each sampled G times, rewarded by `math_answer_reward` (the Python twin of
the `math-answer` plugin), with one AdamW step a batch (`num_iterations=1`).

Each step is timed from the trainer's step start to its end (generation, rewards, the reference's
log-probs, loss, backward and optimizer all fall inside); the first `warmup` steps are left out.
Prints one JSON line: mean seconds a step, generated tokens a second (completion tokens over step
time), mean completion length, the reward function's share of step time, peak resident memory.

Usage: python grpo_reference.py --model DIR --prompts prompts.jsonl --group 8 --prompts-per-step 4
           --max-new-tokens 64 --temperature 0.7 --beta 0.04 --lr 5e-6 --warmup 1 --steps 5
           --threads 2 --seed 1 --output-dir DIR
"""

import argparse
import json
import os
import sys
import time

from bench_common import peak_rss_mib


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--group", type=int, required=True)
    parser.add_argument("--prompts-per-step", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--beta", type=float, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    import transformers
    import trl
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from math_answer import math_answer_reward

    torch.set_num_threads(args.threads)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(args.model, "tokenizer.json"),
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for i, row in enumerate(rows):
        ids = tokenizer(text=row["prompt"])["input_ids"]
        if ids != row["prompt_ids"]:
            sys.exit(f"prompt {i}: tokenized to {len(ids)} tokens here, {len(row['prompt_ids'])} in triad")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    reward_seconds = [0.0]

    def math_answer(completions, answer, **kwargs):
        start = time.perf_counter()
        scores = math_answer_reward(completions, answer)
        reward_seconds[0] += time.perf_counter() - start
        return scores

    class StepTimer(TrainerCallback):
        """Seconds and mean completion length of each step, and the reward's seconds in it."""

        def __init__(self):
            self.seconds, self.lengths, self.reward_seconds = [], {}, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.reward_start = time.perf_counter(), reward_seconds[0]

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)
            self.reward_seconds.append(reward_seconds[0] - self.reward_start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths[state.global_step] = logs["completions/mean_length"]

    responses = args.group * args.prompts_per_step
    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=responses,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        beta=args.beta,
        num_iterations=1,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_steps=args.warmup + args.steps,
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[math_answer],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()

    timed = range(args.warmup, args.warmup + args.steps)
    seconds = sum(timer.seconds[s] for s in timed)
    lengths = [timer.lengths[s + 1] for s in timed]
    tokens = sum(lengths) * responses
    print(json.dumps({
        "implementation": f"TRL {trl.__version__} GRPOTrainer (transformers {transformers.__version__}, "
                          f"torch {torch.__version__})",
        "seconds_per_step": seconds / args.steps,
        "tokens_per_s": tokens / seconds,
        "response_length": sum(lengths) / len(lengths),
        "peak_rss_mib": peak_rss_mib(),
        "reward_share": sum(timer.reward_seconds[s] for s in timed) / seconds,
    }))


if __name__ == "__main__":
    main()
