"""The Network Dissection IoU tally: integer counts that add across shards.

For unit u and concept c of category k(c) (DESIGN.md, "Facts from the reference"):

    IoU[u, c] = both[u, c] / (unit_cat[u, k(c)] + label[c] − both[u, c])

- ``both[u, c]``  = Σ_x |M_u(x) ∩ L_c(x)|, image-level labels covering the whole image;
- ``label[c]``    = Σ_x |L_c(x)| over every probe image, fired or not;
- ``unit_cat[u, k]`` = Σ_x |M_u(x)|·[a pixel inside M_u(x) carries a label of category k, or x
  has an image-level label of category k]. An image without pixel labels counts only for its
  image-level categories (the reference reuses a stale flag there; we do not).

Every field is an int64 sum over images, so ``tally(A) + tally(B) == tally(A ∪ B)`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from nemaudit.explain.common.masks import unit_masks


@dataclass
class IoUTally:
    both: torch.Tensor  # [U, C] int64
    unit_cat: torch.Tensor  # [U, K] int64
    unit_pixels: torch.Tensor  # [U] int64, Σ_x |M_u(x)|
    label: torch.Tensor  # [C] int64
    images: int = 0

    @classmethod
    def zeros(cls, units: int, concepts: int, categories: int,
              device: torch.device | str = "cpu") -> IoUTally:
        z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(units, concepts), z(units, categories), z(units), z(concepts))

    def __add__(self, other: IoUTally) -> IoUTally:
        return IoUTally(*(getattr(self, f.name) + getattr(other, f.name)  # type: ignore[arg-type]
                          for f in fields(self)))

    def __sub__(self, other: IoUTally) -> IoUTally:
        return IoUTally(*(getattr(self, f.name) - getattr(other, f.name)  # type: ignore[arg-type]
                          for f in fields(self)))

    def to(self, device: torch.device | str) -> IoUTally:
        return IoUTally(*(t.to(device) for t in (self.both, self.unit_cat, self.unit_pixels,  # type: ignore[arg-type, call-arg]
                                                 self.label)), self.images)

    def iou(self, label_category: torch.Tensor) -> torch.Tensor:
        """``[U, C]`` float64 IoU; ``label_category[c]`` is c's category index (−1 for id 0).
        Concept 0 ("no label") always scores 0. Fields with a leading batch dimension
        (``both [B, U, C]``, ``label [B, C]``: re-weighted probes) give ``[B, U, C]``."""
        cat = label_category.clamp(min=0).to(self.unit_cat.device)
        union = self.unit_cat[..., cat] + self.label[..., None, :] - self.both
        iou = self.both.double() / union.clamp(min=1).double()
        iou[..., label_category < 0] = 0.0
        return iou

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def sum_across_ranks(self) -> IoUTally:
        """Add every rank's tally of its shard in place (exact: the fields are integer
        sums over images); ``images`` is left as set by the caller (the whole probe)."""
        from nemaudit.dist import active, all_sum

        if active() is not None:
            for name in ("both", "unit_cat", "unit_pixels"):
                all_sum(getattr(self, name), f"summing the IoU tally ({name})")
        return self


def label_tally(pixel_labels: torch.Tensor, image_labels: torch.Tensor, concepts: int) -> torch.Tensor:
    """Σ_x |L_c(x)| for a batch: pixel counts per label (across all stacked maps), plus the
    whole image for each image-level label. Label 0 is never counted, nor the negative
    image-level entries that only flag a category (see :func:`tally_pairs`)."""
    h, w = pixel_labels.shape[-2:]
    counts = torch.bincount(pixel_labels.reshape(-1), minlength=concepts)
    scal = image_labels.reshape(-1)
    scal = scal[scal > 0]
    counts = counts + torch.bincount(scal, minlength=concepts) * (h * w)
    counts[0] = 0
    return counts


def check_label_range(pixel_labels: torch.Tensor, image_labels: torch.Tensor, concepts: int,
                      indices: torch.Tensor, categories: int = 0) -> None:
    """Labels must be ids of the concept table (image-level entries may also be −k−1, a flag
    for category k: see :func:`tally_pairs`); name the first offending image otherwise."""
    for what, lab, low in (("pixel", pixel_labels, 0), ("image-level", image_labels, -categories)):
        if lab.numel() == 0:
            continue
        flat = lab.reshape(lab.shape[0], -1)
        out_of_range = (flat < low) | (flat >= concepts)
        bad = out_of_range.any(dim=1)
        if bad.any():
            row = int(bad.nonzero()[0])
            vals = flat[row][out_of_range[row]].unique()[:5].tolist()
            raise ValueError(f"probe image {int(indices[row])}: {what} label(s) {vals} are not in "
                             f"the concept table (ids 0..{concepts - 1})")


def tally_pairs(maps: torch.Tensor, pair_unit: torch.Tensor, pair_row: torch.Tensor,
                thresholds: torch.Tensor, pixel_labels: torch.Tensor, image_labels: torch.Tensor,
                label_category: torch.Tensor, out: IoUTally, chunk: int = 4096) -> None:
    """Add the mask statistics of (image, unit) pairs to ``out`` in place.

    ``maps[f]`` is unit ``pair_unit[f]``'s raw map on batch row ``pair_row[f]``. Only pairs
    whose unit can fire need to be passed (a map whose max is ≤ T_u has an empty mask, since
    bilinear upsampling never exceeds the max). Vectorised over pairs and pixels; ``chunk``
    bounds the memory of the upsampled masks.
    """
    size = tuple(pixel_labels.shape[-2:])
    for s in range(0, maps.shape[0], chunk):
        m = unit_masks(maps[s:s + chunk], thresholds[pair_unit[s:s + chunk]], size)  # type: ignore[arg-type]
        unit, row = pair_unit[s:s + chunk], pair_row[s:s + chunk]
        f, i, j = m.nonzero(as_tuple=True)
        lab = pixel_labels[row[f], :, i, j] if pixel_labels.shape[1] else None  # [nnz, L]
        accumulate(out, unit, m.sum(dim=(1, 2)), f, lab, image_labels[row], label_category)


def accumulate(out: IoUTally, unit: torch.Tensor, count: torch.Tensor, f: torch.Tensor,
               lab: torch.Tensor | None, image_labels: torch.Tensor,
               label_category: torch.Tensor) -> None:
    """Add F pairs' contributions to ``out``, given their masks as pixel lists: pair ``f[n]``
    holds mask pixel n, whose labels (one per label layer, 0 = none) are ``lab[n]``;
    ``count[F]`` are the mask sizes and ``image_labels[F, S]`` the pairs' image-level
    entries. The one place the IoU tally's rule is written (DESIGN.md, "Facts")."""
    concepts = out.both.shape[1]
    cats = out.unit_cat.shape[1]
    both_flat = out.both.view(-1)
    out.unit_pixels.index_add_(0, unit, count)
    present = torch.zeros(unit.shape[0], cats + 1, dtype=torch.bool, device=unit.device)
    if f.numel() and lab is not None and lab.shape[1]:
        ff = f[:, None].expand_as(lab)
        keep = lab > 0
        lab, ff = lab[keep].long(), ff[keep]
        both_flat.index_add_(0, unit[ff] * concepts + lab, torch.ones_like(lab))
        present[ff, label_category[lab]] = True
    if image_labels.shape[1]:
        sc = image_labels
        keep = (sc > 0) & (count[:, None] > 0)
        fs = torch.arange(sc.shape[0], device=sc.device)[:, None].expand_as(sc)[keep]
        sc = sc[keep]
        both_flat.index_add_(0, unit[fs] * concepts + sc, count[fs])
        present[fs, label_category[sc]] = True
        # an entry −k−1 says "this image has a category-k label, but a nameless one" (the
        # reference's reading of Broden's scene cells of 0): the mask then enters the
        # union of category k's concepts without scoring any label
        flags = image_labels
        keep = (flags < 0) & (count[:, None] > 0)
        if keep.any():
            fs = torch.arange(flags.shape[0], device=flags.device)[:, None].expand_as(flags)
            present[fs[keep], -flags[keep] - 1] = True
    out.unit_cat.index_add_(0, unit, present[:, :cats].long() * count[:, None])
