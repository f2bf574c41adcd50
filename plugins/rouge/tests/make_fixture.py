"""Make tests/fixture.json: real prediction/reference pairs and rouge-score's ROUGE on them.

Run with rouge-score==0.1.2 and PyYAML installed (`python3 -m venv ~/.cache/triad/venv &&
~/.cache/triad/venv/bin/pip install rouge-score==0.1.2 pyyaml`), from the repository root:

    python3 -m pip download --no-deps -d ~/.cache/triad/pip chatterbot-corpus==1.3.3
    python3 -m pip download --no-deps --no-binary :all: -d ~/.cache/triad/pip vadersentiment==3.3.2
    ~/.cache/triad/venv/bin/python plugins/rouge/tests/make_fixture.py \
        ~/.cache/triad/pip/chatterbot_corpus-1.3.3-py2.py3-none-any.whl \
        ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz

Text: the answers in chatterbot_corpus/data/english/*.yml of PyPI wheel chatterbot-corpus==1.3.3
(where a question has several answers, they are the references of one pair), and movie-review
snippets with non-ASCII letters from PyPI sdist vadersentiment==3.3.2
(vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz,
hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt). Predictions are the references changed by
a fixed pseudo-random rule (words dropped, swapped, replaced, truncated, extended, case changed),
unrelated texts, or identical copies. Expected values: `RougeScorer(['rouge1', 'rouge2',
'rougeL'], use_stemmer=False).score_multi(references, prediction)`.
"""
import io
import json
import sys
import tarfile
import zipfile
from importlib.metadata import version

import yaml
from rouge_score import rouge_scorer, tokenize

OUT = __file__.rsplit("/", 1)[0] + "/fixture.json"
TYPES = ["rouge1", "rouge2", "rougeL"]


def qa_answers(wheel):
    """(question, [answers]) in file order; answers to the same question are grouped."""
    grouped = {}
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist()
                       if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml"))
        for name in names:
            for conv in yaml.safe_load(z.read(name))["conversations"]:
                if len(conv) >= 2 and isinstance(conv[1], str):
                    grouped.setdefault((name, conv[0]), []).append(conv[1])
    return list(grouped.items())


def snippets(sdist):
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    return [line.split("\t", 2)[2].strip() for line in raw.decode("utf-8").splitlines()]


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
        return " ".join([w for w in words if rng.next(4) != 0] or words[:1])
    if kind == "swap":
        for i in range(0, len(words) - 1, 3):
            if rng.next(2):
                words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "replace":
        pool = other.split()
        return " ".join(pool[rng.next(len(pool))] if rng.next(3) == 0 else w for w in words)
    if kind == "truncate":
        return " ".join(words[: max(1, len(words) // 2)])
    if kind == "extend":
        return text + " " + " ".join(other.split()[: 1 + rng.next(8)])
    if kind == "case":
        return text.upper() if rng.next(2) else text.lower().replace(",", " ,")
    if kind == "unrelated":
        return other
    raise ValueError(kind)


KINDS = ["identical", "drop", "swap", "replace", "truncate", "extend", "case", "unrelated"]


def main():
    qa = qa_answers(sys.argv[1])
    texts = snippets(sys.argv[2])
    # Short and medium answers (code answers are long: only the first few are kept, cut).
    items = []
    for (name, question), answers in qa:
        answers = [a if len(a) <= 400 else a[:400] for a in answers]
        if all(2 <= len(a.split()) <= 60 for a in answers) or "coding" in name:
            items.append((name, answers))
    code = [it for it in items if "coding" in it[0]][:4]
    multi = [it for it in items if len(it[1]) > 1 and "coding" not in it[0]][:30]
    single = [it for it in items if len(it[1]) == 1 and "coding" not in it[0]][::3][:200]
    non_ascii = [[t] for t in texts if any(ord(c) > 127 for c in t)][:30]
    refs_list = [a for _, a in code + multi + single] + non_ascii

    rng = Rng(7)
    scorer = rouge_scorer.RougeScorer(TYPES, use_stemmer=False)
    pairs = []
    for i, refs in enumerate(refs_list):
        kind = KINDS[i % len(KINDS)]
        other = refs_list[(i * 11 + 5) % len(refs_list)][0]
        pred = perturb(refs[0], kind, rng, other)
        pairs.append({"kind": kind, "pred": pred, "refs": refs})
    # Predictions with no tokens at all.
    pairs.append({"kind": "empty", "pred": "", "refs": refs_list[0]})
    pairs.append({"kind": "empty", "pred": "?!  ...", "refs": refs_list[1]})

    for p in pairs:
        scores = scorer.score_multi(p["refs"], p["pred"])
        p["scores"] = {t: [scores[t].precision, scores[t].recall, scores[t].fmeasure] for t in TYPES}

    mean = {t: sum(p["scores"][t][2] for p in pairs) / len(pairs) for t in TYPES}
    token_cases = [{"text": t, "tokens": tokenize.tokenize(t, None)}
                   for t in [p["pred"] for p in pairs if p["kind"] in ("case", "identical")]]
    fixture = {
        "_source": "made by plugins/rouge/tests/make_fixture.py from PyPI chatterbot-corpus==1.3.3 "
                   "(chatterbot_corpus/data/english/*.yml) and PyPI sdist vadersentiment==3.3.2 "
                   "(hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt); expected values from "
                   f"rouge-score=={version('rouge-score')}, RougeScorer(['rouge1', 'rouge2', "
                   "'rougeL'], use_stemmer=False).score_multi; scores are [precision, recall, f]",
        "pairs": pairs, "mean_f": mean, "token_cases": token_cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
