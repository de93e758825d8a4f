"""The designed corruption (ICCV'23 Eq. 9), value for value against a PGD written out here:
bilinear upsampling with ``F.interpolate``, a hand-written masked mean per row, source minus
target, signed steps, projection onto the ε-ball and the clamp to [0, 1]; the random start
seeded per (index, unit); chunking, call counts, settings, defaults and exact messages."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.corrupt.base import derive_seed
from nemaudit.corrupt.pgd import ConceptAttack, ConceptPGD, act_avg, attack_units
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeBatch
from tests.helpers import raises_exactly

torch.set_num_threads(1)


# --------------------------------------------------------------------------- tiny models

class Pool(nn.Module):
    """No parameters: the unit map of channel u is the 2×2 average of that channel."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Net(nn.Module):
    """conv2 gives 5 units on a 4×4 map for 8×8 images; ``after`` counts the forward passes
    that go past the attacked layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.after = Counter()
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.after(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


def net_maps(net: Net, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    return net.conv2(net.relu(net.conv1(x)))[torch.arange(x.shape[0]), units]


def pool_maps(x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)[torch.arange(x.shape[0]), units]


# --------------------------------------------------------------------------- the reference

def ref_act(maps: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Mean of the bilinearly upsampled map over the labelled pixels, per row (0 if none)."""
    up = F.interpolate(maps[:, None].float(), size=tuple(lab.shape[-2:]), mode="bilinear",
                       align_corners=False)[:, 0]
    rows = []
    for n in range(maps.shape[0]):
        k = lab[n].bool()
        rows.append(up[n][k].sum() / k.sum() if k.any() else up.new_zeros(()))
    return torch.stack(rows)


def ref_objective(maps, s, t):
    return ref_act(maps, s) if t is None else ref_act(maps, s) - ref_act(maps, t)


def ref_start(seed: int, keys, shape, eps: float, dtype=torch.float32) -> torch.Tensor:
    out = []
    for k in keys:
        parts = k if isinstance(k, tuple) else (k,)
        g = torch.Generator().manual_seed(derive_seed(seed, "pgd-start", *parts))
        out.append((torch.rand(shape, generator=g) * 2.0 - 1.0).to(dtype) * eps)
    return torch.stack(out)


def ref_pgd(fn, x, units, s, t, eps, alpha, steps, start=None):
    """Eq. 9 minimised by signed-gradient PGD in the L∞ ball, clamped to [0, 1]."""
    adv = x.clone()
    if start is not None:
        adv = (adv + start).clamp(0.0, 1.0)
    for _ in range(steps):
        a = adv.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ref_objective(fn(a, units), s, t).sum(), a)
        adv = a.detach() - alpha * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return adv


# --------------------------------------------------------------------------- data

B, H = 6, 8


def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(B, 3, H, H, generator=g) * 0.6 + 0.2
    x[:, :, :, :2] = 0.0  # at the bounds: the clamp to [0, 1] decides these pixels
    x[:, :, :, -2:] = 1.0
    return x


def make_batch() -> ProbeBatch:
    """concept 1 (pixels, top left) in images 0-2, concept 2 (pixels, bottom right) in images
    1-3, concept 3 (image-level) in image 4; image 5 carries nothing. Dataset indices 10-15."""
    pix = torch.zeros(B, 1, H, H, dtype=torch.int64)
    pix[0:3, 0, :4, :3] = 1
    pix[1:4, 0, 5:, 4:] = 2
    img = torch.zeros(B, 1, dtype=torch.int64)
    img[4, 0] = 3
    return ProbeBatch(images(), pix, img, torch.arange(10, 10 + B), torch.full((B,), -1))


def label(batch: ProbeBatch, c: int | None) -> torch.Tensor:
    """L_c, written out: pixels equal to c, or the whole image for an image-level c."""
    if c is None or c <= 0:
        return torch.zeros(B, H, H, dtype=torch.bool)
    return (batch.pixel_labels == c).any(dim=1) | (batch.image_labels == c).any(dim=1)[:, None,
                                                                                       None]


def expected(fn, batch, units, s_maps, t_maps, eps, alpha, steps, seed=None):
    """Per (unit, image): the reference attack of every image carrying the unit's source or
    target, clean copies and NaN elsewhere. ``s_maps``/``t_maps`` are [U, B, h, w]."""
    n_u = len(units)
    img = batch.images.unsqueeze(0).repeat(n_u, 1, 1, 1, 1)
    before = torch.full((n_u, B), math.nan)
    after = torch.full((n_u, B), math.nan)
    poisoned = s_maps.flatten(2).any(2) | (torch.zeros_like(s_maps) if t_maps is None
                                           else t_maps).flatten(2).any(2)
    for i, u in enumerate(units):
        for b in range(B):
            if not poisoned[i, b]:
                continue
            x = batch.images[b:b + 1]
            uu = torch.tensor([u])
            s = s_maps[i, b:b + 1]
            t = None if t_maps is None else t_maps[i, b:b + 1]
            start = None if seed is None else ref_start(seed, [(int(batch.indices[b]), u)],
                                                        x.shape[1:], eps)
            adv = ref_pgd(fn, x, uu, s, t, eps, alpha, steps, start)
            img[i, b] = adv[0]
            with torch.no_grad():
                before[i, b] = ref_objective(fn(x, uu), s, t)[0]
                after[i, b] = ref_objective(fn(adv, uu), s, t)[0]
    return img, poisoned, before, after


def assert_matches(res, want, atol=0.0):
    img, poisoned, before, after = want
    assert torch.equal(res.poisoned, poisoned)
    if atol:
        assert torch.allclose(res.images, img, atol=atol, rtol=0)
    else:
        assert torch.equal(res.images, img)
    assert torch.equal(res.objective_before.isnan(), ~poisoned)
    assert torch.equal(res.objective_after.isnan(), ~poisoned)
    assert torch.allclose(res.objective_before[poisoned], before[poisoned], atol=1e-6, rtol=0)
    assert torch.allclose(res.objective_after[poisoned], after[poisoned], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def net() -> Net:
    return Net().eval()


@pytest.fixture
def batch() -> ProbeBatch:
    return make_batch()


UNITS = [0, 2, 4]
SOURCES = [1, 2, 1]
TARGETS = [2, None, 0]  # None and 0 drop the target term


def concept_stack(batch, ids):
    return torch.stack([label(batch, c) for c in ids])


# --------------------------------------------------------------------------- act_avg

def test_act_avg_is_the_masked_mean_of_the_bilinear_upsampling():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 4, generator=g)
    lab = torch.zeros(3, 8, 8, dtype=torch.bool)
    lab[0, 2, 5] = True  # one pixel: its upsampled value itself
    lab[1, 1:6, 2:7] = True
    maps[2] = math.inf  # an empty label map gives exactly 0, whatever the map holds
    got = act_avg(maps, lab)
    up = F.interpolate(maps[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert got[0] == pytest.approx(float(up[0, 2, 5]), rel=1e-6)
    assert got[1] == pytest.approx(float(up[1, 1:6, 2:7].mean()), rel=1e-5)
    assert got[2] == 0.0
    # labels of another dtype are weights cast to the map's dtype
    dbl = act_avg(maps[:2], lab[:2].double())
    assert dbl.dtype == torch.float32 and torch.allclose(dbl, got[:2])


# --------------------------------------------------------------------------- ConceptPGD

def test_defaults_of_concept_pgd():
    atk = ConceptPGD(Pool(), "pool")
    assert (atk.eps, atk.steps, atk.random_start, atk.seed) == (4 / 255, 10, False, 0)
    assert atk.alpha == 2.0 * (4 / 255) / 10
    assert ConceptPGD(Pool(), "pool", eps=0.1, steps=4).alpha == 2.0 * 0.1 / 4
    assert ConceptPGD(Pool(), "pool", eps=0.1, steps=4, alpha=0.03).alpha == 0.03


@pytest.mark.parametrize("alpha", [None, 0.03])
def test_pgd_on_a_parameterless_model_is_the_reference(batch, alpha):
    x = batch.images
    units = torch.tensor([0, 1, 2, 0, 1, 2])
    s, t = label(batch, 1) | label(batch, 3), label(batch, 2)
    atk = ConceptPGD(Pool(), "pool", eps=0.1, steps=4, alpha=alpha)
    adv, before, after = atk.run(x, units, s, t)
    want = ref_pgd(pool_maps, x, units, s, t, 0.1, 2 * 0.1 / 4 if alpha is None else alpha, 4)
    assert torch.equal(adv, want)
    assert adv.min() == 0.0 and adv.max() == 1.0 and (adv - x).abs().max() <= 0.1 + 1e-6
    # the target pixels at 1 are pushed up, and held at 1 (those at 0 of the source, down)
    assert ((adv == 1.0) & (x == 1.0)).any() and ((adv == 0.0) & (x == 0.0)).any()
    assert torch.allclose(before, ref_objective(pool_maps(x, units), s, t), atol=1e-6)
    assert torch.allclose(after, ref_objective(pool_maps(adv, units), s, t), atol=1e-6)
    assert torch.allclose(atk.last_maps, pool_maps(adv, units))
    assert torch.equal(atk(x, units, s, t), adv)
    # unit indices of any integer dtype are indices, not a mask
    adv8, _, _ = atk.run(x, units.to(torch.uint8), s, t)
    assert torch.equal(adv8, adv)


def test_pgd_on_a_conv_net_is_the_reference(net, batch):
    x = batch.images
    units = torch.tensor([0, 1, 2, 3, 4, 0])
    s, t = label(batch, 1), label(batch, 2)
    adv, before, after = ConceptPGD(net, "conv2", eps=0.1, steps=3).run(x, units, s, t)
    want = ref_pgd(lambda a, u: net_maps(net, a, u), x, units, s, t, 0.1, 2 * 0.1 / 3, 3)
    assert torch.allclose(adv, want, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert torch.allclose(before, ref_objective(net_maps(net, x, units), s, t), atol=1e-6)
        assert torch.allclose(after, ref_objective(net_maps(net, adv, units), s, t), atol=1e-6)
    # no target: the source activation alone
    _, b0, _ = ConceptPGD(net, "conv2", eps=0.1, steps=1).run(x, units, s)
    with torch.no_grad():
        assert torch.allclose(b0, ref_act(net_maps(net, x, units), s), atol=1e-6)


def test_random_start_is_seeded_per_key_and_added_before_the_steps():
    x = torch.full((2, 3, H, H), 0.5)
    units = torch.tensor([0, 1])
    s = torch.ones(2, H, H, dtype=torch.bool)
    atk = ConceptPGD(Pool(), "pool", eps=0.1, alpha=0.0, steps=1, random_start=True, seed=3)
    keys = [(15, 0), (17, 1)]
    adv = atk(x, units, s, keys=keys)  # alpha = 0: the start is all that moves the images
    start = ref_start(3, keys, (3, H, H), 0.1)
    assert torch.equal(adv, (x + (((x + start).clamp(0, 1)) - x).clamp(-0.1, 0.1)).clamp(0, 1))
    assert start.abs().max() > 0.09 and (start > 0).any() and (start < 0).any()
    # integer keys seed from (seed, "pgd-start", key)
    adv_int = atk(x, units, s, keys=[15, 17])
    start_int = ref_start(3, [15, 17], (3, H, H), 0.1)
    assert torch.equal(adv_int,
                       (x + ((x + start_int).clamp(0, 1) - x).clamp(-0.1, 0.1)).clamp(0, 1))
    with raises_exactly(ValueError,
            "random_start=True needs one key per row (e.g. (index, unit)) so the start does "
            "not depend on the batch"):
        atk(x, units, s)
    # eps = 0: nothing to start from, so no keys are needed
    still = ConceptPGD(Pool(), "pool", eps=0.0, steps=1, random_start=True)(x, units, s)
    assert torch.equal(still, x)


def test_random_start_in_double_precision_and_at_the_bounds():
    x = torch.zeros(2, 3, H, H, dtype=torch.float64)
    x[1] = 1.0
    x[:, :, :, 4:] = 0.5
    units = torch.tensor([0, 2])
    s = torch.ones(2, H, H, dtype=torch.bool)
    atk = ConceptPGD(Pool(), "pool", eps=0.1, alpha=0.0, steps=1, random_start=True)
    keys = [(0, 0), (1, 2)]
    start = ref_start(0, keys, (3, H, H), 0.1, torch.float64)
    adv = atk(x, units, s, keys=keys)
    assert adv.dtype == torch.float64
    assert torch.equal(adv, (x + ((x + start).clamp(0, 1) - x).clamp(-0.1, 0.1)).clamp(0, 1))
    # with steps, the start is clamped to [0, 1] before the first step
    atk2 = ConceptPGD(Pool(), "pool", eps=0.1, alpha=0.04, steps=2, random_start=True, seed=1)
    t = torch.zeros(2, H, H, dtype=torch.bool)
    t[:, :, 6:] = True
    s2 = torch.zeros(2, H, H, dtype=torch.bool)
    s2[:, :, :3] = True
    adv2, before, _ = atk2.run(x, units, s2, t, keys=keys)
    want = ref_pgd(pool_maps, x, units, s2, t, 0.1, 0.04, 2,
                   ref_start(1, keys, (3, H, H), 0.1, torch.float64))
    assert torch.equal(adv2, want)
    # the objective before is that of the clean images, target term included
    assert torch.allclose(before, ref_objective(pool_maps(x, units), s2, t), atol=1e-6)
    assert (before != 0).all()


def test_rows_and_range_are_checked_with_exact_messages(net):
    x = torch.rand(2, 3, H, H)
    s = torch.ones(2, H, H, dtype=torch.bool)
    atk = ConceptPGD(net, "conv2", steps=1)
    rows = "^" + re.escape("images, units and label maps must have the same number of rows") + "$"
    with pytest.raises(ValueError, match=rows):
        atk(x, torch.tensor([0, 1]), s[:1])
    with pytest.raises(ValueError, match=rows):
        atk(x, torch.tensor([0, 1]), s, s[:1])
    with raises_exactly(ValueError,
            "ConceptPGD takes images in [0, 1] (normalisation is the model wrapper's job)"):
        atk(x * 0.5 + 0.9, torch.tensor([0, 1]), s)
    with raises_exactly(SpecError,
            "unit 7 is out of range: layer 'conv2' has 5 units (valid: 0..4)"):
        atk(x, torch.tensor([0, 7]), s)
    with raises_exactly(SpecError,
            "layer 'fc' outputs shape (2, 4); the concept attack needs convolutional maps "
            "[B, units, h, w]"):
        ConceptPGD(net, "fc", steps=1)(x, torch.tensor([0, 1]), s)
    with raises_exactly(SpecError, "eps=-1 must be >= 0"):
        ConceptPGD(net, "conv2", eps=-1)
    with raises_exactly(SpecError,
            "alpha=2 must be <= 1 (pixels lie in [0, 1])"):
        ConceptPGD(net, "conv2", alpha=2)


# --------------------------------------------------------------------------- attack_units

def test_attack_units_is_the_reference_per_unit_and_image(net, batch):
    fn = lambda a, u: net_maps(net, a, u)  # noqa: E731
    s_maps, t_maps = concept_stack(batch, SOURCES), concept_stack(batch, TARGETS)
    res = attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=3)
    want = expected(fn, batch, UNITS, s_maps, t_maps, 0.1, 2 * 0.1 / 3, 3)
    assert_matches(res, want, atol=1e-6)
    # unit 2 (source 2 only) is poisoned exactly on images 1-3; image 5 never
    assert res.poisoned.tolist() == [[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0],
                                     [1, 1, 1, 0, 0, 0]]
    clean = batch.images.expand(len(UNITS), -1, -1, -1, -1)
    assert torch.equal(res.images[~res.poisoned], clean[~res.poisoned])
    # each poisoned copy's final map of its unit
    assert res.maps is not None and res.maps.shape == (3, B, 4, 4)
    with torch.no_grad():
        for i, u in enumerate(UNITS):
            direct = net_maps(net, res.images[i], torch.full((B,), u))
            ok = res.poisoned[i]
            assert torch.allclose(res.maps[i][ok], direct[ok], atol=1e-6)
            assert (res.maps[i][~ok] == 0).all()
    # tensors of ids are read like lists (a 0 target drops the term like None)
    tens = attack_units(net, "conv2", batch, torch.tensor(UNITS), torch.tensor(SOURCES),
                        torch.tensor([2, 0, 0]), eps=0.1, steps=3)
    assert torch.equal(tens.images, res.images) and torch.equal(tens.poisoned, res.poisoned)
    # a given alpha is used
    a = attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=3, alpha=0.01)
    assert_matches(a, expected(fn, batch, UNITS, s_maps, t_maps, 0.1, 0.01, 3), atol=1e-6)
    # select restricts the poisoned images
    sel = torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)
    r = attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=3, select=sel)
    assert torch.equal(r.poisoned, res.poisoned & sel)
    assert torch.allclose(r.images[r.poisoned], res.images[r.poisoned])


def test_attack_units_defaults(net, batch):
    fn = lambda a, u: net_maps(net, a, u)  # noqa: E731
    s_maps, t_maps = concept_stack(batch, SOURCES[:2]), concept_stack(batch, TARGETS[:2])
    res = attack_units(net, "conv2", batch, UNITS[:2], SOURCES[:2], TARGETS[:2])
    eps = 4 / 255
    assert_matches(res, expected(fn, batch, UNITS[:2], s_maps, t_maps, eps, 2 * eps / 10, 10),
                   atol=1e-6)
    # the random start: seed 0, keyed by (dataset index, unit)
    rs = attack_units(net, "conv2", batch, UNITS[:2], SOURCES[:2], TARGETS[:2], steps=2,
                      random_start=True)
    assert_matches(rs, expected(fn, batch, UNITS[:2], s_maps, t_maps, eps, eps, 2, seed=0),
                   atol=1e-6)
    rs5 = attack_units(net, "conv2", batch, UNITS[:2], SOURCES[:2], TARGETS[:2], steps=2,
                       random_start=True, seed=5)
    assert_matches(rs5, expected(fn, batch, UNITS[:2], s_maps, t_maps, eps, eps, 2, seed=5),
                   atol=1e-6)


@pytest.mark.parametrize(("max_copies", "message"), [
    (0, "max_copies=0 must be >= 1"), (-3, "max_copies=-3 must be >= 1"),
    (2.5, "max_copies=2.5 must be an integer >= 1")])
def test_attack_units_refuses_a_bad_copy_count(net, batch, max_copies, message):
    """A copy count below 1 once attacked nothing while reporting the pairs as poisoned."""
    with pytest.raises(SpecError, match=re.escape(message)):
        attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=1,
                     max_copies=max_copies)


@pytest.mark.parametrize("max_copies", [1, 2, 5])
def test_chunks_give_the_result_of_one_chunk(net, batch, max_copies):
    one = attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=3,
                       random_start=True, seed=2)
    chunked = attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=3,
                           random_start=True, seed=2, max_copies=max_copies)
    assert torch.equal(chunked.poisoned, one.poisoned)
    assert torch.allclose(chunked.images, one.images, atol=1e-6, rtol=0)
    p = one.poisoned
    assert torch.allclose(chunked.objective_after[p], one.objective_after[p], atol=1e-6)
    assert torch.allclose(chunked.maps, one.maps, atol=1e-6)


def test_forward_passes_one_chunk_and_stop_at_the_layer(net, batch):
    layer_calls = []
    h = net.conv2.register_forward_hook(lambda *a: layer_calls.append(1))
    try:
        net.after.calls = 0
        attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=1)
        # one chunk of 10 copies: a one-image dry run counts the calls (the only pass past
        # the layer), one pass per step, one for the final maps
        assert (net.after.calls, len(layer_calls)) == (1, 3)
        net.after.calls, layer_calls[:] = 0, []
        attack_units(net, "conv2", batch, UNITS, SOURCES, TARGETS, eps=0.1, steps=4)
        assert (net.after.calls, len(layer_calls)) == (1, 6)
        # 65 copies: the default chunk of 64, then one of 1 (run in full the first time)
        net.after.calls = 0
        five = ProbeBatch(batch.images[:5], batch.pixel_labels[:5], batch.image_labels[:5],
                          batch.indices[:5], batch.targets[:5])
        res = attack_units(net, "conv2", five, [0] * 13, source_masks=torch.ones(5, H, H),
                           eps=0.1, steps=1)
        assert res.poisoned.sum() == 65 and net.after.calls == 2
        # ConceptAttack passes its max_copies on: 10 chunks of one copy
        net.after.calls = 0
        ConceptAttack(0.1, steps=1, max_copies=1).attack_units(
            net, "conv2", batch, UNITS, SOURCES, TARGETS)
        assert net.after.calls == 10
    finally:
        h.remove()


def test_masks_shared_or_per_unit(net, batch):
    fn = lambda a, u: net_maps(net, a, u)  # noqa: E731
    g = torch.Generator().manual_seed(4)
    sm = torch.rand(2, B, H, H, generator=g) > 0.9
    sm[:, 5] = False
    tm = torch.rand(B, H, H, generator=g) > 0.9
    tm[4:] = False
    res = attack_units(net, "conv2", batch, [1, 3], source_masks=sm, target_masks=tm, eps=0.1,
                       steps=2)
    want = expected(fn, batch, [1, 3], sm, tm[None].expand(2, -1, -1, -1), 0.1, 0.1, 2)
    assert_matches(res, want, atol=1e-6)
    assert not res.poisoned[:, 5].any()
    # int masks are read as bool; a shared source mask is every unit's
    shared = attack_units(net, "conv2", batch, [1, 3], source_masks=sm[0].long(), eps=0.1,
                          steps=2)
    assert_matches(shared, expected(fn, batch, [1, 3], sm[0][None].expand(2, -1, -1, -1), None,
                                    0.1, 0.1, 2), atol=1e-6)


def _msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


@pytest.mark.parametrize("kwargs, message", [
    ({"sources": [1, 2], "source_masks": torch.ones(B, H, H)},
     "give either source concepts or source_masks, not both"),
    ({"source_masks": torch.ones(3, B, H, H)},
     "source_masks must be [B, h, w] or [U=2, B, h, w], got (3, 6, 8, 8)"),
    ({"source_masks": torch.ones(2, B, 1, H, H)},
     "source_masks must be [B, h, w] or [U=2, B, h, w], got (2, 6, 1, 8, 8)"),
    ({"source_masks": torch.ones(5, H, H)}, "source_masks cover 5 images, the batch has 6"),
    ({"source_masks": torch.ones(2, 5, H, H)}, "source_masks cover 5 images, the batch has 6"),
    ({"sources": [1, 2], "target_masks": torch.ones(3, B, H, H)},
     "target_masks must be [B, h, w] or [U=2, B, h, w], got (3, 6, 8, 8)"),
    ({"sources": [1, 2], "targets": [2], "target_masks": torch.ones(B, H, H)},
     "give either target concepts or target_masks, not both"),
    ({"sources": [1, 2, 3]}, "3 source concepts for 2 units"),
    ({"sources": [1, 2], "targets": [2]}, "1 target concepts for 2 units"),
    ({}, "attack_units needs source concepts or source_masks"),
    ({"targets": [1, 2]}, "attack_units needs source concepts or source_masks"),
])
def test_attack_units_messages(net, batch, kwargs, message):
    with pytest.raises(ValueError, match=_msg(message)):
        attack_units(net, "conv2", batch, [0, 1], steps=1, **kwargs)


# --------------------------------------------------------------------------- ConceptAttack

def test_concept_attack_settings_and_defaults():
    a = ConceptAttack(0.1)
    assert a.settings() == {"eps": 0.1, "steps": 10, "alpha": None, "targeted": False,
                            "target": None, "random_start": False, "max_copies": 64}
    assert (a.fraction, a.select_spec, a.seed, a.target_id) == (1.0, "random", 0, None)
    b = ConceptAttack(0.2, steps=3, alpha=0.05, targeted=True, target=2, random_start=True,
                      max_copies=5, fraction=0.5, select=[3, 1], seed=7)
    assert b.settings() == {"eps": 0.2, "steps": 3, "alpha": 0.05, "targeted": True,
                            "target": 2, "random_start": True, "max_copies": 5}
    assert (b.fraction, b.select_spec, b.seed, b.target_id) == (0.5, "concept:1|3", 7, 2)
    named = ConceptAttack(0.1, targeted=True, target="cat")
    assert named.target_id is None and named.target == "cat"
    assert ConceptAttack(0.1, targeted=True, target=True).target_id is None


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": -1}, "eps=-1 must be >= 0"),
    ({"eps": 0.1, "alpha": -0.5}, "alpha=-0.5 must be >= 0"),
    ({"eps": 0.1, "alpha": 2}, "alpha=2 must be <= 1 (pixels lie in [0, 1])"),
    ({"eps": 0.1, "max_copies": 0}, "max_copies=0 must be >= 1"),
    ({"eps": 0.1, "targeted": True}, "targeted=true needs target=<concept name>"),
    ({"eps": 0.1, "target": "cat"}, "target='cat' is only used with targeted=true"),
])
def test_concept_attack_messages(kwargs, message):
    with pytest.raises(SpecError, match=_msg(message)):
        ConceptAttack(**kwargs)


def test_unit_targets():
    untargeted = ConceptAttack(0.1)
    assert untargeted.unit_targets([0, 1], [2, None]) == [2, None]
    assert untargeted.unit_targets([0, 1], torch.tensor([3, 2])) == [3, 2]
    assert untargeted.unit_targets([4, 1], {1: 3, 4: 2}) == [2, 3]
    with pytest.raises(SpecError, match=_msg("no target given for unit(s) "
                                             "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")):
        untargeted.unit_targets(list(range(12)), {20: 1})
    with pytest.raises(SpecError, match=_msg(
            "an untargeted attack needs each unit's target (the runner-up concept: see "
            "untargeted_targets)")):
        untargeted.unit_targets([0], None)
    named = ConceptAttack(0.1, targeted=True, target="cat")
    with pytest.raises(SpecError, match=_msg(
            "target='cat' is not resolved yet: call .bind(probe) first")):
        named.unit_targets([0], None)
    with pytest.raises(SpecError, match=_msg(
            "a targeted attack takes its target from the spec; do not pass per-unit targets")):
        named.unit_targets([0], [2])
    assert ConceptAttack(0.1, targeted=True, target=2).unit_targets([0, 1], None) == [2, 2]


def test_concept_attack_passes_its_settings_on(net, batch):
    fn = lambda a, u: net_maps(net, a, u)  # noqa: E731
    atk = ConceptAttack(0.1, steps=3, alpha=0.02, random_start=True, seed=5)
    res = atk.attack_units(net, "conv2", batch, [0, 4], sources=[1, 2], targets={0: 2, 4: 3})
    want = expected(fn, batch, [0, 4], concept_stack(batch, [1, 2]),
                    concept_stack(batch, [2, 3]), 0.1, 0.02, 3, seed=5)
    assert_matches(res, want, atol=1e-6)
    # Eq. 8 masks: untargeted without targets pushes the source down only; or with target masks
    sm = torch.zeros(B, H, H, dtype=torch.bool)
    sm[:3, 2:5, 2:5] = True
    tm = torch.zeros(B, H, H, dtype=torch.bool)
    tm[2:4, 5:, 5:] = True
    plain = ConceptAttack(0.1, steps=2)
    r1 = plain.attack_units(net, "conv2", batch, [3], source_masks=sm)
    assert_matches(r1, expected(fn, batch, [3], sm[None], None, 0.1, 0.1, 2), atol=1e-6)
    r2 = plain.attack_units(net, "conv2", batch, [3], source_masks=sm, target_masks=tm)
    assert_matches(r2, expected(fn, batch, [3], sm[None], tm[None], 0.1, 0.1, 2), atol=1e-6)
    # targeted with masks: the named target's concept maps are the target term
    tgt = ConceptAttack(0.1, steps=2, targeted=True, target=3)
    r3 = tgt.attack_units(net, "conv2", batch, [3], source_masks=sm)
    assert_matches(r3, expected(fn, batch, [3], sm[None], label(batch, 3)[None], 0.1, 0.1, 2),
                   atol=1e-6)

    # one unit through __call__
    one = plain(batch, net, layer="conv2", unit=3, source_mask=sm)
    assert torch.equal(one, r1.images[0])
    one_t = plain(batch, net, layer="conv2", unit=3, source_mask=sm, target_mask=tm)
    assert torch.equal(one_t, r2.images[0])
    by_id = plain(batch, net, layer="conv2", unit=0, source=1, target=2)
    want0 = expected(fn, batch, [0], label(batch, 1)[None], label(batch, 2)[None], 0.1, 0.1, 2)
    assert torch.allclose(by_id, want0[0][0], atol=1e-6, rtol=0)
    # a targeted attack ignores a per-call target: the spec names it
    tgt2 = ConceptAttack(0.1, steps=2, targeted=True, target=2)
    assert torch.equal(tgt2(batch, net, layer="conv2", unit=0, source=1, target=3), by_id)


@pytest.mark.parametrize("kwargs", [
    {"model": None, "layer": "conv2", "unit": 0, "source": 1},
    {"layer": None, "unit": 0, "source": 1},
    {"layer": "conv2", "unit": None, "source": 1},
    {"layer": "conv2", "unit": 0},
])
def test_concept_attack_call_needs_the_unit(net, batch, kwargs):
    kw = {"model": net, **kwargs}
    model = kw.pop("model")
    with pytest.raises(SpecError, match=_msg(
            "the pgd corruption is per unit: call it as corruption(batch, model, layer=..., "
            "unit=..., source=...) or use attack_units()")):
        ConceptAttack(0.1, steps=1, target=None)(batch, model, **kw)


def test_a_double_precision_batch_keeps_its_dtype(batch):
    """A parameterless model runs in the images' dtype: the copies stay float64 and the
    final maps are stored (as float32) like any other."""
    dbl = ProbeBatch(batch.images.double(), batch.pixel_labels, batch.image_labels,
                     batch.indices, batch.targets)
    res = attack_units(Pool(), "pool", dbl, [0, 2], [1, 2], [2, 3], eps=0.1, steps=2)
    assert res.images.dtype == torch.float64 and res.maps.dtype == torch.float32
    want = expected(pool_maps, dbl, [0, 2], concept_stack(dbl, [1, 2]),
                    concept_stack(dbl, [2, 3]), 0.1, 0.1, 2)
    assert_matches(res, want, atol=1e-12)
    for i, u in enumerate([0, 2]):
        ok = res.poisoned[i]
        direct = pool_maps(res.images[i], torch.full((B,), u)).float()
        assert torch.equal(res.maps[i][ok], direct[ok]) and (res.maps[i][~ok] == 0).all()
