"""The probe bootstrap's arithmetic value by value: the multinomial weights against the same
draws written out with numpy, and the percentile interval against a hand-written resampling
of units, with its edges (empty pools, levels, which rate reads which flags)."""

from __future__ import annotations

import numpy as np
import pytest

from nemaudit.audit.netdissect.bootstrap import (
    CHUNK,
    ProbeBootstrap,
    multinomial_weights,
    probe_interval,
)


def _weights_by_hand(n: int, b: int, seed: int) -> np.ndarray:
    """Resample b: n draws of image indices from chunk b // CHUNK's generator, counted."""
    rng = np.random.default_rng([seed, 0, b // CHUNK])
    idx = rng.integers(0, n, size=(CHUNK, n))[b % CHUNK]
    return np.bincount(idx, minlength=n)


@pytest.mark.parametrize("start, stop", [(0, 1), (0, CHUNK), (5, 37), (31, 33), (64, 65),
                                         (40, 100)])
def test_multinomial_weights_are_the_seeded_draws_counted(start, stop):
    n, seed = 7, 11
    w = multinomial_weights(n, start, stop, seed)
    assert w.shape == (stop - start, n)
    for row, b in zip(w, range(start, stop), strict=True):
        assert np.array_equal(row, _weights_by_hand(n, b, seed)), b
    assert (w.sum(axis=1) == n).all()


def test_a_resample_does_not_depend_on_the_batch_it_is_drawn_in():
    whole = multinomial_weights(5, 0, 70, 3)
    parts = np.concatenate([multinomial_weights(5, s, min(s + 9, 70), 3)
                            for s in range(0, 70, 9)])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(multinomial_weights(5, 0, 4, 3), multinomial_weights(5, 0, 4, 4))


def test_every_image_can_be_drawn():
    w = multinomial_weights(3, 0, 200, 0)
    assert (w[:, 0] > 0).any() and (w[:, 2] > 0).any()


# --------------------------------------------------------------------------- the interval

def _boot(flags: dict, seed: int = 0) -> ProbeBootstrap:
    return ProbeBootstrap({k: np.asarray(v, dtype=bool) for k, v in flags.items()}, seed)


def _interval_by_hand(hits, pool, level, seed, units=True):
    hits, pool = np.asarray(hits, dtype=float), np.asarray(pool, dtype=bool)
    if units:
        rng = np.random.default_rng([seed, 1])
        pick = rng.integers(0, hits.shape[1], size=hits.shape)
        hits, pool = np.take_along_axis(hits, pick, 1), np.take_along_axis(pool, pick, 1)
    den = pool.sum(1)
    rates = (hits * pool).sum(1)[den > 0] / den[den > 0]
    a = (1 - level) / 2
    return tuple(np.quantile(rates, [a, 1 - a]))


CHANGED = [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0], [0, 1, 0, 0]]
DETECTOR = [[1, 1, 0, 0], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]]


@pytest.mark.parametrize("units", [True, False])
def test_the_flip_rate_interval_is_the_percentiles_of_the_resampled_rates(units):
    b = _boot({"changed": CHANGED, "clean_detector": DETECTOR}, seed=5)
    iv = probe_interval([b], "flip_rate", 0.8, k=3, n=4, units=units)
    lo, hi = _interval_by_hand(CHANGED, np.ones((5, 4)), 0.8, 5, units)
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert (iv.level, iv.k, iv.n) == (0.8, 3, 4)
    assert iv.covers == ("units+probe" if units else "probe")


def test_the_detector_flip_rate_divides_by_the_clean_detectors():
    b = _boot({"changed": CHANGED, "clean_detector": DETECTOR})
    iv = probe_interval([b], "flip_rate_detectors", 0.9, units=False)
    lo, hi = _interval_by_hand(CHANGED, DETECTOR, 0.9, 0, units=False)
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    iv_u = probe_interval([b], "flip_rate_detectors", 0.9)
    lo, hi = _interval_by_hand(CHANGED, DETECTOR, 0.9, 0)
    assert (iv_u.lo, iv_u.hi) == (pytest.approx(lo), pytest.approx(hi))


def test_resamples_without_a_pool_are_dropped():
    pool = [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    b = _boot({"changed": CHANGED, "clean_detector": pool})
    iv = probe_interval([b], "flip_rate_detectors", 0.5, units=False)
    rates = np.array([1.0, 1.0, 0.0])  # resamples 1, 3, 4: their one detector each
    assert (iv.lo, iv.hi) == tuple(pytest.approx(x) for x in np.quantile(rates, [0.25, 0.75]))
    empty = _boot({"changed": CHANGED, "clean_detector": np.zeros((5, 4))})
    assert probe_interval([empty], "flip_rate_detectors", units=False) is None


def test_draws_average_their_hits_and_say_so():
    a = _boot({"changed": CHANGED})
    other = [[1 - x for x in row] for row in CHANGED]
    b = _boot({"changed": other})
    iv = probe_interval([a, b], "flip_rate", 0.9, units=False)
    assert iv.lo == iv.hi == pytest.approx(0.5)  # each unit hits in exactly one draw
    assert iv.covers == "draws+probe"
    assert probe_interval([a, b], "flip_rate", 0.9).covers == "units+draws+probe"


def test_missing_flags_give_no_interval():
    b = _boot({"changed": CHANGED})
    assert probe_interval([b], "flip_rate_detectors") is None  # no clean_detector pool
    assert probe_interval([b], "targeted_success_rate") is None
    assert probe_interval([_boot({"clean_detector": DETECTOR})], "flip_rate") is None


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5])
def test_levels_outside_the_open_unit_interval_are_refused(level):
    with pytest.raises(ValueError) as e:
        probe_interval([_boot({"changed": CHANGED})], "flip_rate", level)
    assert str(e.value) == f"confidence level must lie in (0, 1), got {level}"


def test_default_counts_and_level():
    iv = probe_interval([_boot({"changed": CHANGED})], "flip_rate")
    assert (iv.k, iv.n, iv.level) == (0, 0, 0.95)
