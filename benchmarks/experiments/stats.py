"""Seed statistics for the experiment scripts: mean ± 95 % interval, paired differences, verdicts.

Every headline figure in docs/experiments.md is a mean over seeds with its Student-t interval
(``mean ± t_{0.975, n−1} · s / √n``), and a claim "A beats B" is made only where the interval of
the paired difference A − B (same seeds: same data split, same node speeds) excludes 0; otherwise
the docs say "no difference seen".

    from stats import interval, paired, verdict   # benchmarks/experiments on sys.path
    d = paired(frain, brain)                      # per-seed values, in the same seed order
    verdict("FRAIN", "BRAIN", d)                  # "FRAIN beats BRAIN" | "no difference seen" | ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _st

CONFIDENCE = 0.95
NO_DIFFERENCE = "no difference seen"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and the half-width of its two-sided Student-t interval."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def excludes_zero(self) -> bool:
        return not math.isnan(self.half) and (self.low > 0 or self.high < 0)

    def format(self, fmt: str = ".3f") -> str:
        """``mean ± half`` (a ``+`` in ``fmt`` signs the mean only); ``mean`` alone for one seed."""
        if math.isnan(self.half):
            return f"{self.mean:{fmt}}"
        return f"{self.mean:{fmt}} ± {self.half:{fmt.replace('+', '')}}"

    def __str__(self) -> str:
        return self.format()


def interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and half-width of the Student-t interval (``n − 1`` degrees of freedom) of ``values``.

    One value has no interval (half-width NaN); identical values have half-width 0.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    t = float(_st.t.ppf(0.5 + confidence / 2, n - 1))
    return Interval(mean, t * sd / math.sqrt(n), n)


def _aligned(
    a: Sequence[float] | Mapping[int, float], b: Sequence[float] | Mapping[int, float]
) -> tuple[list[float], list[float]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"not the same seeds: {sorted(a)} vs {sorted(b)}")
        keys = sorted(a)
        return [float(a[k]) for k in keys], [float(b[k]) for k in keys]
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("pass both as sequences (same seed order) or both as seed → value maps")
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)} values")
    return [float(x) for x in a], [float(y) for y in b]


def paired(
    a: Sequence[float] | Mapping[int, float],
    b: Sequence[float] | Mapping[int, float],
    confidence: float = CONFIDENCE,
) -> Interval:
    """Interval of the mean paired difference ``a − b`` over the same seeds.

    ``a`` and ``b`` are per-seed values, either in the same seed order or as ``{seed: value}``.
    """
    xs, ys = _aligned(a, b)
    return interval([x - y for x, y in zip(xs, ys, strict=True)], confidence)


def verdict(name_a: str, name_b: str, diff: Interval, higher_is_better: bool = True) -> str:
    """ "A beats B" / "B beats A" where the interval of ``A − B`` excludes 0, else no difference."""
    if not diff.excludes_zero():
        return NO_DIFFERENCE
    a_ahead = (diff.mean > 0) == higher_is_better
    return f"{name_a} beats {name_b}" if a_ahead else f"{name_b} beats {name_a}"


def relative(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Interval of the per-seed relative change ``a / b − 1`` (e.g. the drop under attack)."""
    xs, ys = _aligned(a, b)
    return interval([x / y - 1.0 for x, y in zip(xs, ys, strict=True)], confidence)
