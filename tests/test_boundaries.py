"""Rules at their edges: the expectation grammar, exact-half selection counts, the baseline
tolerance. Each case sits where a flipped comparison or a rounding change gives another answer.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from nemaudit.baseline import (
    BaselineCheck,
    baseline_document,
    baseline_path,
    check_baseline,
    diff_units,
    render,
    slug,
    snapshot_units,
)
from nemaudit.corrupt.base import _exact_count
from nemaudit.corrupt.noise import GaussianNoise
from nemaudit.expectations import (
    BASELINE,
    ExpectationError,
    Verdict,
    in_method,
    metrics_of,
    parse_expectation,
)
from tests.toys import ToyProbe

# --------------------------------------------------------------------------- grammar


def _err(text: str) -> str:
    with pytest.raises(ExpectationError) as e:
        parse_expectation(text)
    return str(e.value)


def test_parsed_fields_and_text():
    e = parse_expectation("  detector_share['clean'][object] >= 4 / 255 @ 90%  ")
    assert (e.text, e.metric, e.keys, e.op) == (
        "detector_share['clean'][object] >= 4 / 255 @ 90%", "detector_share", ("clean", "object"),
        ">=")
    assert e.bound == pytest.approx(4 / 255) and e.confidence == pytest.approx(0.9)
    assert e.subject == "detector_share['clean']['object']"
    b = parse_expectation(f"  {BASELINE} ")
    assert b.text == BASELINE and b.is_baseline and b.bound is None
    assert not e.is_baseline
    assert parse_expectation("flip_rate<0.25").bound == 0.25
    assert parse_expectation("flip_rate <= 1/4").bound == 0.25
    assert parse_expectation("flip_rate <= 0.95 @ 0.99").confidence == 0.99
    assert parse_expectation("flip_rate <= 0.5 @ 99.5 %").confidence == pytest.approx(0.995)


@pytest.mark.parametrize("level", ["0%", "0", "100%", "1", "1.5", "-5%", "x"])
def test_confidence_levels_outside_the_open_interval_are_refused(level):
    assert f"got {level!r}" in _err(f"flip_rate <= 0.1 @ {level}")


@pytest.mark.parametrize("number", ["1e999", "abc", "1/0", "-inf"])
def test_bounds_must_be_finite_numbers(number):
    msg = _err(f"flip_rate <= {number}")
    assert msg.endswith(f"expected a number after '<=', got {number!r} "
                        "(decimals, 1e-3 or fractions like 4/255)")


def test_grammar_errors_read_as_written():
    assert _err("flip_rate") == ("'flip_rate': expected a comparison after flip_rate; allowed "
                                 "operators: <=, <, >=, >, ==")
    assert _err("per_category_flip_rate['object']").endswith(
        "expected a comparison after per_category_flip_rate['object']; allowed operators: "
        "<=, <, >=, >, ==")
    assert _err("detector_share['clean']['object'] ~ 3").endswith(
        "expected a comparison after detector_share['clean']['object']; allowed operators: "
        "<=, <, >=, >, ==")
    assert _err("detector_share_clean['a']['b'] <= 1").endswith(
        "detector_share_clean takes number, or [category] — 0 or 1 subscript(s), got 2")
    assert _err("units <= 3 @ 95%").endswith(
        "units is not a share of units, so it has no binomial interval; '@ level' applies to "
        "flip_rate, flip_rate_detectors, targeted_success_rate, detector_share_clean, "
        "detector_share_corrupted, per_category_flip_rate, detector_share, xie_table")
    assert _err("flip_rate != 0.1").endswith("unknown operator '!='; allowed operators: "
                                            "<=, <, >=, >, ==")
    assert "needs a one-sided bound" in _err("flip_rate == 0.1 @ 95%")
    assert "bad subscript" in _err("per_category_flip_rate[ <= 1")


def test_unknown_metric_messages():
    msg = _err("flip_rat <= 1")
    assert "unknown metric 'flip_rat' (did you mean 'flip_rate'?); known metrics: units, " \
           "flip_rate, detectors, flip_rate_detectors, changed," in msg
    assert "; MILAN metrics: milan.<units|changed|threshold|manipulated_rate|" in msg
    # the other methods' lists are joined by "; " (one list ends, the next begins)
    assert "|exemplar_overlap_mean>; Robustness radius metrics: radius.<units|" in msg
    assert msg.endswith("; or the word 'unchanged_since_baseline'")
    assert "'zzz <= 1': unknown metric 'zzz'; known metrics: units, flip_rate" in _err("zzz <= 1")
    msg = _err("milan.zzz <= 1")
    assert msg.endswith("unknown metric 'milan.zzz' (did you mean 'milan.units'?); MILAN "
                        "metrics: milan.units, milan.changed, milan.threshold, "
                        "milan.manipulated_rate, milan.f1_mean, milan.f1_std, milan.f1_min, "
                        "milan.description_change_rate, milan.exemplar_overlap_mean")
    msg = _err("foo.bar <= 1")
    assert "unknown metric namespace 'foo'; metrics are plain names (Network Dissection) or " \
           "milan.<name> (MILAN) or radius.<name> (Robustness radius)" in msg


def test_in_method_and_metrics_of():
    assert in_method(" manipulated_rate <= 0.1", "milan") == "milan.manipulated_rate <= 0.1"
    assert in_method("milan.f1_mean >= 0.5", "milan") == "milan.f1_mean >= 0.5"
    assert in_method(BASELINE, "milan") == BASELINE
    assert in_method("flip_rate <= 0.1", "netdissect") == "flip_rate <= 0.1"
    with pytest.raises(ExpectationError) as e:
        in_method("flip_rate <= 1", "milan")
    assert str(e.value).endswith(
        "'flip_rate' is not one; MILAN metrics: units, changed, threshold, manipulated_rate, "
        "f1_mean, f1_std, f1_min, description_change_rate, exemplar_overlap_mean (Network "
        "Dissection metrics go in a property without method = \"milan\", or on a "
        "nemaudit.audit(...) result)")
    milan = SimpleNamespace(method="milan", metrics={"f1_mean": 0.5, "units": 3})
    assert metrics_of(milan) == {"milan.f1_mean": 0.5, "milan.units": 3}
    nd = SimpleNamespace(method="netdissect", metrics={"flip_rate": 0.25})
    assert metrics_of(nd) == {"flip_rate": 0.25}


def test_lookup_errors_name_the_path_and_the_valid_keys():
    e = parse_expectation("detector_share['clean']['object'] >= 0.2")
    cases = [({"detector_share": {"clean": 0.3}}, "detector_share['clean'] has no key 'object'; "
              "valid keys: none"),
             ({"detector_share": {"clean": {"x": 1, "y": 2}}},
              "detector_share['clean'] has no key 'object'; valid keys: x, y"),
             ({"detector_share": {"other": {}}}, "detector_share has no key 'clean'"),
             ({"a": 1, "b": 2}, "this audit has no metric 'detector_share' (it has: a, b)"),
             ({"detector_share": {"clean": {"object": "x"}}},
              "detector_share['clean']['object'] is not a number (str); index it with [key]"),
             ({"detector_share": {"clean": {"object": {"q": 1}}}},
              "detector_share['clean']['object'] is not a number (dict); index it with [key]"),
             ({"detector_share": {"clean": {"object": True}}}, "is not a number (bool)")]
    for metrics, message in cases:
        with pytest.raises(ExpectationError) as err:
            e.evaluate(metrics)
        assert message in str(err.value), (metrics, str(err.value))
    assert e.evaluate({"detector_share": {"clean": {"object": 0.2}}}) == (True, 0.2)
    assert e.evaluate({"detector_share": {"clean": {"object": None}}}) == (False, None)
    assert e.evaluate({"detector_share": {"clean": {"object": 1}}}) == (True, 1.0)


class _Result:
    def __init__(self, interval):
        self.interval_value, self.calls = interval, []

    def interval(self, metric, keys, level):
        self.calls.append((metric, keys, level))
        return self.interval_value


@pytest.mark.parametrize("text, lo, hi, status", [
    ("flip_rate <= 0.5", 0.1, 0.9, "passed"),  # no @: the point estimate decides
    ("flip_rate <= 0.5 @ 95%", 0.1, 0.5, "passed"),  # upper end exactly at the bound
    ("flip_rate < 0.5 @ 95%", 0.1, 0.5, "warned"),  # ... which < does not allow
    ("flip_rate < 0.5 @ 95%", 0.1, 0.6, "warned"),
    ("flip_rate <= 0.5 @ 95%", 0.1, 0.6, "warned"),
    ("flip_rate >= 0.3 @ 95%", 0.3, 0.9, "passed"),  # lower end at the bound
    ("flip_rate > 0.25 @ 95%", 0.25, 0.9, "warned"),
    ("flip_rate > 0.2 @ 95%", 0.25, 0.35, "passed"),
    ("flip_rate >= 0.35 @ 95%", 0.25, 0.9, "failed"),  # the point estimate fails first
])
def test_judge_reads_the_bound_on_the_correct_side(text, lo, hi, status):
    e = parse_expectation(text)
    interval = SimpleNamespace(lo=lo, hi=hi)
    res = _Result(interval)
    v = e.judge({"flip_rate": 0.3}, res)
    assert v.status == status and v.measured == 0.3
    assert v.ok is (status != "failed")
    if e.confidence is not None and status != "failed":
        assert v.interval is interval and res.calls == [("flip_rate", (), 0.95)]
    else:
        assert v.interval is None


def test_judge_passes_the_bare_name_of_a_prefixed_metric_and_warns_without_interval():
    e = parse_expectation("milan.manipulated_rate <= 0.5 @ 90%")
    res = _Result(None)
    v = e.judge({"milan.manipulated_rate": 0.25}, res)
    assert v == Verdict("warned", 0.25)
    assert res.calls == [("manipulated_rate", (), 0.9)]
    assert e.method == "milan" and parse_expectation("flip_rate <= 1").method == "netdissect"
    v = parse_expectation("flip_rate <= 0.1").judge({"flip_rate": 0.25}, res)
    assert v == Verdict("failed", 0.25) and not v.ok


# --------------------------------------------------------------------------- selection

@pytest.mark.parametrize("fraction, n, k", [(0.5, 5, 3), (0.5, 7, 4), (0.5, 1, 1), (0.25, 2, 1),
                                            (0.25, 6, 2), (0.5, 4, 2), (1 / 3, 3, 1),
                                            (0.3, 10, 3), (0.7, 10, 7), (0.35, 10, 4),
                                            (0.45, 10, 5), (0.05, 10, 1), (0.04, 10, 0),
                                            (1.0, 9, 9), (0.0, 9, 0)])
def test_exact_count_rounds_halves_up(fraction, n, k):
    assert _exact_count(fraction, n) == k
    c = GaussianNoise(std=0.1, fraction=fraction).bind(n)
    assert len(c.poisoned_indices(n)) == k


def test_exact_half_of_the_concept_images_rounds_up():
    probe = ToyProbe(12)  # discs: odd indices; 9 has no pixel labels: 5 carry concept 4
    c = GaussianNoise(std=0.1, fraction=0.5, select="concept:disc").bind(probe)
    chosen = c.poisoned_indices(probe)
    assert len(chosen) == 3 and all(i % 2 == 1 for i in chosen)
    c = GaussianNoise(std=0.1, fraction=0.3, select="concept:disc").bind(probe)
    assert len(c.poisoned_indices(probe)) == 2  # 1.5 → 2
    c = GaussianNoise(std=0.1, fraction=0.1, select="concept:disc").bind(probe)
    assert len(c.poisoned_indices(probe)) == 1  # 0.5 → 1


# --------------------------------------------------------------------------- baseline

def _u(unit, label, iou, runners=()):
    return {"unit": unit, "label": label, "category": "object", "iou": iou,
            "runners_up": [list(r) for r in runners]}


def test_iou_change_at_exactly_the_tolerance_is_not_a_change():
    old = [_u(0, "car", 0.5), _u(1, "car", 0.5), _u(2, "car", 0.5)]
    new = [_u(0, "car", 0.75), _u(1, "car", 0.25), _u(2, "car", 0.7500001)]
    changes = diff_units(old, new, 0.25)
    assert [c["unit"] for c in changes] == [2]
    c = changes[0]
    assert c["label_changed"] is False and c["delta"] == pytest.approx(0.2500001)
    assert (c["old_iou"], c["new_iou"], c["old_label"], c["new_label"]) == (0.5, 0.7500001,
                                                                           "car", "car")
    assert [c["unit"] for c in diff_units(old, new, 0.2499999)] == [0, 1, 2]
    # a drop just beyond the tolerance counts as well as a rise
    assert [c["unit"] for c in diff_units(old, [_u(1, "car", 0.2499999)], 0.25)] == [1]


def test_label_swap_within_the_tolerance_is_a_near_tie():
    old = [_u(0, "wheel", 0.25), _u(1, "wheel", 0.25)]
    new = [_u(0, "car", 0.5, [("wheel", 0.25)]), _u(1, "car", 0.5, [("wheel", 0.2499)])]
    changes = diff_units(old, new, 0.25)
    # unit 0: car leads wheel by exactly the tolerance: a tie, and its IoU moved by 0.25 only
    assert [(c["unit"], c["label_changed"]) for c in changes] == [(1, True)]
    assert changes[0]["old_label"] == "wheel" and changes[0]["new_label"] == "car"
    # a unit missing from the old snapshot is not compared
    assert diff_units(old, [_u(5, "car", 0.9)], 0.25) == []


def test_check_baseline_statuses_and_messages(tmp_path):
    path = tmp_path / "b.json"
    rows = [{"unit": 0, "label": "car", "category": "object", "iou": 0.5,
             "top": [{"concept": "car", "iou": 0.5}, {"concept": "wheel", "iou": 0.3},
                     {"concept": "red", "iou": 0.1}, {"concept": "sky", "iou": 0.05}]},
            {"unit": 1, "label": None, "category": None, "iou": None}]
    doc = baseline_document("base", "layer2", rows, model="m1")
    assert doc["units"] == snapshot_units(rows)
    assert doc["units"][0]["runners_up"] == [["wheel", 0.3], ["red", 0.1]]
    assert doc["units"][1] == {"unit": 1, "label": None, "category": None, "iou": 0.0,
                               "runners_up": []}
    missing = check_baseline(path, doc, update=False)
    assert missing.status == "missing" and not missing.ok
    assert "no committed baseline 'base' for layer layer2" in missing.message()
    written = check_baseline(path, doc, update=True)
    assert written.status == "written" and written.ok and path.is_file()
    assert "written to" in written.message()
    assert json.loads(path.read_text())["schema"] == "nemaudit.baseline/1"
    mtime = path.stat().st_mtime_ns
    again = check_baseline(path, doc, update=True)
    assert again.status == "unchanged" and path.stat().st_mtime_ns == mtime
    same = check_baseline(path, doc, update=False)
    assert same.status == "unchanged" and same.ok and same.units == 2 and same.changes == []
    assert same.message() == "baseline 'base' [layer2] unchanged (2 units)"
    # at the edge of the tolerance: unchanged; beyond it: changed
    edge = baseline_document("base", "layer2", [dict(rows[0], iou=0.51), rows[1]], model="m1")
    assert check_baseline(path, edge, update=False, tolerance=0.0100001).status == "unchanged"
    moved = check_baseline(path, edge, update=False, tolerance=0.005)
    assert moved.status == "changed" and not moved.ok and moved.tolerance == 0.005
    assert [c["unit"] for c in moved.changes] == [0]
    msg = moved.message()
    assert "0/2 unit label(s) changed, 1 IoU change(s) beyond ±0.005" in msg
    assert "unit    0: car (0.500) → car (0.510)  (IoU +0.010)" in msg
    # a new model is noted; a different unit count is a change by itself
    fewer = baseline_document("base", "layer2", rows[:1], model="m2")
    c = check_baseline(path, fewer, update=False)
    assert c.status == "changed" and c.changes == []
    assert c.notes == ["the layer had 2 units, now 1", "note: recorded with model 'm1', now 'm2'"]
    path.write_text("{")
    bad = check_baseline(path, doc, update=False)
    assert bad.status == "invalid" and not bad.ok and "unreadable" in bad.message()
    path.write_text(json.dumps({"units": {}}))
    assert check_baseline(path, doc, update=False).notes == ["TypeError: 'units' is not a list"]


def test_baseline_diff_lines_order_and_limit(tmp_path):
    check = BaselineCheck("b", "l", tmp_path / "x.json", "changed", 0.01, units=4)
    check.changes = [
        {"unit": 1, "old_label": "car", "old_iou": 0.5, "new_label": "car", "new_iou": 0.4,
         "delta": -0.1, "label_changed": False},
        {"unit": 2, "old_label": "car", "old_iou": 0.5, "new_label": "car", "new_iou": 0.2,
         "delta": -0.3, "label_changed": False},
        {"unit": 3, "old_label": None, "old_iou": 0.0, "new_label": "sky", "new_iou": 0.1,
         "delta": 0.1, "label_changed": True},
    ]
    assert check.diff_lines() == ["unit    3: — (0.000) → sky (0.100)",
                                  "unit    2: car (0.500) → car (0.200)  (IoU -0.300)",
                                  "unit    1: car (0.500) → car (0.400)  (IoU -0.100)"]
    assert check.diff_lines(limit=1) == ["unit    3: — (0.000) → sky (0.100)",
                                         "… 2 more changed unit(s)"]
    assert "1/4 unit label(s) changed, 2 IoU change(s) beyond ±0.01" in check.message()
    j = check.to_json()
    assert (j["status"], j["units"], j["tolerance"], len(j["changes"])) == ("changed", 4, 0.01, 3)


def test_baseline_paths_and_render():
    assert slug("  a b/c  ") == "a-b-c" and slug("..") == "baseline" and slug("x.y_z") == "x.y_z"
    p = baseline_path("tests/test_x.py", "my base", "layer 4")
    assert p.as_posix() == "tests/__nemaudit_baselines__/test_x/my-base__layer-4.json"
    text = render({"name": "n", "units": [{"unit": 0, "iou": 0.5}, {"unit": 1, "iou": 0.25}]})
    assert json.loads(text) == {"name": "n", "units": [{"unit": 0, "iou": 0.5},
                                                       {"unit": 1, "iou": 0.25}]}
    assert text.count("\n") == 7 and '  {"iou": 0.5, "unit": 0},\n' in text


def test_baseline_check_json_and_provenance_notes(tmp_path):
    check = BaselineCheck("b", "l", tmp_path / "x.json", "changed", 0.02, units=3,
                          notes=["n"])
    check.changes = [{"unit": i} for i in range(250)]
    assert check.to_json() == {"name": "b", "layer": "l", "path": str(tmp_path / "x.json"),
                               "status": "changed", "tolerance": 0.02, "units": 3,
                               "changes": [{"unit": i} for i in range(200)], "notes": ["n"]}
    from nemaudit.baseline import _provenance_notes

    old = {"model": "a", "probe": "p", "method": "netdissect", "settings": {"eta": 0.1},
           "other": 1}
    new = {"model": "a", "probe": "q", "settings": {"eta": 0.2}, "other": 2}
    assert _provenance_notes(old, new) == [
        "note: recorded with probe 'p', now 'q'",
        "note: recorded with method 'netdissect', now None",
        "note: recorded with settings {'eta': 0.1}, now {'eta': 0.2}"]
    assert _provenance_notes({}, new) == []
