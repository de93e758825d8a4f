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
from tests.toys import BrightnessDescriber

MODEL, PROBE = "tests.toys:ToyNet", "python:tests.toys:ToyProbe(n=24)"
BASE = ["--model", MODEL, "--probe", PROBE, "--layer", "layer2", "--normalize", "none",
        "--quiet", "--batch-size", "24"]
DESCRIBER = "python:tests.test_cli_describe_exact:Candid()"


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


def test_the_document_is_the_library_run_by_hand(tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = main(["describe", *BASE, "--describer", DESCRIBER, "--units", "2,0,5", "--k", "3",
               "--eta", "0.02", "--candidates", "2", "--show", "2", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    cfg, ex = _exemplars([2, 0, 5], 3, 0.02)
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
    assert cfg.as_dict()["k"] == 3 and cfg.as_dict()["eta"] == 0.02
    text = capsys.readouterr().out
    assert "layer2: MILAN descriptions (3 units)" in text
    for col in ("unit", "description", "top exemplars"):
        assert col in text
    lines = text.splitlines()
    shown = [ln for ln in lines if ln.startswith("│ ") and "#" not in ln]
    assert [ln.split("│")[1].strip() for ln in shown] == ["2", "0"]  # --show 2 of 3 units
    # two candidate lines under each of the 2 rows shown (--candidates 2 of 3)
    assert any(f"  {words[0]} #0" in ln for ln in lines)  # indented under its row
    assert sum(" #0" in ln for ln in lines) == 2 and sum(" #1" in ln for ln in lines) == 2
    assert not any(" #2" in ln for ln in lines)
    top = ",".join(map(str, ex.indices[0].tolist()[:5]))
    assert any(top in ln for ln in shown[:1])
    assert f"wrote {out}" in " ".join(text.split())


def test_defaults_and_no_candidates(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["describe", *BASE, "--describer", DESCRIBER, "--units", "1",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    cfg, ex = _exemplars([1], 15, 0.01)  # --k 15 and --eta 0.01 when not given
    (row,) = doc["layers"][0]["units"]
    assert doc["layers"][0]["settings"] == cfg.as_dict()
    assert row == {"unit": 1, "description": Candid().describe(ex)[0],
                   "exemplars": ex.indices[0].tolist(), "threshold": float(ex.thresholds[0])}
    assert "#0" not in capsys.readouterr().out
    # no --out: printed, nothing written, exit 0
    assert main(["describe", *BASE, "--describer", DESCRIBER, "--units", "1"]) == 0
    assert "wrote" not in capsys.readouterr().out


def test_an_audit_runs_under_each_corruption_with_its_settings(tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = main(["describe", *BASE, "--describer", "python:tests.toys:BrightnessDescriber()",
               "--units", "0,3", "--k", "3", "--corruption", "gaussian:std=0.3",
               "--corruption", "pgd:eps=2/255,steps=1", "--threshold", "0.7",
               "--attack-images", "2", "--max-units", "1", "--show", "5", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    specs = ["gaussian:std=0.3", "pgd:eps=2/255,steps=1"]
    assert [a["corruption"]["kind"] for a in doc["audits"]] == ["gaussian", "pgd"]
    assert doc["audits"][0]["corruption"]["std"] == 0.3
    for a in doc["audits"]:
        assert a["method"] == "milan" and a["layer"] == "layer2"
        assert a["metrics"]["threshold"] == 0.7 and a["metrics"]["units"] == 2
        assert [r["unit"] for r in a["units"]] == [0, 3]
        assert a["meta"]["settings"]["k"] == 3
    pgd = doc["audits"][1]["meta"]["settings"]
    assert pgd["attack_images"] == 2 and pgd["max_units"] == 1
    text = " ".join(capsys.readouterr().out.split())
    for a, spec in zip(doc["audits"], specs, strict=True):
        m = a["metrics"]
        assert (f"layer2 · {spec}: manipulated {m['changed']}/{m['units']} "
                f"({m['manipulated_rate']:.1%}) at F1-BERT ≤ {m['threshold']:.3f}; F1 mean "
                f"{m['f1_mean']:.3f} ± {m['f1_std']:.3f}") in text


@pytest.mark.parametrize("argv, message", [
    (["--candidates", "-1"], "--candidates -1: expected an integer >= 0"),
    (["--milan", "w.pt", "--describer", DESCRIBER], "give --describer or --milan, not both"),
])
def test_refusals_exit_2_with_the_message(argv, message, capsys):
    assert main(["describe", *BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_milan_weights_flag_is_the_milan_describer(tmp_path):
    from nemaudit.explain.milan.describer import DEFAULT_WEIGHTS

    docs = []
    for flag in (["--milan", str(DEFAULT_WEIGHTS)], ["--describer", f"milan:{DEFAULT_WEIGHTS}"]):
        out = tmp_path / "d.json"
        assert main(["describe", *BASE, *flag, "--units", "3", "--k", "2", "--beam-size", "2",
                     "--lam", "0.5", "--out", str(out)]) == 0
        docs.append(json.loads(out.read_text()))
    assert docs[0] == docs[1]
    settings = docs[0]["describer"]["settings"]
    assert settings["beam_size"] == 2 and settings["lam"] == 0.5
