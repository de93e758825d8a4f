"""MILAN exemplars' parts value by value: settings, rows, subsets and concatenation, image
loading through a transform, the running top-d's refusals, the default candidate depth, the
second pass with a unit selection, and the exactness flags of the incremental update."""

from __future__ import annotations

import pytest
import torch

from nemaudit.explain.milan.exemplars import (
    ExemplarConfig,
    Exemplars,
    TopExemplars,
    _masks,
    compute_exemplars,
    update_exemplars,
)
from nemaudit.probe.base import ProbeBatch
from tests.helpers import raises_exactly
from tests.test_milan_exemplars import ActsProbe, Identity, _assert_equals_brute_force

torch.set_num_threads(1)


def _acts(n: int = 12, u: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, u, 3, 3, generator=torch.Generator().manual_seed(seed)) * 2


def test_config_as_dict_and_its_quantile_level():
    assert ExemplarConfig().as_dict() == {"k": 15, "eta": 0.01, "quantile_level": 0.99}
    assert ExemplarConfig(k=3, eta=0.1).as_dict() == {"k": 3, "eta": 0.1,
                                                      "quantile_level": 0.9}
    assert ExemplarConfig(eta=0.1, quantile_level=0.5).level == 0.5


def test_rows_are_the_units_thresholds_exemplars_and_maxes():
    ex = compute_exemplars(Identity(), "feat", ActsProbe(_acts(), (6, 6)), ExemplarConfig(k=3),
                           units=[3, 1])
    assert ex.rows() == [{"unit": u, "threshold": t, "exemplars": i, "maxes": m}
                         for u, t, i, m in zip([3, 1], ex.thresholds.tolist(),
                                               ex.indices.tolist(), ex.maxes.tolist())]
    assert isinstance(ex.rows()[0]["unit"], int)
    assert ex.state is None  # no incremental state unless asked for


def _with_pixels(ex: Exemplars) -> Exemplars:
    pix = torch.rand(len(ex), ex.k, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    return Exemplars(ex.layer, ex.units, ex.indices, ex.maxes, ex.masks, ex.thresholds,
                     None, None, pix, ex.state, ex.config, ex.device)


def test_subset_takes_every_row_field():
    acts = _acts()
    ex = compute_exemplars(Identity(), "feat", ActsProbe(acts, (6, 6)), ExemplarConfig(k=3),
                           keep_state=True)
    sub = ex.subset([2, 0])
    for name in ("units", "indices", "maxes", "masks", "thresholds"):
        assert torch.equal(getattr(sub, name), getattr(ex, name)[[2, 0]]), name
    assert sub.state is None and ex.state is not None and sub.pixels is None
    assert sub.probe is ex.probe
    own = _with_pixels(ex)
    assert torch.equal(own.subset([1]).pixels, own.pixels[[1]])
    assert torch.equal(own.subset([1]).images(), own.pixels[[1]])


def test_concat_joins_rows_and_layer_names_and_refuses_other_probes():
    probe = ActsProbe(_acts(), (6, 6))
    a = compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=3), units=[0, 1],
                          keep_state=True)
    b = compute_exemplars(Identity(), "feat", probe, ExemplarConfig(k=3), units=[3])
    b.layer = "other"
    both = Exemplars.concat([a, b])
    assert both.layer == "feat,other" and both.state is None
    for name in ("units", "indices", "maxes", "masks", "thresholds"):
        assert torch.equal(getattr(both, name), torch.cat([getattr(a, name), getattr(b, name)]))
    msg = "can only concatenate exemplars read from the same probe"
    elsewhere = compute_exemplars(Identity(), "feat", ActsProbe(_acts(), (6, 6)),
                                  ExemplarConfig(k=3), units=[3])
    with raises_exactly(ValueError, msg):
        Exemplars.concat([a, elsewhere])
    with raises_exactly(ValueError, msg):
        Exemplars.concat([a, _with_pixels(b)])


def test_images_are_loaded_through_the_transform_on_its_device():
    acts = _acts()
    seen: list[torch.device] = []

    def transform(batch: ProbeBatch) -> torch.Tensor:
        seen.append(batch.images.device)
        return batch.images * 0.5

    for device in (torch.device("cpu"), None):
        ex = compute_exemplars(Identity(), "feat", ActsProbe(acts, (6, 6)), ExemplarConfig(k=3),
                               transform=transform)
        ex.device = device
        got = ex.images([1, 3], first=2)
        want = torch.stack([acts[ex.indices[r, :2]] * 0.5 for r in (1, 3)])
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert seen and all(d.type == "cpu" for d in seen)
    ex.probe = None
    with raises_exactly(ValueError, "these exemplars carry no probe to read images from"):
        ex.load([0])


def test_an_empty_top_and_the_merge_refusals():
    top = TopExemplars.empty(3, 4)
    assert top.values.shape == (3, 0) and top.indices.shape == (3, 0)
    assert top.indices.dtype == torch.int64 and top.maps.shape == (3, 0, 0, 0)
    assert TopExemplars.empty(3, 4, keep_maps=False).maps is None
    msg = "can only merge exemplar states of the same depth and kind"
    with raises_exactly(ValueError, msg):
        top.merge(TopExemplars.empty(3, 5))
    with raises_exactly(ValueError, msg):
        top.merge(TopExemplars.empty(3, 4, keep_maps=False))
    acts, idx = _acts(10, 3), torch.arange(10)
    a, b, whole = (TopExemplars.empty(3, 4, keep_maps=False) for _ in range(3))
    a.update(acts[:4], idx[:4])
    b.update(acts[4:], idx[4:])
    whole.update(acts, idx)
    merged = a.merge(b)
    assert merged.indices.shape == (3, 4) and whole.values.shape == (3, 4)  # bounded by depth
    assert merged.maps is None and torch.equal(merged.indices, whole.indices)
    assert torch.equal(merged.values, whole.values)


def test_masks_of_one_unit_and_one_exemplar_and_of_none():
    maps = torch.tensor([[[[0.0, 2.0], [1.0, 3.0]]]])  # [1, 1, 2, 2]
    got = _masks(maps, torch.tensor([1.5]), (2, 2))
    assert got.tolist() == [[[[False, True], [False, True]]]]
    none = _masks(torch.zeros(0, 3, 2, 2), torch.zeros(0), (4, 5))
    assert none.shape == (0, 3, 4, 5) and none.dtype == torch.bool


@pytest.mark.parametrize("n,depth,want", [(25, None, 8), (25, 3, 4), (25, 11, 11), (6, None, 6)])
def test_kept_candidates_default_to_2k(n, depth, want):
    ex = compute_exemplars(Identity(), "feat", ActsProbe(_acts(n, 2), (3, 3)),
                           ExemplarConfig(k=4, batch_size=5), keep_state=True, depth=depth)
    assert ex.state.top.depth == want and ex.state.top.indices.shape == (2, want)
    assert ex.state.n_images == n


def test_the_second_pass_reads_the_selected_units_through_the_transform():
    acts = _acts(14, 5)
    probe = ActsProbe(acts, (6, 6))

    def transform(batch: ProbeBatch) -> torch.Tensor:
        return batch.images.flip(-1) * 1.5 - 0.2

    kw = dict(units=[4, 1], transform=transform)
    kept = compute_exemplars(Identity(), "feat", probe,
                             ExemplarConfig(k=3, eta=0.5, batch_size=4), **kw)
    again = compute_exemplars(Identity(), "feat", probe,
                              ExemplarConfig(k=3, eta=0.5, batch_size=4, maps_budget_mb=0.0),
                              **kw)
    for name in ("indices", "maxes", "masks", "thresholds"):
        assert torch.equal(getattr(again, name), getattr(kept, name)), name
    assert 0.2 < float(kept.masks.float().mean()) < 0.9  # masks that can tell maps apart


def test_update_without_state_is_refused():
    ex = compute_exemplars(Identity(), "feat", ActsProbe(_acts(), (6, 6)), ExemplarConfig(k=3))
    with raises_exactly(ValueError, "the clean exemplars kept no state: "
                            "compute_exemplars(keep_state=True)"):
        update_exemplars(ex, [0], torch.zeros(1, 12, dtype=torch.bool), torch.zeros(0, 3, 3),
                         torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))


def test_update_is_exact_when_the_state_holds_every_image():
    """Depth = the probe's size and buffers holding every activation: even sinking all of a
    unit's top images leaves the kept state exact (no recomputation flagged)."""
    n, k = 6, 4
    acts = _acts(n, 3, seed=7)
    cfg = ExemplarConfig(k=k, batch_size=4)
    clean = compute_exemplars(Identity(), "feat", ActsProbe(acts, (4, 6)), cfg,
                              keep_state=True, slack=100.0)
    assert clean.state.top.depth == n
    rows = [0, 2]
    changed = torch.zeros(2, n, dtype=torch.bool)
    new_maps, new_rows, new_images, poisoned = [], [], [], []
    for i, r in enumerate(rows):
        imgs = clean.indices[r, :k]  # every exemplar sinks below the rest
        changed[i, imgs] = True
        m = acts[imgs, r] * 0.01
        new_maps.append(m)
        new_rows += [i] * k
        new_images.append(imgs)
        mod = acts.clone()
        mod[imgs, r] = m
        poisoned.append(mod)
    clean.transform = lambda batch: batch.images  # what the update must not carry over
    clean.pixels = torch.zeros(3, k, 3, 4, 4)
    out, inexact = update_exemplars(clean, rows, changed, torch.cat(new_maps),
                                    torch.tensor(new_rows), torch.cat(new_images))
    assert inexact.tolist() == [False, False]
    _assert_equals_brute_force(out, rows, cfg, poisoned)
    assert out.units.tolist() == rows and out.state is None and out.pixels is None
    assert out.transform is None


def test_only_the_rows_that_lost_their_candidates_are_flagged():
    """No spare candidate (depth = k): a row whose exemplars all sank cannot be re-ranked
    from the kept state, a row whose images did not change can; each is judged alone."""
    n, k = 12, 3
    acts = _acts(n, 2, seed=9)
    clean = compute_exemplars(Identity(), "feat", ActsProbe(acts, (4, 6)),
                              ExemplarConfig(k=k, batch_size=5), keep_state=True, depth=k,
                              slack=100.0)
    sunk = clean.indices[0]
    changed = torch.zeros(2, n, dtype=torch.bool)
    changed[0, sunk] = True
    _, inexact = update_exemplars(clean, [0, 1], changed, acts[sunk, 0] * 0.01,
                                  torch.zeros(k, dtype=torch.int64), sunk)
    assert inexact.tolist() == [True, False]
