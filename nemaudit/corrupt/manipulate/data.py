"""What a fooling fine-tunes and is measured on: images with class labels, in memory.

A probe becomes a :class:`LabelledImages` (float images in [0, 1] and class labels): the
probe's own class targets where it has them, else the *original* model's top-1 predictions
(so a probe without labels, e.g. Broden, still gives the cross-entropy term something to
keep — the paper's CE on ImageNet labels plays that role). Active fooling's D_fool images
hold two classes each (:func:`two_class_images`): four half-size tiles, two of each class, in
a random arrangement, as the paper concatenates two ImageNet images "not fixed in location".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.errors import SpecError


@dataclass
class LabelledImages:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    labels: torch.Tensor  # [N] long
    indices: torch.Tensor  # [N] probe indices
    #: "probe" (the probe's class targets) or "predicted" (the original model's top-1)
    label_source: str = "probe"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, n: int | None) -> LabelledImages:
        if n is None or n >= len(self):
            return self
        return LabelledImages(self.images[:n], self.labels[:n], self.indices[:n],
                              self.label_source)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``images`` in batches, on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def labelled_images(probe, original: nn.Module, indices: Sequence[int] | None = None, *,
                    batch_size: int = 64) -> LabelledImages:
    """The probe's images (or those at ``indices``) with class labels, in memory."""
    from nemaudit.explain.common.activations import probe_loader

    images, targets, idx = [], [], []
    for batch in probe_loader(probe, batch_size, indices):
        images.append(batch.images.float())
        targets.append(batch.targets.long())
        idx.append(batch.indices.long())
    x, y, i = torch.cat(images), torch.cat(targets), torch.cat(idx)
    logits = predict(original, x, batch_size)
    if logits.dim() != 2:
        raise SpecError(f"the model must return class logits [batch, classes]; it returned "
                        f"shape {tuple(logits.shape)} (no classification output)")
    if bool((y >= logits.shape[1]).any()):
        raise SpecError(f"the probe's class targets go up to {int(y.max())} but the model has "
                        f"{logits.shape[1]} classes")
    source = "probe"
    if bool((y < 0).any()):
        y = torch.where(y < 0, logits.argmax(1), y)
        source = "predicted"
    return LabelledImages(x, y, i, source)


def split(n: int, held_out_share: float = 0.25) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of a probe of ``n`` images: every k-th image held out."""
    step = max(2, round(1 / held_out_share))
    held = list(range(0, n, step))
    train = [i for i in range(n) if i % step]
    return train, held


def two_class_images(data: LabelledImages, c1: int, c2: int, n: int, seed: int
                     ) -> torch.Tensor:
    """``n`` images ``[n, 3, H, W]``, each a 2×2 grid of half-size tiles: two images of
    class ``c1`` and two of ``c2`` (drawn from ``data``), tiles placed at random."""
    a = (data.labels == c1).nonzero().flatten()
    b = (data.labels == c2).nonzero().flatten()
    if len(a) < 2 or len(b) < 2:
        raise SpecError(f"active fooling needs at least 2 images of each class; the training "
                        f"images hold {len(a)} of class {c1} and {len(b)} of class {c2}")
    g = torch.Generator().manual_seed(seed)
    _, _, hh, ww = data.images.shape
    th, tw = hh // 2, ww // 2
    pick_a = a[torch.randint(len(a), (n, 2), generator=g)]
    pick_b = b[torch.randint(len(b), (n, 2), generator=g)]
    tiles = torch.cat([pick_a, pick_b], 1)  # [n, 4] image indices, 2 of each class
    place = torch.rand(n, 4, generator=g).argsort(1)  # tile t goes to slot place[:, t]
    small = F.interpolate(data.images[tiles.flatten()], size=(th, tw), mode="area")
    small = small.reshape(n, 4, 3, th, tw)
    order = place.argsort(1)  # slot s holds tile order[:, s]
    slots = small.gather(1, order[:, :, None, None, None].expand(-1, -1, 3, th, tw))
    top = torch.cat([slots[:, 0], slots[:, 1]], 3)
    bottom = torch.cat([slots[:, 2], slots[:, 3]], 3)
    out = torch.cat([top, bottom], 2)
    if out.shape[2:] != (hh, ww):
        out = F.interpolate(out, size=(hh, ww), mode="bilinear", align_corners=False)
    return out


def class_index(value: str | int, class_names: Sequence[str] | None, n_classes: int) -> int:
    """A class given by index or (for models that name them) by name."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
    else:
        names = list(class_names or [])
        if value not in names:
            shown = ", ".join(names[:40]) if names else "(this model names no classes)"
            raise SpecError(f"unknown class {value!r}; classes: {shown}")
        i = names.index(value)
    if not 0 <= i < n_classes:
        raise SpecError(f"class index {i} out of range: the model has {n_classes} classes")
    return i
