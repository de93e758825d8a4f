"""MILAN exemplars: streaming top-k and masks against brute force."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nemaudit.explain.common.masks import upsample
from nemaudit.explain.milan.exemplars import (
    ExemplarConfig,
    Exemplars,
    TopExemplars,
    compute_exemplars,
    recompute_exemplars,
    update_exemplars,
)
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem


class ActsProbe(ProbeDataset):
    """A probe whose "images" are given activation maps [U, h, w] (the model is identity)."""

    name = "acts"

    def __init__(self, acts: torch.Tensor, seg: tuple[int, int]) -> None:
        self.acts = acts
        self.concepts = [Concept(0, "-", "-"), Concept(1, "thing", "object")]
        self.seg_size = seg

    def __len__(self) -> int:
        return self.acts.shape[0]

    def __getitem__(self, i: int) -> ProbeItem:
        return ProbeItem(self.acts[i], torch.zeros(0, *self.seg_size, dtype=torch.int64),
                         torch.zeros(0, dtype=torch.int64), i)


class Identity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x)


def brute_force(acts: torch.Tensor, k: int, level: float, seg: tuple[int, int]):
    n, u = acts.shape[:2]
    mx = acts.amax(dim=(2, 3))
    idx = torch.tensor([sorted(range(n), key=lambda i: (-float(mx[i, j]), i))[:k]
                        for j in range(u)])
    thr = torch.stack([torch.quantile(acts[:, j].flatten().double(), level).float()
                       for j in range(u)])
    up = torch.stack([upsample(acts[idx[j], j], seg) for j in range(u)])
    return idx, thr, up


values = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]),
                   st.floats(-2, 3, allow_nan=False, width=32))


@st.composite
def activation_sets(draw):
    n = draw(st.integers(1, 14))
    u = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    flat = draw(st.lists(values, min_size=n * u * h * w, max_size=n * u * h * w))
    acts = torch.tensor(flat, dtype=torch.float32).reshape(n, u, h, w)
    k = draw(st.integers(1, n))
    batch = draw(st.integers(1, 5))
    seg = draw(st.sampled_from([(h, w), (2 * h, 2 * w), (5, 3)]))
    return acts, k, batch, seg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(activation_sets())
def test_exemplars_match_brute_force(case):
    acts, k, batch, seg = case
    probe = ActsProbe(acts, seg)
    ex = compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=k, batch_size=batch))
    idx, thr, up = brute_force(acts, k, 0.99, seg)
    assert torch.equal(ex.indices, idx)
    assert torch.allclose(ex.maxes, acts.amax(dim=(2, 3)).t().gather(1, idx))
    assert torch.allclose(ex.thresholds, thr, atol=1e-5, rtol=1e-5)
    # masks = upsample > T at the 0.99 quantile, wherever the comparison is not a near-tie
    clear = (up - thr[:, None, None, None]).abs() > 1e-4
    assert torch.equal(ex.masks[clear], (up > thr[:, None, None, None])[clear])
    # the second, labels-free pass gives the same masks as keeping the maps
    ex2 = compute_exemplars(Identity(), "feat", probe,
                            ExemplarConfig(k=k, batch_size=batch, maps_budget_mb=0.0))
    assert torch.equal(ex2.indices, ex.indices) and torch.equal(ex2.masks, ex.masks)


def test_top_exemplars_merge_is_exact():
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 4, (30, 3, 2, 2), generator=g).float()
    idx = torch.arange(30)
    whole = TopExemplars.empty(3, 5)
    whole.update(acts, idx)
    a, b = TopExemplars.empty(3, 5), TopExemplars.empty(3, 5)
    a.update(acts[:13], idx[:13])
    b.update(acts[13:], idx[13:])
    merged = b.merge(a)
    assert torch.equal(merged.indices, whole.indices)
    assert torch.equal(merged.maps, whole.maps)


def test_units_subset_and_images():
    acts = torch.rand(12, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    probe = ActsProbe(acts, (6, 6))
    full = compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=3, batch_size=5))
    sub = compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=3, batch_size=5),
                            units=[2, 0])
    assert sub.units.tolist() == [2, 0]
    assert torch.equal(sub.indices, full.indices[[2, 0]])
    assert torch.equal(sub.masks, full.masks[[2, 0]])
    imgs = full.images([1])
    assert imgs.shape == (1, 3, 4, 3, 3)
    assert torch.equal(imgs[0, 0], acts[full.indices[1, 0]])
    assert torch.equal(full.images([1], first=2), imgs[:, :2])
    both = Exemplars.concat([full.subset([0]), full.subset([3])])
    assert torch.equal(both.indices, full.indices[[0, 3]])


def _attack_top_images(seed, n_att, depth_extra, slack, rows, lower):
    """A clean state on random activations, and an "attack" that multiplies each row's
    first ``n_att`` exemplars' maps by ``lower(shape)``: the inputs of update_exemplars, and
    each row's own poisoned activations for the brute-force reference."""
    g = torch.Generator().manual_seed(seed)
    n, u, k = 25, 3, 4
    acts = torch.rand(n, u, 2, 3, generator=g) * 3
    cfg = ExemplarConfig(k=k, batch_size=6)
    clean = compute_exemplars(Identity(), "feat", ActsProbe(acts, (4, 6)), cfg,
                              keep_state=True, depth=k + depth_extra, slack=slack)
    changed = torch.zeros(len(rows), n, dtype=torch.bool)
    new_maps, new_rows, new_images, poisoned = [], [], [], []
    for i, r in enumerate(rows):
        imgs = clean.indices[r, :n_att]
        changed[i, imgs] = True
        m = acts[imgs, r] * lower((len(imgs), 1, 1), g)
        new_maps.append(m)
        new_rows += [i] * len(imgs)
        new_images.append(imgs)
        mod = acts.clone()
        mod[imgs, r] = m
        poisoned.append(mod)
    inputs = (changed, torch.cat(new_maps), torch.tensor(new_rows), torch.cat(new_images))
    return clean, cfg, inputs, poisoned


def _assert_equals_brute_force(out, rows, cfg, poisoned):
    for i, r in enumerate(rows):
        ref = compute_exemplars(Identity(), "feat", ActsProbe(poisoned[i], (4, 6)), cfg,
                                units=[r])
        assert torch.equal(out.indices[i], ref.indices[0])
        assert torch.equal(out.maxes[i], ref.maxes[0])
        assert torch.allclose(out.thresholds[i], ref.thresholds[0], atol=1e-6)
        assert torch.equal(out.masks[i], ref.masks[0])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_update_exemplars_matches_recompute(seed, n_att):
    """Per-unit poisoning of a unit's top images, updated from the kept state, equals a full
    recomputation on that unit's own poisoned probe."""
    rows = [0, 2]
    clean, cfg, inputs, poisoned = _attack_top_images(
        seed, n_att, n_att, 4.0, rows, lambda shape, g: torch.rand(shape, generator=g))
    out, inexact = update_exemplars(clean, rows, *inputs)
    assert not inexact.any()
    _assert_equals_brute_force(out, rows, cfg, poisoned)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_recompute_is_exact_where_the_kept_state_is_not(seed, n_att):
    """A state with no spare candidates (depth = k, slack 1) cannot follow an attack that
    sinks a unit's top images; recompute_exemplars then gives the full recomputation."""
    rows = [1, 2]
    clean, cfg, inputs, poisoned = _attack_top_images(
        seed, n_att, 0, 1.0, rows, lambda shape, g: torch.full(shape, 0.01))
    _, inexact = update_exemplars(clean, rows, *inputs)
    assert inexact.all()  # the kept state lost track: nothing to rank the new top k from
    out = recompute_exemplars(Identity(), clean, rows, *inputs[1:])
    assert out.units.tolist() == rows
    _assert_equals_brute_force(out, rows, cfg, poisoned)


def test_unit_out_of_range_is_named():
    import pytest

    from nemaudit.errors import SpecError

    probe = ActsProbe(torch.rand(6, 4, 2, 2), (4, 4))
    with pytest.raises(SpecError, match=r"unit 9 is out of range: this layer has 4 units"):
        compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=2), units=[1, 9])
