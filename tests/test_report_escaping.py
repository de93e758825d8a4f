"""The HTML report is rendered by autoescaping jinja2 templates: whatever a record, a Network
Dissection payload or a MILAN payload carries as text (label names from an untrusted probe,
descriptions, test names, messages, session and environment values) reaches the page as text,
never as markup, script, style or template code."""

from __future__ import annotations

import re
import sys
import types
from html.parser import HTMLParser
from typing import Any

import pytest
from markupsafe import escape

from nemaudit.report import html as html_report

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{ 7*7 }}",
           "</style>", "javascript:alert(1)"]
#: the Network Dissection meta keys a property's facts show (NetDissect.facts)
META = ("mode", "images", "poisoned_images", "attacked_units", "poisoned_share_per_unit_mean")


def _page(h: str) -> tuple[list[dict], dict, list[str]]:
    """Records (two Network Dissection audits that differ in the layer, so the overview plots
    them, and a MILAN audit) and a session whose every string field is ``h`` tagged with the
    field's name; also the tagged strings the page must show (as text)."""
    shown: list[str] = []

    def s(tag: str, visible: bool = True) -> str:
        # tags are letters only: no joint where the summary table breaks words (_ / . [)
        text = f"{h}~{tag}"
        if visible:
            shown.append(text)
        return text

    def record(p: str, layer: str, corruption: dict | None = None) -> dict[str, Any]:
        return {"nodeid": s(p + "nodeid"), "name": s(p + "name"), "outcome": s(p + "outcome"),
                "expectation": s(p + "expectation"), "measured": s(p + "measured"),
                "bound": s(p + "bound"), "message": s(p + "message"), "duration": 0.5,
                "layer": layer, "model": "M" + h, "probe": "P" + h,
                "corruption": corruption or {"kind": s(p + "ckind"), s(p + "ckey"): s(p + "cval")},
                "description": s(p + "description", False), "kind": s(p + "kind", False),
                "file": s(p + "file", False),
                "expectations": [{"expectation": s(p + "expectations", False),
                                  "measured": 0.125, "bound": 0.25, "ok": True}],
                "baseline": {"name": s(p + "bname", False), "path": s(p + "bpath", False),
                             "status": s(p + "bstatus", False), "notes": [s(p + "bnote", False)]}}

    def units(p: str) -> list[dict[str, Any]]:
        return [{"unit": u, "clean_label": s(p + "cleanlabel" + str(u)),
                 "clean_category": s(p + "cleancat" + str(u)), "clean_iou": 0.25,
                 "corrupted_label": s(p + "corlabel" + str(u)),
                 "corrupted_category": s(p + "corcat" + str(u)), "corrupted_iou": 0.125,
                 "source_iou_after": 0.0625, "source_iou_drop": 0.1875, "changed": u == 3,
                 "clean_detector": True, "corrupted_detector": u != 3,
                 "target": s(p + "target" + str(u)), "target_hit": u == 3} for u in (3, 4)]

    def audit(p: str) -> dict[str, Any]:
        return {"method": "netdissect", "layer": s(p + "alayer", False),
                "corruption": {"kind": s(p + "akind", False)},
                "metrics": {"flip_rate": 0.5, "flip_rate_detectors": 0.25, "units": s(p + "munits"),
                            "changed": s(p + "mchanged"), "detectors": s(p + "mdetectors"),
                            "targeted_success_rate": 0.5, "mean_source_iou_drop": 0.125,
                            "accuracy_clean": 0.75, "accuracy_corrupted": 0.5,
                            "detector_share": {"clean": {"all": 0.5, "color": 0.25},
                                               "corrupted": {"all": 0.25, "color": 0.125}},
                            "per_category_flip_rate": {"color": 0.5}},
                "meta": {k: s(p + "meta" + k.replace("_", "")) for k in META},
                "units": units(p),
                "exemplars": [{"unit": u, "threshold_clean": 0.5, "threshold_corrupted": 0.25,
                               "images": [{"index": 1, "clean": s(p + "cleanpng" + str(u)),
                                           "corrupted": s(p + "corpng" + str(u)),
                                           "clean_max": 1.5, "corrupted_max": 0.5,
                                           "linf": 0.0}]} for u in (3, 4)]}

    # the same corruption at two layers: a layer series in the overview
    shared = {"kind": s("sharedkind"), "std": 0.1, s("sharedkey"): s("sharedvalue")}
    a = dict(record("a", s("alayerrec"), shared), audit=audit("a"))
    c = dict(record("c", s("clayerrec"), shared), audit=audit("c"))
    a["sweep"] = {"x": "layer", "points": [
        {"x": s("sweepx" + n), "flip_rate": 0.25, "flip_rate_detectors": 0.125,
         "layer": s("sweeplayer" + n), "series": s("sweepseries" + n),
         # a spec string ("kind:k=v"): the table shows it parsed
         "corruption": s("sweepcorr" + n, ":" not in h)} for n in ("one", "two")]}
    milan = {"method": "milan", "layer": s("mlayer", False),
             "corruption": {"kind": s("mkind", False)},
             "metrics": {"units": 2, "changed": s("milanchanged"), "threshold": 0.5,
                         "manipulated_rate": 0.5, "f1_mean": 0.75, "f1_std": 0.125,
                         "f1_min": 0.25, "description_change_rate": 0.5,
                         "exemplar_overlap_mean": 0.5},
             "meta": {"describer": {"name": s("describer", False),
                                    "describer": s("describerkind", False)},
                      "probe": s("mprobe", False)},
             "units": [{"unit": 1, "clean": s("cleandesc"), "corrupted": s("cordesc"),
                        "f1": 0.25, "manipulated": True, "clean_exemplars": [1, 2],
                        "exemplars_kept": 1},
                       {"unit": 2, "clean": s("keptdesc"), "corrupted": "kept", "f1": 0.75,
                        "manipulated": False, "clean_exemplars": [3], "exemplars_kept": 1}],
             "exemplars": [{"unit": 1, "clean": [{"index": 1, "png": s("mcleanpng"), "max": 2.0}],
                            "corrupted": [{"index": 2, "png": s("mcorpng"), "max": 1.0}]},
                           {"unit": 2, "clean": [{"index": 3, "png": s("mkeptpng"), "max": 2.0}],
                            "corrupted": [], "note": s("mnote")}]}
    # no expectation: the summary shows MILAN's headline instead of the measured value
    m = dict(record("m", s("mlayerrec")), milan=milan, audit=None, expectation=None,
             measured=None)
    shown.remove(f"{h}~mexpectation")
    shown.remove(f"{h}~mmeasured")
    session = {"title": s("title"), s("sessionkey"): s("sessionvalue"),
               "list": [s("sessionlist", False)],
               "environment": {"python": s("python"), "torch": s("torch"), "cuda": True,
                               "cuda_device": s("cudadevice"), "nemaudit": s("nemaudit"),
                               "hostname": s("hostname"), "timestamp": s("timestamp"),
                               s("envkey"): s("envvalue"),
                               "git": {"commit": s("commit"), "branch": s("branch"),
                                       "dirty": True},
                               "argv": [s("argvone"), s("argvtwo")]}}
    # a fooling audit: the interpreters, settings and Network Dissection labels it shows
    fool = {"method": "fooling", "layer": s("flayer", False),
            "corruption": {"kind": "fooling"},
            "metrics": {"fsr": 0.5, "images": 4, "top1": 0.75, "top5": 1.0,
                        "top1_original": 0.875, "top5_original": 1.0, "nd_units": 8,
                        "nd_changed": 1, "aopc_random": 0.125,
                        f"spearman_{h}~finterp": 0.25, f"fsr_{h}~finterp": 0.5},
            "meta": {"fooling": s("ffooling"), "interpreter": s("finterpreter"),
                     "interval": [0.0, 0.2], "interpreters": [s("finterp")],
                     "nd_layer": s("fndlayer")},
            "rows": [], "pictures": [
                {"index": 7, "label": s("flabel"), "image": s("fimagepng", False),
                 "maps": [{"interpreter": s("fmapinterp"), "reference": s("frefwebp", False),
                           "candidate": s("fcandwebp", False), "spearman": 0.5}]}],
            "charts": {"fsr": s("fchartpng", False)},
            "nd_units": [{"unit": 5, "clean_label": s("fndclean"),
                          "corrupted_label": s("fndfooled"), "clean_iou": 0.25,
                          "corrupted_iou": 0.0625, "changed": True}]}
    f = dict(record("f", s("flayerrec")), fooling=fool, audit=None)
    return [a, c, m, f], session, shown


def _outside_code(page: str) -> str:
    """The page without what is not record text: pictures, the CSP hashes, CSS and JS."""
    page = re.sub(r"data:image/png;base64,[^\"]*", "", page)
    page = re.sub(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">', "", page)
    return re.sub(r"<(style|script)>.*?</\1>", "", page, flags=re.S)


class _Tags(HTMLParser):
    """Every element of a page, as the browser's tokenizer sees it: (tag, attributes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _assert_inert(page: str, h: str, shown: list[str], scripts: int = 1) -> None:
    assert "<script>alert" not in page and "<img src=x" not in page
    parser = _Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert tags.count("script") == page.count("</script>") == scripts
    assert tags.count("style") == page.count("</style>") == 1
    # no event handler, and nothing points anywhere but into the page
    assert not [(t, a) for t, attrs in parser.tags for a in attrs if a.startswith("on")]
    refs = [v or "" for _, attrs in parser.tags for a, v in attrs.items()
            if a in ("src", "href", "action", "formaction")]
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    # template code in the data stays text: nothing evaluated it
    assert "49" not in _outside_code(page)
    # and every field did reach the page, as escaped text
    missing = [t for t in shown if str(escape(t)) not in page]
    assert not missing


@pytest.mark.parametrize("h", HOSTILE)
@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # long labels in plots
def test_hostile_strings_in_every_field_render_as_text(h, monkeypatch):
    records, session, shown = _page(h)
    page = html_report.render_html(records, session)
    assert 'class="overview"' in page and 'id="diff-1"' in page and 'id="milan-3"' in page
    assert "plots need matplotlib" in page or page.count('src="data:image/png;base64,') >= 10
    _assert_inert(page, h, shown)
    if any(ch in h for ch in "<>\"'&"):
        assert h not in _outside_code(page)
    if h == "{{ 7*7 }}":
        assert "<h1>{{ 7*7 }}~title</h1>" in page
    # the static fragment (pytest-html), with its capped table, the same
    fake = types.ModuleType("pytest_html")
    fake.extras = types.SimpleNamespace(html=lambda content: content)
    monkeypatch.setitem(sys.modules, "pytest_html", fake)
    for r in records:
        (extra,) = html_report.pytest_html_extras(r, diff_limit=1)
        _assert_inert(extra, h, [], scripts=0)


def test_esc_and_wbr_escape_every_markup_character():
    """The helpers for HTML built outside the templates (a third-party method's section)
    escape as the templates do: quotes too, so the text is safe in an attribute."""
    from nemaudit.report.html_parts import esc, wbr

    assert esc("<a href=\"x\" title='y'>&</a>") == \
        "&lt;a href=&#34;x&#34; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
    assert esc(None) == "" and esc(3) == "3"
    # escaped first, then break opportunities after _ / and a non-decimal ., before [
    assert str(wbr("<b>flip_rate.x[0.5]/a</b>")) == \
        "&lt;b&gt;flip_<wbr>rate.<wbr>x<wbr>[0.5]/<wbr>a&lt;/<wbr>b&gt;"
    assert str(wbr(None)) == ""
