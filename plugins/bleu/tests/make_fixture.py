"""Make tests/fixture.json: real hypothesis/reference pairs and sacrebleu's BLEU on them.

Run with sacrebleu==2.4.3 installed (`python3 -m venv ~/.cache/triad/venv &&
~/.cache/triad/venv/bin/pip install sacrebleu==2.4.3`), from the repository root:

    python3 -m pip download --no-deps --no-binary :all: -d ~/.cache/triad/pip vadersentiment==3.3.2
    ~/.cache/triad/venv/bin/python plugins/bleu/tests/make_fixture.py ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz

Text: PyPI sdist vadersentiment==3.3.2, file
vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz, member
hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt (lines `id TAB mean TAB text`).
References are real snippets; hypotheses are the same snippets changed by a fixed
pseudo-random rule (words dropped, swapped, replaced, truncated, extended, lowercased),
unrelated snippets, or identical copies. Every third pair has a second reference.
"""
import io
import re
import json
import sys
import tarfile

import sacrebleu
from sacrebleu.metrics import BLEU

OUT = __file__.rsplit("/", 1)[0] + "/fixture.json"


def snippets(sdist):
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    lines = raw.decode("utf-8").splitlines()
    return [line.split("\t", 2)[2].strip() for line in lines]


class Rng:
    """A 64-bit LCG: the same numbers on every Python version."""

    def __init__(self, seed):
        self.state = seed

    def next(self, n):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) % 2**64
        return (self.state >> 33) % n


def perturb(text, kind, rng, other):
    words = text.split()
    if kind == "identical":
        return text
    if kind == "drop":
        kept = [w for w in words if rng.next(5) != 0]
        return " ".join(kept or words[:1])
    if kind == "swap":
        for i in range(0, len(words) - 1, 3):
            if rng.next(2):
                words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "replace":
        pool = other.split()
        return " ".join(pool[rng.next(len(pool))] if rng.next(4) == 0 else w for w in words)
    if kind == "truncate":
        return " ".join(words[: max(1, len(words) * 3 // 5)])
    if kind == "extend":
        pool = other.split()
        return text + " " + " ".join(pool[: 1 + rng.next(6)])
    if kind == "lowercase":
        return text.lower().rstrip(".!?")
    if kind == "unrelated":
        return other
    raise ValueError(kind)


KINDS = ["identical", "drop", "swap", "replace", "truncate", "extend", "lowercase", "unrelated"]


def main():
    texts = snippets(sys.argv[1])
    # Every 41st snippet of 5 to 45 words: varied, real, and small enough to commit.
    chosen = [t for t in texts[::41] if 5 <= len(t.split()) <= 45][:200]
    rng = Rng(2024)
    pairs = []
    for i, ref in enumerate(chosen):
        kind = KINDS[i % len(KINDS)]
        other = chosen[(i * 7 + 13) % len(chosen)]
        hyp = perturb(ref, kind, rng, other)
        refs = [ref]
        if i % 3 == 0:
            refs.append(perturb(ref, "drop" if i % 2 else "swap", rng, other))
        pairs.append({"kind": kind, "hyp": hyp, "refs": refs})

    def streams(subset):
        hyps = [p["hyp"] for p in subset]
        width = max(len(p["refs"]) for p in subset)
        refs = [[p["refs"][k] if k < len(p["refs"]) else None for p in subset] for k in range(width)]
        return hyps, refs

    configs = {
        "default": {},
        "lowercase": {"lowercase": True},
        "tokenize_none": {"tokenize": "none"},
        "smooth_none": {"smooth_method": "none"},
        "smooth_floor": {"smooth_method": "floor"},
        "smooth_add_k": {"smooth_method": "add-k"},
        "max_order_2": {"max_ngram_order": 2},
        "effective_order": {"effective_order": True},
    }
    plugin_names = {"lowercase": "lowercase", "tokenize": "tokenize", "smooth_method": "smooth",
                    "max_ngram_order": "max_order", "effective_order": "effective_order"}

    subsets = {"all": list(range(len(pairs))), "first_40": list(range(40)),
               "middle_100_180": list(range(100, 180)),
               "multi_ref": [i for i, p in enumerate(pairs) if len(p["refs"]) > 1]}
    for kind in KINDS:
        subsets["kind_" + kind] = [i for i, p in enumerate(pairs) if p["kind"] == kind]
    # Single short sentences, where smoothing and the brevity penalty decide the score.
    subsets["single_3"] = [3]
    subsets["single_4"] = [4]
    subsets["single_7"] = [7]
    subsets["single_15"] = [15]
    subsets["unrelated_first_3"] = subsets["kind_unrelated"][:3]

    SMALL_SUBSETS = ("all", "first_40", "single_3", "single_4", "single_7", "single_15",
                     "unrelated_first_3")
    corpus = []
    for cname, kwargs in configs.items():
        metric = BLEU(**kwargs)
        for sname, idx in subsets.items():
            if cname != "default" and sname not in SMALL_SUBSETS:
                continue
            subset = [pairs[i] for i in idx]
            score = metric.corpus_score(*streams(subset))
            corpus.append({
                "config": {plugin_names[k]: v for k, v in kwargs.items()},
                "subset": sname, "indices": idx,
                "bleu": score.score, "bp": score.bp, "precisions": score.precisions,
                "sys_len": score.sys_len, "ref_len": score.ref_len,
            })

    # Per-segment sufficient statistics with the default configuration.
    metric = BLEU()
    hyps, refs = streams(pairs)
    segment_stats = metric._extract_corpus_statistics(hyps, refs)
    for p, s in zip(pairs, segment_stats):
        p["stats"] = [int(x) for x in s]

    # The 13a tokenizer on snippets with digits, dots, commas, dashes, entities and quotes.
    # The first four snippets showing each feature that a 13a rule treats specially.
    features = [r"&", r"[0-9][.,]", r"[.,][0-9]", r"[0-9]-", r"--", r"\.\.\.", r"[$%]", r'"',
                r"[;:]", r"[(\[]", r"[/]", r"[^\x00-\x7f]", r"[.,][^ 0-9]", r"[?!]"]
    tricky = []
    for feature in features:
        tricky += [t for t in texts if re.search(feature, t) and t not in tricky][:4]
    # Rules the real snippets never reach: entities, <skipped>, a hyphen at a line break.
    tricky += ["Lovely &amp;amp; Amazing &quot;wins&quot; 3&lt;4 &gt; 2<skipped>, co-\nwriter",
               "Tabs\tand\u00a0no-break spaces\u2003here ", "1,000.50 - 20.5% of $3-4 a.m. 2.",
               "Line one\nline two.\n"]
    tokenizer = sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()
    token_cases = [{"text": t, "tokens": tokenizer(t.rstrip())} for t in tricky]

    fixture = {
        "_source": "made by plugins/bleu/tests/make_fixture.py from PyPI sdist vadersentiment==3.3.2 "
                   "(vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz, "
                   "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt); "
                   f"expected values from sacrebleu=={sacrebleu.__version__}",
        "pairs": pairs, "corpus": corpus, "token_cases": token_cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
