"""Comparing runs: `nemaudit compare` per property and per unit, gates, and the plugin's
--nemaudit-autosave / --nemaudit-compare / --nemaudit-compare-fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from nemaudit.cli import main
from nemaudit.errors import SpecError
from nemaudit.report.compare import Gate, compare_records, regressions

pytest_plugins = ["pytester"]

UNITS = [{"unit": u, "clean_label": lab, "changed": ch, "clean_iou": 0.1}
         for u, lab, ch in ((0, "car", False), (1, "sky", True), (2, "tree", False))]
RECORD = {"nodeid": "t.py::p", "name": "p", "outcome": "passed", "measured": 1 / 3,
          "expectation": "flip_rate <= 0.5",
          "audit": {"method": "netdissect", "metrics": {"flip_rate": 1 / 3, "units": 3},
                    "units": UNITS}}


def _report(path: Path, records: list[dict]) -> Path:
    from nemaudit.report.json_report import write_json

    return write_json(path, records, {"title": "t"})


def test_gates_parse_and_break_only_past_their_allowance():
    g = Gate.parse("flip_rate:+5%")
    assert (g.metric, g.allowance) == ("flip_rate", pytest.approx(0.05))
    assert not g.breaks(0.10, 0.15) and g.breaks(0.10, 0.1501)
    down = Gate.parse("milan.f1_mean:-0.02")
    assert down.allowance == pytest.approx(-0.02) and down.breaks(0.9, 0.87)
    assert not down.breaks(0.9, 0.95)
    for bad in ("flip_rate", "flip_rate:5", "flip_rate:+x", ":+5%"):
        with pytest.raises(SpecError, match="METRIC"):
            Gate.parse(bad)


def test_compare_finds_the_units_whose_concept_or_robustness_changed():
    other = copy.deepcopy(RECORD)
    other["audit"]["units"][0]["clean_label"] = "bus"      # another model's unit 0
    other["audit"]["units"][2]["changed"] = True           # unit 2 now flips
    other["audit"]["metrics"]["flip_rate"] = other["measured"] = 2 / 3
    other["outcome"] = "failed"
    (d,), gone, new = compare_records([RECORD], [other])
    assert gone == new == [] and d.changed and d.outcome == ("passed", "failed")
    assert [u["unit"] for u in d.units] == [2, 0]  # the unit that now changes comes first
    assert d.units[1]["clean"] == ["car", "bus"]
    assert regressions([d], [Gate.parse("flip_rate:+30%")]) == [
        "p: flip_rate 0.3333 → 0.6667 (+0.3333, allowed +30%)"]
    assert regressions([d], [Gate.parse("flip_rate:+40%")]) == []
    (same,), _, _ = compare_records([RECORD], [copy.deepcopy(RECORD)])
    assert not same.changed and not same.units


def test_cli_compare_prints_changes_and_fails_a_regression(tmp_path, capsys):
    other = copy.deepcopy(RECORD)
    other["audit"]["units"][2]["changed"] = True
    other["audit"]["metrics"]["flip_rate"] = 2 / 3
    a = _report(tmp_path / "a.json", [RECORD])
    b = _report(tmp_path / "b.json", [other])
    assert main(["compare", str(a), str(a), "--fail", "flip_rate:+5%"]) == 0
    assert "1 properties in both runs: 0 changed" in capsys.readouterr().out
    rc = main(["compare", str(a), str(b), "--fail", "flip_rate:+5%", "--out",
               str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "regression: p: flip_rate 0.3333 → 0.6667" in out and "now changes" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["regressions"] and doc["properties"][0]["units"][0]["unit"] == 2
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2


TOY_TEST = """
import os
def test_noise(nemaudit):
    std = float(os.environ.get("TOY_STD", "0.01"))
    r = nemaudit.audit(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)",
                       layer="layer2", normalize="none", corruption=f"gaussian:std={std}")
    nemaudit.expect(r, "flip_rate <= 1")
"""


def test_autosave_then_a_noisier_run_fails_the_compare_gate(pytester, monkeypatch):
    pytester.makepyfile(toys=(Path(__file__).with_name("toys.py")).read_text(),
                        test_toy=TOY_TEST)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["--nemaudit", "--nemaudit-cache-dir", "none", "-p", "no:randomly"]
    first = pytester.runpytest_subprocess(*base, "--nemaudit-autosave")
    first.assert_outcomes(passed=1)
    saved = list((pytester.path / ".nemaudit-runs").glob("*.json"))
    assert len(saved) == 1
    env = json.loads(saved[0].read_text())["environment"]
    assert {"python", "torch", "nemaudit", "git", "hostname"} <= set(env)
    same = pytester.runpytest_subprocess(*base, "--nemaudit-compare=last",
                                         "--nemaudit-compare-fail=flip_rate:+5%")
    assert same.ret == 0
    same.stdout.fnmatch_lines(["*compared with .nemaudit-runs*0 of 1 properties changed*"])
    monkeypatch.setenv("TOY_STD", "0.5")  # a run made worse on purpose
    worse = pytester.runpytest_subprocess(*base, "--nemaudit-compare=last",
                                          "--nemaudit-compare-fail=flip_rate:+5%")
    worse.assert_outcomes(passed=1)  # the test itself holds; the gate fails the run
    assert worse.ret == pytest.ExitCode.TESTS_FAILED
    worse.stdout.fnmatch_lines(["*regression: test_noise: flip_rate * → *allowed +5%*"])
    bad = pytester.runpytest_subprocess(*base, "--nemaudit-compare-fail=flip_rate:+5%")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


def test_unused_committed_baselines_are_reported(pytester, monkeypatch):
    pytester.makepyfile(toys=(Path(__file__).with_name("toys.py")).read_text())
    pytester.makepyfile(test_base="""
        def test_b(nemaudit):
            nemaudit.baseline("kept", model="toys.py:ToyNet", normalize="none",
                              probe="python:toys.py:ToyProbe(n=16)", layer="layer2")
    """)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["--nemaudit", "--nemaudit-cache-dir", "none", "-p", "no:randomly"]
    pytester.runpytest_subprocess(*base, "--nemaudit-update").assert_outcomes(passed=1)
    folder = pytester.path / "__nemaudit_baselines__" / "test_base"
    (folder / "gone__layer2.json").write_text((folder / "kept__layer2.json").read_text())
    result = pytester.runpytest_subprocess(*base)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 committed baseline(s) no test used: *gone__layer2.json*"])
    partial = pytester.runpytest_subprocess(*base, "-k", "test_b")
    assert "no test used" not in partial.stdout.str()
