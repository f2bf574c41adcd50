"""A Python reward plugin that misbehaves on purpose, to prove the sandbox contains it.

Like hostile-reward (Rust), it scores a response by its length, except when the response names a
misdeed: `loop` spins forever, `grow-memory` allocates toward 1 GiB, `recurse` recurses until
Python's recursion limit, `recurse-deep` lifts that limit first, `recurse-c` recurses in C (repr
of a deeply nested list), `huge` logs a 100 MB line, `log-big` a 10 MB one, `log-flood` 100,000
lines, `print` prints, `time` reads the clock, `open` opens a file, `raise` raises, `nan` returns
NaN.
The config {"fail_configure": true} makes configure raise.
"""
import sys
import time
from dataclasses import dataclass

import triad


@dataclass
class Config:
    fail_configure: bool = False

    def __post_init__(self) -> None:
        if self.fail_configure:
            raise RuntimeError("hostile plugin fails configure on purpose")


def recurse(depth: int) -> int:
    return recurse(depth + 1) + 1


@triad.reward(name="py-hostile", config=Config)
def score(episode: triad.Episode, config: Config) -> float:
    misdeed = episode.response
    if misdeed == "loop":
        spins = 0
        while True:
            spins += 1
    if misdeed == "grow-memory":
        hoard = [bytearray(1 << 20) for _ in range(1024)]
        return len(hoard)
    if misdeed == "recurse":
        return recurse(0)
    if misdeed == "recurse-deep":
        sys.setrecursionlimit(10**6)
        return recurse(0)
    if misdeed == "recurse-c":
        nested: list = []
        for _ in range(10**6):
            nested = [nested]
        return len(repr(nested))
    if misdeed == "huge":
        triad.log.info("x" * 100_000_000)
        return 0.0
    if misdeed == "log-big":
        triad.log.error("y" * 10_000_000)
        return 0.0
    if misdeed == "log-flood":
        for n in range(100_000):
            triad.log.info(f"line {n}")
        return 0.0
    if misdeed == "print":
        print("printed by a plugin")
        return 0.0
    if misdeed == "time":
        return time.time()
    if misdeed == "open":
        with open("/etc/passwd") as f:
            return len(f.read())
    if misdeed == "raise":
        raise ValueError(f"hostile plugin raises on purpose (response {misdeed!r})")
    if misdeed == "nan":
        return float("nan")
    return len(misdeed)
