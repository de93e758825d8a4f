"""A plain folder of images as an unlabelled probe.

MILAN-style explanations need only images (exemplars are chosen by activation), and the
designed corruption without a segmentation (ICCV'23 Eq. 8) takes its concept masks from the
clean run's unit masks. Both work on any image folder, so this probe has no labels: ``L = 0``
label maps, ``S = 0`` image-level labels, and only the placeholder concept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from PIL import Image

from nemaudit.errors import ProbeFormatError, SpecError
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem
from nemaudit.probe.broden import read_image

#: File suffixes read as images (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{name} must be a positive integer, got {value!r}")
    return value


class FolderProbe(ProbeDataset):
    """The images directly inside ``root`` (``*.png``, ``*.jpg``, ``*.jpeg``), sorted by name.

    ``image_size=N`` resizes every image to N x N (bilinear, aspect ratio not kept); without
    it all images must have the size of the first one. ``seg_size=N`` sets the (empty) label
    maps' resolution, which is where unit masks are computed (default: the image size).
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike[str], image_size: int | None = None,
                 seg_size: int | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ProbeFormatError(f"{self.root}: no such directory")
        self.files = sorted((p for p in self.root.iterdir()
                             if p.is_file() and not p.name.startswith(".")
                             and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
        if not self.files:
            others = sum(1 for p in self.root.iterdir() if p.is_file())
            raise ProbeFormatError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this "
                                   f"folder ({others} other file(s); subfolders are not searched)")
        image_size = _positive("image_size", image_size)
        seg_size = _positive("seg_size", seg_size)
        self.resize = image_size is not None
        if image_size is not None:
            self.image_size: tuple[int, int] = (image_size, image_size)
        else:
            first = self.files[0]
            try:
                with Image.open(first) as im:
                    w, h = im.size
            except FileNotFoundError as e:
                raise ProbeFormatError(f"{first}: image file is missing") from e
            except (OSError, ValueError, SyntaxError) as e:
                raise ProbeFormatError(f"{first}: unreadable or corrupt image ({e})") from e
            self.image_size = (h, w)
        self.seg_size = (seg_size, seg_size) if seg_size is not None else self.image_size
        self.concepts = [Concept(0, "-", "-")]
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def filename(self, i: int) -> Path:
        return self.files[i]

    def __getitem__(self, i: int) -> ProbeItem:
        n = len(self.files)
        if not -n <= i < n:
            raise IndexError(f"probe index {i} out of range for {n} images")
        i %= n
        path = self.files[i]
        image = read_image(path, self.image_size if self.resize else None)
        if tuple(image.shape[1:]) != self.image_size:
            raise ProbeFormatError(
                f"{path}: image is {image.shape[1]}x{image.shape[2]} (h x w), but the folder's "
                f"first image {self.files[0].name} is {self.image_size[0]}x{self.image_size[1]}; "
                "pass image_size=N to resize every image")
        return ProbeItem(image=image,
                         pixel_labels=torch.zeros((0, *self.seg_size), dtype=torch.int64),
                         image_labels=torch.zeros(0, dtype=torch.int64), index=i)

    def fingerprint(self, samples: int = 32) -> str:
        """Hash of every image's name and bytes, plus the sizes (the folder path is left out)."""
        if self._fingerprint is None:
            h = hashlib.sha256(b"nemaudit-folder-v1\0")
            h.update(repr((self.image_size, self.seg_size, self.resize)).encode())
            for p in self.files:
                h.update(p.name.encode() + b"\0")
                try:
                    with open(p, "rb") as f:
                        h.update(hashlib.file_digest(f, "sha256").digest()
                                 if hasattr(hashlib, "file_digest") else
                                 hashlib.sha256(f.read()).digest())
                except OSError as e:
                    raise ProbeFormatError(f"{p}: cannot read ({e})") from e
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return f"FolderProbe({str(self.root)!r}, images={len(self)}, image_size={self.image_size})"
