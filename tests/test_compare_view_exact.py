"""The side-by-side comparison page's view (``compare_view``) value by value: each
property's status and rank (worse, broke a gate, better, changed, same), both sides'
cells, the metrics that moved, the changed units with their tags and order, the counts and
the properties found in one run only."""

from __future__ import annotations

import pytest

from nemaudit.report import compare_html as ch
from nemaudit.report.compare import Gate


def _rec(nodeid, outcome, flip, units=(), name=None, **extra):
    rows = [{"unit": u, "clean_label": label, "changed": changed} for u, label, changed in units]
    return {"nodeid": nodeid, "name": name or nodeid.split("::")[-1], "outcome": outcome,
            "measured": flip, "expectation": "flip_rate <= 0.5", "bound": 0.5,
            "audit": {"method": "netdissect", "metrics": {"flip_rate": flip, "units": 4},
                      "units": rows}, **extra}


A = [_rec("t::worse", "passed", 0.125, [(0, "red", False)]),
     _rec("t::gate", "passed", 0.125),
     _rec("t::better", "failed", 0.75),
     _rec("t::moved", "passed", 0.25, [(0, "red", False), (1, "sky", True), (2, "car", False),
                                       (3, "dog", True)]),
     _rec("t::same", "passed", 0.25),
     {**_rec("t::gone", "passed", 0.25), "name": ""}]
B = [_rec("t::new", "passed", 0.25, name="brand new"),
     _rec("t::same", "passed", 0.25),
     _rec("t::moved", "passed", 0.25, [(0, "red", True), (1, "sky", False), (2, "cat", False),
                                       (3, "cow", True)]),
     _rec("t::better", "passed", 0.25),
     _rec("t::gate", "passed", 0.5),
     _rec("t::worse", "failed", 0.625, [(0, "red", True)], message="x" * 700,
          interval={"lo": 0.41234, "hi": 0.81234})]


@pytest.fixture
def view():
    return ch.compare_view({"records": A, "path": "a.json", "created": "yesterday",
                            "environment": {}},
                           {"records": B, "path": "b.json"}, [Gate.parse("flip_rate:+0.2")],
                           units=2)


def test_properties_are_ranked_regressions_first(view):
    props = view["props"]
    assert [(p["name"], p["status"], p["rank"]) for p in props] == [
        ("worse", "worse", 0), ("gate", "gate", 1), ("moved", "changed", 2),
        ("better", "better", 2), ("same", "same", 3)]
    # indices count the properties in both runs in run B's order (kept within a rank)
    assert [p["index"] for p in props] == [5, 4, 2, 3, 1]
    assert [p["anchor"] for p in props] == ["c5", "c4", "c2", "c3", "c1"]
    assert view["regressions"] == ["gate: flip_rate 0.125 → 0.5 (+0.375, allowed +0.2)",
                                   "worse: flip_rate 0.125 → 0.625 (+0.5, allowed +0.2)"]
    assert view["worse"] == 1 and view["ok"] is False
    assert view["counts"] == {"both": 5, "changed": 4, "same": 1, "only_a": 1, "only_b": 1,
                              "worse": 1, "better": 1}
    assert view["only_a"] == [("t::gone", "t::gone")]  # no name: its node id
    assert view["only_b"] == [("t::new", "brand new")]
    assert view["gates"] == ["flip_rate:+0.2"]


def test_each_side_and_the_metrics_that_moved(view):
    worse = view["props"][0]
    assert worse["a"] == {"outcome": "passed", "cls": "passed",
                          "expectation": "flip_rate <= 0.5", "measured": "0.125",
                          "bound": "0.5", "interval": "", "interval_long": "",
                          "expectations": [], "message": ""}
    assert worse["b"]["outcome"] == "failed" and worse["b"]["interval"] == "[0.412, 0.812]"
    assert worse["b"]["message"] == "x" * 600  # capped
    assert worse["delta"] == "+0.5"
    assert worse["metrics"] == [{"name": "flip_rate", "a": "0.125", "b": "0.625",
                                 "delta": "+0.5"}]
    assert worse["same_metrics"] == 1  # units: 4 in both
    assert worse["gated"] == ["worse: flip_rate 0.125 → 0.625 (+0.5, allowed +0.2)"]
    same = view["props"][-1]
    assert same["delta"] == "0" and same["metrics"] == [] and same["changed"] is False


def test_changed_units_now_flipping_first_with_their_tags(view):
    moved = next(p for p in view["props"] if p["name"] == "moved")
    assert moved["units_changed"] == 4 and moved["now_flip"] == 1
    rows = moved["units"]
    assert [(r["unit"], r["rank"], r["tags"]) for r in rows] == [
        (0, 0, [("now flips", "miss")]),
        (2, 1, [("concept changed", "")])]
    assert moved["more_units"] == 2  # units=2 of 4
    assert rows[1] == {"rank": 1, "method": "netdissect", "unit": 2, "clean_a": "car",
                       "clean_b": "cat", "flips_a": False, "flips_b": False,
                       "tags": [("concept changed", "")]}
    diff = next(d for d in ch.compare_records(A, B)[0] if d.name == "moved")
    full, more = ch._unit_rows(diff, 10)
    assert more == 0
    assert [(r["unit"], [t for t, _ in r["tags"]]) for r in full] == [
        (0, ["now flips"]), (2, ["concept changed"]), (3, ["concept changed"]),
        (1, ["no longer flips"])]


def test_run_info(view):
    assert view["a"]["path"] == "a.json" and view["a"]["created"] == "yesterday"
    assert view["a"]["total"] == 6 and view["b"]["total"] == 6
    assert dict(view["a"]["counts"]) == {"passed": 5, "failed": 1}
    assert dict(view["b"]["counts"]) == {"passed": 5, "failed": 1}
    assert view["b"]["created"] == ""


@pytest.mark.parametrize("a, b, text", [(0.25, 0.5, "+0.25"), (0.5, 0.25, "-0.25"),
                                        (1, 1, "0"), (None, 1, ""), (True, 1.0, ""),
                                        (float("nan"), 1.0, ""), (1 / 3, 2 / 3, "+0.3333")])
def test_delta(a, b, text):
    assert ch._delta(a, b) == text


def test_severity_interval_and_class():
    assert [ch._severity(o) for o in ("passed", "skipped", "warned", "failed", "error",
                                      "weird", None)] == [0, 0, 1, 2, 2, 2, 2]
    assert ch._cls("warned") == "warned" and ch._cls("weird") == "error"
    assert ch._interval({"lo": 0.5, "hi": 0.75}) == "[0.5, 0.75]"
    assert ch._interval({"lo": None, "hi": 0.75}) == "" and ch._interval(None) == ""
    assert ch._interval({"lo": 0.5, "hi": float("inf")}) == ""


def test_expectations_of_a_side():
    rec = _rec("t::x", "passed", 0.1, expectations=[
        {"expectation": "a <= 1", "measured": 0.5, "ok": True},
        {"expectation": "b <= 1", "measured": 2, "ok": False, "interval": {"lo": 1, "hi": 3}},
        {"expectation": "c", "status": "warned"}, "not a mapping"])
    side = ch._side(rec)
    assert side["expectations"] == [
        {"text": "a <= 1", "measured": "0.5", "status": "passed", "interval": ""},
        {"text": "b <= 1", "measured": "2", "status": "failed", "interval": "[1, 3]"},
        {"text": "c", "measured": "—", "status": "warned", "interval": ""}]
    many = ch._side(_rec("t::y", "passed", 0.1, expectations=[{"expectation": str(i)}
                                                               for i in range(30)]))
    assert len(many["expectations"]) == 20
    assert ch._side(_rec("t::z", "passed", 0.1, expectations="bad"))["expectations"] == []
