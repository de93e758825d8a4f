"""Confidence intervals for the rates audits report (a share of k units out of n).

A rate measured on 32 units is a small sample: 1/32 and 2/32 differ by noise. A measured
rate has three sources of chance, and each interval says which it covers
(:attr:`Interval.covers`):

- ``"units"`` — every rate metric (:attr:`nemaudit.audit.methods.MetricShape.rate`) carries
  an exact (Clopper–Pearson) binomial interval *over units* (:func:`binomial_interval`): it
  treats the audited units as a sample of the layer's units and says how far the share could
  be from the one measured. It is what a plain audit gets.
- ``"units+draws"`` — a repeated audit (``repeats=R``: R draws of the corruption with derived
  seeds) also covers the corruption's randomness (:func:`repeated_interval`, a bootstrap over
  units of their hit frequencies over the draws).
- ``"units+probe"`` — a Network Dissection audit with ``bootstrap=B`` also covers the probe
  (other images): a paired bootstrap over probe images that re-weights per-image tallies, so
  it needs no new forward pass (:mod:`nemaudit.audit.netdissect.bootstrap`). It resamples
  units too; it is *conditional on the thresholds* (T_u stays at its measured value). It
  applies to the keyless rates (flip rates over all units and over clean detectors, the
  detector shares, targeted success); keyed rates (per category) keep ``"units"``. With
  ``repeats`` as well: ``"units+draws+probe"``.

None covers the model itself (another training run). The bootstrap intervals are percentile
intervals, approximate at small samples: ``benchmarks/bench_confidence.py`` measures their
coverage.

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


#: bootstrap resamples of a repeated audit's interval (seeded: the same run, the same bounds)
BOOTSTRAP = 4000


def repeated_interval(per_draw: list[list[tuple[bool, bool]]], level: float = 0.95
                      ) -> Interval | None:
    """The interval of a rate over units *and* the corruption's randomness.

    ``per_draw[r][u]`` is unit u's (hit, in the pool) in draw r (the pool — clean detectors,
    a category's units — is the clean side's, the same in every draw). Each unit's hit
    frequency over the R draws carries the draw-to-draw randomness; the rate is their mean,
    and the interval is a percentile bootstrap of that mean over units (resampling units,
    so both sources of variation are in it). numpy does the resampling, seeded."""
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    pool = [p for _, p in per_draw[0]]
    hits = np.array([[h for (h, _), keep in zip(draw, pool) if keep] for draw in per_draw],
                    dtype=float)  # [R, n]
    if hits.size == 0:
        return None
    freq = hits.mean(axis=0)  # [n]
    n = freq.shape[0]
    rng = np.random.default_rng(0)
    means = freq[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(lo), float(hi), float(level), int(hits.sum()), int(hits.size),
                    covers="units+draws")
