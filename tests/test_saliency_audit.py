"""The saliency and fooling methods end to end on the bundled model: the red-team audit, its
saved weights, the candidate-vs-reference property in a spec file, reports and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import torch

import nemaudit.audit.saliency.pictures  # noqa: F401  (imported once: see test_plugin.py)
import nemaudit.audit.saliency.run  # noqa: F401
import nemaudit.report.html  # noqa: F401
import nemaudit.report.json_report  # noqa: F401
import nemaudit.report.saliency_html  # noqa: F401
import nemaudit.report.terminal  # noqa: F401
from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def fooled(tmp_path_factory):
    """Grad-CAM location fooling of the bundled model, short (two epochs on 240 images)."""
    out = tmp_path_factory.mktemp("fooled") / "fooled.pt"
    auditor = Auditor("cpu", cache_dir=None)
    req = AuditRequest.build("fooling", model="nemaudit:conceptnet",
                             probe="synthetic:n=40,seed=0", train_probe="synthetic:n=240,seed=1",
                             fool_epochs=2, images=40, interpreters=("gradcam", "simplegrad_t"),
                             max_top1_drop=0.1, save_weights=str(out))
    return out, auditor.run(req)


def test_red_team_audit_measures_fsr_accuracy_transfer_and_dissection(fooled):
    path, r = fooled
    m = r.metrics
    assert r.method == "fooling" and r.meta["best_epoch"] >= 1
    hits = [row["hit"]["gradcam"] for row in r.rows]
    assert m["fsr"] == m["fsr_gradcam"] == pytest.approx(sum(hits) / len(hits))
    assert m["fsr"] > 0.2  # the fine-tuning moved Grad-CAM onto the frame for some images
    assert 0 <= m["fsr_simplegrad_t"] <= 1 and "fsr_lrp" not in m
    assert m["top1_drop"] == pytest.approx(m["top1_original"] - m["top1"])
    assert m["top1_drop"] <= 0.1 + 1e-9  # the kept epoch respects max_top1_drop
    iv = r.interval("fsr")
    assert iv.lo <= m["fsr"] <= iv.hi and iv.n == len(r.rows)
    # Network Dissection of layer4, original vs fooled, unit by unit
    nd = r.meta["nd_rows"]
    assert m["nd_units"] == len(nd) == 128
    assert m["nd_changed"] == sum(row["changed"] for row in nd)
    assert m["nd_flip_rate"] == pytest.approx(m["nd_changed"] / 128)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["settings"]["interpreter"] == "gradcam" and side["best_epoch"] == r.meta["best_epoch"]


def test_saved_fooled_weights_load_as_the_bundled_model_with_weights(fooled):
    from nemaudit.model import load_model

    path, r = fooled
    model = load_model("nemaudit:conceptnet", weights=str(path), device="cpu")
    state = r.context["fooled"].state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_saliency_payload_has_pictures_of_both_models_and_charts(fooled):
    pytest.importorskip("matplotlib")
    from nemaudit.audit.saliency.pictures import saliency_payload
    from nemaudit.report.saliency_html import saliency_section

    _, r = fooled
    doc = saliency_payload(r, max_images=3)
    assert len(doc["pictures"]) == 3
    first = doc["pictures"][0]["maps"][0]
    assert first["interpreter"] == "gradcam" and first["reference"] != first["candidate"]
    assert {"fsr", "accuracy", "aopc"} <= set(doc["charts"])
    html = saliency_section(doc, 0)
    assert "data:image/webp;base64," in html and "fooled through" not in html  # chart is PNG
    assert html.count("<figure") == 3
    json.dumps(doc)  # travels through xdist and into the JSON report


SPEC = """
[defaults]
model = "nemaudit:conceptnet"
probe = "synthetic:n=24,seed=0"
layers = ["layer4"]
method = "saliency"
reference = "nemaudit:conceptnet"
interpreters = ["gradcam"]
images = 24

[[property]]
name = "fooled model keeps Grad-CAM"
weights = "{weights}"
expect = "spearman_gradcam >= 0.8"

[[property]]
name = "original keeps Grad-CAM"
expect = ["spearman_gradcam >= 0.8", "top1_drop <= 0.02"]
"""


def test_candidate_vs_reference_property_fails_for_the_fooled_model(fooled, pytester,
                                                                    monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path, _ = fooled
    pytester.makefile(".toml", nemaudit_saliency=SPEC.format(weights=path))
    result = pytester.runpytest_inprocess("--nemaudit", "--nemaudit-json", "out/r.json",
                                          "--nemaudit-html", "out/r.html", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*saliency.spearman_gradcam >= 0.8 does not hold*",
                                 "*image * (class *): ρ gradcam*"])
    doc = json.loads((pytester.path / "out/r.json").read_text())
    recs = {r["nodeid"].split("::")[1]: r for r in doc["records"]}
    bad = recs["fooled model keeps Grad-CAM[layer4]"]
    assert bad["outcome"] == "failed" and bad["saliency"]["metrics"]["spearman_gradcam"] < 0.8
    good = recs["original keeps Grad-CAM[layer4]"]
    assert good["saliency"]["metrics"]["spearman_gradcam"] == pytest.approx(1.0)
    html = (pytester.path / "out/r.html").read_text()
    assert "saliency maps" in html and "data:image/webp" in html


def test_fool_command_writes_the_documented_json(tmp_path, capsys):
    from nemaudit.cli import main

    out = tmp_path / "fool.json"
    code = main(["fool", "--probe", "synthetic:n=24,seed=0", "--epochs", "1", "--images", "6",
                 "--interpreters", "gradcam", "--no-dissect", "--no-cache", "--quiet",
                 "--device", "cpu", "--save-weights", str(tmp_path / "w.pt"), "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc["fsr"]) == {"gradcam"}
    assert {"top1", "top5"} <= set(doc["accuracy"]["original"]) | set(doc["accuracy"]["fooled"])
    assert doc["weights"] == str(tmp_path / "w.pt") and Path(doc["weights"]).is_file()
    assert doc["settings"]["fooling"] == "location" and doc["settings"]["epochs"] == 1


@pytest.mark.parametrize("argv, message", [
    (["fool", "--fooling", "frame"], "--fooling expected"),
    (["fool", "--interpreter", "occlusion"], "--interpreter expected"),
    (["fool", "--layer", "fc", "--no-dissect", "--epochs", "1"], "spatial output"),
    (["saliency", "--reference", "nemaudit:conceptnet", "--interpreters", "gradcam,x"],
     "--interpreters expected"),
])
def test_fool_and_saliency_commands_reject_bad_input_clearly(argv, message, capsys):
    from nemaudit.cli import main

    code = main([*argv, "--probe", "synthetic:n=8,seed=0", "--quiet", "--no-cache",
                 "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
