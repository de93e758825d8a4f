"""Every flag of ``nemaudit fool``, ``nemaudit saliency`` and ``nemaudit compare`` through
``main()``: the request each builds (the Auditor is replaced by a recorder, so no model is
trained), what the command prints and writes from the result, and its exit codes."""

from __future__ import annotations

import json

import pytest

from nemaudit.audit.saliency.run import FoolingResult, SaliencyResult
from nemaudit.cli import main
from tests.helpers import table_cells

BASE = ["--probe", "synthetic:n=8,seed=0", "--quiet", "--no-cache", "--device", "cpu"]


@pytest.fixture
def recorder(monkeypatch):
    """Auditor.run records the request and returns ``recorder.result``."""
    from nemaudit.auditor import Auditor

    class Rec:
        requests: list = []
        auditors: list = []
        result = None

    def run(self, req):
        Rec.requests.append(req)
        Rec.auditors.append(self)
        return Rec.result

    monkeypatch.setenv("COLUMNS", "250")  # one printed line per line, no wrapping
    monkeypatch.setattr(Auditor, "prepare", lambda self, req: None)
    monkeypatch.setattr(Auditor, "run", run)
    Rec.requests, Rec.auditors = [], []
    return Rec


def fooling_result():
    rows = [{"index": 3, "label": 1, "test_loss": {"gradcam": 0.125, "lrp": 0.5},
             "hit": {"gradcam": True, "lrp": False}, "spearman": {"gradcam": -0.25},
             "fooled": True},
            {"index": 7, "label": 0, "test_loss": {"gradcam": 0.75, "lrp": 0.25},
             "hit": {"gradcam": False, "lrp": True}, "spearman": {"gradcam": 0.5},
             "fooled": False}]
    metrics = {"fsr_gradcam": 0.5, "fsr_lrp": 0.25, "top1": 0.625, "top5": 0.875,
               "top1_original": 0.75, "top5_original": 1.0, "nd_units": 16, "nd_changed": 4,
               "nd_flip_rate": 0.25, "nd_flip_rate_detectors": None, "fooled": 1, "units": 2}
    meta = {"fooling": "topk", "interpreter": "gradcam", "interpreters": ["gradcam", "lrp"],
            "settings": {"epochs": 3}, "weights": "w.pt", "interval": "[bold]R[/bold]"}
    metrics["fsr"] = 0.5
    return FoolingResult("layer4", {"kind": "fooling"}, rows, metrics, meta)


def test_fool_flags_reach_the_request(recorder, tmp_path, capsys):
    recorder.result = fooling_result()
    out = tmp_path / "fool.json"
    rc = main(["fool", *BASE, "--model", "nemaudit:conceptnet", "--weights", "m.pt",
               "--normalize", "none", "--layer", "layer3", "--interpreters", "gradcam,lrp",
               "--images", "12", "--fooling", "topk", "--interpreter", "lrp", "--lr", "0.5",
               "--lam", "2.5", "--epochs", "3", "--fool-batch-size", "7",
               "--max-top1-drop", "0.25", "--train-probe", "synthetic:n=20,seed=4",
               "--classes", "beach,forest", "--seed", "11", "--save-weights", "w.pt",
               "--no-dissect", "--batch-size", "5", "--out", str(out)])
    assert rc == 0
    (req,) = recorder.requests
    assert req.method == "fooling"
    assert (req.model, req.weights, req.normalize, req.probe, req.layer) == (
        "nemaudit:conceptnet", "m.pt", "none", "synthetic:n=8,seed=0", "layer3")
    assert dict(req.settings) == {
        "interpreters": ("gradcam", "lrp"), "images": 12, "fooling": "topk",
        "interpreter": "lrp", "fool_lr": 0.5, "fool_lambda": 2.5, "fool_epochs": 3,
        "fool_batch_size": 7, "max_top1_drop": 0.25, "train_probe": "synthetic:n=20,seed=4",
        "active_classes": ("beach", "forest"), "fool_seed": 11, "save_weights": "w.pt",
        "dissect": False}
    aud = recorder.auditors[0]
    assert aud.batch_size == 5 and aud.cache_dir is None and aud.progress is False
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.fool-run/1"
    assert (doc["fooling"], doc["interpreter"], doc["layer"]) == ("topk", "gradcam", "layer4")
    assert doc["fsr"] == {"gradcam": 0.5, "lrp": 0.25}
    assert doc["accuracy"] == {"original": {"top1": 0.75, "top5": 1.0},
                               "fooled": {"top1": 0.625, "top5": 0.875}}
    assert doc["weights"] == "w.pt" and doc["settings"] == {"epochs": 3}
    assert doc["network_dissection"] == {"nd_units": 16, "nd_changed": 4, "nd_flip_rate": 0.25,
                                         "nd_flip_rate_detectors": None}
    assert doc["audit"]["method"] == "fooling" and len(doc["audit"]["units"]) == 2
    printed = capsys.readouterr().out
    assert "FSR by interpreter (transfer): gradcam 0.500, lrp 0.250" in printed
    lines = printed.splitlines()
    assert lines[0] == ("FSR 0.500 at top-1 0.625 (original 0.750); Network Dissection: "
                        "4/16 units changed concept")  # the method's summary
    # diff lines are indented and printed as text: no rich markup is read from a result
    assert "  image     3 (class 1): test loss gradcam 0.125 in R [bold]R[/bold]; ρ vs " \
           "original -0.250" in lines


def test_fool_defaults_leave_the_method_defaults(recorder, capsys):
    recorder.result = fooling_result()
    assert main(["fool", *BASE]) == 0
    (req,) = recorder.requests
    assert dict(req.settings) == {"fooling": "location", "interpreter": "gradcam"}
    assert req.layer is None and req.model == "nemaudit:conceptnet"
    assert "wrote" not in capsys.readouterr().out  # no --out: nothing written


def test_fool_show_caps_the_diff_lines(recorder, capsys):
    recorder.result = fooling_result()
    assert main(["fool", *BASE, "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "image     3" not in out and "… 1 more fooled image(s)" in out


def test_saliency_flags_reach_the_request(recorder, tmp_path, capsys):
    rows = [{"index": 2, "label": 0, "spearman": {"gradcam": 0.25}, "reference_pred": 0,
             "candidate_pred": 1, "changed": True}]
    recorder.result = SaliencyResult("layer4", {"kind": "model"}, rows,
                                     {"changed": 1, "units": 1},
                                     {"interpreters": ["gradcam"], "spearman_threshold": 0.75})
    out = tmp_path / "s.json"
    rc = main(["saliency", *BASE, "--reference", "nemaudit:conceptnet",
               "--reference-weights", "r.pt", "--threshold", "0.75", "--interpreters",
               "gradcam", "--images", "9", "--layer", "layer3", "--out", str(out)])
    assert rc == 0
    (req,) = recorder.requests
    assert req.method == "saliency" and req.layer == "layer3"
    assert dict(req.settings) == {"reference": "nemaudit:conceptnet",
                                  "reference_weights": "r.pt", "spearman_threshold": 0.75,
                                  "interpreters": ("gradcam",), "images": 9}
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.saliency-run/1" and doc["audit"]["units"] == rows
    assert "image     2 (class 0): ρ gradcam +0.250; pred 0→1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["fool", "--lr", "0"], "--lr"),
    (["fool", "--epochs", "0"], "--epochs"),
    (["fool", "--images", "0"], "--images"),
    (["fool", "--batch-size", "0"], "--batch-size 0: expected an integer >= 1"),
])
def test_bad_fool_and_saliency_flags_exit_2_naming_the_flag(argv, message, recorder, capsys):
    assert main([*argv, *BASE]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert recorder.requests == []


def test_a_flag_of_the_wrong_type_is_argparse_s_usage_error(recorder, capsys):
    with pytest.raises(SystemExit) as e:
        main(["saliency", "--reference", "m", "--threshold", "x", *BASE])
    assert e.value.code == 2
    assert "argument --threshold: invalid float value: 'x'" in capsys.readouterr().err
    assert recorder.requests == []


# --------------------------------------------------------------------------- compare

def _report(path, records):
    from nemaudit.report.json_report import write_json

    return write_json(path, records, {"title": "t"})


def _rec(flip, changed_units, outcome="passed"):
    units = [{"unit": u, "clean_label": "car", "changed": u in changed_units}
             for u in range(5)]
    return {"nodeid": "t.py::p", "name": "p", "outcome": outcome, "measured": flip,
            "interval": {"lo": flip / 2, "hi": flip * 1.5, "n": 5},
            "audit": {"method": "netdissect", "metrics": {"flip_rate": flip}, "units": units}}


def test_compare_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping inside the table's cells
    a = _report(tmp_path / "a.json", [_rec(0.2, {0})])
    b = _report(tmp_path / "b.json", [_rec(0.8, {0, 1, 2, 3, 4}, "failed")])
    out, html = tmp_path / "c.json", tmp_path / "c.html"
    rc = main(["compare", str(a), str(b), "--fail", "flip_rate:+50%", "--fail",
               "flip_rate:+70%", "--units", "2", "--out", str(out), "--html", str(html)])
    assert rc == 1
    printed = capsys.readouterr().out
    assert "regression: p: flip_rate 0.2 → 0.8 (+0.6, allowed +50%)" in printed
    assert "allowed +70%" not in printed
    assert "1: car → car (now changes)" in printed and "2: car → car (now changes)" in printed
    assert "3: car" not in printed and "… 2 more" in printed
    assert "[0.1, 0.3] → [0.4, 1.2]" in printed
    assert "1 properties in both runs: 1 changed, 0 the same; 0 only in the first, 0 only in " \
           "the second" in printed
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.compare/1" and doc["a"] == str(a) and doc["b"] == str(b)
    assert doc["regressions"] == ["p: flip_rate 0.2 → 0.8 (+0.6, allowed +50%)"]
    assert [u["unit"] for u in doc["properties"][0]["units"]] == [1, 2, 3, 4]
    assert html.is_file() and "<html" in html.read_text().lower()
    assert main(["compare", str(a), str(b), "--fail", "flip_rate:+70%"]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--fail", "flip_rate"], "compare gate 'flip_rate'"),
    (["--out", "/dev/null/x.json"], "--out"),
    (["--html", "/dev/null/x.html"], "--html"),
])
def test_bad_compare_flags_exit_2(tmp_path, flags, message, capsys):
    a = _report(tmp_path / "a.json", [_rec(0.2, {0})])
    assert main(["compare", str(a), str(a), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --------------------------------------------------------------------------- radius

def test_radius_flags_reach_one_request_per_layer(recorder, tmp_path, capsys):
    from nemaudit.audit.radius.run import RadiusResult

    rows = [{"unit": u, "clean_label": "[bold]car", "budget": "std", "radius": r,
             "bracket": [r / 2, r], "broken": u == 1} for u, r in ((4, 0.25), (1, 0.125))]
    recorder.result = RadiusResult("layer3", {"kind": "gaussian"}, rows,
                                   {"units": 2, "max_budget": 0.5, "median": 0.1875,
                                    "broken_rate": 0.5}, {})
    out = tmp_path / "r.json"
    rc = main(["radius", *BASE, "--layer", "layer3", "--layer", "layer4", "--corruption",
               "gaussian:std=0.5", "--units", "4,1", "--max-units", "2", "--tolerance",
               "0.01", "--set", "radius_units=labelled", "--show", "1", "--out", str(out)])
    assert rc == 0
    assert [r.layer for r in recorder.requests] == ["layer3", "layer4"]
    for req in recorder.requests:
        assert req.method == "radius" and req.corruption == "gaussian:std=0.5"
        assert req.units == (4, 1) and req.max_units == 2
        assert dict(req.settings) == {"radius_tolerance": 0.01, "radius_units": "labelled"}
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == ("layer3 · gaussian:std=0.5: 2 units searched up to 0.5: median radius "
                        "0.1875, 50% broken within the range")
    # every unit is listed (broken or not), as text, smallest radius first, up to --show
    assert lines[1] == "  unit    1: [bold]car changes at std 0.125 (bracket [0.0625, 0.125])"
    assert "unit    4" not in printed and lines[2] == "  … 1 more broken unit(s)"
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.radius-run/1" and len(doc["radii"]) == 2
    assert doc["radii"][0]["units"] == rows


def test_radius_with_expect_searches_with_its_tolerance_and_strictness(recorder, monkeypatch,
                                                                       tmp_path, capsys):
    from nemaudit.audit.radius import breaking

    calls = []

    def search(auditor, req, exp, *, tolerance=None, strict=False):
        calls.append((req, exp.text, tolerance, strict))
        return breaking.BreakingBudget(exp.text, req.layer, "gaussian", "std", 0.5, 0.01,
                                       (0.125, 0.25), True, 2,
                                       trail=[{"budget": 0.25, "status": "failed",
                                               "measured": 0.75, "broken": True},
                                              {"budget": 0.125, "status": "passed",
                                               "measured": None, "broken": False}])

    monkeypatch.setattr(breaking, "smallest_breaking_budget", search)
    out = tmp_path / "b.json"
    rc = main(["radius", *BASE, "--layer", "layer4", "--corruption", "gaussian:std=0.5",
               "--expect", "flip_rate <= 0.1", "--tolerance", "0.01", "--strict",
               "--units", "0,2", "--out", str(out)])
    assert rc == 0
    ((req, text, tol, strict),) = calls
    assert req.max_units is None
    assert req.method == "netdissect" and req.units == (0, 2) and req.layer == "layer4"
    assert (text, tol, strict) == ("flip_rate <= 0.1", 0.01, True)
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("layer4 · gaussian:std=0.5: 'flip_rate <= 0.1' breaks at std=0.25 "
                               "(holds at 0.125; 2 audits, ")
    assert lines[1:3] == ["  std=0.25: failed (measured 0.75)",
                          "  std=0.125: passed (measured —)"]
    doc = json.loads(out.read_text())
    assert doc["schema"] == "nemaudit.breaking-run/1"
    (s,) = doc["searches"]
    assert s["budget_key"] == "std" and s["broken"] is True
    assert main(["radius", *BASE, "--layer", "l", "--corruption", "gaussian:std=0.5",
                 "--expect", "flip_rate <= 0.1"]) == 0
    assert calls[-1][2:] == (None, False)  # no --tolerance, no --strict
    assert main(["radius", *BASE, "--layer", "l", "--corruption", "gaussian:std=0.5",
                 "--expect", "flip_rate <= 0.1", "--max-units", "3"]) == 0
    assert calls[-1][0].max_units == 3


@pytest.mark.parametrize("expect", [[], ["--expect", "flip_rate <= 0.1"]])
def test_radius_checks_out_before_any_audit(expect, recorder, monkeypatch, capsys):
    from nemaudit.audit.radius import breaking

    monkeypatch.setattr(breaking, "smallest_breaking_budget",
                        lambda *a, **k: pytest.fail("searched despite a bad --out"))
    rc = main(["radius", *BASE, "--layer", "l", "--corruption", "gaussian:std=0.5", *expect,
               "--out", "/dev/null/x.json"])
    assert rc == 2 and "--out" in capsys.readouterr().err and recorder.requests == []


def test_compare_table_cells(tmp_path, capsys, monkeypatch):
    """Every cell of the terminal table: only changed properties, the first four metric
    changes, unit lines (and when they 'now change'), the intervals under the values."""
    monkeypatch.setenv("COLUMNS", "300")
    same = _rec(0.2, {0})
    same["nodeid"], same["name"] = "t.py::same", "same"
    gone = dict(_rec(0.2, {0}), nodeid="t.py::gone", name="gone")
    a = _rec(0.2, {0, 1})
    a["audit"]["metrics"] = {"flip_rate": 0.2, "m1": 1, "m2": 2, "m3": 3, "m4": 4, "units": 5}
    b = _rec(0.4, {0, 2, 3})
    b["audit"]["metrics"] = {"flip_rate": 0.4, "m1": 10, "m2": 20, "m3": 30, "m4": 40,
                             "units": 5}
    b["audit"]["units"][2]["clean_label"] = None  # no concept any more
    new = dict(_rec(0.2, {0}), nodeid="t.py::new", name="new")
    pa = _report(tmp_path / "a.json", [same, a, gone])
    pb = _report(tmp_path / "b.json", [same, b, new])
    out = tmp_path / "c.json"
    html = tmp_path / "c.html"
    assert main(["compare", str(pa), str(pb), "--units", "3", "--out", str(out),
                 "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{pa} →") and str(pb) in text.split("\n┏")[0]  # the title
    header = next(line for line in text.splitlines() if "property" in line)
    assert [h.strip() for h in header.strip("┃ ").split("┃")] == [
        "property", "outcome", "measured", "metric changes", "units changed"]
    assert "same" not in text.split("properties in both runs")[0]  # unchanged: no row
    assert "passed → passed" in text and "0.2 → 0.4" in text and "[0.1, 0.3] → [0.2, 0.6]" in text
    for m in ("flip_rate 0.2 → 0.4", "m1 1 → 10", "m2 2 → 20", "m3 3 → 30"):
        assert m in text, m
    assert "m4 4 → 40" not in text  # four metric changes at most
    assert "1: car → car" in text and "(now changes)" in text
    assert "2: car → — (now changes)" in text
    assert "3: car → car (now changes)" in text
    assert "… 1 more" not in text  # exactly --units changed units: no "more" line
    assert "2 properties in both runs: 1 changed, 1 the same; 1 only in the first, 1 only in " \
           "the second" in text
    assert f"wrote {html}" in text and html.is_file()
    doc = json.loads(out.read_text())
    assert doc["only_in_a"] == ["t.py::gone"] and doc["only_in_b"] == ["t.py::new"]
    assert doc["regressions"] == []


def test_radius_prints_layer_and_spec_as_text_and_needs_no_out(recorder, tmp_path, capsys,
                                                                monkeypatch):
    from nemaudit.audit.radius.run import RadiusResult

    recorder.result = RadiusResult("[bold]layer3", {"kind": "gaussian"}, [],
                                   {"units": 0, "max_budget": 0.5, "median": None,
                                    "broken_rate": 0.0}, {})
    monkeypatch.chdir(tmp_path)
    rc = main(["radius", *BASE, "--layer", "layer3", "--corruption", "gaussian:std=0.5"])
    assert rc == 0 and list(tmp_path.iterdir()) == []  # no --out: printed, nothing written
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[bold]layer3 · gaussian:std=0.5: ")


def test_radius_with_expect_passes_every_setting_and_prints_text(recorder, monkeypatch, capsys):
    from nemaudit.audit.radius import breaking
    from nemaudit.auditor import Auditor

    calls = []

    def search(auditor, req, exp, *, tolerance=None, strict=False):
        calls.append((auditor, req))
        return breaking.BreakingBudget(exp.text, req.layer, "gaussian", "[i]std", 0.5, 0.01,
                                       (0.125, 0.25), True, 1,
                                       trail=[{"budget": 0.25, "status": "[b]failed",
                                               "measured": 0.75, "broken": True}])

    monkeypatch.setattr(breaking, "smallest_breaking_budget", search)
    rc = main(["radius", *BASE, "--layer", "[u]l4", "--corruption", "gaussian:std=0.5",
               "--expect", "flip_rate <= 0.1", "--set", "eta=0.01", "--units", "1"])
    assert rc == 0
    ((auditor, req),) = calls
    assert isinstance(auditor, Auditor)
    assert req.corruption == "gaussian:std=0.5" and dict(req.settings) == {"eta": 0.01}
    assert req.units == (1,)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[u]l4 · gaussian:std=0.5: ")
    assert lines[1] == "  [i]std=0.25: [b]failed (measured 0.75)"


def test_compare_cells_one_by_one(tmp_path, capsys, monkeypatch):
    """Each cell read from its own column: a metric change is not mistaken for the measured
    cell, the interval digits, the outcome's sides, a unit that had no concept, and no
    "more" line when exactly --units units changed."""
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.chdir(tmp_path)
    a, b = _rec(0.2, {0, 1}), _rec(0.4, {0, 2}, "failed")
    a["interval"] = {"lo": 0.12345, "hi": 0.98765, "n": 5}
    b["interval"] = {"lo": 0.23456, "hi": 0.87654, "n": 5}
    a["audit"]["metrics"] = {"flip_rate": 0.25, "units": 5}  # differs from the measured 0.2
    b["audit"]["metrics"] = {"flip_rate": 0.5, "units": 6}
    a["audit"]["units"][2]["clean_label"] = None
    b["audit"]["units"][3]["clean_label"] = "cow"  # its concept changed, it flips in neither
    _report(tmp_path / "a.json", [a])
    _report(tmp_path / "b.json", [b])
    assert main(["compare", "a.json", "b.json", "--units", "3"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].rstrip() == "a.json → b.json"  # the title, flush left
    ((name, outcome, measured, moved, units),) = table_cells(text)
    assert name == ["p"] and outcome == ["passed → failed"]
    assert measured == ["0.2 → 0.4", "[0.123, 0.988] → [0.235, 0.877]"]
    assert moved == ["flip_rate 0.25 → 0.5", "units 5 → 6"]
    # regressions first; exactly --units units changed: no "more" line
    assert units == ["2: — → car (now changes)", "1: car → car", "3: car → cow"]


def test_compare_html_shows_as_many_units_as_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _report(tmp_path / "a.json", [_rec(0.2, set())])
    _report(tmp_path / "b.json", [_rec(0.4, {0, 1, 2, 3})])
    for n in (1, 3):
        assert main(["compare", "a.json", "b.json", "--units", str(n), "--html",
                     f"c{n}.html"]) == 0
    one, three = ((tmp_path / f"c{n}.html").read_text() for n in (1, 3))
    assert "… 3 more" in one or "3 more" in one
    assert "1 more" in three and one != three


def test_a_bad_html_path_is_named_exactly(tmp_path, capsys):
    a = _report(tmp_path / "a.json", [_rec(0.2, {0})])
    assert main(["compare", str(a), str(a), "--html", "/dev/null/x.html"]) == 2
    assert capsys.readouterr().err.startswith("nemaudit: error: --html '/dev/null/x.html': ")


@pytest.mark.parametrize("command", [["fool"], ["saliency", "--reference", "nemaudit:x"]])
def test_fool_and_saliency_refuse_a_bad_out_before_any_audit(command, recorder, capsys):
    assert main([*command, *BASE, "--out", "/dev/null/x.json"]) == 2
    assert recorder.requests == []
    assert capsys.readouterr().err.startswith("nemaudit: error: --out '/dev/null/x.json': ")


def test_the_transfer_line_prints_interpreter_names_as_text(recorder, capsys):
    r = fooling_result()
    r.meta["interpreters"] = ["gradcam", "[i]x"]
    r.metrics["fsr_[i]x"] = 0.125
    recorder.result = r
    assert main(["fool", *BASE]) == 0
    assert "FSR by interpreter (transfer): gradcam 0.500, [i]x 0.125" in capsys.readouterr().out


def test_saliency_without_out_writes_nothing(recorder, tmp_path, capsys, monkeypatch):
    recorder.result = SaliencyResult("layer4", {"kind": "model"}, [], {"changed": 0, "units": 0},
                                     {"interpreters": ["gradcam"], "spearman_threshold": 0.5})
    monkeypatch.chdir(tmp_path)
    assert main(["saliency", *BASE, "--reference", "nemaudit:conceptnet"]) == 0
    assert list(tmp_path.iterdir()) == [] and "wrote" not in capsys.readouterr().out
