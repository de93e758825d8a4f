"""``check_label_range``: labels outside the concept table name the first offending probe
image, the kind of label and (up to five of) the bad ids; valid ids, image-level category
flags (−k−1) and empty label tensors pass."""

from __future__ import annotations

import re

import pytest
import torch

from nemaudit.explain.netdissect.tally import check_label_range


def _raises(msg: str):
    return pytest.raises(ValueError, match="^" + re.escape(msg) + "$")


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
