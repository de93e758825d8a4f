"""Incremental re-dissection must equal a full recompute, exactly."""

from __future__ import annotations

import pytest
import torch

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
