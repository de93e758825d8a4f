"""The interval arithmetic value by value: Clopper–Pearson against its beta-quantile formula,
the repeated audits' bootstrap against the same resampling written out with numpy, and the
edges of every argument."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from nemaudit.audit.confidence import BOOTSTRAP, Interval, binomial_interval, repeated_interval


@pytest.mark.parametrize("k, n, level", [(0, 10, 0.95), (3, 10, 0.95), (10, 10, 0.9),
                                         (1, 1, 0.5), (17, 64, 0.99)])
def test_clopper_pearson_is_the_beta_quantile_formula(k, n, level):
    a = 1 - level
    lo = 0.0 if k == 0 else beta.ppf(a / 2, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(1 - a / 2, k + 1, n - k)
    iv = binomial_interval(k, n, level)
    assert iv.lo == pytest.approx(lo, abs=1e-12) and iv.hi == pytest.approx(hi, abs=1e-12)
    assert (iv.level, iv.k, iv.n, iv.covers) == (level, k, n, "units")
    assert isinstance(iv.k, int) and isinstance(iv.n, int) and isinstance(iv.level, float)


def test_the_default_level_is_95_percent():
    assert binomial_interval(3, 10) == binomial_interval(3, 10, 0.95)
    assert binomial_interval(3, 10).level == 0.95


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5, 2.0])
def test_levels_outside_the_open_unit_interval_are_refused(level):
    for fn in (lambda: binomial_interval(1, 2, level),
               lambda: repeated_interval([[(True, True)]], level)):
        with pytest.raises(ValueError) as e:
            fn()
        assert str(e.value) == f"confidence level must lie in (0, 1), got {level}"


@pytest.mark.parametrize("k, n", [(0, 0), (1, 0), (-1, 5), (6, 5), (0, -1)])
def test_shares_that_are_not_k_of_n_are_refused(k, n):
    with pytest.raises(ValueError) as e:
        binomial_interval(k, n)
    assert str(e.value) == f"need 0 <= k <= n and n > 0, got k={k}, n={n}"


def test_one_of_one_is_a_share():
    iv = binomial_interval(1, 1)
    assert iv.hi == 1.0 and iv.lo == pytest.approx(0.025)


def test_interval_json():
    iv = Interval(0.125, 0.5, 0.9, 2, 8, "units+draws")
    assert iv.to_json() == {"lo": 0.125, "hi": 0.5, "level": 0.9, "k": 2, "n": 8,
                            "covers": "units+draws"}


# --------------------------------------------------------------------------- repeated draws

def _bootstrap(freq: np.ndarray, level: float) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(freq), size=(BOOTSTRAP, len(freq)))
    means = freq[idx].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def test_repeated_interval_bootstraps_the_units_hit_frequencies():
    # 3 draws, 5 units; unit 4 is outside the pool (not a clean detector)
    per_draw = [[(True, True), (False, True), (True, True), (False, True), (True, False)],
                [(True, True), (True, True), (False, True), (False, True), (True, False)],
                [(True, True), (False, True), (False, True), (False, True), (False, False)]]
    iv = repeated_interval(per_draw, 0.9)
    freq = np.array([1.0, 1 / 3, 1 / 3, 0.0])  # per pooled unit, over the draws
    lo, hi = _bootstrap(freq, 0.9)
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert iv.lo < freq.mean() < iv.hi
    assert (iv.level, iv.k, iv.n, iv.covers) == (0.9, 5, 12, "units+draws")
    assert repeated_interval(per_draw, 0.9) == iv  # seeded: the same bounds every time
    assert BOOTSTRAP == 4000


def test_the_pool_is_the_first_draws():
    """The pool is the clean side's: the second draw's pool flags are not read."""
    a = [[(True, True), (False, False)], [(True, False), (True, True)]]
    iv = repeated_interval(a)
    assert (iv.k, iv.n) == (2, 2) and iv.lo == iv.hi == 1.0


def test_frequencies_are_per_unit_not_per_draw():
    """Unit 0 always hits, unit 1 never: the per-unit frequencies are 1 and 0 (a spread
    interval), where per-draw means would all be 0.5 (a point)."""
    per_draw = [[(True, True), (False, True)]] * 4
    iv = repeated_interval(per_draw, 0.8)
    assert iv.lo == 0.0 and iv.hi == 1.0


def test_an_empty_pool_has_no_interval():
    assert repeated_interval([[(True, False), (False, False)]] * 2) is None
    one = repeated_interval([[(True, True)]])
    assert (one.lo, one.hi, one.k, one.n) == (1.0, 1.0, 1, 1)


def test_the_bootstrap_is_seeded_with_zero():
    """Many distinct hit frequencies: the bounds are those of generator 0's resampling
    exactly (another seed moves them)."""
    g = np.random.default_rng(123)
    hits = g.random((5, 9)) < np.linspace(0.05, 0.95, 9)
    per_draw = [[(bool(h), True) for h in row] for row in hits]
    iv = repeated_interval(per_draw, 0.9)
    assert (iv.lo, iv.hi) == _bootstrap(hits.mean(axis=0), 0.9)
    rng1 = np.random.default_rng(1)
    idx = rng1.integers(0, 9, size=(BOOTSTRAP, 9))
    other = np.quantile(hits.mean(axis=0)[idx].mean(axis=1), [0.05, 0.95])
    assert (iv.lo, iv.hi) != tuple(other)
