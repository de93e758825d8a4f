"""Broden on disk: the loader (``BrodenProbe``; the writer is :mod:`.broden_write`).

Network Dissection results are only comparable with the literature when they are computed on
Broden itself, read exactly the way the reference (CSAILVision/NetDissect-Lite,
``loader/data_loader.py``) reads it. This module follows that reader wherever the format is
defined by it, and departs from it only where the reference is wrong or silent:

- ``index.csv`` (``image,split,ih,iw,sh,sw,<category>...``): every column after the six
  meta columns is a category column; only the categories listed in ``category.csv`` are read.
  A cell is ``;``-separated. Like the reference, each piece is decided *by content*: a decimal
  integer is an image-level (whole-image) label, anything else is a segmentation PNG relative
  to ``images/``. So a dataset with a different category set works unchanged.
- Label 0 means "no label" everywhere: real rows carry a scene cell of ``0``, which the
  reference scores as a nameless concept 0; here it is dropped.
- An integer in a cell that also holds PNGs stays an image-level label (the reference turns it
  into a constant label map; for scoring the two are identical: it covers the whole image).
- Rows with no label at all in the selected categories are dropped, as the reference's
  ``index_has_any_data`` does (a ``0`` does not count as data). ``keep_unlabelled=True`` keeps
  them (useful for exported probes whose row count must not change).
- Segmentation PNGs encode ``label = R + 256*G``. Greyscale/16-bit PNGs (not produced by
  Broden) are read as the label value itself.
- Images are *not* resized (the reference does not resize either: broden1_224 is stored at
  the model resolution). An image whose size differs from its row's ``ih,iw``, or a
  segmentation PNG whose size differs from ``sh,sw``, is a ProbeFormatError. All selected
  rows must share one image size and one segmentation size, since they are batched together
  (the reference needs this too).
- Primary category of a label (the one it is scored in): the category with the largest
  *coverage* in ``c_<category>.csv``, as the reference's ``primary_categories_per_index`` does.
  When coverage is missing or tied, the per-category image count of ``label.csv``'s
  ``category`` cell (``color(13);object(3)``) decides, then the order of that cell (first
  listed wins). The reference breaks exact coverage ties towards the *later* category of
  ``category.csv``; exact ties do not occur in broden1_224. With ``categories=...`` the primary
  category is chosen among the selected ones; a label in none of them keeps its overall
  primary category (it can never occur in the loaded labels).
- ``label.csv`` numbers must be exactly ``1..N`` (a row numbered 0 is ignored as the "no
  label" placeholder); gaps or duplicates are an error rather than a silent remapping, because
  PNG values and image-level cells refer to these numbers.

CSV problems are raised from ``__init__`` with the file and line; image problems (missing,
corrupt, wrong size, label values not in ``label.csv``) when the item is loaded, naming the
file. Nothing but the CSVs is read eagerly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nemaudit.errors import ProbeFormatError, SpecError
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem, check_concepts

INDEX_FILE = "index.csv"
LABEL_FILE = "label.csv"
CATEGORY_FILE = "category.csv"
IMAGES_DIR = "images"
#: Meta columns of index.csv; every other column is a category column.
META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
#: Category column order of Broden's index.csv (the writer always writes these columns).
INDEX_CATEGORY_ORDER = ("color", "object", "material", "part", "scene", "texture")

_INT = re.compile(r"^-?\d+$")
_CAT_PIECE = re.compile(r"^([^(]*)\(([^)]*)\)$")
_BAD_CATEGORY_CHARS = re.compile(r"[();,/\\\s]")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def category_file(category: str) -> str:
    """File name of a category's dense-code table."""
    return f"c_{category}.csv"


# --------------------------------------------------------------------------- image helpers


def read_image(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image as float32 ``[3, H, W]`` in [0, 1] (greyscale/CMYK/palette converted to RGB).

    ``size=(h, w)`` resizes (bilinear); a missing or corrupt file is a ProbeFormatError naming it.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except FileNotFoundError as e:
        raise ProbeFormatError(f"{path}: image file is missing") from e
    except _IMAGE_ERRORS as e:
        raise ProbeFormatError(f"{path}: unreadable or corrupt image ({e})") from e
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a Broden segmentation PNG to an int64 ``[h, w]`` label map (``R + 256*G``)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            img: Image.Image = im
            if mode == "P":
                img = im.convert("RGB")
                mode = "RGB"
            arr = np.asarray(img)
    except FileNotFoundError as e:
        raise ProbeFormatError(f"{path}: segmentation PNG is missing") from e
    except _IMAGE_ERRORS as e:
        raise ProbeFormatError(f"{path}: unreadable or corrupt segmentation PNG ({e})") from e
    if mode in ("RGB", "RGBA", "RGBX"):
        return arr[..., 0].astype(np.int64) + 256 * arr[..., 1].astype(np.int64)
    if mode == "LA":
        return arr[..., 0].astype(np.int64)
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
        return arr.astype(np.int64)
    raise ProbeFormatError(f"{path}: unsupported segmentation PNG mode {mode!r} "
                           "(expected RGB with label = R + 256*G)")


def write_label_png(path: str | os.PathLike[str], labels: np.ndarray) -> None:
    """Write an ``[h, w]`` label map (0..65535) as an RGB PNG with ``label = R + 256*G``."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError(f"{path}: label values must be in 0..65535")
    lab = labels.astype(np.int64)
    rgb = np.zeros(lab.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Image.fromarray(rgb).save(path, format="PNG")


def _to_uint8_hwc(image: np.ndarray | torch.Tensor, where: str) -> np.ndarray:
    """Float ``[3,H,W]`` in [0,1] (the ProbeItem convention) or uint8 ``[H,W,3]`` -> uint8 HWC."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ValueError(f"{where}: expected an image [3,H,W] or [H,W,3], got shape {arr.shape}")
    if arr.shape[0] == 3 and (arr.shape[-1] != 3 or arr.dtype != np.uint8):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where}: images must be float in [0,1] or uint8, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where}: image has NaN/inf values")
    return np.ascontiguousarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


# --------------------------------------------------------------------------- CSV parsing


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]], str]:
    """Parse a CSV with a header; return (header, [(line, row)], sha256 of the bytes)."""
    if not path.is_file():
        raise ProbeFormatError(f"{path}: missing (a Broden folder holds {INDEX_FILE}, {LABEL_FILE}, "
                               f"{CATEGORY_FILE}, c_<category>.csv and {IMAGES_DIR}/)")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as e:
        raise ProbeFormatError(f"{path}: cannot read ({e})") from e
    except UnicodeDecodeError as e:
        raise ProbeFormatError(f"{path}: not UTF-8 text ({e})") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ProbeFormatError(f"{path}: empty file; expected a header with columns "
                                   f"{', '.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ProbeFormatError(f"{path}, line 1: missing required column(s) "
                                   f"{', '.join(repr(c) for c in missing)}; the header has "
                                   f"{', '.join(header)}")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ProbeFormatError(f"{path}, line 1: duplicate column(s) {', '.join(dup)}")
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line (csv.DictReader skips them too)
            if len(cells) != len(header):
                raise ProbeFormatError(f"{path}, line {reader.line_num}: {len(cells)} cells, but the "
                                       f"header has {len(header)} ({','.join(header)})")
            rows.append((reader.line_num, dict(zip(header, cells, strict=True))))
    except csv.Error as e:
        raise ProbeFormatError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from e
    return header, rows, hashlib.sha256(data).hexdigest()


def _parse_int(path: Path, line: int, column: str, value: str, minimum: int | None = None) -> int:
    v = value.strip()
    if not _INT.match(v):
        raise ProbeFormatError(f"{path}, line {line}: column {column!r} must be an integer, got {value!r}")
    n = int(v)
    if minimum is not None and n < minimum:
        raise ProbeFormatError(f"{path}, line {line}: column {column!r} must be >= {minimum}, got {n}")
    return n


def _parse_float(path: Path, line: int, column: str, value: str) -> float | None:
    v = value.strip()
    if not v:
        return None
    try:
        return float(v)
    except ValueError:
        raise ProbeFormatError(f"{path}, line {line}: column {column!r} must be a number, "
                               f"got {value!r}") from None


@dataclass(frozen=True)
class BrodenLabel:
    """One row of label.csv."""

    number: int
    name: str
    categories: tuple[tuple[str, int], ...]  # (category, image count), as listed
    line: int


@dataclass(frozen=True)
class BrodenRow:
    """One selected row of index.csv, parsed (file names stay unresolved until loading)."""

    line: int
    image: str
    split: str
    image_size: tuple[int, int]  # (ih, iw)
    seg_size: tuple[int, int]  # (sh, sw)
    pixel: tuple[tuple[str, str], ...]  # (category, PNG relative to images/), column order
    image_labels: tuple[int, ...]  # nonzero image-level label numbers, column order
    zero_categories: tuple[str, ...] = ()  # image-level columns that held a 0 ("no label")


def _read_labels(path: Path, known_categories: Sequence[str]) -> tuple[list[BrodenLabel], str]:
    _, rows, digest = _read_csv(path, ("number", "name", "category"))
    by_number: dict[int, BrodenLabel] = {}
    for line, r in rows:
        number = _parse_int(path, line, "number", r["number"], minimum=0)
        if number == 0:
            continue  # the "no label" placeholder, written by some tools
        if number in by_number:
            raise ProbeFormatError(f"{path}, line {line}: label number {number} is already "
                                   f"defined on line {by_number[number].line}")
        cats: list[tuple[str, int]] = []
        for piece in r["category"].split(";"):
            piece = piece.strip()
            if not piece:
                continue
            m = _CAT_PIECE.match(piece)
            if m is None or not m.group(1).strip():
                raise ProbeFormatError(f"{path}, line {line}: column 'category' must look like "
                                       f"'object(3);part(1)', got {r['category']!r}")
            cat = m.group(1).strip()
            count = _parse_int(path, line, "category", m.group(2), minimum=0)
            if cat not in known_categories:
                raise ProbeFormatError(f"{path}, line {line}: label {number} is in category "
                                       f"{cat!r}, which {CATEGORY_FILE} does not list "
                                       f"({', '.join(known_categories)})")
            cats.append((cat, count))
        if not cats:
            raise ProbeFormatError(f"{path}, line {line}: label {number} has no category "
                                   "(column 'category' is empty)")
        by_number[number] = BrodenLabel(number, r["name"].strip(), tuple(cats), line)
    if not by_number:
        raise ProbeFormatError(f"{path}: no labels")
    n = max(by_number)
    if len(by_number) != n:  # (never enumerate 1..n: a hostile number may be 1e15)
        gaps = [k for k in range(1, min(n, len(by_number) + 10) + 1) if k not in by_number]
        shown = ", ".join(map(str, gaps[:10])) + (" ..." if len(gaps) > 10 else "")
        raise ProbeFormatError(f"{path}: label numbers must be contiguous 1..{n}; missing {shown}")
    return [by_number[k] for k in range(1, n + 1)], digest


def _read_category_codes(path: Path, n_labels: int, label_file: Path) -> tuple[dict[int, float | None], str]:
    """c_<cat>.csv -> {label number: coverage or None}, validated against label.csv."""
    header, rows, digest = _read_csv(path, ("code", "number"))
    has_cov = "coverage" in header
    out: dict[int, float | None] = {}
    codes: dict[int, int] = {}
    for line, r in rows:
        code = _parse_int(path, line, "code", r["code"], minimum=0)
        number = _parse_int(path, line, "number", r["number"], minimum=0)
        if code in codes:
            raise ProbeFormatError(f"{path}, line {line}: code {code} is already used on line "
                                   f"{codes[code]}")
        codes[code] = line
        if number == 0:
            continue
        if number > n_labels:
            raise ProbeFormatError(f"{path}, line {line}: label number {number} is not in "
                                   f"{label_file} (valid numbers are 1..{n_labels})")
        out[number] = _parse_float(path, line, "coverage", r["coverage"]) if has_cov else None
    return out, digest


def _primary_category(label: BrodenLabel, coverage: Mapping[str, Mapping[int, float | None]],
                      allowed: Sequence[str] | None) -> str:
    """The category a label is scored in (see the module docstring for the rule)."""
    candidates: list[str] = [c for c, _ in label.categories]
    candidates += [c for c, members in coverage.items() if label.number in members and c not in candidates]
    if allowed is not None:
        inside = [c for c in candidates if c in allowed]
        if inside:  # else the label never occurs in the loaded categories: overall primary
            candidates = inside
    counts = dict(label.categories)

    def key(item: tuple[int, str]) -> tuple[float, int, int]:
        pos, cat = item
        cov = coverage.get(cat, {}).get(label.number)
        return (cov if cov is not None else 0.0, counts.get(cat, 0), -pos)

    return max(enumerate(candidates), key=key)[1]


# --------------------------------------------------------------------------- the loader


class BrodenProbe(ProbeDataset):
    """A Broden-format folder as a ProbeDataset (CSVs parsed now, images read lazily).

    ``split`` keeps the rows of one split; ``max_images`` keeps the first N rows after the
    other filters; ``categories`` restricts the categories read (default: every category in
    category.csv). Concept ids are label.csv numbers, so results line up with the reference.
    """

    name = "broden"

    def __init__(self, root: str | os.PathLike[str], split: str | None = None,
                 max_images: int | None = None, categories: Sequence[str] | None = None,
                 keep_unlabelled: bool = False, *, follow_links: bool = False,
                 zero_labels: str = "ignore") -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ProbeFormatError(f"{self.root}: no such directory (expected a Broden folder with "
                                   f"{INDEX_FILE}, {LABEL_FILE}, {CATEGORY_FILE}, c_<category>.csv "
                                   f"and {IMAGES_DIR}/)")
        if max_images is not None and (isinstance(max_images, bool) or int(max_images) != max_images
                                       or max_images < 1):
            raise SpecError(f"max_images must be a positive integer, got {max_images!r}")
        self.split = split
        self.max_images = max_images
        self.keep_unlabelled = keep_unlabelled
        self.images_dir = self.root / IMAGES_DIR
        self.follow_links = bool(follow_links)
        if zero_labels not in ZERO_LABELS:
            raise SpecError(f"zero_labels={zero_labels!r}: expected one of "
                            f"{', '.join(ZERO_LABELS)}")
        self.zero_labels = zero_labels
        digests: dict[str, str] = {}

        # category.csv: the category list (and its order)
        cat_path = self.root / CATEGORY_FILE
        _, cat_rows, digests[CATEGORY_FILE] = _read_csv(cat_path, ("name",))
        all_cats: list[str] = []
        for line, r in cat_rows:
            cname = r["name"].strip()
            if not cname:
                raise ProbeFormatError(f"{cat_path}, line {line}: empty category name")
            if cname in all_cats:
                raise ProbeFormatError(f"{cat_path}, line {line}: category {cname!r} is listed twice")
            all_cats.append(cname)
        if not all_cats:
            raise ProbeFormatError(f"{cat_path}: lists no categories")
        if categories is not None:
            wanted = [categories] if isinstance(categories, str) else list(categories)
            unknown = [c for c in wanted if c not in all_cats]
            if unknown or not wanted:
                raise SpecError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                                f"{', '.join(map(repr, unknown)) or '(none given)'} for "
                                f"{self.root}; valid: {', '.join(all_cats)}")
            selected = [c for c in all_cats if c in wanted]
        else:
            selected = list(all_cats)
        self.selected_categories: tuple[str, ...] = tuple(selected)

        # label.csv and the c_<cat>.csv of each selected category
        label_path = self.root / LABEL_FILE
        self.labels, digests[LABEL_FILE] = _read_labels(label_path, all_cats)
        n_labels = len(self.labels)
        coverage: dict[str, dict[int, float | None]] = {}
        for cat in selected:
            fname = category_file(cat)
            coverage[cat], digests[fname] = _read_category_codes(self.root / fname, n_labels, label_path)
        self._digests = digests
        allowed = None if categories is None else selected
        self.concepts = [Concept(0, "-", "-")] + [
            Concept(lab.number, lab.name, _primary_category(lab, coverage, allowed))
            for lab in self.labels
        ]
        check_concepts(self.concepts)

        # index.csv
        index_path = self.root / INDEX_FILE
        header, index_rows, digests[INDEX_FILE] = _read_csv(index_path, META_COLUMNS)
        missing = [c for c in selected if c not in header]
        if missing:
            raise ProbeFormatError(f"{index_path}, line 1: missing required column(s) "
                                   f"{', '.join(map(repr, missing))} (listed in {cat_path}); "
                                   f"the header has {', '.join(header)}")
        columns = [c for c in header if c in selected]  # index.csv order, as the reference
        rows: list[BrodenRow] = []
        splits: dict[str, int] = {}
        n_unlabelled = 0
        for line, r in index_rows:
            image = r["image"].strip()
            if not image:
                raise ProbeFormatError(f"{index_path}, line {line}: empty 'image' cell")
            _check_relative(image, index_path, line, "image")
            ih, iw, sh, sw = (_parse_int(index_path, line, c, r[c], minimum=1)
                              for c in ("ih", "iw", "sh", "sw"))
            pixel: list[tuple[str, str]] = []
            scalars: list[int] = []
            zeros: list[str] = []
            for cat in columns:
                for piece in r[cat].split(";"):
                    piece = piece.strip()
                    if not piece:
                        continue
                    if _INT.match(piece):
                        v = int(piece)
                        if not 0 <= v <= n_labels:
                            raise ProbeFormatError(
                                f"{index_path}, line {line}: column {cat!r} holds label {v}, which "
                                f"is not in {label_path} (valid numbers are 1..{n_labels}; 0 = none)")
                        if v:
                            scalars.append(v)
                        elif cat not in zeros:
                            zeros.append(cat)
                    else:
                        _check_relative(piece, index_path, line, cat)
                        pixel.append((cat, piece))
            sp = r["split"].strip()
            splits[sp] = splits.get(sp, 0) + 1
            if not (pixel or scalars or keep_unlabelled):
                n_unlabelled += 1
                continue
            if split is not None and sp != split:
                continue
            if max_images is not None and len(rows) >= max_images:
                continue  # keep validating the remaining lines
            rows.append(BrodenRow(line, image, sp, (ih, iw), (sh, sw), tuple(pixel), tuple(scalars),
                                  tuple(zeros)))
        if not rows:
            why = [f"split={split!r}"] if split is not None else []
            if n_unlabelled:
                why.append(f"{n_unlabelled} row(s) without labels in {', '.join(selected)} dropped")
            raise ProbeFormatError(
                f"{index_path}: no images to probe ({'; '.join(why) or 'the index has no rows'}); "
                f"splits present: {', '.join(f'{k} ({v})' for k, v in splits.items()) or 'none'}")
        first = rows[0]
        for row in rows:
            if row.image_size != first.image_size or row.seg_size != first.seg_size:
                raise ProbeFormatError(
                    f"{index_path}, line {row.line}: image {row.image_size} / segmentation "
                    f"{row.seg_size} size differs from line {first.line} ({first.image_size} / "
                    f"{first.seg_size}); every probe image is batched together, so all rows must "
                    "share one size (use a resized Broden such as broden1_224)")
        self.rows = rows
        self.image_size: tuple[int, int] = first.image_size
        self.seg_size = first.seg_size
        self.splits = splits
        self._fingerprint: str | None = None
        self._cat_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def filename(self, i: int) -> Path:
        """Path of the i-th image."""
        return self._file(self.rows[i].image)

    def _file(self, name: str) -> Path:
        """A file under ``images/``; one that resolves outside the dataset folder (a symlink
        out of it) is refused unless ``follow_links``: the probe is untrusted input, and its
        files end up in reports as pictures."""
        path = self.images_dir / name
        if not self.follow_links:
            try:
                real, root = path.resolve(), self.root.resolve()
            except (OSError, RuntimeError) as e:  # a loop of links, a name too long
                raise ProbeFormatError(f"{path}: cannot be resolved ({e})") from None
            if real != root and root not in real.parents:
                raise ProbeFormatError(f"{path}: resolves to {real}, outside the dataset folder "
                                       f"{root}; refusing to read it (a probe may only read its "
                                       "own files; pass follow_links=true to allow links out)")
        return path

    def __getitem__(self, i: int) -> ProbeItem:
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"probe index {i} out of range for {n} images")
        i %= n
        row = self.rows[i]
        where = f"{self.root / INDEX_FILE}, line {row.line}"
        path = self._file(row.image)
        image = read_image(path)
        if tuple(image.shape[1:]) != row.image_size:
            raise ProbeFormatError(f"{path}: image is {image.shape[1]}x{image.shape[2]} (h x w), "
                                   f"but {where} says ih,iw = {row.image_size[0]},{row.image_size[1]} "
                                   "(images are not resized, as in the reference)")
        n_labels = len(self.labels)
        layers = []
        for cat, png in row.pixel:
            ppath = self._file(png)
            lab = read_label_png(ppath)
            if lab.shape != row.seg_size:
                raise ProbeFormatError(f"{ppath}: segmentation is {lab.shape[0]}x{lab.shape[1]} "
                                       f"(h x w), but {where} says sh,sw = "
                                       f"{row.seg_size[0]},{row.seg_size[1]}")
            if lab.size and (lab.min() < 0 or lab.max() > n_labels):
                bad = np.unique(lab[(lab < 0) | (lab > n_labels)])
                shown = ", ".join(map(str, bad[:10].tolist())) + (" ..." if bad.size > 10 else "")
                raise ProbeFormatError(f"{ppath} (column {cat!r} of {where}): label value(s) {shown} "
                                       f"not in {self.root / LABEL_FILE} (valid numbers are "
                                       f"1..{n_labels}; 0 = none)")
            layers.append(torch.from_numpy(lab))
        if layers:
            pixel_labels = torch.stack(layers)
        else:
            pixel_labels = torch.zeros((0, *row.seg_size), dtype=torch.int64)
        image_labels = list(row.image_labels)
        if self.zero_labels == "reference" and row.zero_categories:
            cats = self._category_index()
            image_labels += [-cats[c] - 1 for c in row.zero_categories if c in cats]
        return ProbeItem(image=image, pixel_labels=pixel_labels,
                         image_labels=torch.tensor(image_labels, dtype=torch.int64), index=i)

    def _category_index(self) -> dict[str, int]:
        if self._cat_index is None:
            self._cat_index = {c: k for k, c in enumerate(self.categories)}
        return self._cat_index

    def fingerprint(self, samples: int = 32) -> str:
        """Hash of the CSV bytes, the selection and the sizes of every selected image/PNG file.

        File *sizes* rather than bytes keep this cheap on the 63k-image Broden; the root path
        and modification times are left out so that a copy of the dataset keeps its cache key.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(b"nemaudit-broden-v1\0")
            for fname in sorted(self._digests):
                h.update(f"{fname}={self._digests[fname]}\0".encode())
            h.update(repr((self.selected_categories, self.split, self.max_images,
                           self.keep_unlabelled, self.seg_size, self.image_size)).encode())
            if self.zero_labels != "ignore":
                h.update(f"zero_labels={self.zero_labels}\0".encode())
            h.update(repr([(c.id, c.name, c.category) for c in self.concepts]).encode())
            for row in self.rows:
                sizes = [_file_size(self._file(row.image))]
                sizes += [_file_size(self._file(png)) for _, png in row.pixel]
                h.update(f"{row.line}:{row.image}:{sizes}\0".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"BrodenProbe({str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"concepts={len(self.concepts) - 1}, categories={list(self.selected_categories)})")


#: how an image-level cell of ``0`` (Broden's "no label", e.g. real scene cells) is read:
#: ``ignore`` (default) drops it; ``reference`` also drops the label but, as NetDissect-Lite
#: does, counts the image as *having* a label of that column's category, so a unit's mask
#: on it enters the union of every concept of the category (its IoUs there are lower)
ZERO_LABELS = ("ignore", "reference")


def _check_relative(name: str, index_path: Path, line: int, column: str) -> None:
    """A file named in index.csv must lie below ``images/``: no absolute path, no ``..``."""
    if any(ord(ch) < 32 for ch in name) or len(name.encode()) > 4096:
        raise ProbeFormatError(f"{index_path}, line {line}: column {column!r} names a file with "
                               f"control characters or of absurd length ({name[:40]!r}…)")
    p = Path(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) \
            or ".." in p.parts:
        raise ProbeFormatError(f"{index_path}, line {line}: column {column!r} names {name!r}, "
                               f"which is outside {IMAGES_DIR}/ (absolute or with '..'); a probe "
                               "may only read its own files")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1
