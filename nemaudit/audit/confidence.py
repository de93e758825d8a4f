"""Confidence intervals for the rates audits report (a share of k units out of n).

A rate measured on 32 units is a small sample: 1/32 and 2/32 differ by noise. Every rate
metric (:attr:`nemaudit.audit.methods.MetricShape.rate`) carries an exact (Clopper–Pearson)
binomial interval *over units*: it treats the audited units as a sample of the layer's units
and says how far the share could be from the one measured. It does not cover the
corruption's randomness (another noise draw) or the probe (other images); those need
repeated draws and a bootstrap over images, which are not computed yet.

scipy does the arithmetic (``scipy.stats.binomtest(...).proportion_ci(method="exact")``):
the inverse of the regularised incomplete beta function is not something to write by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A two-sided interval ``[lo, hi]`` at ``level`` for ``k`` of ``n``."""

    lo: float
    hi: float
    level: float
    k: int
    n: int
    covers: str = "units"

    def to_json(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "level": self.level, "k": self.k, "n": self.n,
                "covers": self.covers}


def binomial_interval(k: int, n: int, level: float = 0.95) -> Interval:
    """The exact (Clopper–Pearson) interval of a share ``k/n`` at confidence ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return Interval(float(ci.low), float(ci.high), float(level), int(k), int(n))
