"""Robustness properties of the embedded default, written in Python.

Run with ``pytest examples --nemaudit``; without ``--nemaudit`` these are skipped.
"""

from __future__ import annotations

import pytest

MODEL = "nemaudit:conceptnet"
PROBE = "synthetic:n=600,seed=0"
ATTACK_PROBE = "synthetic:n=300,seed=0"  # per-unit attacks cost ~10 forward/backward passes per image


@pytest.mark.parametrize("sigma", [0.01, 0.02, 0.05])
def test_noise_sweep_layer4(nemaudit, sigma):
    """Flip rate grows with σ; at σ ≤ 0.05 most detectors keep their concept."""
    result = nemaudit.audit(model=MODEL, probe=PROBE, layer="layer4",
                            corruption=f"gaussian:std={sigma},fraction=1.0")
    assert result.flip_rate_detectors <= 0.35


def test_designed_attack_is_stronger_than_noise(nemaudit):
    """The ICCV'23 finding: a designed 4/255 perturbation of the images that hold a unit's
    concept flips far more units than Bernoulli noise of the same size on every image."""
    pgd = nemaudit.audit(model=MODEL, probe=ATTACK_PROBE, layer="layer4",
                         corruption="pgd:eps=4/255,steps=10", max_units=8)
    units = [r["unit"] for r in pgd.rows]
    noise = nemaudit.audit(model=MODEL, probe=ATTACK_PROBE, layer="layer4",
                           corruption="bernoulli:std=4/255,fraction=1.0", units=units)
    assert pgd.flip_rate > noise.flip_rate
    assert pgd.flip_rate >= 0.3


def test_targeted_attack_reaches_its_target(nemaudit):
    result = nemaudit.audit(model=MODEL, probe=ATTACK_PROBE, layer="layer4",
                            corruption="pgd:eps=6/255,steps=10,targeted=true,target=car",
                            max_units=8)
    assert result.targeted_success_rate >= 0.1
