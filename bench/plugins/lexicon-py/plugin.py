"""Reward: (positive words - negative words) / words, the benchmark's shared lexicon reward.

Words are maximal runs of alphanumeric characters or apostrophes in the lowercased response;
the lists are those of bench/plugins/lexicon-rust/src/lexicon.rs (a test checks the four implementations agree).
"""
import re

import triad

POSITIVE = set("good great excellent wonderful best love loved beautiful fun brilliant superb enjoyable "
               "moving delightful perfect amazing".split())
NEGATIVE = set("bad worst boring awful dull hate hated poor mess terrible waste stupid horrible weak "
               "annoying disappointing".split())
WORD = re.compile(r"(?:[^\W_]|')+")  # [^\W_]: a Unicode letter or digit


@triad.reward(name="lexicon-py")
def score(episode: triad.Episode) -> float:
    words = WORD.findall(episode.response.lower())
    return (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / max(len(words), 1)
