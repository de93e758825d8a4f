"""What the MILAN and saliency/fooling sections of the HTML report show, value by value, with
the template renderer replaced by one that returns its context (markup and escaping are
tests/test_html_exact.py's and tests/test_report_escaping.py's)."""

from __future__ import annotations

import pytest

from nemaudit.report import milan_html, saliency_html


@pytest.fixture
def ctx(monkeypatch):
    for mod in (milan_html, saliency_html):
        monkeypatch.setattr(mod, "render", lambda name, **context: (name, context))


# --------------------------------------------------------------------------- MILAN

MILAN_M = {"manipulated_rate": 0.5, "changed": 2, "units": 4, "threshold": 0.51834,
           "f1_mean": 0.6543, "f1_std": 0.12345, "f1_min": 0.2, "description_change_rate": 0.75,
           "exemplar_overlap_mean": 0.625}

UNITS = [{"unit": 1, "clean": "red", "corrupted": "red", "f1": 1.0, "manipulated": False,
          "clean_exemplars": [1, 2, 3], "exemplars_kept": 3},
         {"unit": 2, "clean": "sky", "corrupted": "sea", "f1": 0.4, "manipulated": True,
          "clean_exemplars": [4, 5], "exemplars_kept": 1},
         {"unit": 3, "clean": "dog", "corrupted": "cat", "f1": 0.2, "manipulated": True,
          "clean_exemplars": [], "exemplars_kept": 0},
         {"unit": 4, "clean": "car", "corrupted": "cars", "f1": 0.9, "manipulated": False}]


def test_milan_cards():
    assert milan_html._cards(MILAN_M) == [
        ("manipulated (MILAN)", "50.0%", "2 of 4 units at F1-BERT ≤ 0.518"),
        ("F1-BERT clean vs corrupted", "0.654 ± 0.123", "mean ± std over units; min 0.2"),
        ("description changed", "75.0%", "units whose words differ at all"),
        ("exemplars kept", "62.5%",
         "mean share of a unit's clean exemplars still among its top k")]
    assert milan_html._cards({})[0] == ("manipulated (MILAN)", "—",
                                        "? of ? units at F1-BERT ≤ —")


def test_milan_rows_manipulated_and_lowest_f1_first():
    rows = milan_html._table(UNITS, interactive=True)
    assert [r["unit"] for r in rows] == [3, 2, 4, 1]
    assert rows[1] == {"unit": 2, "clean": "sky", "corrupted": "sea", "f1": ("0.4", "0.400"),
                       "kept": ("0.5", "1/2"), "manipulated": True}
    assert rows[0]["kept"] == ("0.0", "0/1")  # no exemplars recorded: out of 1
    assert rows[3]["kept"] == ("1.0", "3/3")
    assert rows[2]["kept"] == ("0.0", "0/1") and rows[2]["f1"] == ("0.9", "0.900")
    static = milan_html._table(UNITS, interactive=False)
    assert [r["unit"] for r in static] == [3, 2, 4]  # the same words: not listed
    no_f1 = milan_html._table([{"unit": 5, "manipulated": False},
                               {"unit": 6, "f1": 0.99, "manipulated": False}], True)
    assert [r["unit"] for r in no_f1] == [6, 5]  # a missing F1 sorts as 1.0
    assert no_f1[1]["f1"] == ("0.0", "0.000")


def test_milan_exemplar_blocks(ctx):
    milan = {"units": UNITS, "exemplars": [
        {"unit": 2, "clean": [{"png": "A", "index": 4, "max": 1.23456}],
         "corrupted": [{"png": "B", "index": 9, "max": 0.5}]},
        {"unit": 3, "clean": [{"png": "C"}], "corrupted": [], "note": "not kept"},
        {"unit": 8, "clean": []}]}
    blocks = milan_html._exemplars(milan)
    assert blocks[0] == {"unit": 2, "f1": "0.4", "manipulated": True, "clean": "sky",
                         "corrupted": "sea", "note": None,
                         "strips": [{"side": "clean", "images": [{"png": "A", "index": 4,
                                                                  "max": "1.23"}]},
                                    {"side": "corrupted", "images": [{"png": "B", "index": 9,
                                                                      "max": "0.5"}]}]}
    assert blocks[1]["note"] == "not kept" and len(blocks[1]["strips"]) == 1
    assert blocks[1]["strips"][0]["images"] == [{"png": "C", "index": -1, "max": "—"}]
    assert blocks[2] == {"unit": 8, "f1": "—", "manipulated": False, "clean": None,
                         "corrupted": None, "note": None,
                         "strips": [{"side": "clean", "images": []}]}


def test_milan_section(ctx):
    name, c = milan_html.milan_section({"metrics": MILAN_M, "units": UNITS}, 7, False)
    assert name == "milan.html.j2"
    assert (c["changed"], c["units"], c["table_id"], c["interactive"], c["has_table"]) == (
        2, 4, "milan-7", False, True)
    assert c["rows"] == milan_html._table(UNITS, False) and c["any_changed"] is True
    assert c["cards"] == milan_html._cards(MILAN_M) and c["blocks"] == []
    _, bare = milan_html.milan_section({}, 1)
    assert (bare["changed"], bare["units"], bare["rows"], bare["has_table"],
            bare["any_changed"]) == (0, 0, [], False, False)
    _, calm = milan_html.milan_section({"units": [UNITS[0]]}, 1)
    assert calm["any_changed"] is False and calm["interactive"] is True


# --------------------------------------------------------------------------- saliency

def test_saliency_interval_and_fsr_counts():
    from nemaudit.audit.confidence import binomial_interval

    iv = binomial_interval(3, 10, 0.95)
    assert saliency_html._interval(3, 10) == (iv.lo, iv.hi)
    doc = {"units": [{"hit": {"gradcam": True, "lrp": False}}, {"hit": {"gradcam": True}},
                     {"hit": {"gradcam": False, "lrp": True}}, {},
                     {"hit": {"lrp": [True, False]}}]}  # active fooling: one per class
    assert saliency_html._fsr_counts(doc, "gradcam") == (2, 3)
    assert saliency_html._fsr_counts(doc, "lrp") == (2, 4)
    assert saliency_html._fsr_counts({}, "gradcam") == (0, 0)


FOOL_M = {"fsr": 0.5, "images": 8, "top1": 0.625, "top5": 0.875, "top1_original": 0.75,
          "top5_original": 1.0, "nd_units": 16, "nd_changed": 4, "aopc_random": 0.0123,
          "spearman_lrp": -0.25, "spearman_gradcam": 0.5, "fsr_gradcam": 0.5, "fsr_lrp": 0.25,
          "aopc_reference_gradcam": 0.3, "aopc_gradcam": 0.1, "changed_rate_gradcam": 0.75}


def test_fooling_section_cards_and_rows(ctx):
    payload = {"method": "fooling", "metrics": FOOL_M,
               "meta": {"fooling": "topk", "interpreter": "gradcam", "interval": [0.0, 0.2],
                        "interpreters": ["lrp", "gradcam"], "nd_layer": "layer4"},
               "charts": {"fsr": "P"}, "pictures": ["pic"],
               "nd_units": [{"unit": u, "changed": u % 2 == 0} for u in range(50)]}
    name, c = saliency_html.saliency_section(payload, 3)
    assert name == "saliency.html.j2" and c["fooling"] is True and c["ref"] == "original"
    assert c["cards"] == [
        ("FSR", "50.0%", "topk fooling of gradcam, R = [0.0, 0.2]"),
        ("Spearman ρ (lrp)", "-0.25", "mean over 8 images, original vs candidate"),
        ("top-1", "62.5%", "original: 75.0%"), ("top-5", "87.5%", "original: 100.0%"),
        ("Network Dissection", "4/16", "units of layer4 changed concept")]
    assert c["rows"] == [("lrp", "-0.25", "25.0%", "—", "—"),
                         ("gradcam", "0.5", "50.0%", "0.3", "0.1")]
    assert [r["unit"] for r in c["nd"]] == list(range(0, 40, 2))  # changed ones, 20 at most
    assert c["aopc_random"] == "0.0123" and c["index"] == 3
    assert c["charts"] == {"fsr": "P"} and c["pictures"] == ["pic"]


def test_saliency_section_against_a_reference(ctx):
    payload = {"method": "saliency", "metrics": {**FOOL_M, "top1_reference": 0.5,
                                                 "top5_reference": 0.75},
               "meta": {"interpreters": ["gradcam"]}}
    _, c = saliency_html.saliency_section(payload, 1)
    assert c["fooling"] is False and c["ref"] == "reference"
    assert c["cards"] == [
        ("Spearman ρ (gradcam)", "0.5", "mean over 8 images, reference vs candidate"),
        ("top-1", "62.5%", "reference: 50.0%"), ("top-5", "87.5%", "reference: 75.0%")]
    assert c["rows"] == [("gradcam", "0.5", "75.0%", "0.3", "0.1")]  # images changed
    assert c["nd"] == [] and c["charts"] == {} and c["pictures"] == []
    _, bare = saliency_html.saliency_section({}, 2)
    assert bare["cards"][0][0] == "Spearman ρ (gradcam)" and bare["rows"] == []
