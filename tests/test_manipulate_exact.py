"""The fooling's data and measurements value by value: labelled images, the train/held-out
split, D_fool's two-class images, class names, and the test losses / FSR of a fooled model
against maps computed here with ``heatmap`` and the paper's losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.corrupt.manipulate import evaluate, losses
from nemaudit.corrupt.manipulate.data import (
    LabelledImages,
    class_index,
    labelled_images,
    split,
    two_class_images,
)
from nemaudit.errors import SpecError
from nemaudit.explain.saliency import heatmap
from nemaudit.model.bundled import ConceptNet
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import ProbeItem
from tests.helpers import raises_exactly
from tests.toys import ToyProbe

torch.set_num_threads(1)


class _PartlyLabelled(ToyProbe):
    """ToyProbe whose every third image has no class target (-1)."""

    def __getitem__(self, i: int) -> ProbeItem:
        it = super().__getitem__(i)
        return ProbeItem(it.image, it.pixel_labels, it.image_labels, it.index,
                         -1 if i % 3 == 0 else it.target)


class _Fixed(nn.Module):
    """A model whose logits are a fixed function of the image: class = brightest channel."""

    def __init__(self, classes: int = 3, dims: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.classes, self.dims = classes, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3))[:, :self.classes] + self.w
        return z if self.dims == 2 else z[:, :, None]


# ----------------------------------------------------------------------------- labelled images

def test_labelled_images_keep_probe_targets_and_fill_the_missing_with_predictions():
    probe = _PartlyLabelled(10)
    model = _Fixed()
    got = labelled_images(probe, model, batch_size=4)
    x = torch.stack([probe[i].image for i in range(10)])
    want_y = torch.tensor([int(x[i].mean(dim=(1, 2))[:3].argmax()) if i % 3 == 0
                           else probe[i].target for i in range(10)])
    torch.testing.assert_close(got.images, x, rtol=0, atol=0)
    assert got.labels.tolist() == want_y.tolist()
    assert got.indices.tolist() == list(range(10))
    assert got.label_source == "predicted"
    # where the probe labels every image, its targets are kept as they are
    full = labelled_images(ToyProbe(6), model, [5, 1, 2])
    assert full.labels.tolist() == [ToyProbe(6)[i].target for i in (5, 1, 2)]
    assert full.indices.tolist() == [5, 1, 2] and full.label_source == "probe"


def test_labelled_images_refuse_targets_beyond_the_model_and_outputs_without_classes():
    # ToyProbe's targets are 0 and 1: a model of exactly 1 class cannot hold class 1
    with raises_exactly(SpecError, "the probe's class targets go up to 1 but the model has 1 "
                                   "classes"):
        labelled_images(ToyProbe(4), _Fixed(classes=1))
    labelled_images(ToyProbe(4), _Fixed(classes=2))  # 2 classes hold targets 0 and 1
    with raises_exactly(SpecError, "the model must return class logits [batch, classes]; it "
                                   "returned shape (4, 3, 1) (no classification output)"):
        labelled_images(ToyProbe(4), _Fixed(dims=3))


def test_take_keeps_every_field_of_the_first_n():
    data = LabelledImages(torch.rand(5, 3, 4, 4), torch.arange(5), torch.arange(10, 15),
                          "predicted")
    assert data.take(None) is data and data.take(5) is data and data.take(9) is data
    part = data.take(2)
    assert len(part) == 2 and part.labels.tolist() == [0, 1]
    assert part.indices.tolist() == [10, 11] and part.label_source == "predicted"
    torch.testing.assert_close(part.images, data.images[:2], rtol=0, atol=0)


@pytest.mark.parametrize("share,step", [(0.25, 4), (0.5, 2), (1 / 3, 3), (0.9, 2), (0.1, 10)])
def test_split_holds_out_every_kth_image(share, step):
    train, held = split(23, share)
    assert held == list(range(0, 23, step))
    assert train == [i for i in range(23) if i % step]


# ----------------------------------------------------------------------------- two-class images

def _textured(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _which(tile: torch.Tensor, candidates: torch.Tensor) -> int:
    d = (candidates - tile[None]).abs().flatten(1).amax(1)
    assert float(d.min()) < 1e-6, "a tile is no area-downsampled training image"
    return int(d.argmin())


def test_two_class_tiles_are_area_downsampled_images_two_of_each_class():
    """Each quadrant is one training image averaged over 2×2 pixels (``avg_pool2d``, the
    'area' mode at half size), two quadrants of each class, at places that vary; the same
    seed gives the same images whatever the global RNG."""
    imgs = _textured(6, 16)
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    data = LabelledImages(imgs, labels, torch.arange(6))
    torch.manual_seed(123)
    out = two_class_images(data, 0, 1, n=12, seed=4)
    torch.manual_seed(999)
    torch.testing.assert_close(two_class_images(data, 0, 1, n=12, seed=4), out, rtol=0, atol=0)
    assert not torch.equal(two_class_images(data, 0, 1, n=12, seed=5), out)
    assert out.shape == (12, 3, 16, 16)
    small = F.avg_pool2d(imgs, 2)
    layouts = set()
    for k in range(12):
        quads = [out[k, :, r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8)]
        cls = [int(labels[_which(q, small)]) for q in quads]
        assert sorted(cls) == [0, 0, 1, 1]
        layouts.add(tuple(cls))
    assert len(layouts) > 1


def test_two_class_images_of_odd_size_are_the_half_size_grid_resized_bilinearly():
    """At 17 px the tiles are 8 px (area-averaged) and the 16 px grid is resized to 17
    (bilinear, corners not aligned). The draws depend on the labels and the seed only, so a
    run on constant images (readable at the output's corners) says which image went where;
    the same draws on textured images are then checked against that grid, built here."""
    labels = torch.tensor([3, 7, 3, 7, 3])
    colours = torch.rand(5, 3, generator=torch.Generator().manual_seed(2))
    flat = colours[:, :, None, None].expand(5, 3, 17, 17).contiguous()
    out = two_class_images(LabelledImages(flat, labels, torch.arange(5)), 3, 7, n=6, seed=1)
    assert out.shape == (6, 3, 17, 17)
    corners = [out[:, :, r, c] for r in (0, 16) for c in (0, 16)]  # [6, 3] each
    where = torch.stack([(corner[:, None] - colours[None]).abs().amax(2).argmin(1)
                         for corner in corners], 1)  # [6, 4] image index per slot
    textured = _textured(5, 17, seed=8)
    got = two_class_images(LabelledImages(textured, labels, torch.arange(5)), 3, 7, n=6, seed=1)
    tiles = F.adaptive_avg_pool2d(textured, 8)  # area mode at 17 → 8
    grid = torch.zeros(6, 3, 16, 16)
    for slot in range(4):
        r, c = divmod(slot, 2)
        grid[:, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = tiles[where[:, slot]]
    want = F.interpolate(grid, size=(17, 17), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert sorted(labels[where[0]].tolist()) == [3, 3, 7, 7]


def test_two_class_images_need_two_images_of_each_class_and_no_more():
    imgs = _textured(5, 8)
    data = LabelledImages(imgs, torch.tensor([0, 0, 1, 1, 2]), torch.arange(5))
    assert two_class_images(data, 0, 1, n=3, seed=0).shape == (3, 3, 8, 8)
    with raises_exactly(SpecError, "active fooling needs at least 2 images of each class; the "
                                   "training images hold 2 of class 0 and 1 of class 2"):
        two_class_images(data, 0, 2, n=3, seed=0)
    with raises_exactly(SpecError, "active fooling needs at least 2 images of each class; the "
                                   "training images hold 1 of class 2 and 2 of class 1"):
        two_class_images(data, 2, 1, n=3, seed=0)


def test_class_index_by_number_or_name_and_its_refusals():
    names = [f"c{i}" for i in range(45)]
    assert class_index(3, names, 45) == 3
    assert class_index(" 7 ", None, 8) == 7
    assert class_index("c44", names, 45) == 44
    with raises_exactly(SpecError, "class index 45 out of range: the model has 45 classes"):
        class_index(45, names, 45)
    with raises_exactly(SpecError, "class index 2 out of range: the model has 2 classes"):
        class_index("2", None, 2)
    with raises_exactly(SpecError, f"unknown class 'cat'; classes: {', '.join(names[:40])}"):
        class_index("cat", names, 45)
    with raises_exactly(SpecError, "unknown class 'cat'; classes: (this model names no classes)"):
        class_index("cat", None, 5)


# ----------------------------------------------------------------------------- test losses

def _net(seed: int) -> NormalizedModel:
    torch.manual_seed(seed)
    return NormalizedModel(ConceptNet(num_classes=4, width=2), "imagenet").eval()


@pytest.mark.parametrize("fooling", ["location", "topk", "center"])
@pytest.mark.parametrize("interpreter,layer", [("lrp", None), ("simplegrad_t", "layer3"),
                                               ("lrp_t", "layer3"), ("gradcam", "layer4"),
                                               ("simplegrad", None)])
def test_passive_test_losses_are_the_losses_of_the_two_models_maps(fooling, interpreter, layer):
    fooled, original = _net(1), _net(2)
    x = _textured(5, 32, seed=3)
    y = torch.tensor([0, 1, 2, 3, 1])
    got = evaluate.test_losses(fooling, interpreter, layer or "layer3", fooled, original, x, y,
                      batch_size=2)
    lyr = layer if interpreter in ("gradcam", "simplegrad_t", "lrp_t") else None
    h = heatmap(fooled, x, y, interpreter, layer=lyr).detach()
    h0 = heatmap(original, x, y, interpreter, layer=lyr).detach()
    want = losses.test_loss(fooling, h, h0, signed_input_map=interpreter == "lrp")
    torch.testing.assert_close(got.losses, want, rtol=1e-5, atol=1e-6)
    hits = losses.in_interval(want, losses.FSR_INTERVALS[fooling])
    assert got.hits.tolist() == hits.tolist()
    assert got.fsr() == [float(hits.float().mean())]


def test_lrp_location_loss_reads_the_signed_map():
    """For LRP at the input the Location target is -1 inside the frame (signed map): the loss
    differs from the unsigned one on the same maps."""
    fooled, original = _net(1), _net(2)
    x, y = _textured(3, 32, seed=4), torch.tensor([0, 1, 2])
    got = evaluate.test_losses("location", "lrp", None, fooled, original, x, y)
    h = heatmap(fooled, x, y, "lrp").detach()
    signed = losses.test_loss("location", h, h, signed_input_map=True)
    torch.testing.assert_close(got.losses, signed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got.losses, losses.test_loss("location", h, h))


def test_active_test_losses_swap_the_two_classes_between_the_models():
    fooled, original = _net(1), _net(2)
    x = _textured(4, 32, seed=5)
    got = evaluate.test_losses("active", "gradcam", "layer4", fooled, original, x,
                      torch.zeros(4, dtype=torch.long), classes=(0, 2), interval=(0.1, 1.0))

    def m(model, c):
        return heatmap(model, x, torch.full((4,), c), "gradcam", layer="layer4").detach()

    s1, s2 = losses.active_test_losses(m(fooled, 0), m(fooled, 2), m(original, 0), m(original, 2))
    want = torch.stack([s1, s2], 1)
    torch.testing.assert_close(got.losses, want, rtol=1e-5, atol=1e-6)
    assert got.hits.tolist() == losses.in_interval(want, (0.1, 1.0)).tolist()
    assert got.fsr() == losses.in_interval(want, (0.1, 1.0)).float().mean(0).tolist()
    with pytest.raises(ValueError, match="^active fooling needs its two classes$"):
        evaluate.test_losses("active", "gradcam", "layer4", fooled, original, x, torch.zeros(4))


def test_fsr_of_no_image_is_nan_per_column():
    def fsr(shape):
        hits = torch.zeros(shape, dtype=torch.bool)
        return evaluate.TestLosses(torch.zeros(shape), hits).fsr()

    for got, cols in ((fsr((0,)), 1), (fsr((0, 2)), 2)):
        assert len(got) == cols and all(v != v for v in got)
    assert fsr((3,)) == [0.0]
    hits = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]]).bool()
    assert evaluate.TestLosses(torch.zeros(4, 2), hits).fsr() == [0.75, 0.25]
