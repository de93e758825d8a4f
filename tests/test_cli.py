"""The `nemaudit` command on a Broden-format folder written by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemaudit.cli import main
from nemaudit.errors import ActivationError
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.probe import BrodenProbe, export_probe
from tests.toys import ToyNet, ToyProbe

TOYS = str(Path(__file__).with_name("toys.py"))


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden")
    export_probe(ToyProbe(24), root)
    return root


def test_dissect_writes_documented_json(broden, tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = main(["dissect", "--model", f"{TOYS}:ToyNet", "--layer", "layer2", "--normalize", "none",
               "--probe", f"broden:{broden}", "--eta", "0.02", "--out", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.dissect-run/1"
    layer = doc["layers"][0]
    assert layer["schema"] == "nemaudit.dissection/1" and layer["layer"] == "layer2"
    assert len(layer["thresholds"]) == 16 and len(layer["units"]) == 16
    u = layer["units"][0]
    assert {"unit", "label", "category", "iou", "top", "threshold", "detector"} <= set(u)
    assert all(len(r["top"]) <= 5 for r in layer["units"])
    assert set(layer["detectors"]["per_category"]) == {"color", "object", "part", "scene", "texture"}
    assert "Network Dissection" in capsys.readouterr().out


def test_wrong_layer_lists_valid_names(broden, capsys):
    rc = main(["dissect", "--model", f"{TOYS}:ToyNet", "--layer", "layer9", "--normalize", "none",
               "--probe", f"broden:{broden}", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "layer9" in err and "layer2" in err and "conv1" in err


def test_audit_command_and_bad_corruption(broden, tmp_path, capsys):
    out = tmp_path / "a.json"
    base = ["audit", "--model", f"{TOYS}:ToyNet", "--layer", "layer2", "--normalize", "none",
            "--probe", f"broden:{broden}", "--eta", "0.02", "--quiet", "--no-cache"]
    assert main(base + ["--corruption", "gaussian:std=0.2,fraction=1.0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    audit = doc["audits"][0]
    assert audit["schema"] == "nemaudit.audit/1" and len(audit["units"]) == 16
    assert 0 <= audit["metrics"]["flip_rate"] <= 1
    assert main(base + ["--corruption", "pgd:eps=-1/255"]) == 2
    assert "eps" in capsys.readouterr().err


def test_nan_activations_are_reported_with_units_and_images(broden):
    model = ToyNet()
    with torch.no_grad():
        model.layer2[0].bias[3] = float("nan")
    with pytest.raises(ActivationError, match=r"unit\(s\) \[3\].*image\(s\) \[0, 1"):
        dissect(model, "layer2", BrodenProbe(broden), DissectConfig(eta=0.02))


def test_empty_probe_is_a_clear_error():
    with pytest.raises(ValueError, match="no images"):
        dissect(ToyNet(), "layer2", ToyProbe(0))


@pytest.mark.parametrize("command, module", [("train", "nemaudit.training.conceptnet"),
                                             ("train-milan", "nemaudit.training.milan")])
def test_train_commands_forward_every_argument(monkeypatch, command, module):
    """`nemaudit train --threads 2` (the README's command) reaches the trainer's own parser."""
    import importlib

    seen = []
    monkeypatch.setattr(importlib.import_module(module), "main",
                        lambda argv: seen.append(argv) or 0)
    assert main([command, "--threads", "2", "--epochs", "3"]) == 0
    assert seen == [["--threads", "2", "--epochs", "3"]]


def test_unknown_arguments_of_other_commands_are_errors(capsys):
    with pytest.raises(SystemExit):
        main(["dissect", "--layer", "layer4", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_normalize_values_reach_the_model_and_bad_ones_fail_before_work(capsys):
    """The CLI hands --normalize to the model resolver (one parser for every front door)."""
    from nemaudit.cli import main
    from nemaudit.model.load import parse_normalize

    assert parse_normalize("0.5,0.5,0.5/0.2,0.2,0.2").mean == (0.5,) * 3
    rc = main(["dissect", "--layer", "layer4", "--probe", "synthetic:n=8,seed=0",
               "--normalize", "imagnet", "--no-cache", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "imagnet" in err and "Traceback" not in err
