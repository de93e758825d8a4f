"""The probing-dataset contract shared by every loader (Broden, the concept world, folders).

Images are float tensors in [0, 1] *before* normalisation: corruptions act in pixel space
and normalisation belongs to the model wrapper. Labels follow Broden's conventions:

- concept ids are positive integers; 0 means "no label";
- pixel labels are a stack of label maps ``[L, h, w]`` at the segmentation resolution (a pixel
  may carry several labels: an object, a part, a colour, a material...);
- image-level labels (scene, texture) are a vector of ids that cover the whole image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

#: Broden's category order; loaders may use a subset or add categories.
BRODEN_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")


@dataclass(frozen=True)
class Concept:
    id: int
    name: str
    category: str  # the primary category: the one the concept is scored in


@dataclass
class ProbeItem:
    image: torch.Tensor  # [3, H, W] float32 in [0, 1]
    pixel_labels: torch.Tensor  # [L, h, w] int64, 0 = none (L may be 0)
    image_labels: torch.Tensor  # [S] int64 concept ids (S may be 0)
    index: int
    target: int = -1  # class label where the probe has one, else -1


@dataclass
class ProbeBatch:
    images: torch.Tensor  # [B, 3, H, W]
    pixel_labels: torch.Tensor  # [B, L, h, w], zero-padded along L
    image_labels: torch.Tensor  # [B, S], zero-padded along S
    indices: torch.Tensor  # [B] dataset indices
    targets: torch.Tensor  # [B] class labels, -1 where unknown

    def to(self, device: torch.device | str) -> ProbeBatch:
        non_blocking = self.images.is_pinned()
        return ProbeBatch(*(t.to(device, non_blocking=non_blocking)
                            for t in (self.images, self.pixel_labels, self.image_labels,
                                      self.indices, self.targets)))

    def pin_memory(self) -> ProbeBatch:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``)."""
        return ProbeBatch(*(t.pin_memory() for t in (self.images, self.pixel_labels,
                                                      self.image_labels, self.indices,
                                                      self.targets)))

    def __len__(self) -> int:
        return self.images.shape[0]


def collate(items: Sequence[ProbeItem]) -> ProbeBatch:
    """Stack items, zero-padding the label-map stack and the image-level label vector."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    h, w = items[0].pixel_labels.shape[-2:]
    n_layers = max(it.pixel_labels.shape[0] for it in items)
    n_scalar = max(it.image_labels.shape[0] for it in items)
    pix = torch.zeros(len(items), n_layers, h, w, dtype=torch.int64)
    img = torch.zeros(len(items), n_scalar, dtype=torch.int64)
    for i, it in enumerate(items):
        if it.pixel_labels.shape[-2:] != (h, w):
            raise ValueError(f"image {it.index}: label maps are {tuple(it.pixel_labels.shape[-2:])}, "
                             f"expected {(h, w)} like the rest of the probe")
        pix[i, : it.pixel_labels.shape[0]] = it.pixel_labels
        img[i, : it.image_labels.shape[0]] = it.image_labels
    return ProbeBatch(
        images=torch.stack([it.image for it in items]),
        pixel_labels=pix,
        image_labels=img,
        indices=torch.tensor([it.index for it in items], dtype=torch.int64),
        targets=torch.tensor([it.target for it in items], dtype=torch.int64),
    )


class ProbeDataset(Dataset):
    """Base class: subclasses fill ``concepts`` (index == id, ``concepts[0]`` is the
    placeholder for "no label"), ``seg_size`` and implement ``__len__``/``__getitem__``."""

    concepts: list[Concept]
    seg_size: tuple[int, int]
    name: str = "probe"
    class_names: list[str] | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> ProbeItem:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def categories(self) -> list[str]:
        seen: list[str] = []
        for c in self.concepts[1:]:
            if c.category not in seen:
                seen.append(c.category)
        order = {c: i for i, c in enumerate(BRODEN_CATEGORIES)}
        return sorted(seen, key=lambda c: (order.get(c, len(order)), c))

    @property
    def num_concepts(self) -> int:
        """Size of the id space, including the placeholder id 0."""
        return len(self.concepts)

    def category_matrix(self) -> torch.Tensor:
        """``[num_concepts, num_categories]`` one-hot of each concept's primary category
        (row 0, "no label", is all zero)."""
        cats = self.categories
        m = torch.zeros(self.num_concepts, len(cats))
        for c in self.concepts[1:]:
            m[c.id, cats.index(c.category)] = 1.0
        return m

    def concept_id(self, name: str) -> int:
        """Look a concept up by name (or ``name-category``), with the valid names on failure."""
        for c in self.concepts[1:]:
            if name in (c.name, f"{c.name}-{c.category}"):
                return c.id
        valid = ", ".join(c.name for c in self.concepts[1:])
        raise KeyError(f"unknown concept {name!r}; this probe has: {valid}")

    def fingerprint(self, samples: int = 32) -> str:
        """A content hash used to key caches. Loaders that know what defines their content
        (files, seeds) override this; the default hashes the concept table, the size and the
        tensors of up to ``samples`` evenly spaced items, so two probes that differ only in
        their constructor arguments do not share a cached baseline."""
        h = hashlib.sha256()
        h.update(repr([(c.id, c.name, c.category) for c in self.concepts]).encode())
        h.update(repr((len(self), tuple(self.seg_size), self.name, type(self).__qualname__)).encode())
        n = len(self)
        for i in sorted({(k * n) // samples for k in range(min(samples, n))}):
            it = self[i]
            for t in (it.image, it.pixel_labels, it.image_labels):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update(str(it.target).encode())
        return h.hexdigest()[:16]


def check_concepts(concepts: Sequence[Concept]) -> None:
    """Ids must equal list positions, with the 0 placeholder first."""
    for i, c in enumerate(concepts):
        if c.id != i:
            raise ValueError(f"concept table out of order: position {i} holds id {c.id}")
