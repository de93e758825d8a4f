"""Every flag of ``nemaudit dissect`` / ``nemaudit audit`` through ``main()``: the JSON it
writes equals what the library computes with the same settings, and bad values exit with 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemaudit.audit import AuditConfig, audit
from nemaudit.cli import main
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.model.load import NormalizedModel
from tests.toys import ToyNet, ToyProbe

TOYS = str(Path(__file__).with_name("toys.py"))
BASE = ["--model", f"{TOYS}:ToyNet", "--normalize", "none", "--probe",
        f"python:{TOYS}:ToyProbe(n=16)", "--quiet", "--no-cache", "--batch-size", "8"]


@pytest.fixture(scope="module")
def lib():
    return NormalizedModel(ToyNet(), "none"), ToyProbe(16)


def _run(tmp_path, command, *flags):
    out = tmp_path / f"{command}.json"
    rc = main([command, *BASE, *flags, "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_dissect_eta_and_iou_threshold_reach_the_dissection(tmp_path, lib):
    doc = _run(tmp_path, "dissect", "--layer", "layer2", "--layer", "layer1", "--eta", "0.05",
               "--iou-threshold", "0.08")
    assert [d["layer"] for d in doc["layers"]] == ["layer2", "layer1"]
    model, probe = lib
    want = dissect(model, "layer2", probe, DissectConfig(eta=0.05, iou_threshold=0.08,
                                                         batch_size=8))
    got = doc["layers"][0]
    assert got["thresholds"] == pytest.approx(want.thresholds.tolist())
    assert [u["label"] for u in got["units"]] == [r["label"] for r in want.rows()]
    assert [u["detector"] for u in got["units"]] == [r["detector"] for r in want.rows()]
    default = _run(tmp_path, "dissect", "--layer", "layer2")["layers"][0]
    assert default["thresholds"] != got["thresholds"]  # --eta was not ignored


def test_audit_units_flag_selects_exactly_those_units(tmp_path, lib):
    spec = "gaussian:std=0.2,fraction=0.5,seed=2"
    doc = _run(tmp_path, "audit", "--layer", "layer2", "--corruption", spec, "--units", "3,0,7",
               "--eta", "0.05", "--iou-threshold", "0.06")
    a = doc["audits"][0]
    model, probe = lib
    cfg = AuditConfig(dissect=DissectConfig(eta=0.05, iou_threshold=0.06, batch_size=8))
    want = audit(model, "layer2", probe, spec, cfg, units=[3, 0, 7])
    assert [u["unit"] for u in a["units"]] == [3, 0, 7]
    assert a["units"] == json.loads(json.dumps(want.rows))
    assert a["metrics"] == json.loads(json.dumps(want.metrics))
    assert a["metrics"]["units"] == 3


def test_audit_max_units_caps_per_unit_attacks(tmp_path, lib):
    spec = "pgd:eps=8/255,steps=2"
    doc = _run(tmp_path, "audit", "--layer", "layer2", "--corruption", spec, "--max-units", "2",
               "--eta", "0.05")
    a = doc["audits"][0]
    model, probe = lib
    want = audit(model, "layer2", probe, spec,
                 AuditConfig(dissect=DissectConfig(eta=0.05, batch_size=8), max_units=2))
    assert len(a["units"]) == 2 == a["meta"]["attacked_units"]
    assert [u["unit"] for u in a["units"]] == [r["unit"] for r in want.rows]
    assert a["metrics"]["flip_rate"] == want.metrics["flip_rate"]


def test_audit_repeats_layers_and_corruptions(tmp_path):
    doc = _run(tmp_path, "audit", "--layer", "layer1", "--layer", "layer2", "--corruption",
               "gaussian:std=0.1", "--corruption", "uniform:std=0.1", "--units", "0,1")
    got = [(a["layer"], a["corruption"]["kind"]) for a in doc["audits"]]
    assert got == [("layer1", "gaussian"), ("layer1", "uniform"), ("layer2", "gaussian"),
                   ("layer2", "uniform")]
    assert doc["schema"] == "nemaudit.audit-run/1"
    assert all(a["meta"]["model"] == f"{TOYS}:ToyNet" for a in doc["audits"])


def test_workers_decode_the_probe_without_changing_the_result(tmp_path, monkeypatch):
    """--workers reaches the DataLoader of the dissection; the JSON is the one-process one."""
    import nemaudit.explain.common.activations as acts

    seen = []
    real = acts.probe_loader

    def spy(*a, **kw):
        seen.append(kw.get("num_workers", 0))
        return real(*a, **kw)

    import sys

    nd = sys.modules["nemaudit.explain.netdissect.dissect"]  # the module, not the function
    monkeypatch.setattr(acts, "probe_loader", spy)
    monkeypatch.setattr(nd, "probe_loader", spy)
    plain = _run(tmp_path, "dissect", "--layer", "layer2")
    assert 2 not in seen
    with_workers = _run(tmp_path, "dissect", "--layer", "layer2", "--workers", "2")
    assert 2 in seen
    for doc in (plain, with_workers):
        for layer in doc["layers"]:
            layer["meta"].pop("seconds")
    assert with_workers["layers"] == plain["layers"]


@pytest.mark.parametrize("flags, message", [
    (["--units", "0,x"], "--units '0,x'"),
    (["--units", "99"], "99"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--workers", "-2"], "--workers -2: expected an integer >= 0"),
    (["--eta", "2"], "--eta"),
    (["--max-units", "0"], "--max-units"),
    (["--set", "nonsense"], "--set 'nonsense'"),
    (["--method", "milan", "--eta", "0.1"], "--eta and --iou-threshold are Network Dissection"),
])
def test_bad_audit_flags_exit_2_naming_the_flag(flags, message, capsys):
    rc = main(["audit", *BASE, "--layer", "layer2", "--corruption", "gaussian:std=0.1", *flags])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_show_flag_limits_printed_units(capsys):
    args = ["audit", *BASE, "--layer", "layer2", "--corruption", "gaussian:std=0.5,seed=1"]
    assert main(args + ["--show", "1"]) == 0
    one = capsys.readouterr().out
    assert main(args + ["--show", "30"]) == 0
    many = capsys.readouterr().out
    assert many.count("→") > one.count("→") >= 1
