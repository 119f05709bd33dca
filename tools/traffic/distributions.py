"""Distributions of the scenario parameter table.

Each distribution draws from a `random.Random` passed in, so a plan depends
only on the generator's seed, and describes itself in one line of Markdown
for the data card.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Uniform:
    """Continuous uniform distribution on [low, high]."""

    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def describe(self) -> str:
        return f"uniform on [{_number(self.low)}, {_number(self.high)}]"


@dataclass(frozen=True)
class IntRange:
    """Discrete uniform distribution on the integers low..high, both included."""

    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def describe(self) -> str:
        return f"integer uniform on {self.low}..{self.high}"


@dataclass(frozen=True)
class LogNormal:
    """Log-normal distribution given by its median and sigma, clipped to [low, high].

    Sizes and waiting times of human and network activity are right-skewed,
    which a log-normal reproduces; the clip keeps sessions within their bound.
    """

    median: float
    sigma: float
    low: float
    high: float
    integer: bool = False

    def draw(self, rng: random.Random) -> float | int:
        value = min(max(rng.lognormvariate(math.log(self.median), self.sigma), self.low), self.high)
        return round(value) if self.integer else value

    def describe(self) -> str:
        kind = "integer log-normal" if self.integer else "log-normal"
        return (
            f"{kind}, median {_number(self.median)}, sigma {_number(self.sigma)}, "
            f"clipped to [{_number(self.low)}, {_number(self.high)}]"
        )


@dataclass(frozen=True)
class Choice:
    """Weighted choice among options."""

    options: tuple[Any, ...]
    weights: tuple[float, ...] | None = None

    def draw(self, rng: random.Random) -> Any:
        return rng.choices(self.options, weights=self.weights)[0]

    def describe(self) -> str:
        options = ", ".join(_option(option) for option in self.options)
        if self.weights is None:
            return f"one of {options}, equally likely"
        return f"one of {options} with weights {', '.join(_number(weight) for weight in self.weights)}"


def _option(option: Any) -> str:
    if isinstance(option, bool):
        return "true" if option else "false"
    return f"`{option}`"


Distribution = Uniform | IntRange | LogNormal | Choice


def bounds(distribution: Distribution) -> tuple[Any, Any]:
    """Return the smallest and largest value `distribution` can draw (by option order for a Choice of strings)."""
    if isinstance(distribution, Choice):
        return min(distribution.options), max(distribution.options)
    return distribution.low, distribution.high


def draws_integers(distribution: Distribution) -> bool:
    """Return True if every value `distribution` draws is an int (bool excluded)."""
    if isinstance(distribution, IntRange):
        return True
    if isinstance(distribution, LogNormal):
        return distribution.integer
    return all(isinstance(option, int) and not isinstance(option, bool) for option in distribution.options)
