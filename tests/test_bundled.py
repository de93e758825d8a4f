"""The embedded default must be meaningful: the bundled model has detectors."""

from __future__ import annotations

import pytest
import torch

from nemaudit.explain.netdissect import dissect
from nemaudit.model import BUNDLED, load_model
from nemaudit.model.load import NormalizedModel
from nemaudit.probe import load_probe
from nemaudit.probe.memory import InMemoryProbe


@pytest.fixture(scope="module")
def probe():
    return InMemoryProbe(load_probe("synthetic:n=800,seed=0"))


@pytest.mark.slow
def test_bundled_model_has_detectors_in_several_categories_unlike_random_weights(probe):
    trained = load_model("nemaudit:conceptnet", device="cpu")
    d = dissect(trained, "layer4", probe).detectors()
    assert d["share"] >= 0.25
    assert sum(v > 0 for v in d["per_category"].values()) >= 3
    torch.manual_seed(0)
    rnd = NormalizedModel(BUNDLED["conceptnet"].build(), "imagenet").eval()
    r = dissect(rnd, "layer4", probe).detectors()
    assert d["total"] > r["total"]
    assert d["unique_concepts"] >= 2 * r["unique_concepts"]
    assert sum(v > 0 for v in d["per_category"].values()) > sum(
        v > 0 for v in r["per_category"].values())


def test_bundled_metadata_records_how_it_was_made():
    meta = load_model("nemaudit:conceptnet", device="cpu").meta
    assert "nemaudit.training.conceptnet" in meta["command"]
    assert meta["metrics"]["val_class_accuracy"] > 0.5
    assert BUNDLED["conceptnet"].weights_path.stat().st_size < 5 * 2**20
