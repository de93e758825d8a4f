"""``check_label_range``: labels outside the concept table name the first offending probe
image, the kind of label and (up to five of) the bad ids; valid ids, image-level category
flags (−k−1) and empty label tensors pass."""

from __future__ import annotations

import torch

from nemaudit.explain.netdissect.tally import check_label_range
from tests.helpers import raises_exactly


def _raises(msg: str):
    return raises_exactly(ValueError, msg)


def test_pixel_labels_out_of_range_name_the_first_bad_image():
    pix = torch.zeros(3, 1, 2, 2, dtype=torch.int64)
    pix[0, 0] = torch.tensor([[4, 0], [1, 4]])  # 4 = concepts - 1: valid
    pix[1, 0] = torch.tensor([[5, 7], [6, 5]])
    pix[2, 0, 0, 0] = 9
    none = torch.zeros(3, 0, dtype=torch.int64)
    idx = torch.tensor([10, 11, 12])
    with _raises("probe image 11: pixel label(s) [5, 6, 7] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(pix, none, 5, idx)
    check_label_range(pix[:1], none[:1], 5, idx[:1])  # the valid image alone passes
    many = torch.arange(5, 13).reshape(1, 2, 2, 2)  # 8 bad ids in one image: 5 are named
    with _raises("probe image 3: pixel label(s) [5, 6, 7, 8, 9] are not in the concept "
                 "table (ids 0..4)"):
        check_label_range(many, none[:1], 5, torch.tensor([3]))
    with _raises("probe image 0: pixel label(s) [5] are not in the concept table (ids 0..4)"):
        check_label_range(torch.tensor([[[[5]]]]), none[:1], 5, torch.tensor([0]))
    with _raises("probe image 0: pixel label(s) [-1] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(torch.tensor([[[[-1]]]]), none[:1], 5, torch.tensor([0]))


def test_image_labels_may_flag_categories():
    pix = torch.zeros(2, 0, 2, 2, dtype=torch.int64)  # no pixel labels: images still checked
    idx = torch.tensor([20, 21])
    check_label_range(pix, torch.tensor([[1], [-1]]), 5, idx, categories=1)  # −1: category 0
    with _raises("probe image 21: image-level label(s) [-2] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(pix, torch.tensor([[1], [-2]]), 5, idx, categories=1)
    with _raises("probe image 21: image-level label(s) [-1] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(pix, torch.tensor([[1], [-1]]), 5, idx)  # no categories by default
    with _raises("probe image 20: image-level label(s) [5] are not in the concept table "
                 "(ids 0..4)"):
        check_label_range(pix, torch.tensor([[5], [0]]), 5, idx)


def test_image_level_label_one_counts_and_a_one_pixel_union_scores_one():
    """Hand case: concept 1 is an image-level (scene) label of the only image; the unit fires
    on exactly one pixel of a 2×2 label map. label[1] = 4 (the whole image), both[u, 1] =
    1 (the mask's one pixel), unit_cat[u, scene] = 1 — and a unit whose mask is the one
    pixel of a one-pixel concept has union 1 and IoU exactly 1."""
    from nemaudit.explain.netdissect.tally import IoUTally, label_tally, tally_pairs

    pix = torch.tensor([[[[2, 0], [0, 0]]]])  # concept 2 (object) on pixel (0, 0)
    scal = torch.tensor([[1]])  # concept 1 (scene) on the whole image
    assert label_tally(pix, scal, 3).tolist() == [0, 4, 1]
    out = IoUTally.zeros(1, 3, 2)
    lab_cat = torch.tensor([-1, 0, 1])  # 1 → scene (category 0), 2 → object (category 1)
    maps = torch.tensor([[[5.0, 0.0], [0.0, 0.0]]])  # 2×2 map, no upsampling: one pixel > 1
    tally_pairs(maps, torch.tensor([0]), torch.tensor([0]), torch.tensor([1.0]), pix, scal,
                lab_cat, out)
    out.label = label_tally(pix, scal, 3)
    assert out.both.tolist() == [[0, 1, 1]]
    assert out.unit_cat.tolist() == [[1, 1]] and out.unit_pixels.tolist() == [1]
    iou = out.iou(lab_cat)
    assert iou[0, 2].item() == 1.0  # union = 1 + 1 − 1
    assert iou[0, 1].item() == 0.25  # both 1 / (1 + 4 − 1)
    assert set(out.state_dict()) == {"both", "unit_cat", "unit_pixels", "label", "images"}
    assert out.state_dict()["both"] is out.both
    out.images = 7  # .to() keeps the image count (the union of shards needs it)
    moved = out.to("cpu")
    assert moved.images == 7 and all(torch.equal(getattr(moved, f), getattr(out, f))
                                     for f in ("both", "unit_cat", "unit_pixels", "label"))
