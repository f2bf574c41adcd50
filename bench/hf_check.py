#!/usr/bin/env python3
"""Do models that triad saves load in Hugging Face `transformers` with the same logits?

The integration test `hf_compat::trained_triad_models_save_folders_transformers_reads` trains a
GPT-2, a Llama with grouped-query heads and an untied LM head, and a tied Llama a few steps and
saves each with `Model::save`; with `TRIAD_HF_EXPORT=DIR` it also writes triad's logits on a
single row and on a left-padded batch to `DIR/<name>/triad_logits.json`. This script loads each
`DIR/<name>` with `AutoModelForCausalLM` (eager attention, float32), runs the same rows (pads
masked, positions from 0 at each row's first real token) and prints the largest
|triad - transformers| per model. It fails when a weight is missing, unused or left at init, or
when a difference exceeds 1e-4.

Run with the bench venv (`bench/setup.sh`), from the repository root:

    ~/.cache/triad/torch-venv/bin/python bench/hf_check.py            # runs the cargo test itself
    ~/.cache/triad/torch-venv/bin/python bench/hf_check.py --dir DIR  # a folder exported before

Without --dir it exports into a temporary folder with
`cargo test --test integration hf_compat::trained_triad_models_save_folders_transformers_reads`
(`CARGO_TARGET_DIR` is passed through).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "hf"))

import torch  # noqa: E402
import transformers  # noqa: E402
from make_fixtures import transformers_logits  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

TEST = "hf_compat::trained_triad_models_save_folders_transformers_reads"
TOLERANCE = 1e-4


def export(dir):
    env = dict(os.environ, TRIAD_HF_EXPORT=dir)
    subprocess.run(["cargo", "test", "--test", "integration", TEST, "--", "--exact"], cwd=ROOT, env=env, check=True)


def check(dir):
    """The largest |triad - transformers| over every real position of every case, and what went
    wrong while loading (empty when nothing did)."""
    model, info = AutoModelForCausalLM.from_pretrained(dir, attn_implementation="eager", dtype=torch.float32,
                                                       output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    with open(os.path.join(dir, "triad_logits.json")) as f:
        cases = json.load(f)["cases"]
    worst = 0.0
    for rows in cases.values():
        pads = [r["pad"] for r in rows]
        logits = transformers_logits(model, [r["ids"] for r in rows], pads)
        for r, row in enumerate(rows):
            ours = torch.tensor(row["logits"])
            worst = max(worst, (logits[r, row["pad"]:] - ours).abs().max().item())
    return type(model).__name__, worst, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", help="a folder the test exported to (default: export into a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dir = args.dir or tmp
        if not args.dir:
            export(dir)
        names = sorted(n for n in os.listdir(dir) if os.path.isfile(os.path.join(dir, n, "triad_logits.json")))
        if not names:
            sys.exit(f"{dir}: no exported model folders (<name>/triad_logits.json)")
        print(f"transformers {transformers.__version__}, torch {torch.__version__}")
        failed = False
        for name in names:
            cls, worst, problems = check(os.path.join(dir, name))
            ok = worst <= TOLERANCE and not problems
            failed |= not ok
            print(f"{name:12} {cls:18} max |triad - transformers| = {worst:.2e}"
                  f"{'' if ok else '  FAILED'}{f'  loading: {problems}' if problems else ''}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
