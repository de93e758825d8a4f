"""Incremental re-dissection must equal a full recompute, exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemaudit.explain.common.activations import probe_loader, stream_activations
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.explain.netdissect.incremental import redissect
from tests.toys import ToyNet, ToyProbe

CFG = DissectConfig(eta=0.02, batch_size=7)


def noisy(changed: torch.Tensor, seed: int = 0):
    def transform(batch):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(changed), *batch.images.shape[1:], generator=g)[batch.indices]
        hit = changed[batch.indices].view(-1, 1, 1, 1)
        return torch.where(hit, (batch.images + 0.3 * noise).clamp(0, 1), batch.images)
    return transform


def new_pairs(model, probe, layer, changed, transform, cut):
    maps, units, images = [], [], []
    idx = changed.nonzero().flatten().tolist()
    for batch, acts in stream_activations(model, layer, probe_loader(probe, 5, indices=idx),
                                          torch.device("cpu"), transform):
        b, u = (acts.amax(dim=(2, 3)) >= cut[None]).nonzero(as_tuple=True)
        maps.append(acts[b, u]), units.append(u), images.append(batch.indices[b])
    return torch.cat(maps), torch.cat(units), torch.cat(images)


def assert_same(a, b, units=None):
    sel = slice(None) if units is None else units
    assert torch.equal(a.thresholds[sel], b.thresholds[sel])
    for name in ("both", "unit_cat", "unit_pixels"):
        assert torch.equal(getattr(a.tally, name)[sel], getattr(b.tally, name)[sel]), name
    assert torch.equal(a.tally.label, b.tally.label)


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
@pytest.mark.parametrize("share", [0.1, 0.3])
def test_shared_change_equals_full_recompute(layer, share):
    probe, model = ToyProbe(40), ToyNet()
    clean = dissect(model, layer, probe, CFG, keep_state=True)
    changed = torch.rand(len(probe), generator=torch.Generator().manual_seed(1)) < share
    tf = noisy(changed)
    full = dissect(model, layer, probe, CFG, transform=tf)
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(model, probe, layer, changed, tf, clean.state.cut))
    assert not inexact.any()
    assert_same(inc, full)
    assert not torch.equal(full.thresholds, clean.thresholds)  # the change mattered


def test_per_unit_changes_equal_each_units_own_full_recompute():
    probe, model = ToyProbe(40), ToyNet()
    clean = dissect(model, "layer2", probe, CFG, keep_state=True)
    U, N = clean.units, len(probe)
    g = torch.Generator().manual_seed(2)
    changed = torch.rand(U, N, generator=g) < 0.2
    maps, units, images = [], [], []
    for u in range(U):  # each unit sees its own poisoned copy of the probe
        m, uu, ii = new_pairs(model, probe, "layer2", changed[u], noisy(changed[u], u),
                              clean.state.cut)
        keep = uu == u
        maps.append(m[keep]), units.append(uu[keep]), images.append(ii[keep])
    inc, inexact = redissect(clean, probe, changed, torch.cat(maps), torch.cat(units),
                             torch.cat(images))
    assert not inexact.any()
    for u in (0, 5, U - 1):
        full = dissect(model, "layer2", probe, CFG, transform=noisy(changed[u], u))
        assert_same(inc, full, units=slice(u, u + 1))


def test_units_subset_leaves_other_rows_untouched():
    probe, model = ToyProbe(30), ToyNet()
    clean = dissect(model, "layer2", probe, CFG, keep_state=True)
    changed = torch.zeros(len(probe), dtype=torch.bool)
    changed[:10] = True
    tf = noisy(changed)
    inc, _ = redissect(clean, probe, changed,
                       *new_pairs(model, probe, "layer2", changed, tf, clean.state.cut),
                       units=torch.tensor([1, 2]))
    full = dissect(model, "layer2", probe, CFG, transform=tf)
    assert_same(inc, full, units=slice(1, 3))
    assert_same(inc, clean, units=slice(3, None))


class _Quantise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 32) / 32


class CoarseNet(ToyNet):
    """ToyNet whose layer2 outputs lie on a grid of 1/32: many activations tie with the
    threshold, and upsampled pixels of flat regions equal it exactly — the boundary cases
    of the strict ``>`` of a mask."""

    def __init__(self) -> None:
        super().__init__()
        self.layer2 = torch.nn.Sequential(*self.layer2, _Quantise())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.05, 0.2])
def test_delta_tally_is_exact_when_pixels_sit_on_the_thresholds(seed, share):
    """The incremental tally re-tallies only pairs with a pixel between the old and the new
    threshold; with ties on the grid, a pixel equal to either threshold must be counted on
    the right side of the strict ``>``."""
    probe, model = ToyProbe(40), CoarseNet()
    clean = dissect(model, "layer2", probe, CFG, keep_state=True)
    table = clean.state.pixels
    assert table is not None
    assert (table.value == clean.thresholds[clean.state.units[table.pair]]).any()  # ties occur
    changed = torch.rand(len(probe), generator=torch.Generator().manual_seed(seed)) < share
    tf = noisy(changed, seed)
    full = dissect(model, "layer2", probe, CFG, transform=tf)
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(model, probe, "layer2", changed, tf, clean.state.cut))
    assert_same(inc, full, ~inexact)


class _Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.round(x.mean(dim=(2, 3), keepdim=True) * 64) / 64).expand_as(x)


class FlatNet(ToyNet):
    """ToyNet whose layer2 maps are constant per image (on a grid of 1/64): an upsampled
    pixel equals its raw value, the threshold lands on some image's value, and a mask is all
    or nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.layer2 = torch.nn.Sequential(*self.layer2, _Flatten())


@pytest.mark.parametrize("seed", range(6))
def test_delta_tally_counts_a_pixel_equal_to_a_raised_threshold(seed):
    """A threshold raised onto an unchanged image's (flat) value empties that image's mask:
    its pixels lie exactly at the new threshold, none strictly between the two."""
    probe, model, cfg = ToyProbe(40), FlatNet(), DissectConfig(eta=0.05, batch_size=7)
    clean = dissect(model, "layer2", probe, cfg, keep_state=True)
    changed = torch.rand(len(probe), generator=torch.Generator().manual_seed(seed)) < 0.3
    tf = noisy(changed, seed)
    full = dissect(model, "layer2", probe, cfg, transform=tf)
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(model, probe, "layer2", changed, tf, clean.state.cut))
    assert_same(inc, full, ~inexact)


def test_delta_and_full_retally_agree():
    """The two tally paths of redissect (delta with the above-cut pixels; full re-tally when
    they were over budget) give the same result."""
    import dataclasses

    probe, model = ToyProbe(40), ToyNet()
    clean = dissect(model, "layer2", probe, CFG, keep_state=True)
    changed = torch.rand(len(probe), generator=torch.Generator().manual_seed(3)) < 0.2
    tf = noisy(changed)
    pairs = new_pairs(model, probe, "layer2", changed, tf, clean.state.cut)
    delta, _ = redissect(clean, probe, changed, *pairs)
    no_above = dataclasses.replace(clean, state=dataclasses.replace(clean.state, pixels=None))
    full, _ = redissect(no_above, probe, changed, *pairs)
    assert_same(delta, full)
    assert not torch.equal(delta.thresholds, clean.thresholds)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=30),
       st.lists(st.integers(0, 5), min_size=2, max_size=30))
def test_order_key_sorts_as_unit_then_value(values, units):
    """The PixelTable's search key orders entries by unit, then by float value, with equal
    floats (−0.0 and +0.0 too) equal — what lets one binary search find a threshold band."""
    from nemaudit.explain.netdissect.dissect import _order_key

    n = min(len(values), len(units))
    v = torch.tensor(values[:n], dtype=torch.float32)
    u = torch.tensor(units[:n])
    k = _order_key(u, v)
    for i in range(n):
        for j in range(n):
            assert (k[i] < k[j]) == ((u[i], v[i]) < (u[j], v[j]))
            assert (k[i] == k[j]) == (bool(u[i] == u[j]) and bool(v[i] == v[j]))
    assert _order_key(torch.tensor([0]), torch.tensor([-0.0])) == \
        _order_key(torch.tensor([0]), torch.tensor([0.0]))


@pytest.fixture(scope="module")
def toy_state():
    probe, model = ToyProbe(30), ToyNet()
    return probe, dissect(model, "layer1", probe, CFG, keep_state=True)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 1.0), st.booleans())
def test_pixel_table_tally_equals_tallying_the_maps(toy_state, q, on_an_entry):
    """A pair's mask at T is its entries with value > T (strictly): the table's prefix search
    must give the tally of upsampling and thresholding the cached maps, also when T is
    exactly an entry's value (that pixel is out)."""
    from nemaudit.explain.netdissect.dissect import tally_cached_pairs
    from nemaudit.explain.netdissect.tally import IoUTally

    probe, clean = toy_state
    s, table = clean.state, clean.state.pixels
    n_units = clean.units
    values_by_unit = [table.value[s.units[table.pair] == u] for u in range(n_units)]
    t = s.cut.clone()
    for u, vals in enumerate(values_by_unit):
        if vals.numel():
            v = vals.sort().values[int(q * (vals.numel() - 1))]
            t[u] = v if on_an_entry else (v + s.cut[u]) / 2
    t = torch.maximum(t, s.cut)
    lab_cat = clean.label_category()
    shape = (n_units, clean.tally.both.shape[1], clean.tally.unit_cat.shape[1])
    a, b = IoUTally.zeros(*shape, "cpu"), IoUTally.zeros(*shape, "cpu")
    table.tally(torch.ones(s.units.shape[0], dtype=torch.bool), s.units, t, lab_cat, a)
    tally_cached_pairs(s.maps, s.units, s.images, t, probe, 7, lab_cat, b, torch.device("cpu"))
    for name in ("both", "unit_cat", "unit_pixels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if q < 0.5:
        assert int(a.unit_pixels.sum()) > 0  # not a vacuous comparison of empty masks
