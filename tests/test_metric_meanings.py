"""What each metric means, on hand cases an inverted rule cannot pass.

The cases are asymmetric on purpose: unlabelled units, labelled non-detectors, targets on only
some units and an above-chance classifier, so that a metric computed over the wrong pool or
with its test inverted gives a different number from the one written here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect.result import accuracy, compare
from nemaudit.corrupt.pgd import ConceptAttack, ConceptPGD
from nemaudit.explain.netdissect import DissectConfig, dissect_tensors
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import ProbeBatch
from tests.test_netdissect import CATS, CONCEPTS
from tests.toys import ToyNet, ToyProbe

# --------------------------------------------------------------------------- the hand case
# 5 units on 4 images of 2×2 label pixels (concepts: 1 red, 2 car, 3 beach, 4 wheel)
#   unit 0: red detector (IoU 1) that moves to wheel      → changed, source IoU drop 1
#   unit 1: car, IoU 2/3 < 0.7: labelled, not a detector  → unchanged
#   unit 2: never fires (unlabelled), then fires on red  → changed, no source concept
#   unit 3: wheel detector, unchanged
#   unit 4: car detector, unchanged


def _labels():
    pix = torch.zeros(4, 1, 2, 2, dtype=torch.int64)
    pix[0, 0, 0] = 1  # image 0: red on top
    pix[0, 0, 1] = 2  # car at the bottom
    pix[1, 0] = 2  # image 1: all car
    pix[2, 0, 0] = 4  # image 2: wheel on top
    return pix, torch.zeros(4, 0, dtype=torch.int64)


def _acts(corrupted: bool) -> torch.Tensor:
    a = torch.zeros(4, 5, 2, 2)
    if corrupted:
        a[2, 0, 0] = 1  # unit 0 now fires on the wheel
    else:
        a[0, 0, 0] = 1  # unit 0 fires on red
    a[1, 1] = 1  # unit 1: car, 4 of its 6 px: IoU 4/6
    if corrupted:
        a[0, 2, 0] = 1  # unit 2 wakes up on red
    a[2, 3, 0] = 1  # unit 3: wheel
    a[1, 4] = 1  # unit 4: car
    a[0, 4, 1] = 1
    return a


@pytest.fixture(scope="module")
def hand():
    pix, img = _labels()
    cfg = DissectConfig(iou_threshold=0.7)
    thr = torch.full((5,), 0.5)
    clean = dissect_tensors(_acts(False), pix, img, CONCEPTS, CATS, cfg, thresholds=thr)
    corr = dissect_tensors(_acts(True), pix, img, CONCEPTS, CATS, cfg, thresholds=thr)
    return clean, corr


def test_hand_case_rows_are_as_designed(hand):
    rows, _ = compare(*hand, targets={0: 4, 1: 3, 2: 2, 3: 1})
    assert [r["clean_label"] for r in rows] == ["red", "car", None, "wheel", "car"]
    assert [r["corrupted_label"] for r in rows] == ["wheel", "car", "red", "wheel", "car"]
    assert [r["clean_iou"] for r in rows] == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 1.0])
    assert [r["clean_detector"] for r in rows] == [True, False, False, True, True]
    assert [r["corrupted_detector"] for r in rows] == [True, False, True, True, True]
    assert [r["changed"] for r in rows] == [True, False, True, False, False]
    assert [r["source_iou_drop"] for r in rows] == pytest.approx([1.0, 0.0, None, 0.0, 0.0])
    assert rows[0]["source_iou_after"] == 0.0 and rows[2]["source_iou_after"] is None
    assert [r["target"] for r in rows] == ["wheel", "beach", "car", "red", None]
    assert [r["target_hit"] for r in rows] == [True, False, False, False, False]
    assert [r["clean_category"] for r in rows] == ["color", "object", None, "part", "object"]
    assert [r["clean_threshold"] for r in rows] == [0.5] * 5
    assert [r["corrupted_threshold"] for r in rows] == [0.5] * 5


def test_rates_are_over_their_own_pools(hand):
    _, m = compare(*hand, targets={0: 4, 1: 3, 2: 2, 3: 1})
    assert m["units"] == 5 and m["changed"] == 2 and m["detectors"] == 3
    assert m["flip_rate"] == pytest.approx(2 / 5)  # every unit, unlabelled ones included
    assert m["flip_rate_detectors"] == pytest.approx(1 / 3)  # clean detectors only
    # hits among the units that have a target (unit 4 has none)
    assert m["targeted_success_rate"] == pytest.approx(1 / 4)
    # mean over the units with a clean concept (labelled, detector or not), not the changed
    # ones, not only detectors, not the unlabelled unit
    assert m["mean_source_iou_drop"] == pytest.approx(1 / 4)
    assert m["per_category_flip_rate"] == {"color": 1.0, "object": 0.0, "part": 0.0,
                                           "scene": None}
    assert m["detector_share"]["clean"] == pytest.approx(
        {"color": 0.2, "object": 0.2, "part": 0.2, "scene": 0.0, "all": 0.6})
    assert m["detector_share"]["corrupted"] == pytest.approx(
        {"color": 0.2, "object": 0.2, "part": 0.4, "scene": 0.0, "all": 0.8})
    assert m["detector_share_clean"] == pytest.approx(0.6)
    assert m["detector_share_corrupted"] == pytest.approx(0.8)
    assert m["xie_table"]["clean"] == pytest.approx(
        {"C": 0.2, "S": 0.0, "P": 0.2, "O": 0.2, "All": 0.6})
    assert m["xie_table"]["corrupted"] == pytest.approx(
        {"C": 0.2, "S": 0.0, "P": 0.4, "O": 0.2, "All": 0.8})


def test_untargeted_compare_has_no_success_rate_and_unit_subsets(hand):
    rows, m = compare(*hand)
    assert "targeted_success_rate" not in m
    assert all(r["target"] is None and r["target_hit"] is False for r in rows)
    rows, m = compare(*hand, units=[2, 4])
    assert [r["unit"] for r in rows] == [2, 4]
    assert m["flip_rate"] == 0.5 and m["detectors"] == 1 and m["flip_rate_detectors"] == 0.0
    assert m["mean_source_iou_drop"] == 0.0
    rows, m = compare(*hand, units=[2])
    assert m["mean_source_iou_drop"] is None and m["flip_rate_detectors"] is None


def test_interval_counts_use_the_same_pools(hand):
    from nemaudit.audit.netdissect.result import AuditResult

    rows, m = compare(*hand, targets={0: 4, 1: 3, 2: 2, 3: 1})
    r = AuditResult("tensor", {"kind": "pgd", "targeted": True}, rows, m)
    assert r.counts("flip_rate") == (2, 5)
    assert r.counts("flip_rate_detectors") == (1, 3)
    assert r.counts("targeted_success_rate") == (1, 4)
    assert r.counts("per_category_flip_rate", ("color",)) == (1, 1)
    assert r.counts("per_category_flip_rate", ("object",)) == (0, 2)
    assert r.counts("detector_share_corrupted") == (4, 5)
    assert r.counts("detector_share", ("clean", "part")) == (1, 5)
    assert r.counts("xie_table", ("corrupted", "P")) == (2, 5)
    assert r.counts("xie_table", ("clean", "All")) == (3, 5)
    assert r.counts("mean_source_iou_drop") is None
    assert r.diff_lines() == [
        "unit    0: red (1.000) → wheel (1.000) [target wheel reached]",
        "unit    2: — (0.000) → red (1.000) [target car]"]


def test_accuracy_ignores_unlabelled_images_and_counts_correct_ones():
    pred = torch.tensor([0, 1, 1, 0, 1])
    target = torch.tensor([0, 1, 0, -1, 1])
    assert accuracy(pred, target) == pytest.approx(3 / 4)
    assert accuracy(pred, torch.full((5,), -1)) is None
    assert accuracy(torch.tensor([1, 1]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert accuracy(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0])) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- above chance

class ColourProbe(ToyProbe):
    """ToyProbe whose class is the shape's colour: 0 red, 1 blue."""

    class_names = ["red", "blue"]

    def __getitem__(self, i):
        item = super().__getitem__(i)
        colour = int(item.pixel_labels[2].max()) if item.pixel_labels.numel() else None
        if colour is None:  # images without pixel labels: read the colour off the image
            colour = 1 if item.image[0].max() > item.image[2].max() else 2
        return dataclasses.replace(item, target=colour - 1)


class ColourNet(nn.Module):
    """Dissectable conv layers (ToyNet's) and a classifier that reads the colour: accurate."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ToyNet()

    @property
    def layer2(self):
        return self.net.layer2

    def forward(self, x):
        feats = self.net.layer2(self.net.layer1(self.net.conv1(x)))
        logits = torch.stack([x[:, 0].amax(dim=(1, 2)), x[:, 2].amax(dim=(1, 2))], dim=1)
        return logits * 10 + 0 * feats.mean()


def test_accuracy_of_an_above_chance_model_and_under_corruption():
    probe = ColourProbe(20)
    model = ColourNet().eval()
    spec = "gaussian:std=0.6,fraction=0.5,seed=1"
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8))
    r = audit(model, "net.layer2", probe, spec, cfg)
    assert r.metrics["accuracy_clean"] == 1.0
    # independently: predict every (corrupted) image one by one
    from nemaudit.corrupt.spec import bound_corruption

    corr = bound_corruption(spec, probe)
    hits = []
    for i in range(len(probe)):
        it = probe[i]
        batch = ProbeBatch(it.image[None], it.pixel_labels[None], it.image_labels[None],
                           torch.tensor([i]), torch.tensor([it.target]))
        with torch.no_grad():
            hits.append(int(model(corr(batch)).argmax(1)) == it.target)
    expected = sum(hits) / len(hits)
    assert expected < 1.0  # the case moves some predictions
    assert r.metrics["accuracy_corrupted"] == pytest.approx(expected)


# --------------------------------------------------------------------------- Eq. 9

def _eq9(model, layer, images, units, src, tgt):
    """act_avg(u, s) − act_avg(u, t) written out: upsample, mask, mean over the mask."""
    with torch.no_grad(), LayerRecorder(model, [layer]) as rec:
        rec.run(images)
        f = rec[layer]
    maps = f[torch.arange(len(units)), units][:, None]
    up = F.interpolate(maps, size=src.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    out = []
    for n in range(len(units)):
        s, t = src[n].float(), tgt[n].float()
        a_s = (up[n] * s).sum() / s.sum() if s.sum() else torch.tensor(0.0)
        a_t = (up[n] * t).sum() / t.sum() if t.sum() else torch.tensor(0.0)
        out.append(float(a_s - a_t))
    return torch.tensor(out)


@pytest.fixture(scope="module")
def toy_batch():
    probe = ToyProbe(8)
    items = [probe[i] for i in (0, 1, 2, 3)]  # all with pixel labels
    return ProbeBatch(torch.stack([i.image for i in items]),
                      torch.stack([i.pixel_labels for i in items]),
                      torch.zeros(4, 0, dtype=torch.int64), torch.arange(4),
                      torch.tensor([i.target for i in items]))


def test_eq9_objective_is_source_minus_target_computed_independently(toy_batch):
    model = ToyNet().eval()
    b = toy_batch
    units = torch.tensor([0, 3, 12, 1])
    src = (b.pixel_labels == 3).any(dim=1)  # box
    src[1] = (b.pixel_labels[1] == 4).any(dim=0)  # disc on images 1 and 3
    src[3] = (b.pixel_labels[3] == 4).any(dim=0)
    tgt = ~src  # the background as a target concept
    tgt[3] = False  # an absent target contributes 0
    atk = ConceptPGD(model, "layer2", eps=8 / 255, steps=4)
    want = _eq9(model, "layer2", b.images, units, src, tgt)
    got = atk.objective(b.images, units, src, tgt)
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert (want != 0).all()
    # the source term alone when there is no target
    alone = atk.objective(b.images, units, src)
    zero = torch.zeros_like(tgt)
    assert alone == pytest.approx(_eq9(model, "layer2", b.images, units, src, zero).tolist(),
                                  abs=1e-5)
    adv, before, after = atk.run(b.images, units, src, tgt)
    assert before == pytest.approx(want.tolist(), abs=1e-5)
    assert after == pytest.approx(_eq9(model, "layer2", adv, units, src, tgt).tolist(), abs=1e-5)
    assert ((adv - b.images).abs() <= 8 / 255 + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1


def test_eq9_objective_does_not_rise_over_the_steps_per_unit(toy_batch):
    model = ToyNet().eval()
    b = toy_batch
    units = torch.tensor([1, 0, 12, 3])
    src = (b.pixel_labels == 3).any(dim=1) | (b.pixel_labels == 4).any(dim=1)
    tgt = ~src
    start = _eq9(model, "layer2", b.images, units, src, tgt)
    prev = start
    for steps in (1, 2, 4, 8):
        atk = ConceptPGD(model, "layer2", eps=16 / 255, alpha=0.5 / 255, steps=steps)
        adv, before, after = atk.run(b.images, units, src, tgt)
        now = _eq9(model, "layer2", adv, units, src, tgt)
        assert after == pytest.approx(now.tolist(), abs=1e-5)
        assert (now <= prev + 1e-6).all(), (steps, now, prev)
        prev = now
    assert (prev < start).all()  # every unit's objective went down


def test_targeted_attack_reaches_its_target_when_the_budget_allows():
    # eps = 1: the attack may repaint the images; 4 units (evenly spaced) pushed to "disc"
    cfg = AuditConfig(dissect=DissectConfig(eta=0.05, batch_size=8), max_units=4)
    spec = "pgd:eps=1.0,steps=10,targeted=true,target=disc"
    r = audit(ToyNet(seed=1), "layer2", ToyProbe(8), spec, cfg)
    assert all(x["target"] == "disc" and x["clean_label"] != "disc" for x in r.rows)
    hits = [x["target_hit"] for x in r.rows]
    assert hits == [x["corrupted_label"] == "disc" for x in r.rows]
    assert sum(hits) == 1  # this case lets one unit reach the target, not the others
    assert r.metrics["targeted_success_rate"] == pytest.approx(1 / 4)
    assert r.meta["attacked_units"] == 4
    assert r.meta["objective_mean_after"] < r.meta["objective_mean_before"]
    assert isinstance(r.context["corruption"], ConceptAttack)
