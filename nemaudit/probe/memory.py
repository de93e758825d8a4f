"""Hold a probe in memory, compactly, so repeated passes (corruption sweeps, per-unit
attacks, benchmarks) do not pay for decoding or generating images again.

Images are stored as uint8 when every pixel is exactly k/255 (as decoded 8-bit images are),
else as float32: the stored probe is always bit-identical to the source. Labels are stored
in the narrowest integer type that holds the concept ids.
"""

from __future__ import annotations

import torch

from nemaudit.probe.base import ProbeDataset, ProbeItem


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
        if self.nbytes < self.budget:
            self._items[i] = pack(it, self.num_concepts)
            self.nbytes += packed_bytes(self._items[i])
        return it

    def fingerprint(self, samples: int = 32) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint(samples)
        return self._fingerprint
