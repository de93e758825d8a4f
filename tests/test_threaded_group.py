"""The group branches of dissection, the quantile merge and the audit, with ranks as threads
(:mod:`tests.threaded_dist`): every rank's result must equal one process's, exactly.

``tests/test_distributed.py`` checks the same over real gloo processes; these run in-process,
where mutation testing sees them, and reach cases the launched jobs do not (a cache that
overflows in a group, ragged quantile shards, two ranks claiming the same images).
"""

from __future__ import annotations

import pytest
import torch

from nemaudit import dist
from nemaudit.audit import AuditConfig, audit
from nemaudit.explain.common.quantile import TopQuantile, merge_across_ranks
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.model.load import NormalizedModel
from tests.test_distributed import _equal
from tests.test_metric_meanings import ColourNet, ColourProbe
from tests.test_nd_run_exact import _same_rows
from tests.threaded_dist import run_ranks
from tests.toys import ToyNet, ToyProbe

DC = DissectConfig(eta=0.02, batch_size=4)


def _pairs(st) -> dict[tuple[int, int], tuple]:
    """A kept state's cached pairs by (image, unit): map, max, and the pixel table's entries."""
    out = {}
    px = st.pixels
    for p in range(st.units.shape[0]):
        entries = None
        if px is not None:
            lo, hi = int(px.offsets[p]), int(px.offsets[p + 1])
            assert bool((px.pair[lo:hi] == p).all())
            entries = (px.value[lo:hi], px.labels[lo:hi], px.scalars[p])
        out[(int(st.images[p]), int(st.units[p]))] = (st.maps[p], st.maxes[p], entries)
    return out


def _clear_ids(q) -> torch.Tensor:
    """Per unit, the sorted ids of the kept values above the buffer's least one: those images
    are in any exact top-k; which of several tied values at the edge is kept is not fixed."""
    above = q.values > q.values.min(dim=1, keepdim=True).values
    return q.ids.masked_fill(~above, -1).sort(dim=1).values


def _same_values(a, b, what=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _same_values(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-9, nan_ok=True), what
    else:
        assert a == b, what


def _same_tensors(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_tensors(x, y, f"{what}[{i}]")
        return
    assert a.shape == b.shape and torch.equal(a, b), what


def assert_same_dissection(one, got, keep_state: bool) -> None:
    assert torch.equal(one.thresholds, got.thresholds)
    _equal(one.tally.state_dict(), got.tally.state_dict(), "tally")  # images, label too
    assert one.rows() == got.rows()
    assert got.meta["ranks"] > 1 and got.meta["cache_overflow"] == one.meta["cache_overflow"]
    if not keep_state:
        assert got.state is None
        return
    a, b = one.state, got.state
    assert torch.equal(a.cut, b.cut)
    assert a.quant.count == b.quant.count and a.quant.n_total == b.quant.n_total
    assert a.quant.slack == b.quant.slack
    assert torch.equal(a.quant.values.sort(1).values, b.quant.values.sort(1).values)
    assert torch.equal(_clear_ids(a.quant), _clear_ids(b.quant))
    if a.maps is None:
        assert b.maps is None and b.pixels is None
        return
    pa, pb = _pairs(a), _pairs(b)
    assert pa.keys() == pb.keys() and pa
    for key in pa:
        _same_tensors(pa[key], pb[key], key)
    assert torch.equal(a.pixels.key, b.pixels.key)


def _dissect_ranks(world, monkeypatch, n=24, config=DC, **kw):
    nets = [ToyNet() for _ in range(world)]  # built here: ToyNet seeds torch's global RNG
    return run_ranks(world, lambda rank: dissect(nets[rank], "layer2", ToyProbe(n), config, **kw),
                     monkeypatch)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("keep_state", [True, False])
def test_threaded_dissection_equals_one_process(world, keep_state, monkeypatch):
    one = dissect(ToyNet(), "layer2", ToyProbe(24), DC, keep_state=keep_state)
    res = _dissect_ranks(world, monkeypatch, keep_state=keep_state)
    for rank, got in enumerate(res):
        assert not isinstance(got, BaseException), (rank, got)
        assert got.meta["ranks"] == world
        assert_same_dissection(one, got, keep_state)


class WideNet(ToyNet):
    """ToyNet on the left 24 of 32 columns: its layer2 maps are 8×6, not square."""

    def forward(self, x):
        return super().forward(x[..., :24])


@pytest.mark.parametrize("keep_state", [True, False])
@pytest.mark.parametrize("net", [ToyNet, WideNet])
def test_a_rank_without_a_batch_takes_part_in_process(keep_state, net, monkeypatch):
    """6 images in batches of 4 over 3 ranks: rank 2 has no batch and reads the layer's
    shape (units, height, width) from one probe image."""
    one = dissect(net(), "layer2", ToyProbe(6), DC, keep_state=keep_state)
    nets = [net() for _ in range(3)]
    res = run_ranks(3, lambda r: dissect(nets[r], "layer2", ToyProbe(6), DC,
                                         keep_state=keep_state), monkeypatch)
    for got in res:
        assert not isinstance(got, BaseException), got
        assert_same_dissection(one, got, keep_state)
    if net is WideNet and keep_state:
        assert one.state.maps.shape[1:] == (8, 6)


def test_a_dissection_told_not_to_share_ignores_the_group(monkeypatch):
    """``distributed=False`` (what a rank does for its own units): the whole probe, no
    collective, the single-process result on every rank."""
    one = dissect(ToyNet(), "layer2", ToyProbe(24), DC, keep_state=True)
    for got in _dissect_ranks(2, monkeypatch, keep_state=True, distributed=False):
        assert "ranks" not in got.meta and got.meta == one.meta
        assert torch.equal(got.thresholds, one.thresholds)
        assert got.rows() == one.rows()
        assert torch.equal(got.state.maps, one.state.maps)


def test_ranks_agree_on_an_overflowing_cache(monkeypatch):
    """Only some ranks overflow their candidate cache; every rank then takes the second
    forward pass (and keeps no maps), as one process does."""
    cfg = DissectConfig(eta=0.02, batch_size=4, cache_budget_mb=1e-5)
    one = dissect(ToyNet(), "layer2", ToyProbe(24), cfg, keep_state=True)
    assert one.meta["cache_overflow"] and one.state.maps is None
    big = {0: 1e-5, 1: 512.0}  # rank 1 alone would have kept everything
    nets = [ToyNet(), ToyNet()]

    def job(rank):
        return dissect(nets[rank], "layer2", ToyProbe(24),
                       DissectConfig(eta=0.02, batch_size=4, cache_budget_mb=big[rank]),
                       keep_state=True)

    for got in run_ranks(2, job, monkeypatch):
        assert got.meta["cache_overflow"] is True
        assert_same_dissection(one, got, True)


def test_a_failing_rank_fails_the_others_with_its_error(monkeypatch):
    nets = [ToyNet() for _ in range(3)]

    def job(rank):
        if rank == 1:
            raise ValueError("rank one's own problem: image 7 is unreadable")
        return dissect(nets[rank], "layer2", ToyProbe(24), DC)

    res = run_ranks(3, job, monkeypatch)
    assert isinstance(res[1], ValueError)
    for r in (0, 2):
        assert isinstance(res[r], dist.DistributedError), res[r]
        # the first collective of a dissection is the quantile merge's
        assert str(res[r]) == (f"rank {r}/3: merging quantile buffers failed — rank 1 failed: "
                               "ValueError: rank one's own problem: image 7 is unreadable")


# --------------------------------------------------------------------------- quantile merge

def _state(vals: torch.Tensor, ids: torch.Tensor, n_total: int, slack: float = 1.0):
    """A quantile state fed the values ``vals [U, k]`` of images ``ids [k]``."""
    q = TopQuantile.empty(vals.shape[0], n_total, 0.9, slack=slack, track_ids=True)
    q.update(vals.T[:, :, None], ids)
    return q


@pytest.mark.parametrize("sizes", [(5, 5), (9, 1), (0, 4, 6), (3, 0, 0)])
def test_merge_across_ranks_is_the_state_of_the_whole(sizes, monkeypatch):
    """Ragged shards (some smaller than the buffer, some empty): every rank reads the state a
    single pass over all values gives, ids included."""
    g = torch.Generator().manual_seed(len(sizes) * 10 + sizes[0])
    n = sum(sizes)
    vals = torch.randn(3, n, generator=g)
    ids = torch.arange(n) * 7 + 3
    whole = _state(vals, ids, n, slack=1.5)
    cuts = torch.tensor([0, *sizes]).cumsum(0).tolist()

    def job(rank):
        a, b = cuts[rank], cuts[rank + 1]
        q = (_state(vals[:, a:b], ids[a:b], n, slack=1.5) if b > a else
             TopQuantile.empty(3, n, 0.9, slack=1.5, track_ids=True))
        return merge_across_ranks(q)

    for got in run_ranks(len(sizes), job, monkeypatch):
        assert not isinstance(got, BaseException), got
        assert got.count == n and got.n_total == n and got.slack == 1.5
        assert got.values.shape == whole.values.shape == (3, whole.capacity)
        order_w, order_g = whole.values.argsort(1), got.values.argsort(1)
        assert torch.equal(whole.values.gather(1, order_w), got.values.gather(1, order_g))
        assert torch.equal(whole.ids.gather(1, order_w), got.ids.gather(1, order_g))
        assert torch.equal(got.readout(), whole.readout())
        assert torch.allclose(got.readout(), torch.quantile(vals, 0.9, dim=1))


def test_merge_across_ranks_without_ids(monkeypatch):
    vals = torch.arange(12.0).reshape(2, 6)

    def job(rank):
        q = TopQuantile.empty(2, 6, 0.5)
        q.update(vals[:, rank * 3:rank * 3 + 3].T[:, :, None])
        return merge_across_ranks(q)

    for got in run_ranks(2, job, monkeypatch):
        assert got.ids is None and got.count == 6
        assert torch.equal(got.readout(), torch.quantile(vals, 0.5, dim=1))


def test_two_ranks_with_the_same_images_are_refused(monkeypatch):
    vals = torch.arange(8.0).reshape(2, 4)

    def job(rank):
        return merge_across_ranks(_state(vals[:, :3], torch.arange(3), 4))

    res = run_ranks(2, job, monkeypatch)
    assert all(isinstance(e, ValueError) for e in res), res
    assert "the ranks saw 6 values per unit, more than the declared 4: did two ranks take" in \
        str(res[0])


def test_merge_outside_a_group_is_the_identity():
    q = _state(torch.arange(6.0).reshape(2, 3), torch.arange(3), 3)
    assert merge_across_ranks(q) is q


# --------------------------------------------------------------------------- audits

@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("spec, kw, units", [
    ("gaussian:std=0.6,fraction=0.5,seed=1", {}, None),
    ("gaussian:std=0.6,fraction=0.5,seed=1", {"incremental": False}, None),
    ("pgd:eps=16/255,steps=2", {"unit_chunk": 2, "attack_batch": 6, "slack": 1.0,
                                "bootstrap": 10, "max_units": 5}, None),
])
def test_threaded_audit_equals_one_process(world, spec, kw, units, monkeypatch):
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=4), **kw)

    # built before the threads start: ToyNet seeds torch's global RNG
    models = [NormalizedModel(ColourNet().eval(), "none") for _ in range(world + 1)]

    def run(rank):
        return audit(models[rank], "model.net.layer2", ColourProbe(20), spec, cfg, units=units)

    one = run(world)
    for got in run_ranks(world, run, monkeypatch):
        assert not isinstance(got, BaseException), got
        _same_rows(one.rows, got.rows)
        assert got.meta["mode"] == one.meta["mode"]
        _same_values(one.metrics, got.metrics)
        assert torch.equal(one.corrupted.thresholds, got.corrupted.thresholds)
        _equal(one.corrupted.tally.state_dict(), got.corrupted.tally.state_dict(), "tally")
        if kw.get("bootstrap"):
            for k, v in one.probe_bootstrap.flags.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(
                    got.probe_bootstrap.flags[k])), k
