"""Reward: 0 for a response of about the target length in words, falling to -1 (target-length)."""
from dataclasses import dataclass

import triad

@dataclass
class Config:
    target_words: float
    tolerance: float = 0.0

@triad.reward(name="py-length-reward", config=Config)
def score(episode: triad.Episode, config: Config) -> float:
    excess = max(0.0, abs(len(episode.response.split()) - config.target_words) - config.tolerance)
    return -min(1.0, excess / config.target_words)
