"""BrodenProbe / write_broden / export_probe / load_probe: round trips, format rules, bad input."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nemaudit.errors import ProbeFormatError, SpecError
from nemaudit.probe import (
    BrodenProbe,
    Concept,
    FolderProbe,
    ProbeDataset,
    ProbeItem,
    collate,
    export_probe,
    load_probe,
    write_broden,
)
from nemaudit.probe.broden import read_label_png, write_label_png

CONCEPTS = [("red-c", "color"), ("dog", "object"), ("cat", "object"), ("wood", "material"),
            ("ear", "part"), ("leg", "part"), ("street-s", "scene"), ("kitchen-s", "scene"),
            ("striped", "texture")]
RED, DOG, CAT, WOOD, EAR, LEG, STREET, KITCHEN, STRIPED = range(1, 10)
PIXEL_COLUMNS = ("color", "object", "material", "part")
SEG = (4, 5)


def make_data(n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(rng.integers(0, 256, (3, 8, 10)).astype(np.float32) / 255)
              for _ in range(n)]
    pixel, scalar = [], []
    for i in range(n):
        d = {"object": [rng.choice([0, DOG, CAT], size=SEG)]}
        if i % 2 == 0:  # two part layers in one cell
            d["part"] = [rng.choice([0, EAR], size=SEG), rng.choice([0, LEG], size=SEG)]
        if i % 3 == 0:
            d["color"] = [np.full(SEG, RED)]
        pixel.append(d)
        scalar.append({"scene": [STREET if i % 2 else KITCHEN],
                       "texture": [STRIPED] if i == 1 else []})
    return images, pixel, scalar


def expected_layers(d: dict) -> list[np.ndarray]:
    return [m for cat in PIXEL_COLUMNS for m in d.get(cat, [])]


@pytest.fixture
def broden(tmp_path: Path):
    images, pixel, scalar = make_data()
    root = write_broden(tmp_path / "broden", images, pixel, scalar, CONCEPTS)
    return root, images, pixel, scalar


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    rows = read_rows(path)
    rows[line - 1][rows[0].index(column)] = value
    write_rows(path, rows)


def drop_column(path: Path, column: str) -> None:
    rows = read_rows(path)
    k = rows[0].index(column)
    write_rows(path, [r[:k] + r[k + 1:] for r in rows])


@contextmanager
def raises_naming(*needles: str) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises(ProbeFormatError) that also checks the message mentions every needle."""
    with pytest.raises(ProbeFormatError) as info:
        yield info
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {str(info.value)!r}"


# --------------------------------------------------------------------------- round trips


def test_round_trip_identical_tensors(broden):
    root, images, pixel, scalar = broden
    probe = BrodenProbe(root)
    assert len(probe) == 4
    assert probe.seg_size == SEG and probe.image_size == (8, 10)
    assert [(c.id, c.name, c.category) for c in probe.concepts] == (
        [(0, "-", "-")] + [(i, n, c) for i, (n, c) in enumerate(CONCEPTS, start=1)])
    for i in range(4):
        item = probe[i]
        assert item.index == i and item.target == -1
        assert item.image.dtype == torch.float32 and torch.equal(item.image, images[i])
        assert item.pixel_labels.dtype == torch.int64
        want = torch.from_numpy(np.stack(expected_layers(pixel[i])).astype(np.int64))
        assert torch.equal(item.pixel_labels, want)
        want_scalar = scalar[i]["scene"] + scalar[i]["texture"]
        assert item.image_labels.tolist() == want_scalar
    batch = collate([probe[i] for i in range(4)])
    assert batch.pixel_labels.shape == (4, 4, *SEG)  # image 0: color + object + 2 parts
    assert batch.image_labels.tolist()[1] == [STREET, STRIPED]


def test_several_pngs_per_cell_are_stacked(broden):
    root, _, pixel, _ = broden
    index = read_rows(root / "index.csv")
    part_cell = index[1][index[0].index("part")]
    assert len(part_cell.split(";")) == 2
    item = BrodenProbe(root)[0]
    assert item.pixel_labels.shape[0] == 4
    assert torch.equal(item.pixel_labels[2], torch.from_numpy(pixel[0]["part"][0]))
    assert torch.equal(item.pixel_labels[3], torch.from_numpy(pixel[0]["part"][1]))
    assert BrodenProbe(root)[1].pixel_labels.shape[0] == 1  # object only


def test_label_png_encoding_r_plus_256g(tmp_path: Path):
    lab = np.array([[0, 1, 255], [256, 300, 65535]])
    write_label_png(tmp_path / "l.png", lab)
    rgb = np.asarray(Image.open(tmp_path / "l.png"))
    assert rgb[1, 1].tolist() == [300 % 256, 300 // 256, 0]
    assert np.array_equal(read_label_png(tmp_path / "l.png"), lab)


def test_writer_accepts_uint8_hwc_and_rejects_wrong_category(tmp_path: Path):
    img = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    root = write_broden(tmp_path / "a", [img], [{"object": [np.full((6, 7), DOG)]}], None, CONCEPTS)
    item = BrodenProbe(root)[0]
    assert torch.equal(item.image, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    assert item.pixel_labels.shape == (1, 6, 7)
    with pytest.raises(ValueError, match="not in category 'object'"):
        write_broden(tmp_path / "b", [img], [{"object": [np.full((6, 7), EAR)]}], None, CONCEPTS)


def _rewrite_wood(root: Path, cell: str, cov: dict[str, float] | None) -> None:
    """Make label WOOD belong to material and object, with the given c_ coverages."""
    set_cell(root / "label.csv", WOOD + 1, "category", cell)
    for cat in ("object", "material"):
        header = ["code", "number", "name"] + (["coverage"] if cov is not None else [])
        members = [k for k, (_, c) in enumerate(CONCEPTS, start=1) if c == cat]
        if cat == "object":
            members.append(WOOD)
        rows = [header]
        for code, k in enumerate(members, start=1):
            row = [str(code), str(k), CONCEPTS[k - 1][0]]
            if cov is not None:
                row.append(str(cov[cat]) if k == WOOD else "1.0")
            rows.append(row)
        write_rows(root / f"c_{cat}.csv", rows)


def test_primary_category_by_coverage_then_count_then_order(broden):
    root = broden[0]
    # reference rule: largest coverage in c_<cat>.csv wins, whatever label.csv's counts say
    _rewrite_wood(root, "object(9);material(2)", {"object": 0.5, "material": 3.0})
    assert BrodenProbe(root).concepts[WOOD].category == "material"
    # no coverage: the largest label.csv count wins
    _rewrite_wood(root, "material(2);object(9)", None)
    assert BrodenProbe(root).concepts[WOOD].category == "object"
    # tie: first listed
    _rewrite_wood(root, "material(4);object(4)", None)
    assert BrodenProbe(root).concepts[WOOD].category == "material"
    # category selection: primary among the selected categories
    _rewrite_wood(root, "object(9);material(2)", {"object": 0.5, "material": 3.0})
    probe = BrodenProbe(root, categories=["object", "scene"])
    assert probe.concepts[WOOD].category == "object"
    assert probe.concepts[EAR].category == "part"  # in no selected category: unchanged


def test_scene_zero_is_ignored_and_unlabelled_rows_dropped(broden):
    root = broden[0]
    set_cell(root / "index.csv", 2, "scene", "0;8")
    rows = read_rows(root / "index.csv")
    extra = rows[1][:6] + [""] * (len(rows[0]) - 6)
    extra[rows[0].index("scene")] = "0"
    write_rows(root / "index.csv", rows + [extra])
    probe = BrodenProbe(root)
    assert len(probe) == 4  # the "0"-only row has no label: dropped, as in the reference
    assert probe[0].image_labels.tolist() == [KITCHEN]
    assert all(0 not in probe[i].image_labels.tolist() for i in range(len(probe)))
    kept = BrodenProbe(root, keep_unlabelled=True)
    assert len(kept) == 5
    assert kept[4].image_labels.numel() == 0 and kept[4].pixel_labels.shape == (0, *SEG)
    # read the reference's way, a cell's 0 flags its category (−k−1) and scores no label
    ref = load_probe(f"broden:{root},zero_labels=reference")
    scene = -ref.categories.index("scene") - 1
    assert ref[0].image_labels.tolist() == [KITCHEN, scene]
    assert [scene not in ref[i].image_labels.tolist() for i in range(1, 4)] == [True] * 3
    assert ref.fingerprint() != probe.fingerprint()
    with pytest.raises(SpecError, match="zero_labels='scene'"):
        load_probe(f"broden:{root},zero_labels=scene")


def test_split_filtering_and_max_images(tmp_path: Path):
    images, pixel, scalar = make_data(n=5)
    splits = ["train", "val", "train", "val", "val"]
    root = write_broden(tmp_path / "b", images, pixel, scalar, CONCEPTS, split=splits)
    val = BrodenProbe(root, split="val")
    assert len(val) == 3
    for j, i in enumerate([1, 3, 4]):
        assert torch.equal(val[j].image, images[i]) and val[j].index == j
    assert len(BrodenProbe(root, split="train")) == 2
    assert len(BrodenProbe(root, split="val", max_images=2)) == 2
    assert len(BrodenProbe(root)) == 5
    with raises_naming("index.csv", "split='test'", "train (2)", "val (3)"):
        BrodenProbe(root, split="test")


def test_category_selection(broden):
    root, _, pixel, _ = broden
    probe = BrodenProbe(root, categories=["object"])
    assert probe.selected_categories == ("object",)
    assert len(probe.concepts) == len(CONCEPTS) + 1  # ids stay label.csv numbers
    item = probe[0]
    assert torch.equal(item.pixel_labels, torch.from_numpy(np.stack(pixel[0]["object"])))
    assert item.image_labels.numel() == 0
    with pytest.raises(SpecError, match="valid: color, object"):
        BrodenProbe(root, categories=["objects"])


def test_fingerprint_tracks_content(broden, tmp_path: Path):
    root = broden[0]
    fp = BrodenProbe(root).fingerprint()
    assert fp == BrodenProbe(root).fingerprint()
    copy = shutil.copytree(root, tmp_path / "copy")
    assert BrodenProbe(copy).fingerprint() == fp  # the path is not part of the identity
    assert BrodenProbe(root, max_images=3).fingerprint() != fp
    assert BrodenProbe(root, categories=["object"]).fingerprint() != fp
    set_cell(copy / "label.csv", DOG + 1, "name", "puppy")
    assert BrodenProbe(copy).fingerprint() != fp
    copy2 = shutil.copytree(root, tmp_path / "copy2")
    set_cell(copy2 / "index.csv", 3, "scene", "8")
    assert BrodenProbe(copy2).fingerprint() != fp
    copy3 = shutil.copytree(root, tmp_path / "copy3")
    Image.new("RGB", (10, 8), (1, 2, 3)).save(copy3 / "images" / "nemaudit" / "000001.png")
    assert BrodenProbe(copy3).fingerprint() != fp  # same size image, other bytes length


class _MixedProbe(ProbeDataset):
    """Two items whose single label layer mixes an object and a colour."""

    name = "mixed"

    def __init__(self) -> None:
        self.concepts = [Concept(0, "-", "-"), Concept(1, "red-c", "color"),
                         Concept(2, "dog", "object"), Concept(3, "beach", "scene")]
        self.seg_size = (3, 4)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> ProbeItem:
        layer = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0], [1, 0, 0, 2]]) * (i + 1) % 3
        return ProbeItem(image=torch.full((3, 6, 8), (i + 1) / 255), pixel_labels=layer[None],
                         image_labels=torch.tensor([3, 0] if i == 0 else []), index=i)


def test_export_probe_preserves_per_pixel_labels(tmp_path: Path):
    src = _MixedProbe()
    root = export_probe(src, tmp_path / "x")
    probe = BrodenProbe(root, keep_unlabelled=True)
    assert [(c.name, c.category) for c in probe.concepts] == [(c.name, c.category) for c in src.concepts]
    assert len(probe) == 2
    for i in range(2):
        a, b = src[i], probe[i]
        assert torch.equal(a.image, b.image)
        merged = b.pixel_labels.sum(0)  # the layers split by category never overlap here
        assert torch.equal(merged, a.pixel_labels[0])
        assert sorted(b.image_labels.tolist()) == sorted(v for v in a.image_labels.tolist() if v)
    assert len(BrodenProbe(export_probe(src, tmp_path / "y", n=1))) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["index.csv", "label.csv", "category.csv", "c_part.csv"])
def test_missing_csv(broden, name):
    root = broden[0]
    (root / name).unlink()
    with raises_naming(name, "missing"):
        BrodenProbe(root)


@pytest.mark.parametrize(("name", "column"), [("index.csv", "sh"), ("label.csv", "category"),
                                              ("category.csv", "name"), ("c_object.csv", "code"),
                                              ("index.csv", "texture")])
def test_missing_column(broden, name, column):
    root = broden[0]
    drop_column(root / name, column)
    with raises_naming(name, f"'{column}'", "line 1"):
        BrodenProbe(root)


def test_malformed_rows(broden):
    root = broden[0]
    index, label = root / "index.csv", root / "label.csv"
    saved = {p: p.read_bytes() for p in (index, label, root / "c_object.csv")}

    def restore():
        for p, data in saved.items():
            p.write_bytes(data)

    rows = read_rows(index)
    rows[2].append("extra")
    write_rows(index, rows)
    with raises_naming("index.csv", "line 3", "13 cells"):
        BrodenProbe(root)
    restore()
    set_cell(index, 2, "ih", "abc")
    with raises_naming("index.csv", "line 2", "'ih'", "abc"):
        BrodenProbe(root)
    restore()
    set_cell(label, 4, "number", "3x")
    with raises_naming("label.csv", "line 4", "'number'"):
        BrodenProbe(root)
    restore()
    set_cell(label, 3, "category", "object[3]")
    with raises_naming("label.csv", "line 3", "object[3]"):
        BrodenProbe(root)
    restore()
    set_cell(label, 3, "category", "animal(3)")
    with raises_naming("label.csv", "line 3", "animal"):
        BrodenProbe(root)
    restore()
    set_cell(root / "c_object.csv", 2, "code", "one")
    with raises_naming("c_object.csv", "line 2", "'code'"):
        BrodenProbe(root)
    restore()
    set_cell(index, 3, "sh", "5")
    with raises_naming("index.csv", "line 3", "line 2"):
        BrodenProbe(root)


def test_label_numbers_must_be_contiguous(broden):
    root = broden[0]
    rows = read_rows(root / "label.csv")
    write_rows(root / "label.csv", rows[:3] + rows[4:])  # drop number 3
    with raises_naming("label.csv", "1..9", "missing 3"):
        BrodenProbe(root)
    rows[4][0] = "2"
    write_rows(root / "label.csv", rows)
    with raises_naming("label.csv", "line 5", "line 3"):
        BrodenProbe(root)


def test_image_level_label_not_in_label_csv(broden):
    root = broden[0]
    set_cell(root / "index.csv", 3, "scene", "7;42")
    with raises_naming("index.csv", "line 3", "42", "label.csv"):
        BrodenProbe(root)


def test_corrupt_and_missing_files_raise_on_load(broden):
    root = broden[0]
    img_dir = root / "images" / "nemaudit"
    (img_dir / "000000_object_0.png").write_bytes(b"not a png at all")
    data = (img_dir / "000001.png").read_bytes()
    (img_dir / "000001.png").write_bytes(data[: len(data) // 2])
    (img_dir / "000002.png").unlink()
    probe = BrodenProbe(root)  # nothing but the CSVs is read here
    with raises_naming("000000_object_0.png"):
        probe[0]
    with raises_naming("000001.png"):
        probe[1]
    with raises_naming("000002.png", "missing"):
        probe[2]
    probe[3]


def test_bad_png_values_and_sizes(broden):
    root = broden[0]
    img_dir = root / "images" / "nemaudit"
    write_label_png(img_dir / "000000_object_0.png", np.full(SEG, 99))
    write_label_png(img_dir / "000001_object_0.png", np.zeros((3, 3), dtype=np.int64))
    Image.new("RGB", (6, 6)).save(img_dir / "000002.png")
    probe = BrodenProbe(root)
    with raises_naming("000000_object_0.png", "99", "index.csv, line 2", "label.csv"):
        probe[0]
    with raises_naming("000001_object_0.png", "sh,sw = 4,5"):
        probe[1]
    with raises_naming("000002.png", "ih,iw = 8,10"):
        probe[2]


def test_empty_probe_and_missing_root(tmp_path: Path, broden):
    root = broden[0]
    rows = read_rows(root / "index.csv")
    write_rows(root / "index.csv", rows[:1])
    with raises_naming("index.csv", "no images"):
        BrodenProbe(root)
    with raises_naming("nowhere", "no such directory"):
        BrodenProbe(tmp_path / "nowhere")


# --------------------------------------------------------------------------- load_probe


def test_load_probe_specs(broden, tmp_path: Path):
    root = broden[0]
    probe = load_probe(f"broden:{root}")
    assert isinstance(probe, BrodenProbe) and len(probe) == 4
    probe = load_probe(f"broden:{root},split=train,max=2,categories=object;part")
    assert len(probe) == 2 and probe.split == "train"
    assert probe.selected_categories == ("object", "part")
    Image.new("RGB", (5, 4)).save(tmp_path / "a.png")
    folder = load_probe(f"folder:{tmp_path},image_size=6,seg_size=3")
    assert isinstance(folder, FolderProbe) and folder.seg_size == (3, 3)


@pytest.mark.parametrize(("spec", "needles"), [
    ("", ["broden:PATH"]),
    ("imagenet:/x", ["'imagenet'", "broden:PATH", "folder:PATH", "synthetic:"]),
    ("broden:", ["needs a PATH"]),
    ("broden:/x,splt=val", ["'splt'", "split, max, categories"]),
    ("broden:/x,max=ten", ["max", "'ten'", "integer"]),
    ("broden:/x,max=0", ["max", ">= 1"]),
    ("broden:/x,split=a,split=b", ["'split'", "twice"]),
    ("broden:/x,val", ["key=value", "'val'"]),
    ("broden:/x,split=", ["'split'", "empty"]),
    ("folder:/x,image_size=-2", ["image_size", ">= 1"]),
    ("synthetic:n=abc", ["n='abc' must be an integer"]),
    ("synthetic:n=10,colour=3", ["'colour'", "n, seed, image_size, seg_size"]),
])
def test_load_probe_spec_errors(spec, needles):
    with pytest.raises(SpecError) as info:
        load_probe(spec)
    for needle in needles:
        assert needle in str(info.value)


def test_load_probe_synthetic():
    synthetic = pytest.importorskip("nemaudit.probe.synthetic")
    probe = load_probe("synthetic:n=4,seed=1,image_size=32,seg_size=16")
    assert isinstance(probe, synthetic.SyntheticProbe) and len(probe) == 4
