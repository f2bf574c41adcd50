"""Data filter: drops texts shorter than `min_words` words and strips surrounding whitespace."""
from dataclasses import dataclass

import triad


@dataclass
class Config:
    min_words: int = 3


@triad.data_filter(name="py-short-filter", config=Config)
def keep_long(sample: triad.Sample, config: Config):
    if len(sample.text.split()) < config.min_words:
        return triad.drop(f"fewer than {config.min_words} words")
    stripped = sample.text.strip()
    return triad.KEEP if stripped == sample.text else triad.rewrite(stripped)
