"""Writes the two lexicons this crate compiles in, from the vaderSentiment 3.3.2 source archive.

    python3 -m pip download --no-deps --no-binary :all: -d ~/.cache/triad/pip vadersentiment==3.3.2
    python3 data/make_data.py ~/.cache/triad/pip/vaderSentiment-3.3.2.tar.gz

- data/vader_lexicon.tsv: `vaderSentiment/vader_lexicon.txt` cut to its first two columns (token,
  mean valence); the standard deviation and the ten raw ratings are dropped. Lines keep their
  order, duplicates included: VADER builds a dict, so a later line wins, and so does ours.
- data/emoji_lexicon.tsv: `vaderSentiment/emoji_utf8_lexicon.txt` (emoji, description) reduced to
  the entries whose emoji is one code point. VADER replaces emojis character by character
  (`for chr in text: if chr in self.emojis`), so longer keys (skin tones, flags, ZWJ sequences)
  can never match and are left out.
"""
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"


def read_member(archive, name):
    with tarfile.open(archive, "r:gz") as tar:
        return tar.extractfile(name).read().decode("utf-8")


def main():
    archive = sys.argv[1]
    import hashlib
    digest = hashlib.sha256(open(archive, "rb").read()).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"{archive}: sha256 {digest}, expected {EXPECTED_SHA256} (vaderSentiment-3.3.2.tar.gz)")

    # Parsed exactly as SentimentIntensityAnalyzer.make_lex_dict does.
    lexicon = read_member(archive, "vaderSentiment-3.3.2/vaderSentiment/vader_lexicon.txt")
    with open(os.path.join(HERE, "vader_lexicon.tsv"), "w", encoding="utf-8", newline="\n") as out:
        for line in lexicon.rstrip("\n").split("\n"):
            if not line:
                continue
            word, measure = line.strip().split("\t")[0:2]
            out.write(f"{word}\t{measure}\n")

    # Parsed exactly as make_emoji_dict does; the dict keeps the last description of a key.
    emojis = {}
    text = read_member(archive, "vaderSentiment-3.3.2/vaderSentiment/emoji_utf8_lexicon.txt")
    for line in text.rstrip("\n").split("\n"):
        emoji, description = line.strip().split("\t")[0:2]
        emojis[emoji] = description
    with open(os.path.join(HERE, "emoji_lexicon.tsv"), "w", encoding="utf-8", newline="\n") as out:
        for emoji, description in emojis.items():
            if len(emoji) == 1:
                out.write(f"{emoji}\t{description}\n")


if __name__ == "__main__":
    main()
