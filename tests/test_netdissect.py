"""Network Dissection tally: hand-computed IoUs, the reference oracle, and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemaudit.explain.common.masks import upsample
from nemaudit.explain.common.quantile import TopQuantile, reference_level
from nemaudit.explain.netdissect import DissectConfig, dissect_tensors, label_category
from nemaudit.explain.netdissect.tally import IoUTally, label_tally, tally_pairs
from nemaudit.probe.base import Concept
from tests.reference_netdissect import imresize_f, reference_iou, reference_tally

CONCEPTS = [Concept(0, "-", "-"), Concept(1, "red", "color"), Concept(2, "car", "object"),
            Concept(3, "beach", "scene"), Concept(4, "wheel", "part")]
CATS = ["color", "object", "part", "scene"]


def tiny_case():
    """3 images of 4x4 with 2 units; activations at the label resolution (no upsampling)."""
    pix = torch.zeros(3, 2, 4, 4, dtype=torch.int64)
    pix[0, 0, :2, :2] = 2  # car: top-left 2x2
    pix[0, 1, 0, :] = 1  # red: row 0
    img = torch.tensor([[3], [0], [3]])  # image 0 and 2 are beaches, image 1 has no labels
    acts = torch.zeros(3, 2, 4, 4)
    acts[0, 0, 0, :3] = 1.0  # 3 pixels on row 0
    acts[1, 0, 3, 3] = 1.0  # 1 pixel on an unlabelled image
    acts[2, 0, 2, 2:] = 1.0  # 2 pixels on an image with only a scene label
    return acts, pix, img


def test_hand_computed_ious():
    acts, pix, img = tiny_case()
    d = dissect_tensors(acts, pix, img, CONCEPTS, CATS, thresholds=torch.tensor([0.5, 0.5]))
    t = d.tally
    assert t.label.tolist() == [0, 4, 4, 32, 0]  # beach = two whole 4x4 images
    assert t.both[0].tolist() == [0, 3, 2, 5, 0]
    # color: only image 0 touches a colour; image 1's pixel counts for no category,
    # image 2's two pixels count only for its image-level category (scene)
    assert t.unit_cat[0].tolist() == [3, 3, 0, 5]
    iou = d.iou()
    assert iou[0, 1] == pytest.approx(3 / (3 + 4 - 3))
    assert iou[0, 2] == pytest.approx(2 / (3 + 4 - 2))
    assert iou[0, 3] == pytest.approx(5 / (5 + 32 - 5))
    assert iou[0, 4] == 0  # a concept absent from the probe
    rows = d.rows()
    assert rows[0]["label"] == "red" and rows[0]["category"] == "color"
    assert [c["concept"] for c in rows[0]["top"]] == ["red", "car", "beach"]
    # unit 1 never fires: no label, IoU 0, not a detector
    assert rows[1]["label"] is None and rows[1]["iou"] == 0 and not rows[1]["detector"]
    assert d.detectors()["per_category"] == {"color": 1, "object": 0, "part": 0, "scene": 0}


def test_ties_go_to_the_lower_concept_id():
    pix = torch.zeros(1, 2, 4, 4, dtype=torch.int64)
    pix[0, 0, 0, :2] = 2  # car on two pixels
    pix[0, 1, 0, 2:] = 4  # wheel on two other pixels
    acts = torch.zeros(1, 1, 4, 4)
    acts[0, 0, 0, :] = 1.0
    d = dissect_tensors(acts, pix, torch.zeros(1, 0, dtype=torch.int64), CONCEPTS, CATS,
                        thresholds=torch.tensor([0.5]))
    iou = d.iou()[0]
    assert iou[2] == iou[4] == pytest.approx(0.5)
    assert d.rows()[0]["label"] == "car"
    assert [c["concept"] for c in d.rows()[0]["top"]] == ["car", "wheel"]


def test_mask_is_strict_and_image_without_labels_is_counted_in_no_category():
    pix = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    pix[1, 0] = 1
    acts = torch.tensor([[[[1.0, 1.0], [0.5, 0.5]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    d = dissect_tensors(acts, pix, torch.zeros(2, 0, dtype=torch.int64), CONCEPTS, CATS,
                        thresholds=torch.tensor([0.5]))
    assert d.tally.unit_pixels.tolist() == [2]  # 0.5 is not > 0.5
    assert d.tally.unit_cat[0].tolist() == [0, 0, 0, 0]
    assert d.iou()[0, 1] == 0


def test_upsampling_matches_pil_bilinear_like_the_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 7)).astype(np.float32)
    ours = upsample(torch.from_numpy(a), (56, 56)).numpy()
    np.testing.assert_allclose(ours, imresize_f(a, (56, 56)), rtol=1e-5, atol=1e-5)


def random_probe(seed, n=12, units=6, h=7, seg=28, layers=2, n_concepts=9):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, units, h, h, generator=g).relu()
    # blob-shaped labels so masks overlap them often
    pix = torch.randint(0, n_concepts - 2, (n, layers, seg // 4, seg // 4), generator=g)
    pix = pix.repeat_interleave(4, -1).repeat_interleave(4, -2)
    pix[: n // 3] = 0  # some images carry no pixel labels
    scal = torch.randint(n_concepts - 2, n_concepts, (n, 1), generator=g)
    scal[torch.rand(n, 1, generator=g) < 0.5] = 0
    concepts = [Concept(0, "-", "-")] + [
        Concept(i, f"c{i}", ["color", "object", "part", "scene"][min(i % 3, 2) if i < n_concepts - 2 else 3])
        for i in range(1, n_concepts)]
    return acts, pix, scal, concepts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_tally_loop(seed):
    acts, pix, scal, concepts = random_probe(seed)
    cats = ["color", "object", "part", "scene"]
    d = dissect_tensors(acts, pix, scal, concepts, cats, DissectConfig(eta=0.05))
    lc = label_category(concepts, cats)
    labelcat = np.zeros((len(concepts), len(cats)), np.int64)
    labelcat[np.arange(1, len(concepts)), lc[1:].numpy()] = 1
    both, ucat, labels = reference_tally(acts.numpy(), pix.numpy(), scal.numpy(),
                                         d.thresholds.numpy(), labelcat)
    assert d.tally.both.tolist() == both.tolist()
    assert d.tally.unit_cat.tolist() == ucat.tolist()
    assert d.tally.label.tolist() == labels.tolist()
    np.testing.assert_allclose(d.iou().numpy(), reference_iou(both, ucat, labels, labelcat),
                               rtol=1e-9, atol=1e-12)
    assert (d.tally.both.sum(1) > 0).any()  # the case is not vacuous


@pytest.mark.parametrize("seed", [0, 1])
def test_zero_cells_counted_for_the_union_match_the_reference(seed):
    """Broden's image-level cells of 0, read the reference's way (a −k−1 flag: the image has
    a category-k label but a nameless one), match the port of NetDissect-Lite's tally that
    adds label 0's category to the union; read our way (no flag), the IoUs are higher."""
    acts, pix, scal, concepts = random_probe(seed)
    cats = ["color", "object", "part", "scene"]
    scene = cats.index("scene")
    g = torch.Generator().manual_seed(seed)
    flagged = torch.rand(acts.shape[0], generator=g) < 0.5
    flags = torch.where(flagged, -scene - 1, 0).to(torch.int64)[:, None]
    d = dissect_tensors(acts, pix, torch.cat([scal, flags], 1), concepts, cats,
                        DissectConfig(eta=0.05))
    plain = dissect_tensors(acts, pix, scal, concepts, cats, DissectConfig(eta=0.05),
                            thresholds=d.thresholds)
    lc = label_category(concepts, cats)
    labelcat = np.zeros((len(concepts), len(cats)), np.int64)
    labelcat[np.arange(1, len(concepts)), lc[1:].numpy()] = 1
    zero_cats = [[scene] if f else [] for f in flagged.tolist()]
    both, ucat, labels = reference_tally(acts.numpy(), pix.numpy(), scal.numpy(),
                                         d.thresholds.numpy(), labelcat, zero_cats)
    assert d.tally.both.tolist() == both.tolist() == plain.tally.both.tolist()
    assert d.tally.unit_cat.tolist() == ucat.tolist()
    assert d.tally.label.tolist() == labels.tolist() == plain.tally.label.tolist()
    scene_ids = (lc == scene).nonzero().flatten()
    assert (d.tally.unit_cat[:, scene] > plain.tally.unit_cat[:, scene]).any()
    assert (d.iou()[:, scene_ids] <= plain.iou()[:, scene_ids] + 1e-12).all()


def test_reference_quantile_level():
    assert reference_level(0.005) == pytest.approx(994 / 999)
    assert DissectConfig().level == pytest.approx(0.994995, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 400), st.floats(0.5, 1.0), st.integers(0, 2**31 - 1),
       st.integers(1, 5))
def test_streaming_quantile_is_exact_and_mergeable(units, n, level, seed, parts):
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(n, units, generator=g).round(decimals=1)  # ties on purpose
    expect = torch.quantile(vals.T.double(), level, dim=1).float()
    whole = TopQuantile.empty(units, n, level)
    whole.update(vals[:, :, None, None])
    torch.testing.assert_close(whole.readout(), expect, rtol=1e-5, atol=1e-5)
    bounds = sorted({0, n, *torch.randint(0, n + 1, (parts,), generator=g).tolist()})
    shards = []
    for a, b in zip(bounds, bounds[1:]):
        q = TopQuantile.empty(units, n, level)
        if b > a:
            q.update(vals[a:b, :, None, None])
        shards.append(q)
    merged = shards[0]
    for q in shards[1:]:
        merged = merged.merge(q)
    assert merged.count == n * 1
    torch.testing.assert_close(merged.readout(), whole.readout())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 11))
def test_iou_bounds_order_invariance_and_merge(seed, split):
    acts, pix, scal, concepts = random_probe(seed)
    cats = ["color", "object", "part", "scene"]
    full = dissect_tensors(acts, pix, scal, concepts, cats, DissectConfig(eta=0.05))
    iou = full.iou()
    assert ((iou >= 0) & (iou <= 1)).all()
    perm = torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(seed))
    shuffled = dissect_tensors(acts[perm], pix[perm], scal[perm], concepts, cats,
                               DissectConfig(eta=0.05))
    assert torch.equal(shuffled.thresholds, full.thresholds)
    for name in ("both", "unit_cat", "unit_pixels", "label"):
        assert torch.equal(getattr(shuffled.tally, name), getattr(full.tally, name))
    th = full.thresholds
    a = dissect_tensors(acts[:split], pix[:split], scal[:split], concepts, cats, thresholds=th)
    b = dissect_tensors(acts[split:], pix[split:], scal[split:], concepts, cats, thresholds=th)
    merged = a.tally + b.tally
    for name in ("both", "unit_cat", "unit_pixels", "label"):
        assert torch.equal(getattr(merged, name), getattr(full.tally, name))
    assert merged.images == full.tally.images


def test_tally_chunking_does_not_change_counts():
    acts, pix, scal, concepts = random_probe(3)
    cats = ["color", "object", "part", "scene"]
    full = dissect_tensors(acts, pix, scal, concepts, cats, DissectConfig(eta=0.05))
    lc = label_category(concepts, cats)
    t = IoUTally.zeros(acts.shape[1], len(concepts), len(cats))
    b, u = (acts.amax(dim=(2, 3)) > full.thresholds).nonzero(as_tuple=True)
    tally_pairs(acts[b, u], u, b, full.thresholds, pix, scal, lc, t, chunk=3)
    assert torch.equal(t.both, full.tally.both) and torch.equal(t.unit_cat, full.tally.unit_cat)
    assert label_tally(pix, scal, len(concepts)).tolist() == full.tally.label.tolist()


@pytest.mark.parametrize("batch_size,budget_mb", [(5, 512.0), (16, 512.0), (7, 0.0)])
def test_streaming_dissect_equals_dissecting_all_features_at_once(batch_size, budget_mb):
    """The one-pass candidate cache (and its overflow fallback: a second forward pass) give
    exactly the tally of the whole feature tensor."""
    from nemaudit.explain.netdissect import dissect
    from nemaudit.probe.base import collate
    from tests.toys import ToyNet, ToyProbe

    probe, model = ToyProbe(30), ToyNet()
    batch = collate([probe[i] for i in range(len(probe))])
    with torch.no_grad():
        acts = model.layer1(model.conv1(batch.images))
    cfg = DissectConfig(eta=0.02, batch_size=batch_size, cache_budget_mb=budget_mb)
    whole = dissect_tensors(acts, batch.pixel_labels, batch.image_labels, probe.concepts,
                            probe.categories, cfg)
    streamed = dissect(model, "layer1", probe, cfg)
    assert streamed.meta["cache_overflow"] == (budget_mb == 0.0)
    torch.testing.assert_close(streamed.thresholds, whole.thresholds, rtol=0, atol=0)
    for name in ("both", "unit_cat", "unit_pixels", "label"):
        assert torch.equal(getattr(streamed.tally, name), getattr(whole.tally, name)), name
    assert streamed.tally.both.sum() > 0
