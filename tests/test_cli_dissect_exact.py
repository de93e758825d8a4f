"""``nemaudit dissect`` through ``main()``: the settings reach the dissection (against the
library run by hand), the provenance each layer records, the table's row cap, and the exit
codes with and without ``--out``."""

from __future__ import annotations

import json

import pytest

from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor
from nemaudit.cli import main

MODEL, PROBE = "tests.toys:ToyNet", "python:tests.toys:ToyProbe(n=24)"
BASE = ["dissect", "--model", MODEL, "--probe", PROBE, "--normalize", "none", "--quiet",
        "--batch-size", "24", "--no-cache", "--device", "cpu"]


def test_each_layer_is_the_librarys_dissection_with_its_provenance(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "d.json"
    assert main([*BASE, "--layer", "layer1", "--layer", "layer2", "--eta", "0.02",
                 "--iou-threshold", "0.3", "--show", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.dissect-run/1" and len(doc["layers"]) == 2
    a = Auditor("cpu", batch_size=24)
    for layer, got in zip(("layer1", "layer2"), doc["layers"], strict=True):
        req = AuditRequest.build("netdissect", model=MODEL, probe=PROBE, layer=layer,
                                 normalize="none", eta=0.02, iou_threshold=0.3)
        want = a.clean_dissection(req).to_json()
        assert got["units"] == want["units"] and got["layer"] == layer
        assert got["thresholds"] == want["thresholds"]
        assert got["detectors"] == want["detectors"]
        assert got["settings"]["eta"] == 0.02 and got["settings"]["iou_threshold"] == 0.3
        meta = got["meta"]
        assert (meta["model"], meta["weights"], meta["probe_spec"], meta["device"],
                meta["normalize"]) == (MODEL, None, PROBE, "cpu", "none")
        assert 0 <= meta["seconds"] < 600 and round(meta["seconds"], 3) == meta["seconds"]
    text = capsys.readouterr().out
    tables = text.split("Network Dissection — ")[1:]
    assert len(tables) == 2
    for t in tables:  # --show 2: two unit rows per table
        rows = [ln for ln in t.splitlines() if ln.startswith("│")]
        assert len(rows) == 2
    assert f"wrote {out}" in " ".join(text.split())


def test_defaults_and_no_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    assert main([*BASE, "--layer", "layer2"]) == 0
    assert list(tmp_path.iterdir()) == []
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("│")]
    assert len(rows) == 16  # every unit of layer2 (at most 20 by default)
    assert "(IoU ≥ 0.04)" in text  # the default detector threshold


def test_a_bad_out_is_refused_before_any_dissection(monkeypatch, capsys):
    monkeypatch.setattr(Auditor, "clean_dissection", lambda *a: pytest.fail("dissected"))
    assert main([*BASE, "--layer", "layer2", "--out", "/dev/null/x.json"]) == 2
    assert capsys.readouterr().err.startswith("nemaudit: error: --out '/dev/null/x.json': ")
