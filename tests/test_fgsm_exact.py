"""FGSM and PGD on cross-entropy, value for value on a tiny linear model with images at the
pixel bounds (so the clamp to [0, 1] decides pixels); settings, defaults and messages."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from nemaudit.corrupt.fgsm import FGSMCorruption, PGDCECorruption, fgsm, pgd_ce
from nemaudit.errors import SpecError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 4, 4, generator=g)
    x[0], x[1] = 0.0, 1.0  # at the bounds: half their pixels step outside [0, 1]
    return x


def _grad_sign(model, x, y):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0].sign()


def test_fgsm_is_one_signed_step_clamped_to_the_pixel_range():
    model, x = _model(), _images()
    y = torch.tensor([0, 1, 2, 0])
    eps = 0.3
    want = (x + eps * _grad_sign(model, x, y)).clamp(0.0, 1.0)
    got = fgsm(model, x, y, eps)
    assert torch.equal(got, want)
    assert got.min() == 0.0 and got.max() == 1.0  # both bounds are reached...
    assert ((got == 0) & (x == 0)).any() and ((got == 1) & (x == 1)).any()  # ...and hold


def test_pgd_ce_steps_project_and_clamp():
    model, x = _model(), _images()
    y = torch.tensor([0, 1, 2, 0])
    eps, alpha, steps = 0.3, 0.2, 3
    adv = x.clone()
    for _ in range(steps):
        adv = adv + alpha * _grad_sign(model, adv, y)
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    got = pgd_ce(model, x, y, eps, alpha, steps)
    assert torch.equal(got, adv)
    assert got.min() == 0.0 and got.max() == 1.0
    assert (got - x).abs().max() <= eps + 1e-6


def test_settings_defaults_and_messages():
    f = FGSMCorruption(2 / 255)
    assert (f.seed, f.fraction, f.select_spec, f.settings()) == (0, 1.0, "random",
                                                                 {"eps": 2 / 255})
    assert FGSMCorruption(0.1, seed=5, select=[1]).seed == 5
    assert FGSMCorruption(0.1, select=[1]).select_spec != "random"
    p = PGDCECorruption(0.1, steps=4)
    assert p.settings() == {"eps": 0.1, "steps": 4, "alpha": pytest.approx(0.05)}
    assert PGDCECorruption(0.1, steps=4, alpha=0.02).alpha == 0.02
    q = PGDCECorruption(0.1, fraction=0.5, select=[2], seed=3)
    assert (q.fraction, q.seed) == (0.5, 3) and q.select_spec != "random"
    assert (PGDCECorruption(0.1).seed, PGDCECorruption(0.1).steps) == (0, 10)
    with pytest.raises(SpecError, match=re.escape("eps=-1 must be >= 0")):
        FGSMCorruption(-1)
    with pytest.raises(SpecError, match=re.escape("alpha=2 must be <= 1 (pixels lie in [0, 1])")):
        PGDCECorruption(0.1, alpha=2)


def test_a_model_without_parameters_is_attacked_where_its_images_are():
    """No parameters to read a device from: the images stay where they are."""
    from nemaudit.probe.base import ProbeBatch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.AdaptiveAvgPool1d(3))
    x = _images()
    batch = ProbeBatch(x, torch.zeros(4, 0, 2, 2, dtype=torch.int64),
                       torch.zeros(4, 0, dtype=torch.int64), torch.arange(4),
                       torch.full((4,), -1))
    out = FGSMCorruption(0.1)(batch, model)
    y = model(x).argmax(dim=1)
    assert torch.equal(out, fgsm(model, x, y, 0.1))
