"""Run comparison rule by rule on hand-written records: which properties, metrics and units
count as changed, the gates' edges in both directions, and reading saved runs."""

from __future__ import annotations

import json
import os

import pytest

from nemaudit.errors import SpecError
from nemaudit.report.compare import (
    Gate,
    RecordDiff,
    autosave_name,
    compare_records,
    diff_json,
    load_run,
    load_runs,
    regressions,
    run_path,
)


def rec(nodeid="t.py::p", name="p", outcome="passed", measured=0.25, **payloads):
    return {"nodeid": nodeid, "name": name, "outcome": outcome, "measured": measured,
            **payloads}


# --------------------------------------------------------------------------- gates

@pytest.mark.parametrize("text, metric, allowance", [
    ("flip_rate:+5%", "flip_rate", 0.05),
    (" milan.f1_mean : -0.02 ", "milan.f1_mean", -0.02),
    ("x_1:+.5", "x_1", 0.5),
    ("a.b:+3.", "a.b", 3.0),
    ("rate:-10%", "rate", -0.1),
    ("rate:+0", "rate", 0.0),
    ("Top1_Drop:+1%", "Top1_Drop", 0.01),
])
def test_gates_parse(text, metric, allowance):
    g = Gate.parse(text)
    assert g.metric == metric and g.allowance == pytest.approx(allowance)
    assert g.text == text.strip()


@pytest.mark.parametrize("bad", ["flip_rate", "flip_rate:5", "flip_rate:+x", ":+5%", "1a:+5",
                                 "rate:+5%%", "rate:+-5", "rate +5"])
def test_malformed_gates_are_refused_with_an_example(bad):
    with pytest.raises(SpecError) as e:
        Gate.parse(bad)
    assert str(e.value) == (f"compare gate {bad!r}: expected METRIC:+N or METRIC:+N% (e.g. "
                            "flip_rate:+5%: fail when the flip rate grew by more than 5 points)")


def test_a_growth_gate_breaks_only_past_its_allowance():
    g = Gate.parse("m:+0.25")
    assert not g.breaks(1.0, 1.25)  # exactly the allowance: allowed
    assert g.breaks(1.0, 1.2501)
    assert not g.breaks(1.0, 0.0)  # a fall never breaks a growth gate
    zero = Gate.parse("m:+0")
    assert not zero.breaks(0.5, 0.5) and zero.breaks(0.5, 0.5001)
    assert not zero.breaks(0.5, 0.5 + 1e-13)  # float noise is not a regression


def test_a_fall_gate_breaks_only_past_its_allowance():
    g = Gate.parse("m:-0.25")
    assert not g.breaks(1.0, 0.75)
    assert g.breaks(1.0, 0.7499)
    assert not g.breaks(1.0, 2.0)


# --------------------------------------------------------------------------- records

def test_properties_in_one_run_only_are_listed_not_compared():
    a = [rec("t::a"), rec("t::both"), rec("t::gone")]
    b = [rec("t::new"), rec("t::both", name=None), rec("t::newer")]
    diffs, gone, new = compare_records(a, b)
    assert [d.nodeid for d in diffs] == ["t::both"] and diffs[0].name == "t::both"
    assert gone == ["t::a", "t::gone"] and new == ["t::new", "t::newer"]


@pytest.mark.parametrize("change, changed", [
    ({}, False),
    ({"outcome": "failed"}, True),
    ({"measured": 0.5}, True),
    ({"audit": {"metrics": {"flip_rate": 0.5}}}, True),
    ({"audit": {"metrics": {"flip_rate": 0.25, "extra": 1}}}, True),  # a metric appears
    ({"audit": {"metrics": {"flip_rate": 0.25}}, "interval": [0, 1]}, False),
])
def test_a_property_changed_when_its_verdict_value_metrics_or_units_did(change, changed):
    a = rec(audit={"metrics": {"flip_rate": 0.25}}, interval={"lo": 0.125})
    (d,), _, _ = compare_records([a], [{**a, **change}])
    assert d.changed is changed
    assert d.outcome == ("passed", change.get("outcome", "passed"))
    assert d.measured == (0.25, change.get("measured", 0.25))
    assert d.intervals == ({"lo": 0.125}, change.get("interval", {"lo": 0.125}))


def test_metrics_of_every_method_carry_its_prefix_and_only_numbers_count():
    a = rec(audit={"metrics": {"flip_rate": 0.25, "mode": "full", "ok": True, "n": 3}},
            milan={"metrics": {"f1_mean": 0.5}})
    b = rec(audit={"metrics": {"flip_rate": 0.5, "n": 3}}, fooling={"metrics": {"fsr": 1}})
    (d,), _, _ = compare_records([a], [b])
    assert d.metrics == {"flip_rate": (0.25, 0.5), "n": (3.0, 3.0), "milan.f1_mean": (0.5, None),
                         "fooling.fsr": (None, 1.0)}
    assert isinstance(d.metrics["n"][0], float)


def test_unit_changes_of_dissection_and_milan_rows():
    nd_a = [{"unit": 0, "clean_label": "car", "changed": False},
            {"unit": 1, "clean_label": "sky", "changed": True},
            {"unit": 2, "clean_label": "tree", "changed": True},
            {"unit": 3, "clean_label": "dog", "changed": False}]
    nd_b = [{"unit": 9, "clean_label": "new", "changed": True},    # not in the old run
            {"unit": 0, "clean_label": "car", "changed": False},   # same
            {"unit": 1, "clean_label": "sky", "changed": False},   # no longer changes
            {"unit": 2, "clean_label": "grass", "changed": True},  # another clean concept
            {"unit": 3, "clean_label": "dog", "changed": True}]    # now changes
    mi_a = [{"unit": 5, "clean": "red things", "manipulated": False}]
    mi_b = [{"unit": 5, "clean": "red things", "manipulated": True}]
    a = rec(audit={"units": nd_a}, milan={"units": mi_a})
    b = rec(audit={"units": nd_b}, milan={"units": mi_b}, radius={"units": nd_b})
    # a method only the new run has is skipped, and the next one still compared
    (d,), _, _ = compare_records([rec(milan={"units": mi_a})], [b])
    assert [(u["method"], u["unit"]) for u in d.units] == [("milan", 5)]
    (d,), _, _ = compare_records([a], [b])
    assert d.units == [
        {"method": "netdissect", "unit": 3, "clean": ["dog", "dog"], "changed": [False, True]},
        {"method": "milan", "unit": 5, "clean": ["red things", "red things"],
         "changed": [False, True]},
        {"method": "netdissect", "unit": 1, "clean": ["sky", "sky"], "changed": [True, False]},
        {"method": "netdissect", "unit": 2, "clean": ["tree", "grass"], "changed": [True, True]},
    ]
    assert d.changed


def test_units_sort_by_their_name_within_a_kind_of_change():
    rows_a = [{"unit": u, "clean_label": "a", "changed": False} for u in (2, 10)]
    rows_b = [{"unit": u, "clean_label": "a", "changed": True} for u in (2, 10)]
    (d,), _, _ = compare_records([rec(audit={"units": rows_a})], [rec(audit={"units": rows_b})])
    assert [u["unit"] for u in d.units] == [10, 2]  # "10" < "2" as text: a stable, simple key


def test_regressions_name_the_property_the_values_and_the_allowance():
    d = RecordDiff("n", "prop", ("passed", "failed"), (0.1, 0.2),
                   {"flip_rate": (0.125, 0.5), "only_new": (None, 1.0), "only_old": (1.0, None)})
    gates = [Gate.parse("only_new:+0"), Gate.parse("absent:+0"), Gate.parse("flip_rate:+10%"),
             Gate.parse("flip_rate:-0.1"), Gate.parse("only_old:+0")]
    assert regressions([d], gates) == ["prop: flip_rate 0.125 → 0.5 (+0.375, allowed +10%)"]
    fall = RecordDiff("n", "prop", ("passed", "passed"), (0, 0), {"f1": (0.9, 0.5)})
    assert regressions([fall], [Gate.parse("f1 : -0.1")]) == [
        "prop: f1 0.9 → 0.5 (-0.4, allowed -0.1)"]


def test_diff_json_writes_what_json_cannot_hold_as_text():
    from pathlib import Path

    d = RecordDiff("n", "p", ("passed", "passed"), (0, 0), units=[{"unit": Path("u7")}])
    assert diff_json([d])[0]["units"] == [{"unit": "u7"}]


def test_diff_json_is_plain_json():
    d = RecordDiff("n", "p", ("passed", "failed"), (0.1, 0.2), {"m": (1.0, 2.0)},
                   [{"unit": 1}], ([0, 1], None))
    assert diff_json([d]) == [{"nodeid": "n", "name": "p", "outcome": ["passed", "failed"],
                               "measured": [0.1, 0.2], "metrics": {"m": [1.0, 2.0]},
                               "units": [{"unit": 1}], "intervals": [[0, 1], None]}]


# --------------------------------------------------------------------------- saved runs

def _write(path, records, **doc):
    from nemaudit.report.json_report import write_json

    return write_json(path, records, {"title": "t", **doc})


def test_a_runs_folder_means_its_newest_report(tmp_path):
    old = _write(tmp_path / "20260101-000000-aaaa.json", [rec("t::old")])
    _write(tmp_path / "20260101-120000-cccc.json", [rec("t::middle")])
    new = _write(tmp_path / "20260102-000000-bbbb.json", [rec("t::new")])
    os.utime(old, (2e9, 2e9))  # by name, not by modification time
    assert run_path(tmp_path) == new
    assert [r["nodeid"] for r in load_runs(tmp_path)] == ["t::new"]
    doc = load_run(tmp_path)
    assert doc["path"] == str(new) and doc["records"][0]["nodeid"] == "t::new"
    assert run_path(old) == old


def test_reading_runs_fails_clearly(tmp_path):
    with pytest.raises(SpecError, match=r"^compare: no saved runs in "):
        run_path(tmp_path)
    with pytest.raises(SpecError, match=r"^compare: no report at .*missing\.json$"):
        run_path(tmp_path / "missing.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"schema": "other/1", "records": []}))
    with pytest.raises(SpecError, match=r"^compare: cannot read .*foreign\.json: .*not a "
                                        r"nemaudit report"):
        load_run(tmp_path / "foreign.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SpecError, match=r"^compare: cannot read .*broken\.json"):
        load_run(tmp_path / "broken.json")
    bad = _write(tmp_path / "bad.json", [{"name": "no id"}])
    with pytest.raises(SpecError, match=r"^compare: .*bad\.json: every record needs a nodeid$"):
        load_run(bad)


def test_autosave_names_sort_by_time_and_carry_the_commit(monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt: fmt.replace("%Y", "2026")
                        .replace("%m", "12").replace("%d", "03").replace("%H", "14")
                        .replace("%M", "05").replace("%S", "09"))
    assert autosave_name({"git": {"commit": "0123456789abcdef"}}) == \
        "20261203-140509-01234567.json"
    assert autosave_name({}) == "20261203-140509-nogit.json"
    assert autosave_name({"git": {"commit": None}}) == "20261203-140509-nogit.json"
