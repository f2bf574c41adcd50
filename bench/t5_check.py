#!/usr/bin/env python3
"""Do T5 models that triad saves load in Hugging Face `transformers` with the same logits?

The integration test `t5_compat::a_fresh_t5_trains_every_parameter_and_saves_a_folder_it_loads_again`
trains a T5 v1.1 (gated GELU, untied head) and an original T5 (ReLU, tied and rescaled head) a
few AdamW steps and saves each with `Model::save`; with `TRIAD_HF_EXPORT=DIR` it also writes triad's
logits on a padded batch to `DIR/<name>/triad_logits.json`. This script loads each `DIR/<name>`
with `T5ForConditionalGeneration` (eager attention, float32), runs the same batch and prints the
largest |triad - transformers| per model; it fails above 1e-4.

Run with the bench venv (`bench/setup.sh`), from the repository root:

    ~/.cache/triad/torch-venv/bin/python bench/t5_check.py            # runs the cargo test itself
    ~/.cache/triad/torch-venv/bin/python bench/t5_check.py --dir DIR  # a folder exported before
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import T5ForConditionalGeneration

TEST = "t5_compat::a_fresh_t5_trains_every_parameter_and_saves_a_folder_it_loads_again"
TOLERANCE = 1e-4


def check(folder: str) -> float:
    with open(os.path.join(folder, "triad_logits.json")) as f:
        ours = json.load(f)
    model, info = T5ForConditionalGeneration.from_pretrained(
        folder, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    left = {key: sorted(value) for key, value in info.items() if value and key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if left:
        raise SystemExit(f"{folder}: {left}")
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(ours["input_ids"]),
            attention_mask=torch.tensor(ours["attention_mask"]),
            decoder_input_ids=torch.tensor(ours["decoder_input_ids"]),
        ).logits
    triad = torch.tensor(ours["logits"], dtype=torch.float32).reshape(ours["shape"])
    return (logits - triad).abs().max().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="a folder exported before (else the test runs into a temporary one)")
    args = parser.parse_args()
    root = args.dir
    if root is None:
        root = tempfile.mkdtemp(prefix="triad-t5-export-")
        env = dict(os.environ, TRIAD_HF_EXPORT=root)
        subprocess.run(["cargo", "test", "-p", "triad", "--test", "integration", TEST], check=True, env=env)
    worst = 0.0
    for name in sorted(os.listdir(root)):
        diff = check(os.path.join(root, name))
        print(f"{name}: max abs logit difference {diff:.3g}")
        worst = max(worst, diff)
    return 0 if worst < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
