"""The terminal summary's words and numbers value by value: the relation that holds for
each comparison, baselines, undefined values and confidence edges, the headline when no
expectation was recorded, names, titles, tallies, detail lines, times, which layout a
width gets, and the audit table's cells."""

from __future__ import annotations

import pytest
from rich.console import Console

from nemaudit.report import terminal as t


def _rec(expectation, measured, bound=None, **kw):
    return {"expectation": expectation, "measured": measured, "bound": bound, **kw}


@pytest.mark.parametrize("exp, measured, bound, text", [
    ("flip_rate <= 0.25", 0.03125, 0.25, "0.0312 ≤ 0.25"),
    ("flip_rate <= 0.25", 0.25, 0.25, "0.25 ≤ 0.25"),
    ("flip_rate <= 0.25", 0.3, 0.25, "0.3 > 0.25"),
    ("flip_rate < 0.25", 0.25, 0.25, "0.25 ≥ 0.25"),
    ("flip_rate < 0.25", 0.2, 0.25, "0.2 < 0.25"),
    ("units >= 3", 3, 3, "3 ≥ 3"),
    ("units >= 3", 2, 3, "2 < 3"),
    ("units > 3", 3, 3, "3 ≤ 3"),
    ("units > 3", 4, 3, "4 > 3"),
    ("units == 3", 3, 3, "3 = 3"),
    ("units == 3", 2, 3, "2 ≠ 3"),
    ("units != 3", 2, 3, "2 ≠ 3"),
    ("units != 3", 3, 3, "3 = 3"),
    ("flip_rate <= 0.25", None, 0.25, "undefined ≤ 0.25"),
    ("flip_rate >= 0.25", float("nan"), 0.25, "undefined ≥ 0.25"),
])
def test_the_relation_that_holds(exp, measured, bound, text):
    assert t.result_text(_rec(exp, measured, bound), digits=3) == text


def test_the_confidence_edge_on_the_side_the_bound_is():
    iv = {"lo": 0.0123, "hi": 0.3456, "level": 0.95}
    assert t.result_text(_rec("flip_rate <= 0.5 @ 95%", 0.1, 0.5, interval=iv)) == \
        "0.1 ≤ 0.5 (at 95%: 0.346)"
    assert t.result_text(_rec("flip_rate < 0.5 @ 95%", 0.1, 0.5, interval=iv)) == \
        "0.1 < 0.5 (at 95%: 0.346)"
    assert t.result_text(_rec("flip_rate >= 0.01 @ 90%", 0.1, 0.01, interval=iv)) == \
        "0.1 ≥ 0.01 (at 95%: 0.0123)"
    assert t.result_text(_rec("flip_rate <= 0.5 @ 95%", 0.1, 0.5,
                              interval={"lo": 0.0, "hi": 0.2})) == "0.1 ≤ 0.5 (at 0%: 0.2)"
    # no level written, or an incomplete interval: no edge
    assert t.result_text(_rec("flip_rate <= 0.5", 0.1, 0.5, interval=iv)) == "0.1 ≤ 0.5"
    assert t.result_text(_rec("flip_rate <= 0.5 @ 95%", 0.1, 0.5,
                              interval={"hi": 0.2})) == "0.1 ≤ 0.5"
    assert t.result_text(_rec("flip_rate <= 0.5", 0.123456, 0.5), digits=5) == "0.12346 ≤ 0.5"


def test_baselines_and_records_without_an_expectation():
    assert t.result_text(_rec("unchanged_since_baseline", 0)) == "unchanged"
    assert t.result_text(_rec("unchanged_since_baseline", 1)) == "1 unit moved"
    assert t.result_text(_rec("unchanged_since_baseline", 3)) == "3 units moved"
    assert t.result_text(_rec("x", 2, baseline={"status": "checked"})) == "2 units moved"
    assert t.result_text(_rec("unchanged_since_baseline", 0,
                              baseline={"status": "written"})) == "baseline written"
    # no comparison: the measured value, else the first method's headline
    assert t.result_text(_rec("", 0.123456)) == "0.123"
    assert t.result_text(_rec("flip_rate <= x", 0.5)) == "0.5"
    assert t.result_text({"audit": {"metrics": {"flip_rate": 0.0625}}}) == "flip 6.2%"
    assert t.result_text({"milan": {"metrics": {"manipulated_rate": 0.5}},
                          "audit": {"metrics": {"flip_rate": 0.0625}}}) == "flip 6.2%"
    assert t.result_text({"milan": {"metrics": {"manipulated_rate": 0.5}}}) == \
        "manipulated 50.0%"
    assert t.result_text({"audit": {"metrics": {}}}) == "—"
    assert t.result_text({"audit": {}}) == "—"
    assert t.result_text({}) == "—"


def test_names_titles_tallies_and_details():
    assert t._name({"name": "test_x", "layer": "layer4"}) == "test_x · layer4"
    assert t._name({"name": "spec layer4 noise", "layer": "layer4"}) == "spec layer4 noise"
    assert t._name({"nodeid": "a::b"}) == "a::b" and t._name({}) == "?"
    recs = [{"outcome": "passed", "duration": 1.25}, {"outcome": "failed", "duration": 2.0},
            {"outcome": "passed", "duration": 0.0}]
    assert t._title(recs) == "nemaudit — 3 properties: 2 passed, 1 failed (3.2 s)"
    assert t._title([{"outcome": "passed", "duration": 1}]) == \
        "nemaudit — 1 property: 1 passed (1.0 s)"
    assert t._title([]) == "nemaudit — 0 properties: none run (0.0 s)"
    exps = [{"ok": True}, {"ok": False}, {"ok": True, "status": "warned"},
            {"status": "warned"}]
    assert t._tally({"expectations": exps}) == "1 of 4 expectations held, 2 warned"
    assert t._tally({"expectations": exps[:2]}) == "1 of 2 expectations held"
    assert t._tally({"expectations": exps[:1]}) is None and t._tally({}) is None
    r = {"expectation": "flip_rate <= 0.1", "corruption": {"kind": "gaussian", "std": 0.02},
         "outcome": "error", "message": "  boom\nmore"}
    assert t._detail(r) == "flip_rate · gaussian std=0.02 · boom"
    assert t._detail(r, metric=False, reason=False) == "gaussian std=0.02"
    assert t._detail({**r, "outcome": "failed"}) == "flip_rate · gaussian std=0.02"
    assert t._detail({"outcome": "skipped", "message": "why"}) == "why"
    assert t._detail({}) == ""
    assert t._metric({"expectation": "milan.manipulated_rate <= 0.1 @ 95%"}) == \
        "milan.manipulated_rate"
    assert t._metric({"expectation": "nonsense"}) is None


@pytest.mark.parametrize("d, text", [(0.0, "0.0 s"), (12.34, "12.3 s"), (99.94, "99.9 s"),
                                     (99.95, "100 s"), (1234.5, "1234 s")])
def test_seconds(d, text):
    assert t._seconds(d) == text


def test_outcome_labels():
    assert [t._outcome({"outcome": o}, short=True).plain
            for o in ("passed", "warned", "failed", "error", "skipped", "odd")] == [
        "PASS", "WARN", "FAIL", "ERR", "SKIP", "ODD"]
    assert t._outcome({}, short=False).plain == "ERROR"
    assert t._outcome({"outcome": "failed"}, short=False).style == "bold red"
    assert t._outcome({"outcome": "odd"}, short=True).style == "bold yellow"
    assert t._result_cell({"outcome": "failed", "measured": 1.0}, 2).style == "red"
    assert t._result_cell({"outcome": "passed", "measured": 1.0}, 2).style == ""


def test_the_layout_follows_the_width():
    recs = [{"name": "p", "outcome": "passed", "expectation": "flip_rate <= 0.5",
             "measured": 0.1, "bound": 0.5, "duration": 1.0}]
    s = t.session_summary(recs)
    assert [c.header for c in s.table(t.WIDE).columns] == [
        "outcome", "property", "expectation", "result", "corruption", "time"]
    assert [c.header for c in s.table(t.WIDE - 1).columns] == ["", "property", "result",
                                                               "time"]
    long = [{**recs[0], "name": "x" * 300}]
    assert len(t.session_summary(long).table(200).columns) == 4  # would wrap: narrow
    out = Console(width=200, record=True)
    out.print(t.session_summary(recs, width=80))
    text = out.export_text()
    assert "PASS" in text and "0.1 ≤ 0.5" in text and "1.0 s" in text
    out = Console(width=200, record=True)
    out.print(t.session_summary(recs))
    text = out.export_text()
    assert "PASSED" in text and "0.1 ≤ 0.5" in text


def _text(renderable, width=200):
    c = Console(width=width, record=True)
    c.print(renderable)
    return c.export_text()


def test_the_audit_table():
    doc = {"layer": "layer4", "corruption": {"kind": "pgd", "eps": 4 / 255, "targeted": False},
           "metrics": {"flip_rate": 0.5, "flip_rate_detectors": 0.25, "changed": 2, "units": 4,
                       "detectors": 4, "targeted_success_rate": 0.5,
                       "mean_source_iou_drop": 0.12345, "accuracy_clean": 0.75,
                       "accuracy_corrupted": 0.5,
                       "detector_share": {"clean": {"all": 0.5}, "corrupted": {"all": 0.25}}},
           "units": [
               {"unit": 1, "clean_label": "red", "clean_category": "color", "clean_iou": 0.2,
                "corrupted_label": "blue", "corrupted_category": "color",
                "corrupted_iou": 0.1, "source_iou_drop": 0.15, "changed": True,
                "clean_detector": True, "target": "blue", "target_hit": True},
               {"unit": 2, "clean_label": "car", "clean_iou": 0.5, "corrupted_label": None,
                "corrupted_iou": 0.0, "source_iou_drop": 0.5, "changed": True,
                "clean_detector": True, "target": "sky", "target_hit": False},
               {"unit": 3, "clean_label": "dog", "clean_iou": 0.9, "changed": False}]}
    text = _text(t.audit_table(doc, max_rows=1))
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    assert "Audit — layer4 under pgd eps=4/255" in lines
    assert "flip rate (all units) 50.0% 2 of 4 units changed concept" in lines
    assert "flip rate (detectors) 25.0% over 4 clean detectors" in lines
    assert any(ln.startswith("reached the runner-up 50.0% untargeted") for ln in lines)
    assert "mean source-IoU drop 0.123" in lines
    assert "accuracy 75.0% → 50.0% clean → corrupted" in lines
    assert any(ln.startswith("│ clean │") and "50.0%" in ln for ln in lines)
    assert "changed units (2 of 3)" in lines
    # the strongest changed unit first, capped at max_rows
    row = next(ln for ln in lines if ln.startswith("│ 2 │"))
    assert row == "│ 2 │ car │ 0.5000 │ → │ — │ 0.0000 │ 0.5 │ sky │"
    assert not any(ln.startswith("│ 1 │") for ln in lines)
    assert "… 1 more changed unit(s)" in lines
    text = _text(t.audit_table(doc, max_rows=5))
    row = next(ln for ln in (" ".join(x.split()) for x in text.splitlines())
               if ln.startswith("│ 1 │"))
    assert row == "│ 1 │ red color │ 0.2000 │ → │ blue color │ 0.1000 │ 0.15 │ blue ✓ │"
    calm = {**doc, "units": [doc["units"][2]]}
    calm["metrics"] = {k: v for k, v in doc["metrics"].items()
                       if k not in ("targeted_success_rate", "accuracy_clean")}
    text = _text(t.audit_table(calm))
    assert "no unit changed its concept" in text and "target" not in text
    assert "accuracy" not in text and "runner-up" not in text
