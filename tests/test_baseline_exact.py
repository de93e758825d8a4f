"""Committed baselines value by value: the file's exact text, the diff rule at its edges, every
field of a change, and every message in full."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemaudit.baseline import (
    BaselineCheck,
    baseline_document,
    check_baseline,
    diff_units,
    render,
    slug,
    snapshot_units,
)


def _u(unit: int, label: str | None, iou: float, category: str | None = "object",
       runners_up: list | None = None) -> dict:
    d: dict = {"unit": unit, "label": label, "category": category, "iou": iou}
    if runners_up is not None:
        d["runners_up"] = runners_up
    return d


def test_slug_keeps_case_and_strips_only_dashes_and_dots():
    assert slug("  Layer4 Units/α ") == "Layer4-Units"
    assert slug("--X.a.--") == "X.a"
    assert slug("...") == "baseline"


def test_snapshot_keeps_label_category_iou_to_6_places_and_two_runners_up():
    rows = [{"unit": "3", "label": "car", "category": "object", "iou": 0.123456789,
             "top": [{"concept": "car", "iou": 0.123456789}, {"concept": "bus", "iou": 0.1000004},
                     {"concept": "sky", "iou": 0.05}, {"concept": "red", "iou": 0.01}]},
            {"unit": 4, "label": None, "iou": None}]
    assert snapshot_units(rows) == [
        {"unit": 3, "label": "car", "category": "object", "iou": 0.123457,
         "runners_up": [["bus", 0.1], ["sky", 0.05]]},
        {"unit": 4, "label": None, "category": None, "iou": 0.0, "runners_up": []}]


def test_render_is_sorted_json_with_one_unit_per_line():
    doc = {"name": "n", "layer": "layer4", "b": 1, "a": [1, 2],
           "units": [{"unit": 0, "label": "car", "iou": 0.5}, {"unit": 1, "label": None,
                                                               "iou": 0.0}]}
    assert render(doc) == (
        '{\n "a": [\n  1,\n  2\n ],\n "b": 1,\n "layer": "layer4",\n "name": "n",\n'
        ' "units": [\n'
        '  {"iou": 0.5, "label": "car", "unit": 0},\n'
        '  {"iou": 0.0, "label": null, "unit": 1}\n ]\n}\n')
    assert render({"name": "n", "layer": "l"}) == (
        '{\n "layer": "l",\n "name": "n",\n "units": [\n\n ]\n}\n')


def test_diff_units_reports_every_field_and_skips_units_the_old_run_lacks():
    old = [_u(1, "car", 0.30, "object"), _u(2, "sky", 0.20, "scene")]
    new = [_u(7, "dog", 0.9), _u(1, "red", 0.25, "color"), _u(2, "sky", 0.26, "scene")]
    assert diff_units(old, new, 0.05) == [
        {"unit": 1, "old_label": "car", "old_category": "object", "old_iou": 0.30,
         "new_label": "red", "new_category": "color", "new_iou": 0.25,
         "delta": pytest.approx(-0.05), "label_changed": True},
        {"unit": 2, "old_label": "sky", "old_category": "scene", "old_iou": 0.20,
         "new_label": "sky", "new_category": "scene", "new_iou": 0.26,
         "delta": pytest.approx(0.06), "label_changed": False}]


def test_diff_units_iou_edge_and_near_ties():
    tol = 0.5
    # a move of exactly the tolerance (plus the 1e-12 allowance for float noise) is no change
    assert diff_units([_u(0, "car", 0.0)], [_u(0, "car", tol + 1e-12)], tol) == []
    assert len(diff_units([_u(0, "car", 0.0)], [_u(0, "car", tol + 1e-9)], tol)) == 1
    # a label swap with a runner-up within the tolerance is a near tie
    tied = _u(0, "bus", 0.30, runners_up=[["car", 0.28]])
    assert diff_units([_u(0, "car", 0.30)], [tied], 0.05) == []
    far = _u(0, "bus", 0.30, runners_up=[["car", 0.2]])
    assert [c["label_changed"] for c in diff_units([_u(0, "car", 0.30)], [far], 0.05)] == [True]
    # a unit recorded without runners-up compares by label alone
    assert [c["unit"] for c in diff_units([_u(0, "car", 0.3)], [_u(0, "bus", 0.3)], 0.05)] == [0]


def _check(status: str, **kw) -> BaselineCheck:
    return BaselineCheck("props", "layer4", Path("/nowhere/b.json"), status, **kw)


def _changes(n: int) -> list[dict]:
    return [{"unit": i, "old_label": None if i == 0 else "car", "old_iou": 0.1,
             "new_label": None if i == 1 else "bus", "new_iou": 0.2, "delta": 0.1 * (i % 3),
             "label_changed": i % 2 == 0} for i in range(n)]


def test_diff_lines_show_15_changes_by_default_label_changes_first():
    lines = _check("changed", changes=_changes(15)).diff_lines()
    assert len(lines) == 15 and not any(line.startswith("…") for line in lines)
    # label changes (even units) first, each group by the size of its IoU move
    assert [int(line.split(":")[0].split()[1]) for line in lines] == \
        [2, 8, 14, 4, 10, 0, 6, 12, 5, 11, 1, 7, 13, 3, 9]
    assert lines[0] == "unit    2: car (0.100) → bus (0.200)"
    assert lines[5] == "unit    0: — (0.100) → bus (0.200)"
    assert lines[10] == "unit    1: car (0.100) → — (0.200)  (IoU +0.100)"
    lines = _check("changed", changes=_changes(16)).diff_lines()
    assert len(lines) == 16 and lines[-1] == "… 1 more changed unit(s)"


def test_every_message_in_full():
    assert _check("written").message() == "baseline 'props' [layer4] written to /nowhere/b.json"
    assert _check("unchanged", units=8).message() == \
        "baseline 'props' [layer4] unchanged (8 units)"
    assert _check("missing").message() == (
        "no committed baseline 'props' for layer layer4 at /nowhere/b.json; run pytest "
        "--nemaudit --nemaudit-update to record it, then commit it")
    assert _check("invalid", notes=["a", "b"]).message() == (
        "baseline /nowhere/b.json is unreadable (a; b); rerun with --nemaudit-update to "
        "rewrite it")
    msg = _check("changed", units=20, tolerance=0.02, notes=["note: x"],
                 changes=_changes(17)).message()
    lines = msg.split("\n")
    assert lines[0] == ("explanations of layer4 changed since baseline 'props' "
                        "(/nowhere/b.json): 9/20 unit label(s) changed, 8 IoU change(s) "
                        "beyond ±0.02")
    assert lines[1] == "note: x"
    assert lines[2:18] == _check("changed", changes=_changes(17)).diff_lines(15)
    assert lines[18:] == ["if the change is intended, rerun with --nemaudit-update and "
                          "commit the file"]


def test_messages_name_the_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check = BaselineCheck("p", "l", tmp_path / "sub" / "b.json", "written")
    assert check.message() == f"baseline 'p' [l] written to {Path('sub', 'b.json')}"


def test_check_baseline_round_trip_update_and_change(tmp_path):
    path = tmp_path / "b.json"
    rows = [{"unit": 0, "label": "café", "category": "object", "iou": 0.4}]
    doc = baseline_document("p", "layer4", rows, model="m")
    assert check_baseline(path, doc, update=False).status == "missing"
    assert check_baseline(path, doc, update=True).status == "written"
    assert path.read_text(encoding="utf-8") == render({"schema": "nemaudit.baseline/1", **doc})
    assert check_baseline(path, doc, update=True).status == "unchanged"  # same text: no write
    assert check_baseline(path, doc, update=False).status == "unchanged"
    moved = baseline_document("p", "layer4", [{**rows[0], "iou": 0.3}], model="m2")
    got = check_baseline(path, moved, update=False)
    assert got.status == "changed" and [c["unit"] for c in got.changes] == [0]
    assert got.notes == ["note: recorded with model 'm', now 'm2'"]
