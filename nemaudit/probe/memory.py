"""Hold a probe in memory, compactly, so repeated passes (corruption sweeps, per-unit
attacks, benchmarks) do not pay for decoding or generating images again.

Images are stored as uint8 when every pixel is exactly k/255 (as decoded 8-bit images are),
else as float32: the stored probe is always bit-identical to the source. Labels are stored
in the narrowest integer type that holds the concept ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from nemaudit.probe.base import ProbeBatch, ProbeDataset, ProbeItem, collate


def pack(item: ProbeItem, concepts: int) -> tuple:
    """An item, compactly and bit-identically: the image as uint8 when every pixel is
    exactly k/255, else float32; the label maps in the narrowest integer type."""
    uint8 = bool(((item.image * 255).round() / 255 == item.image).all())
    img = (item.image * 255).round().to(torch.uint8) if uint8 else item.image.float()
    pix = item.pixel_labels.to(torch.int16 if concepts < 2**15 else torch.int32)
    return img, pix, item.image_labels, item.target


def unpack(packed: tuple, index: int) -> ProbeItem:
    """The item :func:`pack` stored."""
    img, pix, scal, target = packed
    return ProbeItem(img.float() / 255 if img.dtype == torch.uint8 else img, pix.long(), scal,
                     index, target)


def packed_bytes(packed: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in packed[:2])


class InMemoryProbe(ProbeDataset):
    """A bit-identical in-memory copy of ``source`` (or of its first ``n`` items)."""

    def __init__(self, source: ProbeDataset, n: int | None = None) -> None:
        self.source_name = getattr(source, "name", "probe")
        self.name = self.source_name
        self.concepts = list(source.concepts)
        self.seg_size = source.seg_size
        self.class_names = getattr(source, "class_names", None)
        self._fingerprint = source.fingerprint()
        n = len(source) if n is None else min(n, len(source))
        self._items = [pack(source[i], self.num_concepts) for i in range(n)]
        if n < len(source):
            self._fingerprint += f":first{n}"

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> ProbeItem:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        return unpack(self._items[i], i)

    def fingerprint(self, samples: int = 32) -> str:
        return self._fingerprint


class MemoProbe(ProbeDataset):
    """``source`` with each item kept (compactly, bit-identical) the first time it is read,
    up to ``budget_mb``: the decoded-probe cache of a run. Every audit passes over the probe
    several times (clean dissection, corrupted side, predictions, per-unit attacks); a
    rendered concept-world image costs more than its forward pass, a decoded Broden PNG
    about as much, so those passes read memory instead. Items past the budget are read from
    the source each time. Anything else (``kind``, ``root``, …) is the source's."""

    def __init__(self, source: ProbeDataset, budget_mb: float = 1024.0) -> None:
        self.source = source
        self.name = getattr(source, "name", "probe")
        self.concepts = list(source.concepts)
        self.seg_size = source.seg_size
        self.class_names = getattr(source, "class_names", None)
        self.budget = float(budget_mb) * 2**20
        self.nbytes = 0
        self._items: dict[int, tuple] = {}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name: str):
        if name == "source":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)

    def __getitem__(self, i: int) -> ProbeItem:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        hit = self._items.get(i)
        if hit is not None:
            return unpack(hit, i)
        it = self.source[i]
        if self.nbytes < self.budget:  # else do not even pack it
            self.keep(i, pack(it, self.num_concepts))
        return it

    def fingerprint(self, samples: int = 32) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint(samples)
        return self._fingerprint

    def missing(self, indices: Sequence[int]) -> list[int]:
        """The ``indices`` not kept yet."""
        return [i for i in indices if i % len(self) not in self._items]

    def worker_loader(self, indices: Sequence[int], batch_size: int, num_workers: int,
                      pin_memory: bool = False) -> Iterable[ProbeBatch]:
        """Batches of ``indices`` in order, the source decoded by ``num_workers`` worker
        processes: the workers read and :func:`pack` items, this process keeps them (a
        worker's own copy of the memo would be lost with it) and collates them."""
        return _FillingLoader(self, list(indices), batch_size, num_workers, pin_memory)

    def keep(self, i: int, packed: tuple) -> None:
        """Keep item ``i`` (packed) while within the budget."""
        if i not in self._items and self.nbytes < self.budget:
            self._items[i] = packed
            self.nbytes += packed_bytes(packed)


class _PackedItems(Dataset):
    """Worker side of :class:`_FillingLoader`: ``(index, packed item)``, from the memo when it
    already held the item (as of the workers' start), else read from the source and packed."""

    def __init__(self, memo: MemoProbe, indices: list[int]) -> None:
        self.memo, self.indices = memo, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, tuple]:
        i = self.indices[k]
        hit = self.memo._items.get(i)
        return i, hit if hit is not None else pack(self.memo.source[i], self.memo.num_concepts)


class _FillingLoader:
    """:meth:`MemoProbe.worker_loader`'s batches (iterable more than once, like a
    DataLoader)."""

    def __init__(self, memo: MemoProbe, indices: list[int], batch_size: int, workers: int,
                 pin_memory: bool) -> None:
        self.memo, self.indices, self.batch_size = memo, indices, batch_size
        self.workers, self.pin = workers, pin_memory

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[ProbeBatch]:
        n = len(self.memo)
        data = _PackedItems(self.memo, [i % n for i in self.indices])
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=False,
                            collate_fn=list, num_workers=self.workers, prefetch_factor=4)
        for rows in loader:
            for i, packed in rows:
                self.memo.keep(i, packed)
            batch = collate([unpack(packed, i) for i, packed in rows])
            yield batch.pin_memory() if self.pin else batch
