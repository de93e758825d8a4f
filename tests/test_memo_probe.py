"""MemoProbe (the Auditor's decoded-probe cache): items read again are bit-identical to the
source's, the budget caps what is kept, and the source's own attributes show through."""

from __future__ import annotations

import torch

from nemaudit.probe.memory import InMemoryProbe, MemoProbe
from nemaudit.probe.synthetic import SyntheticProbe


def _same(a, b) -> bool:
    return (torch.equal(a.image, b.image) and a.image.dtype == b.image.dtype
            and torch.equal(a.pixel_labels, b.pixel_labels)
            and a.pixel_labels.dtype == b.pixel_labels.dtype
            and torch.equal(a.image_labels, b.image_labels)
            and (a.index, a.target) == (b.index, b.target))


def test_a_second_read_is_the_sources_item_bit_for_bit():
    src = SyntheticProbe(6, seed=1)
    memo = MemoProbe(src)
    first = [memo[i] for i in range(6)]
    assert len(memo._items) == 6 and memo.nbytes > 0
    for i in range(6):
        assert _same(memo[i], src[i]) and _same(first[i], src[i])
    assert _same(memo[-1], src[5])


def test_the_budget_caps_what_is_kept_and_attributes_show_through():
    src = SyntheticProbe(4, seed=2)
    memo = MemoProbe(src, budget_mb=0)
    assert _same(memo[1], src[1]) and memo._items == {} and memo.nbytes == 0
    assert memo.kind(3) == src.kind(3) and memo.seed == 2
    assert memo.fingerprint() == src.fingerprint() and memo.categories == src.categories
    assert len(memo) == 4


def test_in_memory_probe_shares_the_packing():
    src = SyntheticProbe(3, seed=0)
    mem = InMemoryProbe(src)
    assert all(_same(mem[i], src[i]) for i in range(3))
    assert mem._items[0][0].dtype == torch.uint8  # 8-bit images are kept as bytes


def test_worker_decoded_batches_are_the_sources_and_are_kept_here():
    """Workers decode and pack; this process keeps the items (a worker's memo would die with
    it), so the next pass needs no worker and reads the same bits."""
    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.probe.memory import _FillingLoader

    src = SyntheticProbe(10, seed=3)
    memo = MemoProbe(src)
    want = list(probe_loader(src, 4, indices=[7, 1, 2, 9, 0]))
    loader = probe_loader(memo, 4, indices=[7, 1, 2, 9, 0], num_workers=2)
    assert isinstance(loader, _FillingLoader) and len(loader) == 2
    got = list(loader)
    assert sorted(memo._items) == [0, 1, 2, 7, 9] and memo.missing([0, 1, 2, 3]) == [3]
    part = MemoProbe(src)
    _ = part[1], part[9]  # a memo holding some of the items: workers send those as kept
    mixed = list(probe_loader(part, 4, indices=[7, 1, 2, 9, 0], num_workers=2))
    assert sorted(part._items) == [0, 1, 2, 7, 9]
    again = probe_loader(memo, 4, indices=[7, 1, 2, 9, 0], num_workers=2)
    assert not isinstance(again, _FillingLoader)  # all in memory: a plain in-process loader
    for w, g, a, m in zip(want, got, list(again), mixed, strict=True):
        for name in ("images", "pixel_labels", "image_labels", "indices", "targets"):
            x, y, z, v = getattr(w, name), getattr(g, name), getattr(a, name), getattr(m, name)
            assert torch.equal(x, y) and torch.equal(x, z) and torch.equal(x, v), name
            assert x.dtype == y.dtype == v.dtype, name
