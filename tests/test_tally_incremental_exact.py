"""Exact IoU tallies and incremental re-dissection, checked against hand counts and a
brute-force loop over pixels.

The oracles here never call the code under test: ``brute_tally`` walks every (image, unit,
pixel) with the rule of DESIGN.md ("Facts": the mask is ``upsample > T`` strictly; image-level
labels cover the whole image; a mask enters the union of category k on an image where one of
its pixels carries a category-k label, or the image has an image-level label — or a nameless
flag −k−1 — of category k), and the thresholds of a changed probe come from ``dissect`` run in
full on it (and ``torch.quantile``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.explain.netdissect.incremental import _cat_maps, _pad_by_unit, redissect
from nemaudit.explain.netdissect.tally import (
    IoUTally,
    accumulate,
    check_label_range,
    label_tally,
    tally_pairs,
)
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem
from tests.helpers import raises_exactly

FIELDS = ("both", "unit_cat", "unit_pixels", "label")


def _raises(msg: str):
    return raises_exactly(ValueError, msg)


def brute_tally(maps: torch.Tensor, pix: torch.Tensor, img: torch.Tensor,
                thresholds: torch.Tensor, lab_cat: list[int], concepts: int,
                categories: int) -> dict[str, list]:
    """The tally of raw maps ``[N, U, h, w]`` (upsampled to the labels' size) against pixel
    labels ``[N, L, H, W]`` and image-level entries ``[N, S]``, one pixel at a time."""
    n_img, n_units = maps.shape[:2]
    size = tuple(pix.shape[-2:])
    up = maps.float()
    if tuple(maps.shape[-2:]) != size:
        up = F.interpolate(up, size=size, mode="bilinear", align_corners=False)
    both = [[0] * concepts for _ in range(n_units)]
    unit_cat = [[0] * categories for _ in range(n_units)]
    unit_pixels = [0] * n_units
    label = [0] * concepts
    h, w = size
    for x in range(n_img):
        for c in img[x].tolist():
            if c > 0:
                label[c] += h * w
        for c in pix[x].flatten().tolist():
            if c > 0:
                label[c] += 1
        for u in range(n_units):
            mask = [(i, j) for i in range(h) for j in range(w)
                    if float(up[x, u, i, j]) > float(thresholds[u])]
            n = len(mask)
            unit_pixels[u] += n
            if n == 0:
                continue
            cats = set()
            for i, j in mask:
                for c in pix[x, :, i, j].tolist():
                    if c > 0:
                        both[u][c] += 1
                        cats.add(lab_cat[c])
            for c in img[x].tolist():
                if c > 0:
                    both[u][c] += n
                    cats.add(lab_cat[c])
                elif c < 0:
                    cats.add(-c - 1)
            for k in cats:
                unit_cat[u][k] += n
    label[0] = 0
    return {"both": both, "unit_cat": unit_cat, "unit_pixels": unit_pixels, "label": label}


def as_lists(t: IoUTally, rows=slice(None)) -> dict[str, list]:
    return {"both": t.both[rows].tolist(), "unit_cat": t.unit_cat[rows].tolist(),
            "unit_pixels": t.unit_pixels[rows].tolist(), "label": t.label.tolist()}


def rows_of(ref: dict[str, list], rows: list[int]) -> dict[str, list]:
    return {"both": [ref["both"][u] for u in rows], "unit_cat": [ref["unit_cat"][u] for u in rows],
            "unit_pixels": [ref["unit_pixels"][u] for u in rows], "label": ref["label"]}


# --------------------------------------------------------------------------- tally.py


def test_accumulate_adds_hand_counted_pixel_lists_to_what_is_there():
    """Five pairs of three units, two label layers, image-level labels and flags. Concepts
    1, 2 are colours (category 0), 3 an object (1), 4, 5 scenes (2)."""
    lab_cat = torch.tensor([-1, 0, 0, 1, 2, 2])
    unit = torch.tensor([2, 0, 2, 1, 2])
    count = torch.tensor([3, 2, 0, 1, 2])
    f = torch.tensor([0, 0, 0, 1, 1, 3, 4, 4])
    lab = torch.tensor([[1, 3], [0, 3], [2, 0],  # pair 0
                        [0, 0], [0, 3],  # pair 1
                        [2, 0],  # pair 3
                        [0, 0], [0, 0]], dtype=torch.int32)  # pair 4
    image_labels = torch.tensor([[4, 0], [0, -3], [5, -2], [0, 0], [5, 0]])
    out = IoUTally(torch.arange(18).view(3, 6), 10 * torch.arange(9).view(3, 3),
                   torch.tensor([100, 200, 300]), torch.full((6,), 7), images=4)
    accumulate(out, unit, count, f, lab, image_labels, lab_cat)
    both = torch.tensor([[0, 0, 0, 1, 0, 0],  # unit 0: one object pixel; a flag scores nothing
                         [0, 0, 1, 0, 0, 0],  # unit 1: one colour-2 pixel
                         [0, 1, 1, 2, 3, 2]])  # unit 2: pixels of 1, 3, 3, 2; scene 4 ×3, 5 ×2
    assert out.both.tolist() == (torch.arange(18).view(3, 6) + both).tolist()
    # unit 0 (count 2): object pixel, and flag −3 puts the mask in category 2's union;
    # unit 2: pair 0 (3) touches all three categories, pair 4 (2) only scenes; pair 2 is empty
    cat = torch.tensor([[0, 2, 2], [1, 0, 0], [3, 3, 5]])
    assert out.unit_cat.tolist() == (10 * torch.arange(9).view(3, 3) + cat).tolist()
    assert out.unit_pixels.tolist() == [102, 201, 305]
    assert out.label.tolist() == [7] * 6 and out.images == 4


def test_accumulate_without_label_layers_or_image_labels():
    lab_cat = torch.tensor([-1, 0, 1])
    unit, count = torch.tensor([1, 0]), torch.tensor([2, 1])
    f = torch.tensor([0, 0, 1])
    for lab in (None, torch.zeros(3, 0, dtype=torch.int32)):
        out = IoUTally.zeros(2, 3, 2)
        accumulate(out, unit, count, f, lab, torch.tensor([[2], [-1]]), lab_cat)
        assert out.both.tolist() == [[0, 0, 0], [0, 0, 2]]
        assert out.unit_cat.tolist() == [[1, 0], [0, 2]]  # unit 0 by its flag only
        assert out.unit_pixels.tolist() == [1, 2]
    out = IoUTally.zeros(2, 3, 2)
    accumulate(out, unit, count, f, torch.tensor([[1], [2], [0]], dtype=torch.int32),
               torch.zeros(2, 0, dtype=torch.int64), lab_cat)
    assert out.both.tolist() == [[0, 0, 0], [0, 1, 1]]
    assert out.unit_cat.tolist() == [[0, 0], [2, 2]] and out.unit_pixels.tolist() == [1, 2]
    out = IoUTally.zeros(2, 3, 2)  # no mask pixel at all: only the image-level entries
    accumulate(out, unit, torch.tensor([0, 4]), torch.zeros(0, dtype=torch.int64),
               torch.zeros(0, 1, dtype=torch.int32), torch.tensor([[1], [1]]), lab_cat)
    assert out.both.tolist() == [[0, 4, 0], [0, 0, 0]]
    assert out.unit_cat.tolist() == [[4, 0], [0, 0]] and out.unit_pixels.tolist() == [4, 0]


def _random_case(seed: int, n: int = 4, units: int = 3, layers: int = 2):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, units, 3, 3, generator=g)
    pix = torch.randint(0, 6, (n, layers, 5, 7), generator=g)
    img = torch.tensor([[4, 0], [-3, 5], [0, 0], [-1, -2]])[:n]
    return maps, pix, img


LAB_CAT = [-1, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("chunk", [1, 2, 5, 4096])
@pytest.mark.parametrize("layers", [2, 0])
def test_tally_pairs_equals_the_pixel_loop(chunk, layers):
    """Upsampled 3×3 maps on 5×7 labels (h ≠ w), every pair passed, in chunks."""
    maps, pix, img = _random_case(chunk + layers, layers=layers)
    thresholds = torch.tensor([0.45, 0.6, 0.3])
    n, units = maps.shape[:2]
    rows, us = torch.meshgrid(torch.arange(n), torch.arange(units), indexing="ij")
    rows, us = rows.flatten(), us.flatten()
    out = IoUTally.zeros(units, 6, 3)
    tally_pairs(maps[rows, us], us, rows, thresholds, pix, img, torch.tensor(LAB_CAT), out,
                chunk=chunk)
    out.label = label_tally(pix, img, 6)
    ref = brute_tally(maps, pix, img, thresholds, LAB_CAT, 6, 3)
    assert as_lists(out) == ref
    assert min(ref["unit_pixels"]) > 0 and sum(map(sum, ref["unit_cat"])) > 0


def test_label_tally_hand_counts():
    pix = torch.zeros(2, 2, 2, 3, dtype=torch.int64)
    pix[0, 0] = torch.tensor([[1, 1, 0], [2, 0, 0]])
    pix[0, 1] = torch.tensor([[0, 3, 3], [0, 0, 3]])
    pix[1, 0] = torch.tensor([[2, 2, 2], [0, 1, 0]])
    img = torch.tensor([[4, 0, -2], [5, 4, 0]])
    # 4 covers two whole 2×3 images, 5 one; label 0 and the flag −2 are never counted
    assert label_tally(pix, img, 7).tolist() == [0, 3, 4, 3, 12, 6, 0]
    assert label_tally(pix, torch.zeros(2, 0, dtype=torch.int64), 6).tolist() == [0, 3, 4, 3, 0, 0]


def test_zeros_add_sub_and_iou_by_hand():
    z = IoUTally.zeros(2, 5, 3)
    assert [tuple(getattr(z, f).shape) for f in FIELDS] == [(2, 5), (2, 3), (2,), (5,)]
    assert all(getattr(z, f).dtype == torch.int64 and not getattr(z, f).any() for f in FIELDS)
    assert z.images == 0
    a = IoUTally(torch.tensor([[5, 2, 1, 0], [0, 0, 3, 0], [0, 0, 0, 0]]),
                 torch.tensor([[6, 4], [0, 9], [0, 0]]), torch.tensor([6, 9, 0]),
                 torch.tensor([9, 3, 5, 0]), images=3)
    b = IoUTally(torch.ones(3, 4, dtype=torch.int64), torch.full((3, 2), 2),
                 torch.tensor([1, 2, 3]), torch.tensor([1, 0, 2, 0]), images=2)
    s, d = a + b, a - b
    assert s.both.tolist() == (a.both + 1).tolist() and d.both.tolist() == (a.both - 1).tolist()
    assert s.unit_cat.tolist() == [[8, 6], [2, 11], [2, 2]]
    assert d.unit_cat.tolist() == [[4, 2], [-2, 7], [-2, -2]]
    assert s.unit_pixels.tolist() == [7, 11, 3] and d.unit_pixels.tolist() == [5, 7, -3]
    assert s.label.tolist() == [10, 3, 7, 0] and d.label.tolist() == [8, 3, 3, 0]
    assert (s.images, d.images) == (5, 1)
    lab_cat = torch.tensor([-1, 0, 1, 1])
    iou = a.iou(lab_cat)
    assert iou.dtype == torch.float64
    assert iou.tolist() == [[0.0, 2 / 7, 1 / 8, 0.0],  # concept 0 scores 0 whatever both says
                            [0.0, 0.0, 3 / 11, 0.0],
                            [0.0, 0.0, 0.0, 0.0]]  # union 0 (unit 2, concept 3): 0, not NaN
    batched = IoUTally(torch.stack([a.both, 2 * a.both]), a.unit_cat, a.unit_pixels,
                       torch.stack([a.label, torch.tensor([1, 4, 8, 6])]))
    biou = batched.iou(lab_cat)
    assert biou.shape == (2, 3, 4)
    assert biou[0].tolist() == iou.tolist()
    assert biou[1].tolist() == [[0.0, 4 / 6, 2 / 10, 0.0],  # 4 / (6 + 4 − 4), 2 / (4 + 8 − 2)
                                [0.0, 0.0, 6 / 11, 0.0],  # 6 / (9 + 8 − 6)
                                [0.0, 0.0, 0.0, 0.0]]
    assert a.sum_across_ranks() is a and a.both[0].tolist() == [5, 2, 1, 0]  # one process


def test_sum_across_ranks_sums_the_mask_fields_only(monkeypatch):
    """In a process group, ``both``, ``unit_cat`` and ``unit_pixels`` are summed in place
    (named in the error context); ``label`` (summed by the caller) and ``images`` are not.
    A fake group of two ranks holding the same tally: every summed field doubles."""
    import nemaudit.dist as dist

    calls = []

    def fake_sum(t: torch.Tensor, what: str = "summing tallies") -> torch.Tensor:
        calls.append(what)
        return t.add_(t.clone())

    monkeypatch.setattr(dist, "active", lambda: object())
    monkeypatch.setattr(dist, "all_sum", fake_sum)
    t = IoUTally(torch.tensor([[1, 2]]), torch.tensor([[3, 4, 5]]), torch.tensor([6]),
                 torch.tensor([7, 8]), images=9)
    both = t.both
    assert t.sum_across_ranks() is t and t.both is both
    assert calls == ["summing the IoU tally (both)", "summing the IoU tally (unit_cat)",
                     "summing the IoU tally (unit_pixels)"]
    assert t.both.tolist() == [[2, 4]] and t.unit_cat.tolist() == [[6, 8, 10]]
    assert t.unit_pixels.tolist() == [12] and t.label.tolist() == [7, 8] and t.images == 9


def test_zeros_and_to_follow_the_device():
    """On the meta device (no data, any machine): ``zeros(device=)`` and ``to`` place every
    field there, so a GPU run never mixes devices."""
    z = IoUTally.zeros(2, 4, 3, device="meta")
    assert {getattr(z, f).device.type for f in FIELDS} == {"meta"}
    moved = IoUTally.zeros(2, 4, 3).to("meta")
    assert {getattr(moved, f).device.type for f in FIELDS} == {"meta"}
    assert tuple(moved.both.shape) == (2, 4) and moved.both.dtype == torch.int64


def test_check_label_range_bounds_and_messages():
    idx = torch.tensor([30, 31, 32])
    pix = torch.zeros(3, 1, 2, 2, dtype=torch.int64)
    img = torch.tensor([[5], [-3], [0]])
    check_label_range(pix, img, 6, idx, categories=3)  # −3 flags category 2 of 3; 5 = C − 1
    with _raises("probe image 31: image-level label(s) [-3] are not in the concept table "
                 "(ids 0..5)"):
        check_label_range(pix, img, 6, idx, categories=2)
    with _raises("probe image 30: image-level label(s) [5] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(pix, img, 5, idx, categories=3)
    pix[2, 0, 1, 1] = 6
    pix[1, 0, 0, 0] = 9  # a later bad image is not the one named
    pix[1, 0, 1, 0] = -1
    with _raises("probe image 31: pixel label(s) [-1, 9] are not in the concept table "
                 "(ids 0..5)"):
        check_label_range(pix, img, 6, idx, categories=3)
    check_label_range(torch.zeros(3, 0, 2, 2, dtype=torch.int64), torch.zeros(3, 0, dtype=torch.int64),
                      6, idx)  # nothing to check


# --------------------------------------------------------------------------- incremental.py

CONCEPTS = [Concept(0, "-", "-"), Concept(1, "red", "color"), Concept(2, "car", "object"),
            Concept(3, "wheel", "part"), Concept(4, "beach", "scene")]
HAND_CAT = [-1, 0, 1, 2, 3]  # color, object, part, scene


class HandProbe(ProbeDataset):
    """Images whose first channels *are* the layer's activations (2×2), with 4×4 labels."""

    name = "hand"

    def __init__(self, acts: torch.Tensor, pix: torch.Tensor, img: torch.Tensor) -> None:
        self.acts, self.pix, self.img = acts, pix, img
        self.concepts = list(CONCEPTS)
        self.seg_size = tuple(pix.shape[-2:])

    def __len__(self) -> int:
        return self.acts.shape[0]

    def __getitem__(self, i: int) -> ProbeItem:
        if not 0 <= i < len(self):
            raise IndexError(i)
        image = torch.zeros(3, *self.acts.shape[-2:])
        image[: self.acts.shape[1]] = self.acts[i]
        return ProbeItem(image, self.pix[i], self.img[i], i)


class _Pick(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


class PickNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feat = _Pick()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x)


def replaced(new_acts: torch.Tensor, changed: torch.Tensor):
    """A transform giving images ``changed`` their new activations."""
    def transform(batch):
        image = torch.zeros_like(batch.images)
        image[:, :2] = new_acts[batch.indices]
        hit = changed[batch.indices].view(-1, 1, 1, 1)
        return torch.where(hit, image, batch.images)
    return transform


def new_pairs(new_acts: torch.Tensor, changed: torch.Tensor, cut: torch.Tensor):
    """(maps, units, images) of the changed (image, unit) pairs whose max is ≥ cut;
    ``changed`` is ``[U, N]``."""
    u, i = (changed & (new_acts.amax(dim=(2, 3)).T >= cut[:, None])).nonzero(as_tuple=True)
    return new_acts[i, u], u, i


def _labels(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pix = torch.randint(0, 4, (n, 2, 4, 4), generator=g)
    img = torch.tensor([[4], [0], [-4], [4], [0], [-2], [4], [0]])[:n]
    return pix, img


CFG = DissectConfig(eta=0.2, batch_size=3)


def _main_case():
    """8 images; unit 0's changed images get stronger, unit 1's weaker: its threshold rises
    for unit 0 and falls for unit 1."""
    g = torch.Generator().manual_seed(5)
    acts = torch.rand(8, 2, 2, 2, generator=g)
    new = acts.clone()
    new[:, 0] = acts[:, 0] + 0.6 * torch.rand(8, 2, 2, generator=g)
    new[:, 1] = acts[:, 1] * 0.3
    pix, img = _labels(8, 5)
    return HandProbe(acts, pix, img), acts, new


def _expected(acts, new, changed_u, thresholds, pix, img):
    """Per unit u, the brute-force tally of the probe as unit u sees it (its own changes)."""
    ref = {"both": [], "unit_cat": [], "unit_pixels": [], "label": None}
    for u in range(acts.shape[1]):
        seen = torch.where(changed_u[u].view(-1, 1, 1, 1), new, acts)
        r = brute_tally(seen, pix, img, thresholds, HAND_CAT, 5, 4)
        for k in ("both", "unit_cat", "unit_pixels"):
            ref[k].append(r[k][u])
        ref["label"] = r["label"]
    return ref


@pytest.mark.parametrize("pixels", [True, False], ids=["delta", "full"])
def test_shared_change_equals_the_pixel_loop_and_a_full_dissect(pixels):
    probe, acts, new = _main_case()
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True, slack=3.0)
    assert clean.state.pixels is not None
    if not pixels:  # the pixel table was over budget: the full re-tally path
        clean = dataclasses.replace(clean, state=dataclasses.replace(clean.state, pixels=None))
    changed = torch.zeros(8, dtype=torch.bool)
    changed[[1, 4, 6]] = True
    full = dissect(PickNet(), "feat", probe, CFG, transform=replaced(new, changed))
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(new, changed.expand(2, -1), clean.state.cut))
    assert inexact.tolist() == [False, False]
    assert inc.thresholds.tolist() == full.thresholds.tolist()
    level = CFG.level
    seen = torch.where(changed.view(-1, 1, 1, 1), new, acts)
    for u in range(2):
        q = torch.quantile(seen[:, u].flatten().double(), level)
        assert float(inc.thresholds[u]) == pytest.approx(float(q), rel=1e-6)
    t0, t1 = clean.thresholds, inc.thresholds
    assert t1[0] > t0[0] and t1[1] < t0[1]  # one threshold up, one down
    ref = brute_tally(seen, probe.pix, probe.img, t1, HAND_CAT, 5, 4)
    assert as_lists(inc.tally) == ref
    assert inc.tally.images == 8 and inc.tally.label is not clean.tally.label
    # the unchanged images' masks moved too (pixels between T0 and T1 on both sides)
    keep = ~changed
    at = [brute_tally(acts[keep], probe.pix[keep], probe.img[keep], t, HAND_CAT, 5, 4)
          for t in (t0, t1)]
    assert at[0]["unit_pixels"][0] > at[1]["unit_pixels"][0]
    assert at[0]["unit_pixels"][1] < at[1]["unit_pixels"][1]
    assert inc.meta == dict(clean.meta, incremental=True, inexact_units=[])
    assert inc.state is None and clean.state is not None
    assert (inc.layer, inc.concepts, inc.categories) == (clean.layer, clean.concepts,
                                                         clean.categories)


@pytest.mark.parametrize("pixels", [True, False], ids=["delta", "full"])
def test_per_unit_changes_and_a_units_subset(pixels):
    """Unit 0 sees images 1, 4, 6 changed, unit 1 images 0, 3, 4: each row equals the brute
    force on that unit's own copy. Recomputing only unit 1 leaves unit 0's threshold and
    row bit for bit the clean ones (even though its changed pairs are passed)."""
    probe, acts, new = _main_case()
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True, slack=3.0)
    if not pixels:
        clean = dataclasses.replace(clean, state=dataclasses.replace(clean.state, pixels=None))
    changed = torch.zeros(2, 8, dtype=torch.bool)
    changed[0, [1, 4, 6]] = True
    changed[1, [0, 3, 4]] = True
    pairs = new_pairs(new, changed, clean.state.cut)
    assert set(pairs[1].tolist()) == {0, 1}
    inc, inexact = redissect(clean, probe, changed, *pairs)
    assert not inexact.any()
    t1 = []
    for u in range(2):
        full = dissect(PickNet(), "feat", probe, CFG, transform=replaced(new, changed[u]))
        t1.append(float(full.thresholds[u]))
    assert inc.thresholds.tolist() == t1
    assert as_lists(inc.tally) == _expected(acts, new, changed, torch.tensor(t1), probe.pix,
                                            probe.img)
    one, inexact = redissect(clean, probe, changed, *pairs, units=torch.tensor([1]))
    assert not inexact.any()
    assert one.thresholds[0].item() == clean.thresholds[0].item()
    assert one.thresholds[1].item() == t1[1]
    for k in ("both", "unit_cat", "unit_pixels"):
        assert torch.equal(getattr(one.tally, k)[0], getattr(clean.tally, k)[0]), k
        assert torch.equal(getattr(one.tally, k)[1], getattr(inc.tally, k)[1]), k
    assert not torch.equal(inc.tally.unit_pixels[0], clean.tally.unit_pixels[0])
    assert one.tally.label.tolist() == clean.tally.label.tolist()


def test_shared_changed_equals_the_same_change_per_unit():
    probe, acts, new = _main_case()
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True, slack=3.0)
    changed = torch.zeros(8, dtype=torch.bool)
    changed[[2, 5]] = True
    pairs = new_pairs(new, changed.expand(2, -1), clean.state.cut)
    a, _ = redissect(clean, probe, changed, *pairs)
    b, _ = redissect(clean, probe, changed.expand(2, -1).clone(), *pairs)
    assert a.thresholds.tolist() == b.thresholds.tolist()
    assert as_lists(a.tally) == as_lists(b.tally)


def _tight_case():
    """Hand values, n = 6 images × 4 positions = 24 per unit; η = 0.2 reads ascending ranks
    18 and 19 (level 799/999), so the quantile needs the top m = 6 values; slack 2 keeps 12.

    Unit 0's top 12 (cut 0.50, image 5's max) are 7 on images 0–2 and 5 on images 3–5.
    Images 0–2 change: one new value equals the cut exactly, the rest fall below it, so
    exactly m = 6 values ≥ cut remain: the new threshold is exact (0.5).
    Unit 1's top 12 are all on images 0–2, and their new values fall below its cut: no value
    is left to read, so unit 1 is inexact."""
    u0 = torch.tensor([[0.90, 0.89, 0.88, 0.10], [0.87, 0.86, 0.85, 0.11],
                       [0.84, 0.12, 0.13, 0.14], [0.80, 0.79, 0.15, 0.16],
                       [0.78, 0.77, 0.17, 0.18], [0.50, 0.19, 0.20, 0.21]])
    u1 = torch.tensor([[0.71, 0.70, 0.69, 0.68], [0.67, 0.66, 0.65, 0.64],
                       [0.63, 0.62, 0.61, 0.60], [0.30, 0.02, 0.03, 0.04],
                       [0.29, 0.05, 0.06, 0.07], [0.28, 0.08, 0.09, 0.01]])
    acts = torch.stack([u0, u1], dim=1).view(6, 2, 2, 2)
    new = acts.clone()
    new[:3] = 0.05
    new[0, 0, 0, 0] = 0.50  # = unit 0's cut: counts as one of the values ≥ cut
    pix, img = _labels(6, 7)
    return HandProbe(acts, pix, img), acts, new


@pytest.mark.parametrize("pixels", [True, False], ids=["delta", "full"])
def test_inexact_unit_is_reported_and_keeps_its_clean_row(pixels):
    probe, acts, new = _tight_case()
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True)
    q = clean.state.quant
    assert (q.needed, q.capacity, q.n_total) == (6, 12, 24)
    assert clean.state.cut.tolist() == [0.5, pytest.approx(0.60)]
    if not pixels:
        clean = dataclasses.replace(clean, state=dataclasses.replace(clean.state, pixels=None))
    changed = torch.tensor([True, True, True, False, False, False])
    pairs = new_pairs(new, changed.expand(2, -1), clean.state.cut)
    assert pairs[1].tolist() == [0]  # only unit 0's image 0 reaches its cut
    full = dissect(PickNet(), "feat", probe, CFG, transform=replaced(new, changed))
    inc, inexact = redissect(clean, probe, changed, *pairs)
    assert inexact.tolist() == [False, True]
    assert inc.meta["inexact_units"] == [1] and inc.meta["incremental"] is True
    assert inc.thresholds[0].item() == full.thresholds[0].item() == 0.5
    assert inc.thresholds[1].item() == clean.thresholds[1].item()
    seen = torch.where(changed.view(-1, 1, 1, 1), new, acts)
    ref = brute_tally(seen, probe.pix, probe.img, inc.thresholds, HAND_CAT, 5, 4)
    assert as_lists(inc.tally, slice(0, 1)) == rows_of(ref, [0])
    for k in ("both", "unit_cat", "unit_pixels"):
        assert torch.equal(getattr(inc.tally, k)[1], getattr(clean.tally, k)[1]), k
    # an inexact unit outside ``units`` is neither recomputed nor reported
    only0, inexact = redissect(clean, probe, changed, *pairs, units=torch.tensor([0]))
    assert inexact.tolist() == [False, False] and only0.meta["inexact_units"] == []
    assert only0.thresholds.tolist() == inc.thresholds.tolist()
    assert as_lists(only0.tally) == as_lists(inc.tally)
    # without the value equal to the cut, only 5 values remain: unit 0 is inexact too
    fewer = new.clone()
    fewer[0, 0, 0, 0] = 0.05
    none, inexact = redissect(clean, probe, changed, *new_pairs(fewer, changed.expand(2, -1),
                                                                clean.state.cut))
    assert inexact.tolist() == [True, True] and none.meta["inexact_units"] == [0, 1]
    assert none.thresholds.tolist() == clean.thresholds.tolist()
    assert as_lists(none.tally) == as_lists(clean.tally)


def test_redissect_errors():
    probe, acts, new = _tight_case()
    changed = torch.zeros(6, dtype=torch.bool)
    args = (new[:0, 0], torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    msg = ("the clean dissection kept no incremental state "
           "(run dissect(..., keep_state=True) within its cache budget)")
    plain = dissect(PickNet(), "feat", probe, CFG)
    with _raises(msg):
        redissect(plain, probe, changed, *args)
    over = dissect(PickNet(), "feat", probe, dataclasses.replace(CFG, cache_budget_mb=1e-9),
                   keep_state=True)
    assert over.state is not None and over.state.maps is None
    with _raises(msg):
        redissect(over, probe, changed, *args)
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True)
    for bad in (torch.zeros(3, 6, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)):
        with _raises(f"changed must be [N] or [U, N] = [2, 6], got {tuple(bad.shape)}"):
            redissect(clean, probe, bad, *args)
    # a [N] of the wrong length is named by its own shape
    with _raises("changed must be [N] or [U, N] = [2, 6], got (5,)"):
        redissect(clean, probe, torch.zeros(5, dtype=torch.bool), *args)
    same, inexact = redissect(clean, probe, changed, *args)  # nothing changed: the clean run
    assert not inexact.any() and same.thresholds.tolist() == clean.thresholds.tolist()
    assert as_lists(same.tally) == as_lists(clean.tally)


def test_pad_by_unit_and_cat_maps():
    inf = float("-inf")
    out = _pad_by_unit(torch.tensor([2, 0, 2, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0]), 4)
    assert out.tolist() == [[2.0, inf, inf], [inf, inf, inf], [1.0, 3.0, 4.0], [inf, inf, inf]]
    assert _pad_by_unit(torch.zeros(0, dtype=torch.int64), torch.zeros(0), 3).shape == (3, 0)
    a, b = torch.ones(2, 3, 3), torch.zeros(1, 3, 3)
    empty = torch.empty(0, 1, 1)
    assert _cat_maps(a, empty) is a and _cat_maps(empty, b) is b
    assert _cat_maps(a, b).tolist() == torch.cat([a, b]).tolist()


def _all_values_kept():
    """The hand case with slack 4: the buffer holds every one of the 24 values per unit
    (capacity = n), so its cut is each unit's smallest value."""
    probe, acts, new = _tight_case()
    clean = dissect(PickNet(), "feat", probe, CFG, keep_state=True, slack=4.0)
    q = clean.state.quant
    assert q.capacity == q.n_total == 24
    assert clean.state.cut.tolist() == [pytest.approx(0.10), pytest.approx(0.01)]
    return probe, acts, new, clean


def test_a_buffer_holding_every_value_reads_exact_thresholds():
    probe, acts, new, clean = _all_values_kept()
    changed = torch.tensor([True, True, True, False, False, False])
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(new, changed.expand(2, -1), clean.state.cut))
    full = dissect(PickNet(), "feat", probe, CFG, transform=replaced(new, changed))
    assert inexact.tolist() == [False, False] and inc.meta["inexact_units"] == []
    assert inc.thresholds.tolist() == full.thresholds.tolist()
    assert inc.thresholds.tolist() != clean.thresholds.tolist()
    seen = torch.where(changed.view(-1, 1, 1, 1), new, acts)
    assert as_lists(inc.tally) == brute_tally(seen, probe.pix, probe.img, inc.thresholds,
                                              HAND_CAT, 5, 4)


def test_new_values_below_the_clean_minimum_are_not_silently_dropped():
    """Five of six images fall to 0, below every clean value: only 4 < m = 6 values are left
    at or above the cut. The result must be the full recompute's threshold, or the unit must
    be reported inexact — not a threshold read off the padding."""
    probe, acts, new, clean = _all_values_kept()
    changed = torch.tensor([True, True, True, True, True, False])
    low = acts.clone()
    low[:5] = 0.0
    inc, inexact = redissect(clean, probe, changed,
                             *new_pairs(low, changed.expand(2, -1), clean.state.cut))
    full = dissect(PickNet(), "feat", probe, CFG, transform=replaced(low, changed))
    for u in range(2):
        assert bool(inexact[u]) or inc.thresholds[u].item() == full.thresholds[u].item()
