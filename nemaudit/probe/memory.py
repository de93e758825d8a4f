"""Hold a probe in memory, compactly, so repeated passes (corruption sweeps, per-unit
attacks, benchmarks) do not pay for decoding or generating images again.

Images are stored as uint8 when every pixel is exactly k/255 (as decoded 8-bit images are),
else as float32: the stored probe is always bit-identical to the source. Labels are stored
in the narrowest integer type that holds the concept ids.
"""

from __future__ import annotations

import torch

from nemaudit.probe.base import ProbeDataset, ProbeItem


def _compact_labels(t: torch.Tensor, concepts: int) -> torch.Tensor:
    return t.to(torch.int16 if concepts < 2**15 else torch.int32)


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
        items = [source[i] for i in range(n)]
        self._uint8 = all(bool(((it.image * 255).round() / 255 == it.image).all()) for it in items)
        if self._uint8:
            self._images = [(it.image * 255).round().to(torch.uint8) for it in items]
        else:
            self._images = [it.image.float() for it in items]
        self._pixel = [_compact_labels(it.pixel_labels, self.num_concepts) for it in items]
        self._scalar = [it.image_labels for it in items]
        self._targets = [it.target for it in items]
        if n < len(source):
            self._fingerprint += f":first{n}"

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> ProbeItem:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        img = self._images[i]
        img = img.float() / 255 if self._uint8 else img
        return ProbeItem(img, self._pixel[i].long(), self._scalar[i], i, self._targets[i])

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
            img, pix, scal, target, uint8 = hit
            return ProbeItem(img.float() / 255 if uint8 else img, pix.long(), scal, i, target)
        it = self.source[i]
        if self.nbytes < self.budget:
            uint8 = bool(((it.image * 255).round() / 255 == it.image).all())
            img = (it.image * 255).round().to(torch.uint8) if uint8 else it.image.float()
            pix = _compact_labels(it.pixel_labels, self.num_concepts)
            self._items[i] = (img, pix, it.image_labels, it.target, uint8)
            self.nbytes += img.numel() * img.element_size() + pix.numel() * pix.element_size()
        return it

    def fingerprint(self, samples: int = 32) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.source.fingerprint(samples)
        return self._fingerprint
