"""Streaming activations: non-finite values are named (units and probe images, ten at most),
an empty probe and a non-convolutional layer are refused with their names."""

from __future__ import annotations

import pytest
import torch

from nemaudit.errors import ActivationError
from nemaudit.explain.common.activations import check_finite, probe_loader, stream_activations
from nemaudit.model.load import NormalizedModel
from tests.helpers import raises_exactly
from tests.toys import ToyNet, ToyProbe


def test_check_finite_names_units_and_images():
    acts = torch.zeros(4, 3, 2, 2)
    check_finite(acts, torch.tensor([10, 11, 12, 13]), "layerX")  # all finite: silent
    acts[1, 2, 0, 1] = float("nan")
    acts[3, 0, 1, 1] = float("inf")
    msg = ("layer 'layerX': non-finite activations (NaN/inf) in unit(s) [0, 2] on probe "
           "image(s) [11, 13]; nemaudit does not drop them silently — check the model's weights "
           "and inputs")
    with raises_exactly(ActivationError, msg):
        check_finite(acts, torch.tensor([10, 11, 12, 13]), "layerX")


def test_check_finite_lists_ten_of_many():
    acts = torch.full((12, 11, 1, 1), float("-inf"))
    with pytest.raises(ActivationError) as e:
        check_finite(acts, torch.arange(100, 112), "l")
    assert (f"unit(s) {list(range(10))} … on probe image(s) {list(range(100, 110))} …;"
            in str(e.value))
    acts = torch.full((11, 11, 1, 1), float("nan"))  # eleven: more than ten, listed with …
    with pytest.raises(ActivationError) as e:
        check_finite(acts, torch.arange(11), "l")
    assert f"unit(s) {list(range(10))} … on probe image(s) {list(range(10))} …;" in str(e.value)
    acts = torch.full((10, 10, 1, 1), float("nan"))
    with pytest.raises(ActivationError) as e:
        check_finite(acts, torch.arange(10), "l")
    assert f"unit(s) {list(range(10))} on probe image(s) {list(range(10))};" in str(e.value)


def test_an_empty_probe_is_named():
    probe = ToyProbe(0)
    with pytest.raises(ValueError, match="^the probe 'toy' has no images$"):
        probe_loader(probe)


def test_a_layer_without_maps_is_refused_by_name():
    model = NormalizedModel(ToyNet(), "none")
    loader = probe_loader(ToyProbe(4), 2)
    with pytest.raises(ActivationError, match=r"^layer 'fc' outputs shape \(2, 2\); dissection "
                                              r"needs convolutional maps \[B, units, h, w\]$"):
        next(stream_activations(model, "fc", loader, torch.device("cpu")))


def test_nan_activations_stop_the_stream_naming_the_image():
    model = NormalizedModel(ToyNet(), "none")
    probe = ToyProbe(6)

    def poison(batch):
        images = batch.images.clone()
        images[batch.indices == 4] = float("nan")
        return images

    with pytest.raises(ActivationError, match=r"on probe image\(s\) \[4\]"):
        for _ in stream_activations(model, "layer2", probe_loader(probe, 3),
                                    torch.device("cpu"), transform=poison):
            pass
