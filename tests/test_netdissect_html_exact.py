"""What the Network Dissection section of the HTML report shows, value by value: the template
renderer is replaced by one that returns its context, so each card, each Xie cell and delta,
each diff row and its order, and each exemplar block is checked as computed (the markup and
its escaping are tests/test_html_exact.py's and tests/test_report_escaping.py's)."""

from __future__ import annotations

import pytest

from nemaudit.report import netdissect_html as nd


@pytest.fixture
def ctx(monkeypatch):
    monkeypatch.setattr(nd, "render", lambda name, **context: (name, context))


M = {"flip_rate": 0.25, "flip_rate_detectors": 0.5, "changed": 2, "units": 8, "detectors": 4,
     "mean_source_iou_drop": 0.123456, "accuracy_clean": 0.75, "accuracy_corrupted": 0.5,
     "detector_share": {"clean": {"all": 0.5, "color": 0.25, "object": 0.125},
                        "corrupted": {"all": 0.375, "color": 0.25, "object": 0.0}},
     "per_category_flip_rate": {"color": 0.5, "object": 1.0}}


def test_cards_say_which_metric_they_show():
    assert nd._cards(M) == [
        ("flip rate (all units)", "25.0%", "2 of 8 units changed concept"),
        ("flip rate (detectors)", "50.0%", "over 4 clean detectors"),
        ("mean source-IoU drop", "0.123", "IoU of the clean concept, clean − corrupted"),
        ("accuracy", "75.0% → 50.0%", "classifier on the probe, clean → corrupted"),
        ("detector share", "50.0% → 37.5%", "units with IoU ≥ threshold, clean → corrupted")]
    targeted = nd._cards({**M, "targeted_success_rate": 0.125}, {"targeted": True})
    assert targeted[2] == ("targeted success", "12.5%",
                           "units whose new concept is the attack's target")
    runner_up = nd._cards({**M, "targeted_success_rate": 0.125}, {"targeted": False})
    assert runner_up[2][:2] == ("reached the runner-up", "12.5%")
    bare = nd._cards({})
    assert bare == [("flip rate (all units)", "—", "? of ? units changed concept"),
                    ("flip rate (detectors)", "—", "over ? clean detectors"),
                    ("mean source-IoU drop", "—", "IoU of the clean concept, clean − corrupted")]
    one_side = nd._cards({"accuracy_corrupted": 0.5, "detector_share": {"clean": {"all": 0.5}}})
    assert one_side[3] == ("accuracy", "— → 50.0%", "classifier on the probe, clean → corrupted")
    assert one_side[4][1] == "50.0% → —"


def test_xie_table_cells_deltas_and_flip_rates(ctx):
    name, c = nd.xie_table(M)
    assert name == "netdissect_xie.html.j2"
    assert c["columns"] == [("C", "color"), ("T", "texture"), ("S", "scene"), ("M", "material"),
                            ("P", "part"), ("O", "object"), ("All", "all")]
    assert c["sides"] == [("clean", ["25.0%", "—", "—", "—", "—", "12.5%", "50.0%"]),
                          ("corrupted", ["25.0%", "—", "—", "—", "—", "0.0%", "37.5%"])]
    assert c["delta"] == [("+0.0 pp", "muted"), ("—", ""), ("—", ""), ("—", ""), ("—", ""),
                          ("-12.5 pp", "moved"), ("-12.5 pp", "moved")]
    # per category: the flip rate of units by their clean category; All: the flip rate
    assert c["flips"] == ["50.0%", "—", "—", "—", "—", "100.0%", "25.0%"]
    # Xie's own table wins over the shares where it has the column
    _, c2 = nd.xie_table({**M, "xie_table": {"clean": {"C": 0.75}, "corrupted": {"C": 0.7}}})
    assert c2["sides"][0][1][0] == "75.0%" and c2["delta"][0] == ("-5.0 pp", "moved")


def test_a_delta_under_a_twentieth_of_a_point_is_muted(ctx):
    share = {"clean": {"color": 0.5}, "corrupted": {"color": 0.5004}}
    _, c = nd.xie_table({"detector_share": share})
    assert c["delta"][0] == ("+0.0 pp", "muted")
    share["corrupted"]["color"] = 0.5006
    _, c = nd.xie_table({"detector_share": share})
    assert c["delta"][0] == ("+0.1 pp", "moved")


ROWS = [
    {"unit": 1, "clean_label": "red", "clean_category": "color", "clean_iou": 0.2,
     "corrupted_label": "blue", "corrupted_category": None, "corrupted_iou": 0.1,
     "source_iou_after": 0.05, "source_iou_drop": 0.15, "changed": True, "clean_detector": True,
     "corrupted_detector": False},
    {"unit": 2, "clean_label": "car", "clean_category": "object", "clean_iou": 0.5,
     "corrupted_label": "car", "corrupted_category": "object", "corrupted_iou": 0.45,
     "source_iou_after": 0.45, "source_iou_drop": 0.05, "changed": False,
     "clean_detector": True, "corrupted_detector": True},
    {"unit": 3, "clean_label": "sky", "clean_category": "scene", "clean_iou": 0.01,
     "corrupted_label": "sea", "corrupted_category": "scene", "corrupted_iou": None,
     "source_iou_after": None, "source_iou_drop": None, "changed": True,
     "clean_detector": False, "corrupted_detector": False, "target": "sea", "target_hit": True},
    {"unit": 4, "clean_label": "dog", "clean_category": "object", "clean_iou": 0.3,
     "corrupted_label": "cat", "corrupted_category": "object", "corrupted_iou": 0.3,
     "source_iou_after": 0.2, "source_iou_drop": 0.1, "changed": True, "clean_detector": True,
     "corrupted_detector": True},
]


def test_a_diff_row():
    r = nd._diff_row(ROWS[0])
    assert r == {"cls": "changed", "unit": 1, "changed": True, "clean": ("red", "color"),
                 "corrupted": ("blue", ""),
                 "nums": [("0.2", "0.2000"), ("0.1", "0.1000"), ("0.05", "0.0500"),
                          ("0.15", "0.1500")],
                 "target": None, "target_hit": False, "detector": "yes → no"}
    r3 = nd._diff_row(ROWS[2])
    assert r3["cls"] == "changed nodet" and r3["nums"][1:] == [None, None, None]
    assert r3["target"] == "sea" and r3["target_hit"] is True and r3["detector"] == "no → no"
    assert nd._diff_row(ROWS[1])["cls"] == ""
    assert nd._num(3) == ("3.0", "3.0000") and nd._num(0.5, 2) == ("0.5", "0.50")


def test_the_interactive_diff_lists_changed_units_first_strongest_first(ctx):
    name, c = nd.diff_table(ROWS, "diff-3")
    assert name == "netdissect_diff.html.j2" and c["table_id"] == "diff-3"
    assert [r["unit"] for r in c["rows"]] == [4, 1, 3, 2]
    assert c["interactive"] is True and c["more"] == 0 and c["any_changed"] is True
    assert c["targets"] is True
    labels = [h["label"] for h in c["head"]]
    assert labels == ["unit", "clean concept", "IoU", "", "corrupted concept", "IoU",
                      "source after", "drop", "target", "detector", "changed"]
    assert [h["cls"] for h in c["head"]][:4] == ["sortable num", "sortable", "sortable num", ""]


def test_the_static_diff_keeps_changed_units_capped(ctx):
    _, c = nd.diff_table(ROWS, "d", interactive=False, limit=2)
    assert [r["unit"] for r in c["rows"]] == [4, 1] and c["more"] == 1
    assert [h["cls"] for h in c["head"]][:3] == ["num", "", "num"]  # nothing sortable
    _, full = nd.diff_table(ROWS, "d", interactive=False, limit=3)
    assert full["more"] == 0 and [r["unit"] for r in full["rows"]] == [4, 1, 3]
    _, none = nd.diff_table([ROWS[1]], "d", interactive=False)
    assert none["rows"] == [] and none["any_changed"] is False
    _, plain = nd.diff_table([ROWS[0], ROWS[1]], "d")
    assert plain["targets"] is False and "target" not in [h["label"] for h in plain["head"]]


@pytest.mark.parametrize("v, text", [(None, "?"), (0.0, "0 (not poisoned)"),
                                     (4 / 255, "4/255"), (4.04 / 255, "4/255"),
                                     (4.06 / 255, "4.1/255"), (0.5, "127.5/255")])
def test_linf_as_pixel_steps(v, text):
    assert nd._linf(v) == text


def test_exemplar_blocks_changed_units_first_and_pictures_only(ctx):
    audit = {"units": ROWS, "exemplars": [
        {"unit": 2, "threshold_clean": 0.5, "threshold_corrupted": 0.25,
         "images": [{"index": 7, "clean": "P1", "corrupted": "P2", "clean_max": 1.23456,
                     "corrupted_max": 0.5, "linf": 4 / 255}]},
        {"unit": 1, "threshold_clean": 0.125, "threshold_corrupted": None,
         "images": [{"index": 3, "clean": "P3", "corrupted": None, "linf": 0.0},
                    {"index": 4}]},  # a lean report's entry: no picture, left out
        {"unit": 9, "images": []},
    ]}
    name, c = nd.exemplars_html(audit)
    assert name == "netdissect_exemplars.html.j2" and c["changed_only"] is True
    (b,) = c["blocks"]
    assert b == {"unit": 1, "clean_label": "red", "clean_iou": "0.2", "arrow": "→",
                 "corrupted_label": "blue", "corrupted_iou": "0.1", "threshold_clean": "0.125",
                 "threshold_corrupted": "—",
                 "pairs": [{"clean": "P3", "corrupted": None, "index": 3, "clean_max": "—",
                            "corrupted_max": "—", "linf": "0 (not poisoned)"}]}
    (o,) = c["others"]
    assert o["unit"] == 2 and o["arrow"] == "=" and o["pairs"][0]["clean_max"] == "1.23"
    assert o["pairs"][0]["linf"] == "4/255"
    assert nd.exemplars_html({"units": [], "exemplars": []}, changed_only=False) == ""
    _, kept = nd.exemplars_html({"units": [], "exemplars": []})
    assert kept["blocks"] == [] and kept["others"] == []
    missing = nd.exemplars_html({"exemplars": [{"unit": 5, "images": [{"clean": "P"}]}]})[1]
    assert missing["others"][0]["clean_label"] == "—" and missing["others"][0]["arrow"] == "="


def test_the_section_counts_units_and_names_its_diff(ctx, monkeypatch):
    monkeypatch.setattr(nd, "picture", lambda fn, m, title: ("png", m is M))
    name, c = nd.netdissect_section({"metrics": M, "layer": "layer4", "units": ROWS,
                                     "corruption": {"targeted": False}}, 5)
    assert name == "netdissect.html.j2"
    assert c["units"] == 4 and c["changed"] == 3 and c["png"] == ("png", True)
    assert c["alt"] == "detector share per category, layer4"
    assert c["cards"] == nd._cards(M, {"targeted": False})
    assert "diff-5" in str(c["diff"])
    _, bare = nd.netdissect_section({}, 1)
    assert bare["units"] == 0 and bare["diff"] == "" and bare["alt"] == "detector share per category"


def test_the_views_digits_and_missing_sides(ctx):
    assert nd._cards({"accuracy_clean": 0.5})[3] == (
        "accuracy", "50.0% → —", "classifier on the probe, clean → corrupted")
    share = {"clean": {"color": 0.5}, "corrupted": {"object": 0.25}}
    _, c = nd.xie_table({"detector_share": share})
    assert c["delta"][0] == ("—", "") and c["delta"][5] == ("—", "")
    both = {**ROWS[1], "clean_category": None}
    row = nd._diff_row(both)
    assert row["detector"] == "yes → yes" and row["clean"] == ("car", "")
    audit = {"units": [{"unit": 7, "clean_label": "a", "clean_iou": 0.123456,
                        "corrupted_label": "b", "corrupted_iou": 0.654321, "changed": True}],
             "exemplars": [{"unit": 7, "threshold_clean": 0.111111,
                            "threshold_corrupted": 0.222222,
                            "images": [{"index": 1, "clean": "P", "clean_max": 1.234567,
                                        "corrupted_max": 2.345678, "linf": 0.0}]}]}
    _, c = nd.exemplars_html(audit)
    (b,) = c["blocks"]
    assert (b["clean_iou"], b["corrupted_iou"], b["threshold_clean"],
            b["threshold_corrupted"]) == ("0.123", "0.654", "0.111", "0.222")
    assert (b["pairs"][0]["clean_max"], b["pairs"][0]["corrupted_max"]) == ("1.23", "2.35")
    metrics = {**M, "targeted_success_rate": 0.25}
    _, sec = nd.netdissect_section({"metrics": metrics, "corruption": {"targeted": False}}, 1)
    assert sec["cards"][2][0] == "reached the runner-up"
