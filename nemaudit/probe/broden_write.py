"""Broden on disk, the other way: write probes in the format :class:`BrodenProbe` reads.

``write_broden`` (in-memory images), ``export_probe`` (any probe, e.g. the concept world, so
its labels can be checked with the reference's own tools) and :class:`BrodenWriter` (streamed,
for more images than fit in memory). Images are lossless 8-bit PNGs; label maps encode
``R + 256*G`` as Broden does.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nemaudit.probe.base import Concept, ProbeDataset
from nemaudit.probe.broden import (
    _BAD_CATEGORY_CHARS,
    CATEGORY_FILE,
    IMAGES_DIR,
    INDEX_CATEGORY_ORDER,
    INDEX_FILE,
    LABEL_FILE,
    META_COLUMNS,
    _to_uint8_hwc,
    category_file,
    write_label_png,
)


def _concept_pair(c: Concept | tuple[str, str], i: int) -> tuple[str, str]:
    name, cat = (c.name, c.category) if isinstance(c, Concept) else c
    name, cat = str(name), str(cat)
    if not name.strip():
        raise ValueError(f"concept {i}: empty name")
    if not cat or _BAD_CATEGORY_CHARS.search(cat):
        raise ValueError(f"concept {i} ({name!r}): category {cat!r} must be a non-empty name "
                         "without spaces, '(', ')', ';', ',' or slashes")
    return name, cat


class BrodenWriter:
    """Streams images into a Broden-format folder; ``close()`` writes the CSVs.

    Used by ``write_broden`` and ``export_probe``; use it directly to export more images than
    fit in memory. Images go to ``images/nemaudit/NNNNNN.png`` (lossless 8-bit RGB), label maps
    to ``images/nemaudit/NNNNNN_<category>_<k>.png``.
    """

    def __init__(self, root: str | os.PathLike[str],
                 concepts: Sequence[Concept | tuple[str, str]],
                 seg_size: tuple[int, int] | None = None) -> None:
        self.root = Path(root).expanduser()
        pairs = [_concept_pair(c, i + 1) for i, c in enumerate(concepts)]
        if pairs and isinstance(concepts[0], Concept) and concepts[0].id == 0:
            pairs = pairs[1:]  # a full concept table, placeholder included
        self.concepts = pairs
        self.category_of = np.array(["-"] + [c for _, c in pairs], dtype=object)
        cats = [c for c in INDEX_CATEGORY_ORDER if c in {cat for _, cat in pairs}]
        cats += [c for _, c in pairs if c not in cats]
        self.categories = list(dict.fromkeys(cats))
        self.columns = list(INDEX_CATEGORY_ORDER) + [c for c in self.categories
                                                     if c not in INDEX_CATEGORY_ORDER]
        self.seg_size = seg_size
        self.rows: list[dict[str, str]] = []
        self.freq: dict[tuple[int, str], int] = {}
        self.cov: dict[tuple[int, str], float] = {}
        self.cat_images: dict[str, int] = {}
        (self.root / IMAGES_DIR / "nemaudit").mkdir(parents=True, exist_ok=True)

    def _check_labels(self, arr: np.ndarray, category: str, where: str) -> None:
        n = len(self.concepts)
        if arr.size and (arr.min() < 0 or arr.max() > n):
            raise ValueError(f"{where}: label values must be in 0..{n} (the concept count)")
        ids = np.unique(arr)
        ids = ids[ids > 0]
        wrong = [int(k) for k in ids if self.category_of[k] != category]
        if wrong:
            desc = ", ".join(f"{k} ({self.concepts[k - 1][0]!r} is {self.category_of[k]})"
                             for k in wrong[:5])
            raise ValueError(f"{where}: labels {desc} are not in category {category!r}; put each "
                             "label under its concept's category")

    def add(self, image: np.ndarray | torch.Tensor,
            pixel_labels: Mapping[str, Sequence[np.ndarray | torch.Tensor]] | None = None,
            image_labels: Mapping[str, Sequence[int]] | None = None, split: str = "train") -> None:
        i = len(self.rows)
        where = f"image {i}"
        stem = f"nemaudit/{i:06d}"
        hwc = _to_uint8_hwc(image, where)
        ih, iw = hwc.shape[:2]
        pixel_labels = pixel_labels or {}
        image_labels = image_labels or {}
        for cat in list(pixel_labels) + list(image_labels):
            if cat not in self.columns:
                raise ValueError(f"{where}: unknown category {cat!r}; columns are "
                                 f"{', '.join(self.columns)}")
        maps: dict[str, list[np.ndarray]] = {}
        shape: tuple[int, int] | None = None
        for cat, layers in pixel_labels.items():
            for k, m in enumerate(layers):
                if isinstance(m, torch.Tensor):
                    m = m.detach().cpu().numpy()
                m = np.asarray(m)
                w = f"{where}, {cat} map {k}"
                if m.ndim != 2 or not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
                    raise ValueError(f"{w}: label maps must be 2-D integer arrays, got "
                                     f"{m.dtype} {m.shape}")
                if shape is None:
                    shape = m.shape
                elif m.shape != shape:
                    raise ValueError(f"{w}: shape {m.shape} differs from this image's other maps {shape}")
                self._check_labels(m, cat, w)
                maps.setdefault(cat, []).append(m.astype(np.int64))
        if shape is None:
            shape = self.seg_size or (ih, iw)
        sh, sw = shape
        scalars: dict[str, list[int]] = {}
        for cat, ids in image_labels.items():
            vals = [int(v) for v in ids]
            self._check_labels(np.array(vals, dtype=np.int64), cat, f"{where}, {cat} labels")
            scalars[cat] = [v for v in vals if v]

        Image.fromarray(hwc).save(self.root / IMAGES_DIR / f"{stem}.png", format="PNG")
        row = {"image": f"{stem}.png", "split": split, "ih": str(ih), "iw": str(iw),
               "sh": str(sh), "sw": str(sw)}
        touched: set[str] = set()
        for cat in self.columns:
            pieces: list[str] = []
            for k, m in enumerate(maps.get(cat, [])):
                name = f"{stem}_{cat}_{k}.png"
                write_label_png(self.root / IMAGES_DIR / name, m)
                pieces.append(name)
            if cat in maps:
                stack = np.stack(maps[cat])
                for lab in np.unique(stack):
                    if lab:
                        key = (int(lab), cat)
                        self.freq[key] = self.freq.get(key, 0) + 1
                        self.cov[key] = self.cov.get(key, 0.0) + float((stack == lab).any(0).mean())
                        touched.add(cat)
            for v in dict.fromkeys(scalars.get(cat, [])):
                key = (v, cat)
                self.freq[key] = self.freq.get(key, 0) + 1
                self.cov[key] = self.cov.get(key, 0.0) + 1.0
                touched.add(cat)
            pieces += [str(v) for v in scalars.get(cat, [])]
            row[cat] = ";".join(pieces)
        for cat in touched:
            self.cat_images[cat] = self.cat_images.get(cat, 0) + 1
        self.rows.append(row)

    def close(self) -> Path:
        """Write index.csv, label.csv, category.csv and c_<category>.csv; return the root."""
        def write(fname: str, fields: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
            with open(self.root / fname, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n")
                w.writeheader()
                w.writerows(rows)

        write(INDEX_FILE, META_COLUMNS + tuple(self.columns), self.rows)
        write(LABEL_FILE, ("number", "name", "category", "frequency", "coverage", "syns"), (
            {"number": k, "name": name, "category": f"{cat}({self.freq.get((k, cat), 0)})",
             "frequency": self.freq.get((k, cat), 0),
             "coverage": f"{self.cov.get((k, cat), 0.0):f}", "syns": ""}
            for k, (name, cat) in enumerate(self.concepts, start=1)))
        cat_rows = []
        for cat in self.categories:
            numbers = [k for k, (_, c) in enumerate(self.concepts, start=1) if c == cat]
            cat_rows.append({"name": cat, "first": min(numbers), "last": max(numbers),
                             "count": len(numbers), "frequency": self.cat_images.get(cat, 0)})
            # dense codes ordered like the reference: by frequency, then coverage
            numbers.sort(key=lambda k: (-self.freq.get((k, cat), 0), -self.cov.get((k, cat), 0.0), k))
            write(category_file(cat), ("code", "number", "name", "frequency", "coverage"), (
                {"code": code, "number": k, "name": self.concepts[k - 1][0],
                 "frequency": self.freq.get((k, cat), 0),
                 "coverage": f"{self.cov.get((k, cat), 0.0):f}"}
                for code, k in enumerate(numbers, start=1)))
        write(CATEGORY_FILE, ("name", "first", "last", "count", "frequency"), cat_rows)
        return self.root


def write_broden(root: str | os.PathLike[str],
                 images: Iterable[np.ndarray | torch.Tensor],
                 pixel_labels: Sequence[Mapping[str, Sequence[np.ndarray | torch.Tensor]]] | None = None,
                 image_labels: Sequence[Mapping[str, Sequence[int]]] | None = None,
                 concepts: Sequence[Concept | tuple[str, str]] = (),
                 split: str | Sequence[str] = "train",
                 seg_size: tuple[int, int] | None = None) -> Path:
    """Write a Broden-format folder that ``BrodenProbe(root)`` reads back.

    - ``images[i]``: float ``[3,H,W]`` in [0,1] (as in ProbeItem; stored as 8-bit PNG, so
      exact for multiples of 1/255) or uint8 ``[H,W,3]``.
    - ``pixel_labels[i]``: ``{category: [label map [h,w], ...]}``; each map becomes one PNG
      (several maps per cell are stacked on load, in index.csv column order).
    - ``image_labels[i]``: ``{category: [label number, ...]}`` (whole-image labels; 0 ignored).
    - ``concepts``: ``(name, category)`` for label numbers 1..N (or a ProbeDataset's concept
      table). Every label must appear only under its concept's category, so each concept's
      primary category is its declared one.
    - ``split``: one split name, or one per image. ``seg_size``: ``(sh, sw)`` of images that
      have no label maps (default: the image size).

    Returns ``root``.
    """
    writer = BrodenWriter(root, concepts, seg_size=seg_size)
    images = list(images) if not isinstance(images, Sequence) else images
    n = len(images)
    for name, seq in (("pixel_labels", pixel_labels), ("image_labels", image_labels)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    if not isinstance(split, str) and len(split) != n:
        raise ValueError(f"split has {len(split)} entries for {n} images")
    for i, image in enumerate(images):
        writer.add(image,
                   pixel_labels[i] if pixel_labels is not None else None,
                   image_labels[i] if image_labels is not None else None,
                   split=split if isinstance(split, str) else split[i])
    return writer.close()


def export_probe(probe: ProbeDataset, root: str | os.PathLike[str], n: int | None = None,
                 split: str = "train") -> Path:
    """Write the first ``n`` items (default all) of any ProbeDataset as a Broden folder.

    Each label-map layer is split by concept category into one PNG per category it touches
    (so a layer mixing an object and its colour becomes an object PNG and a colour PNG);
    image-level labels go to their category's column. Images are quantised to 8 bits.
    Read it back with ``BrodenProbe(root, keep_unlabelled=True)`` to keep images with no
    labels (the reference drops them).
    """
    count = len(probe) if n is None else min(int(n), len(probe))
    writer = BrodenWriter(root, probe.concepts, seg_size=tuple(probe.seg_size))  # type: ignore[arg-type]
    cat_of = writer.category_of
    for i in range(count):
        item = probe[i]
        maps: dict[str, list[np.ndarray]] = {}
        for layer in item.pixel_labels.cpu().numpy().astype(np.int64):
            ids = np.unique(layer)
            ids = ids[ids > 0]
            if ids.size and ids.max() >= len(cat_of):
                raise ValueError(f"{probe.name} item {i}: label {int(ids.max())} is beyond the "
                                 f"concept table ({len(cat_of) - 1} concepts)")
            for cat in dict.fromkeys(cat_of[ids].tolist()):
                keep = ids[cat_of[ids] == cat]
                maps.setdefault(cat, []).append(np.where(np.isin(layer, keep), layer, 0))
        scalars: dict[str, list[int]] = {}
        for v in item.image_labels.cpu().tolist():
            if v:
                if v >= len(cat_of):
                    raise ValueError(f"{probe.name} item {i}: image label {v} is beyond the "
                                     f"concept table ({len(cat_of) - 1} concepts)")
                scalars.setdefault(cat_of[v], []).append(int(v))
        writer.add(item.image, maps, scalars, split=split)
    return writer.close()
