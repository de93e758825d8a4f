"""Tiny probes and models for fast tests (no synthetic world, no bundled weights)."""

from __future__ import annotations

import torch
from torch import nn

from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem

TOY_CONCEPTS = [Concept(0, "-", "-"), Concept(1, "red", "color"), Concept(2, "blue", "color"),
                Concept(3, "box", "object"), Concept(4, "disc", "object"),
                Concept(5, "lid", "part"), Concept(6, "beach", "scene"),
                Concept(7, "stripes", "texture")]


class ToyProbe(ProbeDataset):
    """Images of 32×32 with a red or blue box/disc, a lid part on boxes, and image labels."""

    name = "toy"

    def __init__(self, n: int = 24, seed: int = 0, size: int = 32, seg: int = 16) -> None:
        self.n, self.seed, self.size = n, seed, size
        self.concepts = list(TOY_CONCEPTS)
        self.seg_size = (seg, seg)
        self.class_names = ["box", "disc"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> ProbeItem:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        s, seg = self.size, self.seg_size[0]
        img = torch.rand(3, s, s, generator=g) * 0.2
        y, x = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        cy, cx = torch.randint(8, s - 8, (2,), generator=g).tolist()
        r = int(torch.randint(3, 7, (1,), generator=g))
        disc = bool(i % 2)
        shape = ((y - cy) ** 2 + (x - cx) ** 2 <= r * r) if disc else \
            ((y - cy).abs() <= r) & ((x - cx).abs() <= r)
        colour = int(torch.randint(1, 3, (1,), generator=g))
        img[0 if colour == 1 else 2][shape] = 0.9
        lid = shape & (y < cy - r // 2) & (not disc)
        img[1][lid] = 0.7
        step = s // seg
        lab = torch.zeros(3, s, s, dtype=torch.int64)
        lab[0][shape] = 4 if disc else 3
        lab[1][lid] = 5
        lab[2][shape] = colour
        pix = lab[:, step // 2::step, step // 2::step]
        if i % 5 == 4:
            pix = pix[:0]  # some images carry no pixel labels at all
        scal = torch.tensor([6] if i % 3 == 0 else ([7] if i % 3 == 1 else []), dtype=torch.int64)
        img = (img * 255).round() / 255
        return ProbeItem(img, pix, scal, i, int(disc))


class ToyNet(nn.Module):
    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer2(self.layer1(self.conv1(x))).mean(dim=(2, 3)))


class BrightnessDescriber:
    """A deterministic stand-in for MILAN: names a unit by its exemplars' mean brightness, so
    a strong enough noise changes the words and tests can predict the verdict."""

    def __init__(self, levels: int = 4) -> None:
        self.levels = levels

    def describe(self, exemplars) -> list[str]:
        means = exemplars.images().mean(dim=(1, 2, 3, 4))
        words = ["dark", "dim", "bright", "glaring", "blinding", "white"]
        return [f"{words[min(int(m * self.levels * 2), len(words) - 1)]} regions" for m in means]
