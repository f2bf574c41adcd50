"""Make tests/fixture.json: real review snippets and their distinct-n, computed independently.

Run from the repository root:

    python3 -m pip download --no-deps --no-binary :all: -d ~/.cache/triad/pip vadersentiment==3.3.2
    python3 plugins/distinct-n/tests/make_fixture.py ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz

Text: the first 300 snippets of hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt, inside
vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz of PyPI sdist
vadersentiment==3.3.2. Distinct-n (Li et al. 2016) = distinct n-grams / all n-grams over the
corpus, tokens = `text.lower().split()`. The "repeated" corpus adds the first 100 snippets a
second time, as a model that repeats itself would.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fixture_texts import snippets  # noqa: E402  (plugins/fixture_texts.py, shared with bleu and rouge)

OUT = __file__.rsplit("/", 1)[0] + "/fixture.json"


def distinct(texts, n):
    seen, total = set(), 0
    for text in texts:
        tokens = text.lower().split()
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return {"distinct": len(seen), "total": total, "value": len(seen) / total if total else 0.0}


def main():
    texts = snippets(sys.argv[1])[:300]
    corpora = {"first_50": texts[:50], "all_300": texts, "repeated": texts + texts[:100]}
    expected = {name: {str(n): distinct(c, n) for n in (1, 2, 3, 4)} for name, c in corpora.items()}
    fixture = {
        "_source": "made by plugins/distinct-n/tests/make_fixture.py from PyPI sdist vadersentiment==3.3.2 "
                   "(hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt, first 300 snippets)",
        "texts": texts, "expected": expected,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=0, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
