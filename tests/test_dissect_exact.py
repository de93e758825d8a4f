"""A Dissection's readouts (rows, detectors, ranking, best concepts) on a tally written by hand,
and what dissect() and dissect_tensors() record besides the tally: exact values, with ties,
an IoU exactly at the detector threshold and a unit that never fires."""

from __future__ import annotations

import pytest
import torch

from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.explain.netdissect.dissect import (
    SCHEMA,
    CandidateCache,
    Dissection,
    dissect_tensors,
)
from nemaudit.explain.netdissect.tally import IoUTally
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import Concept
from tests.toys import ToyNet, ToyProbe

CONCEPTS = [Concept(0, "-", ""), Concept(1, "red", "colour"), Concept(2, "blue", "colour"),
            Concept(3, "box", "object")]
CATS = ["colour", "object"]


def hand_dissection(**config) -> Dissection:
    """IoU = both / (unit_cat[cat] + label − both), by unit:
    0: red 1/(1+2−1) = 0.5 and box 1/(1+2−1) = 0.5 (a tie), blue 1/(1+4−1) = 0.25;
    1: fires on nothing; 2: blue 4/(4+4−4) = 1; 3: box 1/(2+2−1) = 1/3."""
    both = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1]])
    unit_cat = torch.tensor([[1, 1], [0, 0], [4, 0], [0, 2]])
    tally = IoUTally(both, unit_cat, torch.tensor([1, 0, 4, 2]), torch.tensor([0, 2, 4, 2]), 9)
    cfg = DissectConfig(**({"iou_threshold": 0.5, "top_k": 2} | config))
    return Dissection("layerX", torch.tensor([0.1, 0.2, 0.3, 0.4]), tally, CONCEPTS, CATS, cfg)


def test_iou_ranking_and_best_by_hand():
    d = hand_dissection()
    iou = d.iou()
    assert iou[0].tolist() == [0.0, 0.5, 0.25, 0.5]
    assert iou[2].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert iou[3].tolist() == pytest.approx([0.0, 0.0, 0.0, 1 / 3])
    vals, idx = d.ranking()
    assert idx[0].tolist() == [1, 3, 2, 0]  # the tie keeps the lower id first
    assert vals[0].tolist() == [0.5, 0.5, 0.25, 0.0]
    label, best = d.best()
    assert label.tolist() == [1, 0, 2, 3]
    assert best.tolist() == pytest.approx([0.5, 0.0, 1.0, 1 / 3])
    assert d.label_category().tolist() == [-1, 0, 0, 1]


def test_rows_by_hand():
    rows = hand_dissection().rows()
    assert rows[0] == {"unit": 0, "label": "red", "category": "colour", "iou": 0.5,
                       "detector": True,  # exactly at the threshold: ≥
                       "threshold": pytest.approx(0.1), "mask_pixels": 1,
                       "top": [{"concept": "red", "category": "colour", "iou": 0.5},
                               {"concept": "box", "category": "object", "iou": 0.5}]}
    assert rows[1] == {"unit": 1, "label": None, "category": None, "iou": 0.0,
                       "detector": False, "threshold": pytest.approx(0.2), "mask_pixels": 0,
                       "top": []}
    assert rows[2]["label"] == "blue" and rows[2]["detector"] and rows[2]["mask_pixels"] == 4
    assert [t["concept"] for t in rows[2]["top"]] == ["blue"]  # IoU 0 is never listed
    assert rows[3]["label"] == "box" and not rows[3]["detector"]
    assert rows[3]["threshold"] == pytest.approx(0.4)
    assert len(hand_dissection(top_k=3).rows()[0]["top"]) == 3


def test_detectors_by_hand():
    assert hand_dissection().detectors() == {
        "per_category": {"colour": 2, "object": 0}, "total": 2, "units": 4, "share": 0.5,
        "unique_concepts": 2}
    loose = hand_dissection(iou_threshold=0.3).detectors()  # box 1/3 joins; red and blue
    assert loose == {"per_category": {"colour": 2, "object": 1}, "total": 3, "units": 4,
                     "share": 0.75, "unique_concepts": 3}
    two_reds = hand_dissection(iou_threshold=0.3)
    two_reds.tally.both[2] = torch.tensor([0, 4, 0, 0])  # unit 2 on red too: one concept
    assert two_reds.detectors()["unique_concepts"] == 2
    assert two_reds.detectors()["per_category"] == {"colour": 2, "object": 1}


def test_detector_share_of_a_one_unit_layer():
    d = hand_dissection()
    t = d.tally
    one = Dissection("l", d.thresholds[2:3], IoUTally(t.both[2:3], t.unit_cat[2:3],
                     t.unit_pixels[2:3], t.label, 9), CONCEPTS, CATS, d.config)
    assert one.detectors()["share"] == 1.0 and one.detectors()["units"] == 1


def test_to_json_carries_layer_settings_meta_and_units():
    d = hand_dissection()
    d.meta = {"probe": "hand"}
    js = d.to_json()
    assert js["schema"] == SCHEMA and js["layer"] == "layerX" and js["meta"] == {"probe": "hand"}
    assert js["settings"] == d.config.as_dict() and js["units"] == d.rows()
    assert js["detectors"] == d.detectors() and js["thresholds"] == pytest.approx(
        [0.1, 0.2, 0.3, 0.4])


def test_dissect_records_layer_config_and_meta():
    probe, model = ToyProbe(12), NormalizedModel(ToyNet(), "none")
    cfg = DissectConfig(eta=0.02, batch_size=5)
    d = dissect(model, "layer2", probe, cfg)
    assert d.layer == "layer2" and d.config is cfg
    assert d.meta == {"probe": "toy", "images": 12, "cache_overflow": False}
    assert d.tally.images == 12 and d.categories == probe.categories
    assert [c.name for c in d.concepts] == [c.name for c in probe.concepts]


def test_dissect_tensors_defaults_and_label_check():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(3, 2, 4, 4, generator=g)
    pix = torch.randint(0, 4, (3, 1, 8, 8), generator=g)
    img = torch.zeros(3, 0, dtype=torch.int64)
    concepts = [Concept(0, "-", ""), Concept(1, "sky", "scene"), Concept(2, "red", "colour"),
                Concept(3, "box", "object")]
    d = dissect_tensors(acts, pix, img, concepts)
    assert d.layer == "tensor" and d.categories == ["scene", "colour", "object"]
    assert d.tally.images == 3
    bad = pix.clone()
    bad[2, 0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"^probe image 2: pixel label\(s\) \[9\] are not in "
                                         r"the concept table \(ids 0\.\.3\)$"):
        dissect_tensors(acts, bad, img, concepts)


class _BadLabelAt7(ToyProbe):
    def __getitem__(self, i):
        it = super().__getitem__(i)
        if i == 7:
            it.pixel_labels[0, 0, 0] = 99
        return it


def test_dissect_names_the_probe_image_with_a_label_outside_the_table():
    probe, model = _BadLabelAt7(12), NormalizedModel(ToyNet(), "none")
    with pytest.raises(ValueError, match=r"^probe image 7: pixel label\(s\) \[99\] are not"):
        dissect(model, "layer2", probe, DissectConfig(batch_size=5))


def test_candidate_cache_concatenates_its_chunks_once():
    cache = CandidateCache(2**30)
    bound = torch.full((3,), -1.0)
    first = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    cache.add(first, torch.tensor([0, 1]), bound)
    cache.add(first + 100, torch.tensor([2, 3]), bound)
    maps, units, images, maxes = cache.tensors()
    assert maps.shape == (12, 2, 2) and cache.nbytes == 12 * 4 * 4
    assert images.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert units.tolist() == [0, 1, 2] * 4
    assert torch.equal(maxes, maps.amax(dim=(1, 2)))
    again = cache.tensors()  # the second call reads the one concatenated chunk
    assert all(torch.equal(a, b) for a, b in zip(again, (maps, units, images, maxes)))


def test_settings_report_the_level_actually_read():
    cfg = DissectConfig(eta=0.01, iou_threshold=0.07, top_k=3, batch_size=9)
    assert cfg.as_dict() == {"eta": 0.01, "quantile_level": 989 / 999, "iou_threshold": 0.07,
                             "top_k": 3}
    assert DissectConfig(quantile_level=0.99).as_dict()["quantile_level"] == 0.99
    assert DissectConfig().as_dict() == {"eta": 0.005, "quantile_level": 994 / 999,
                                         "iou_threshold": 0.04, "top_k": 5}


def test_an_empty_candidate_cache_gives_empty_tensors_of_the_right_kinds():
    maps, units, images, maxes = CandidateCache(1024).tensors()
    assert maps.shape == (0, 1, 1) and maps.dtype == torch.float32
    assert units.shape == images.shape == maxes.shape == (0,)
    assert units.dtype == images.dtype == torch.int64 and maxes.dtype == torch.float32


def test_pixel_table_round_trips_through_its_dict(toy_state):
    table = toy_state.pixels
    again = type(table)(**table.to_dict()).to("cpu")
    for name, t in table.to_dict().items():
        assert torch.equal(getattr(again, name), t), name
    assert set(table.to_dict()) == {"pair", "value", "labels", "scalars", "offsets", "key",
                                    "key_pair", "pair_key"}


@pytest.fixture(scope="module")
def toy_state():
    probe, model = ToyProbe(12), NormalizedModel(ToyNet(), "none")
    d = dissect(model, "layer2", probe, DissectConfig(eta=0.05, batch_size=5), keep_state=True)
    assert d.state is not None and d.state.pixels is not None
    return d.state


# --------------------------------------------------------------------------- progress, dtypes

class _Progress:
    """Records what dissect() asks the progress bar: (description, total, enabled), and the
    advances of each bar."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int, bool]] = []
        self.advances: list[list[int]] = []

    def __call__(self, description, total, enabled=True):
        import contextlib

        self.bars.append((description, total, enabled))
        steps: list[int] = []
        self.advances.append(steps)
        task = type("T", (), {"advance": lambda _, n=1: steps.append(n)})()
        return contextlib.nullcontext(task)


@pytest.mark.parametrize("overflow", [False, True])
def test_dissect_reports_progress_per_image_on_each_pass(monkeypatch, overflow):
    import importlib

    mod = importlib.import_module("nemaudit.explain.netdissect.dissect")
    bar = _Progress()
    monkeypatch.setattr(mod, "progress_task", bar)
    probe, model = ToyProbe(12), NormalizedModel(ToyNet(), "none")
    cfg = DissectConfig(eta=0.02, batch_size=5, cache_budget_mb=1e-6 if overflow else 512.0)
    d = dissect(model, "layer2", probe, cfg, progress=True)
    assert d.meta["cache_overflow"] is overflow
    want = [("dissect layer2", 12, True)]
    if overflow:
        want.append(("tally layer2 (2nd pass)", 12, True))
    assert bar.bars == want
    assert bar.advances == [[5, 5, 2]] * len(want)  # images per batch, as they are done
    dissect(model, "layer2", probe, cfg)
    assert [b[2] for b in bar.bars[len(want):]] == [False] * len(want)  # quiet by default


def test_dissect_counts_label_areas_in_integers():
    probe, model = ToyProbe(12), NormalizedModel(ToyNet(), "none")
    d = dissect(model, "layer2", probe, DissectConfig(eta=0.02, batch_size=5))
    assert d.tally.label.dtype == torch.int64
    want = torch.zeros(len(probe.concepts), dtype=torch.int64)
    for i in range(len(probe)):
        it = probe[i]
        for layer in it.pixel_labels:
            want += torch.bincount(layer.flatten(), minlength=len(want))
        # an image-level label covers the whole segmentation (NetDissect-Lite's scalars)
        want += torch.bincount(it.image_labels, minlength=len(want)) * 16 * 16
    want[0] = d.tally.label[0]  # id 0 (no label) is not an area
    assert torch.equal(d.tally.label, want)


# --------------------------------------------------------------------------- pixel table

def _args(state, probe):
    return (state.maps, state.units, state.images, state.cut, probe, 5, torch.device("cpu"))


def test_pixel_table_budget_counts_every_chunk_up_to_its_edge(toy_state):
    """36 bytes and 4 per label layer an entry, summed over every chunk: a budget of exactly
    that builds the table, one byte less refuses it."""
    from nemaudit.explain.netdissect.dissect import pixel_table

    probe, table = ToyProbe(12), toy_state.pixels
    need = table.value.numel() * (36 + 4 * table.labels.shape[1])
    full = pixel_table(*_args(toy_state, probe), need, chunk=3)
    assert full is not None
    for name, t in table.to_dict().items():
        assert torch.equal(getattr(full, name), t), name
    assert pixel_table(*_args(toy_state, probe), need - 1, chunk=3) is None


def test_pixel_table_of_maps_not_above_the_cut_is_empty_but_well_formed():
    """A map equal to its unit's cut (a dead unit: zeros, cut 0) has no mask pixel, since the
    mask is ``> T`` strictly; the table keeps each pair's image-level labels."""
    from nemaudit.explain.netdissect.dissect import pixel_table

    maps = torch.zeros(3, 2, 2)
    units, images = torch.tensor([0, 1, 0]), torch.tensor([2, 0, 3])
    t = pixel_table(maps, units, images, torch.zeros(2), ToyProbe(4), 2, torch.device("cpu"),
                    1e9)
    assert t is not None
    for name in ("pair", "key", "key_pair", "pair_key"):
        got = getattr(t, name)
        assert got.shape == (0,) and got.dtype == torch.int64, name
    assert t.value.shape == (0,) and t.value.dtype == torch.float32
    assert t.labels.shape == (0, 3) and t.labels.dtype == torch.int32
    assert t.scalars.tolist() == [[0], [6], [6]]  # images 2, 0, 3: none, [6], [6]
    assert t.offsets.tolist() == [0, 0, 0, 0] and t.offsets.dtype == torch.int64
    out = IoUTally.zeros(2, len(ToyProbe(4).concepts), 2)
    t.tally(torch.ones(3, dtype=torch.bool), units, torch.zeros(2),
            torch.zeros(len(ToyProbe(4).concepts), dtype=torch.int64), out)
    assert int(out.unit_pixels.sum()) == 0


def test_pixel_table_of_no_pairs():
    from nemaudit.explain.netdissect.dissect import pixel_table

    z = torch.empty(0, dtype=torch.int64)
    t = pixel_table(torch.empty(0, 1, 1), z, z, torch.zeros(2), ToyProbe(4), 2,
                    torch.device("cpu"), 1e9)
    assert t.labels.shape == (0, 0) and t.labels.dtype == torch.int32
    assert t.scalars.shape == (0, 0) and t.scalars.dtype == torch.int64
    assert t.offsets.tolist() == [0] and t.offsets.dtype == torch.int64
    for name in ("pair", "key", "key_pair", "pair_key"):
        got = getattr(t, name)
        assert got.shape == (0,) and got.dtype == torch.int64, name
    assert t.value.shape == (0,) and t.value.dtype == torch.float32
    assert t.between(torch.zeros(2), torch.ones(2), torch.tensor([0, 1])).shape == (0,)


def test_the_cache_budget_is_in_mebibytes():
    assert DissectConfig(cache_budget_mb=1.5).cache_budget_bytes == 1.5 * 1024 * 1024
    assert DissectConfig().cache_budget_bytes == 512 * 2**20


@pytest.mark.parametrize("spare, built", [(0, True), (-1, False)])
def test_a_kept_state_s_pixel_table_gets_half_the_cache_budget(toy_state, spare, built):
    """The table needs E·(36 + 4L) bytes: a cache budget of exactly twice that builds it, one
    byte less leaves it out (the candidate maps, far smaller, fit either way)."""
    table = toy_state.pixels
    need = table.value.numel() * (36 + 4 * table.labels.shape[1])
    assert toy_state.maps.numel() * 4 < need  # the candidate cache itself fits
    cfg = DissectConfig(eta=0.05, batch_size=5, cache_budget_mb=(2 * need + spare) / 2**20)
    d = dissect(NormalizedModel(ToyNet(), "none"), "layer2", ToyProbe(12), cfg, keep_state=True)
    assert not d.meta["cache_overflow"] and d.state.maps is not None
    assert (d.state.pixels is not None) is built


@pytest.mark.parametrize("start, stop, want", [
    ([2, 5], [3, 5], [2]),  # exactly one position
    ([0, 4], [2, 7], [0, 1, 4, 5, 6]),
    ([3, 1], [1, 2], [1]),  # a negative size counts as empty
    ([4], [4], []),
    ([], [], []),
])
def test_ranges_concatenates_each_start_to_stop(start, stop, want):
    from nemaudit.explain.netdissect.dissect import _ranges

    got = _ranges(torch.tensor(start, dtype=torch.int64), torch.tensor(stop, dtype=torch.int64))
    assert got.tolist() == want and got.dtype == torch.int64
