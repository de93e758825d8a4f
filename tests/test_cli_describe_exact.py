"""``nemaudit describe`` through ``main()``, value by value: every flag reaches the exemplars,
the describer and the audit it names; the JSON document against the library run by hand; the
table's rows, candidates and ``--show``; the audit line; refusals with their exit code."""

from __future__ import annotations

import json

import pytest

from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor
from nemaudit.cli import main
from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars
from tests.helpers import table_cells
from tests.toys import BrightnessDescriber

MODEL, PROBE = "tests.toys:ToyNet", "python:tests.toys:ToyProbe(n=24)"
BASE = ["--model", MODEL, "--probe", PROBE, "--layer", "layer2", "--normalize", "none",
        "--quiet", "--batch-size", "24"]
DESCRIBER = "python:tests.test_cli_describe_exact:Candid()"
#: layer1, not the model's default layer: a request that lost its layer would show
L1 = [a if a != "layer2" else "layer1" for a in BASE]


class Candid(BrightnessDescriber):
    """BrightnessDescriber with three reranked candidates per unit."""

    def candidates(self, exemplars) -> list[list[tuple[str, float, float]]]:
        return [[(f"{w} #{j}", -1.0 - j, -2.0 * j) for j in range(3)]
                for w in self.describe(exemplars)]


def _exemplars(units, k, eta):
    a = Auditor("cpu", batch_size=24)
    req = AuditRequest.build("milan", model=MODEL, probe=PROBE, layer="layer2",
                             normalize="none")
    r = a.resolve(req, corruption=False)
    cfg = ExemplarConfig(k=k, eta=eta, batch_size=24)
    return cfg, compute_exemplars(r.model, r.layer, r.probe, cfg, units=units, device="cpu")


def test_the_document_is_the_library_run_by_hand(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "d.json"
    rc = main(["describe", *BASE, "--describer", DESCRIBER, "--units", "2,0,5", "--k", "6",
               "--eta", "0.02", "--candidates", "2", "--show", "2", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    cfg, ex = _exemplars([2, 0, 5], 6, 0.02)
    words = Candid().describe(ex)
    assert doc == {
        "schema": "nemaudit.describe-run/1", "model": MODEL, "probe": PROBE,
        "describer": "Candid", "audits": [],
        "layers": [{"layer": "layer2", "settings": cfg.as_dict(), "units": [
            {"unit": u, "description": words[r], "exemplars": ex.indices[r].tolist(),
             "threshold": float(ex.thresholds[r]),
             "candidates": [{"text": f"{words[r]} #{j}", "log_p_caption": -1.0 - j,
                             "log_p_lm": -2.0 * j} for j in range(2)]}
            for r, u in enumerate([2, 0, 5])]}]}
    assert cfg.as_dict()["k"] == 6 and cfg.as_dict()["eta"] == 0.02
    assert len(doc["layers"][0]["units"][0]["exemplars"]) == 6  # the table shows the first 5
    text = capsys.readouterr().out
    assert "layer2: MILAN descriptions (3 units)" in text
    header = next(ln for ln in text.splitlines() if ln.startswith("┃"))
    assert [h.strip() for h in header.strip("┃").split("┃")] == ["unit", "description",
                                                                 "top exemplars"]
    # --show 2 of 3 units; under each description its 2 first candidates (--candidates 2)
    assert table_cells(text) == [
        [[str(u)], [words[r], f"{words[r]} #0", f"{words[r]} #1"],
         [",".join(map(str, ex.indices[r].tolist()[:5]))]] for r, u in enumerate([2, 0])]
    assert f"  {words[0]} #0" in text  # the candidates indented
    assert f"wrote {out}" in " ".join(text.split())


def test_defaults_and_no_candidates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "d.json"
    assert main(["describe", *BASE, "--describer", DESCRIBER, "--units", "1",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    cfg, ex = _exemplars([1], 15, 0.01)  # --k 15 and --eta 0.01 when not given
    (row,) = doc["layers"][0]["units"]
    assert doc["layers"][0]["settings"] == cfg.as_dict()
    assert row == {"unit": 1, "description": Candid().describe(ex)[0],
                   "exemplars": ex.indices[0].tolist(), "threshold": float(ex.thresholds[0])}
    text = capsys.readouterr().out
    assert table_cells(text) == [[["1"], [row["description"]],
                                  [",".join(map(str, row["exemplars"][:5]))]]]
    # no --out: printed, nothing written, exit 0
    assert main(["describe", *BASE, "--describer", DESCRIBER, "--units", "1"]) == 0
    assert "wrote" not in capsys.readouterr().out


def test_an_audit_runs_under_each_corruption_with_its_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "d.json"
    rc = main(["describe", *L1, "--describer", "python:tests.test_cli_describe_exact:Bracketed()",
               "--units", "0,3", "--k", "3", "--corruption", "gaussian:std=0.3",
               "--corruption", "pgd:eps=2/255,steps=1", "--threshold", "0.95",
               "--attack-images", "2", "--max-units", "1", "--show", "5", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    specs = ["gaussian:std=0.3", "pgd:eps=2/255,steps=1"]
    assert [a["corruption"]["kind"] for a in doc["audits"]] == ["gaussian", "pgd"]
    assert doc["audits"][0]["corruption"]["std"] == 0.3
    for a in doc["audits"]:
        assert a["method"] == "milan" and a["layer"] == "layer1"
        assert a["metrics"]["threshold"] == 0.95 and a["metrics"]["units"] == 2
        assert [r["unit"] for r in a["units"]] == [0, 3]
        assert a["meta"]["settings"]["k"] == 3
    pgd = doc["audits"][1]["meta"]["settings"]
    assert pgd["attack_images"] == 2 and pgd["max_units"] == 1
    raw = capsys.readouterr().out
    # each audit's diff lines, indented and as text, as the library's result gives them
    auditor = Auditor("cpu", batch_size=24)
    lines = []
    for spec in specs:
        req = AuditRequest.build("milan", model=MODEL, probe=PROBE, layer="layer1",
                                 normalize="none", units=[0, 3], exemplars=3,
                                 describer="python:tests.test_cli_describe_exact:Bracketed()",
                                 corruption=spec, f1_threshold=0.95, attack_images=2,
                                 max_units=1)
        lines += auditor.run(req).diff_lines(5)
    assert lines and any("[b]" in ln for ln in lines)
    for ln in lines:
        assert "\n  " + ln + "\n" in raw
    text = " ".join(raw.split())
    for a, spec in zip(doc["audits"], specs, strict=True):
        m = a["metrics"]
        assert (f"layer1 · {spec}: manipulated {m['changed']}/{m['units']} "
                f"({m['manipulated_rate']:.1%}) at F1-BERT ≤ {m['threshold']:.3f}; F1 mean "
                f"{m['f1_mean']:.3f} ± {m['f1_std']:.3f}") in text


@pytest.mark.parametrize("argv, message", [
    (["--candidates", "-1"], "--candidates -1: expected an integer >= 0"),
    (["--milan", "w.pt", "--describer", DESCRIBER], "give --describer or --milan, not both"),
])
def test_refusals_exit_2_with_the_message(argv, message, capsys):
    assert main(["describe", *BASE, *argv]) == 2
    assert capsys.readouterr().err == f"nemaudit: error: {message}\n"


def test_a_bad_out_is_refused_before_any_exemplar(monkeypatch, capsys):
    import nemaudit.explain.milan.exemplars as exemplars

    monkeypatch.setattr(exemplars, "compute_exemplars", lambda *a, **k: pytest.fail("ran"))
    assert main(["describe", *BASE, "--describer", DESCRIBER, "--out", "/dev/null/x.json"]) == 2
    assert capsys.readouterr().err.startswith("nemaudit: error: --out '/dev/null/x.json': ")


def test_exemplars_get_the_device_progress_and_every_unit(monkeypatch, capsys):
    import nemaudit.explain.milan.exemplars as exemplars

    seen = []
    real = exemplars.compute_exemplars

    def recording(model, layer, probe, cfg, **kw):
        seen.append(kw)
        return real(model, layer, probe, cfg, **kw)

    monkeypatch.setattr(exemplars, "compute_exemplars", recording)
    base = [a for a in BASE if a != "--quiet"]
    assert main(["describe", *base, "--describer", DESCRIBER, "--k", "2"]) == 0
    assert main(["describe", *base, "--quiet", "--describer", DESCRIBER, "--k", "2"]) == 0
    import torch

    assert [(k["units"], k["device"], k["progress"]) for k in seen] == [
        (None, torch.device("cpu"), True), (None, torch.device("cpu"), False)]
    assert "(16 units)" in capsys.readouterr().out  # every unit of layer2 when none is named


class Bracketed(BrightnessDescriber):
    """Words with rich markup in them: printed as text."""

    def describe(self, exemplars) -> list[str]:
        return [f"[b]{w}" for w in super().describe(exemplars)]


def test_milan_weights_flag_is_the_milan_describer(tmp_path):
    import shutil

    from nemaudit.explain.milan.describer import DEFAULT_WEIGHTS

    # a copy of the bundled weights whose metadata says it is the copy
    weights = tmp_path / "copy.pt"
    shutil.copy(DEFAULT_WEIGHTS, weights)
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**meta, "name": "the copy"}))
    docs = []
    for flag in (["--milan", str(weights)], ["--describer", f"milan:{weights}"]):
        out = tmp_path / "d.json"
        assert main(["describe", *BASE, *flag, "--units", "3", "--k", "2", "--beam-size", "2",
                     "--lam", "0.5", "--out", str(out)]) == 0
        docs.append(json.loads(out.read_text()))
    assert docs[0] == docs[1] and docs[0]["describer"]["name"] == "the copy"
    settings = docs[0]["describer"]["settings"]
    assert settings["beam_size"] == 2 and settings["lam"] == 0.5
