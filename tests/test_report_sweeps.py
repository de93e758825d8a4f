"""Flip-rate sweeps in reports: the session overview's grouping across test items, and the
per-item sweep's choice of x axis (L∞ budgets, bar charts when nothing varies)."""

from __future__ import annotations

import base64
import io
import re

import pytest

from nemaudit.report import html as html_report
from nemaudit.report.json_report import parse_spec
from nemaudit.report.plots import (
    corruption_axes,
    refine_sweep,
    session_sweeps,
    sweep_is_degenerate,
)

MODEL, PROBE = "nemaudit:conceptnet", "synthetic:n=600,seed=0"
SESSION = {"title": "t", "environment": {"python": "3", "git": {}, "timestamp": "now"}}


def _gauss(std: float, fraction: float = 1.0) -> dict:
    return {"kind": "gaussian", "std": std, "fraction": fraction, "select": "random", "seed": 0,
            "shared": True}


def _rec(name: str, layer: str, corruption: dict | None, flip: float | None = 0.1,
         det: float | None = 0.05, model: str = MODEL, probe: str = PROBE, **extra) -> dict:
    audit = None
    if flip is not None:
        audit = {"layer": layer, "corruption": corruption, "units": [], "exemplars": [],
                 "metrics": {"flip_rate": flip, "flip_rate_detectors": det, "changed": 1,
                             "units": 10}}
    return {"nodeid": f"t::{name}", "name": name, "outcome": "passed", "layer": layer,
            "model": model, "probe": probe, "corruption": corruption, "audit": audit,
            "duration": 0.1, **extra}


def example_records() -> list[dict]:
    """The shape of the example run: a spec property on two layers, a σ-parametrized test,
    other corruptions once each, a baseline item without an audit."""
    bern = {"kind": "bernoulli", "std": 6 / 255, "fraction": 0.1, "select": "random",
            "seed": 0, "shared": True}
    fgsm = {"kind": "fgsm", "eps": 2 / 255, "fraction": 1.0, "select": "random", "seed": 0,
            "shared": True}
    return [
        _rec("small gaussian[layer3]", "layer3", _gauss(0.02), 0.0, 0.0),
        _rec("small gaussian[layer4]", "layer4", _gauss(0.02), 0.03, 0.0),
        _rec("poisoning[layer4]", "layer4", bern, 0.0, 0.0),
        _rec("fgsm[layer4]", "layer4", fgsm, 0.16, 0.09),
        _rec("baseline[layer3]", "layer3", None, flip=None),
        _rec("test_noise_sweep_layer4[0.01]", "layer4", _gauss(0.01), 0.05, 0.02),
        _rec("test_noise_sweep_layer4[0.02]", "layer4", _gauss(0.02), 0.03, 0.0),
        _rec("test_noise_sweep_layer4[0.05]", "layer4", _gauss(0.05), 0.12, 0.06),
        _rec("targeted", "layer4", {"kind": "pgd", "eps": 6 / 255, "steps": 10,
                                    "targeted": True, "target": "car", "fraction": 1.0,
                                    "seed": 0, "shared": False},
             1.0, 1.0, probe="synthetic:n=400,seed=0"),
    ]


def _by_x(sweeps: list[dict]) -> dict[str, dict]:
    out = {}
    for s in sweeps:
        assert s["x"] not in out, "one plot per axis for a single model/probe"
        out[s["x"]] = s
    return out


# --------------------------------------------------------------------------- overview


def test_example_session_gives_a_layer_and_a_sigma_plot():
    sweeps = _by_x(session_sweeps(example_records()))
    assert set(sweeps) == {"layer", "std"}  # bernoulli, fgsm, pgd each ran once
    layer = sweeps["layer"]
    assert (layer["model"], layer["probe"], layer["method"]) == (MODEL, PROBE, "netdissect")
    assert [p["x"] for p in layer["points"]] == ["layer3", "layer4"]
    assert {p["series"] for p in layer["points"]} == {"gaussian std=0.02"}
    assert [p["flip_rate"] for p in layer["points"]] == [0.0, 0.03]
    sigma = sweeps["std"]
    assert sorted(p["x"] for p in sigma["points"]) == [0.01, 0.02, 0.05]
    assert {p["series"] for p in sigma["points"]} == {"gaussian layer4"}
    # σ=0.02 on layer4 was audited by the spec property and by the parametrized test: one
    # point, linking both records (1-based positions = the report's #p<i> anchors)
    (twice,) = [p for p in sigma["points"] if p["x"] == 0.02]
    assert twice["records"] == [[2, "small gaussian[layer4]"],
                                [7, "test_noise_sweep_layer4[0.02]"]]
    once = [p for p in sigma["points"] if p["x"] == 0.05][0]
    assert once["record"] == 8 and once["flip_rate_detectors"] == 0.06


def test_the_three_parametrized_items_alone_make_the_sigma_plot():
    recs = [r for r in example_records() if r["name"].startswith("test_noise_sweep")]
    (sweep,) = session_sweeps(recs)
    assert sweep["x"] == "std" and [p["x"] for p in sweep["points"]] == [0.01, 0.02, 0.05]
    assert [p["record"] for p in sweep["points"]] == [1, 2, 3]


def test_groups_need_everything_else_equal():
    recs = [
        _rec("a", "layer4", _gauss(0.01)),
        _rec("b", "layer4", _gauss(0.02), probe="other"),  # another probe: another group
        _rec("c", "layer4", _gauss(0.03), model="m2"),  # another model
        _rec("d", "layer4", _gauss(0.04, fraction=0.5)),  # another fraction: another series
        _rec("e", "layer3", _gauss(0.05)),  # another layer
    ]
    assert session_sweeps(recs) == []  # no axis has two values within one group


def test_series_per_kind_layer_told_apart_by_what_differs():
    recs = [_rec(f"g{s}{f}{layer}", layer, _gauss(s, fraction=f)) for layer in ("layer3", "layer4")
            for f in (1.0, 0.5) for s in (0.01, 0.1)]
    sweeps = _by_x(session_sweeps(recs))
    assert set(sweeps) == {"layer", "std", "fraction"}
    assert {p["series"] for p in sweeps["std"]["points"]} == {
        "gaussian layer3 fraction=1", "gaussian layer3 fraction=0.5",
        "gaussian layer4 fraction=1", "gaussian layer4 fraction=0.5"}
    assert {p["series"] for p in sweeps["fraction"]["points"]} == {
        "gaussian layer3 std=0.01", "gaussian layer3 std=0.1",
        "gaussian layer4 std=0.01", "gaussian layer4 std=0.1"}
    assert {p["series"] for p in sweeps["layer"]["points"]} == {
        "gaussian std=0.01", "gaussian std=0.1", "gaussian std=0.01 fraction=0.5",
        "gaussian std=0.1 fraction=0.5"}
    assert all(len(s["points"]) == 8 for s in sweeps.values())
    # two seeds of one corruption: same text, so the seed is named
    seeds = [_rec(f"s{k}{n}", n, dict(_gauss(0.02), seed=k)) for k in (0, 1)
             for n in ("layer3", "layer4")]
    (layer,) = session_sweeps(seeds)
    assert {p["series"] for p in layer["points"]} == {"gaussian std=0.02 seed=0",
                                                      "gaussian std=0.02 seed=1"}


def test_linf_axis_joins_attack_eps_and_bernoulli_std_but_not_gaussian():
    pgd = {"kind": "pgd", "steps": 10, "fraction": 1.0, "seed": 0}
    bern = {"kind": "bernoulli", "fraction": 1.0, "seed": 0}
    recs = [_rec(f"pgd{k}", "layer4", dict(pgd, eps=k / 255), 0.1 * k) for k in (2, 4, 6)]
    recs += [_rec(f"b{k}", "layer4", dict(bern, std=k / 255), 0.01 * k) for k in (2, 4)]
    recs += [_rec(f"g{s}", "layer4", _gauss(s)) for s in (0.02, 0.05)]
    sweeps = _by_x(session_sweeps(recs))
    assert set(sweeps) == {"linf", "std"}
    linf = sweeps["linf"]
    assert {p["series"] for p in linf["points"]} == {"pgd layer4", "bernoulli layer4"}
    assert sorted({p["x"] for p in linf["points"]}) == [2 / 255, 4 / 255, 6 / 255]
    assert {p["series"] for p in sweeps["std"]["points"]} == {"gaussian layer4"}


def test_records_without_audit_or_flip_rate_are_ignored():
    milan = _rec("milan", "layer4", _gauss(0.02))
    milan["audit"] = {"method": "milan", "metrics": {"manipulated_rate": 0.3}}
    recs = [_rec("x", "layer3", None), milan, _rec("skip", "layer4", _gauss(0.01), flip=None),
            dict(_rec("err", "layer4", _gauss(0.03)), audit={"metrics": {"flip_rate": None}})]
    assert session_sweeps(recs) == []
    # MILAN audits that do report a flip rate form groups of their own
    m3, m4 = (_rec(f"m{n}", f"layer{n}", _gauss(0.02)) for n in (3, 4))
    for r in (m3, m4):
        r["audit"]["method"] = "milan"
    n4 = _rec("n4", "layer4", _gauss(0.02))
    (sweep,) = session_sweeps([m3, m4, n4])
    assert sweep["method"] == "milan" and [p["record"] for p in sweep["points"]] == [1, 2]


def test_overview_section_in_the_html_page():
    text = html_report.render_html(example_records(), SESSION)
    assert text.index("overview") < text.index('id="p1"')  # after the summary, before items
    assert text.index('class="summary"') < text.index('class="overview"')
    ov = text.split('class="overview"', 1)[1].split('<section class="prop', 1)[0]
    assert "flip rate against layer" in ov and "flip rate against noise σ" in ov
    assert ov.count("data:image/png;base64,") == 2 or "plots need matplotlib" in ov
    assert 'href="#p7"' in ov and 'href="#p2"' in ov  # the shared σ=0.02 point links both
    assert html_report.overview_html([]) == ""


# --------------------------------------------------------------------------- one item's sweep


DESIGNED = {"x": "fraction", "points": [
    {"x": 1.0, "flip_rate": 0.75, "flip_rate_detectors": 0.67, "layer": "layer4",
     "series": "pgd", "corruption": "pgd:eps=0.01568627450980392,steps=10,targeted=false,"
                                   "random_start=false,max_copies=64,fraction=1.0,"
                                   "select=random,seed=0"},
    {"x": 1.0, "flip_rate": 0.08, "flip_rate_detectors": None, "layer": "layer4",
     "series": "bernoulli", "corruption": "bernoulli:std=0.01568627450980392,fraction=1.0,"
                                          "select=random,seed=0"}]}


def test_parse_spec_and_axes():
    c = parse_spec("pgd:eps=4/255,steps=10,targeted=false,select=random")
    assert c == {"kind": "pgd", "eps": 4 / 255, "steps": 10, "targeted": False,
                 "select": "random"}
    assert corruption_axes(c) == {"linf": 4 / 255}
    assert corruption_axes("bernoulli:std=0.1,fraction=0.5,seed=3") == \
        {"linf": 0.1, "fraction": 0.5, "seed": 3}
    assert corruption_axes({"kind": "gaussian", "std": 0.1}) == {"std": 0.1}
    assert corruption_axes({"kind": "uniform", "std": 0.1})["linf"] == 0.1
    assert corruption_axes({"kind": "fgsm", "eps": 0.01})["linf"] == 0.01
    assert corruption_axes(None) == {}


def test_one_budget_for_an_attack_and_a_noise_gives_bars_by_corruption():
    assert sweep_is_degenerate(DESIGNED)
    sweep = refine_sweep(DESIGNED)
    assert sweep_is_degenerate(sweep)  # eps 4/255 = std 4/255: nothing varies
    assert [p["label"] for p in sweep["points"]] == ["pgd eps=4/255 steps=10",
                                                     "bernoulli std=4/255"]
    assert sweep["same"] == {"layer": "layer4", "linf": 4 / 255, "fraction": 1.0}
    assert DESIGNED["points"][0].get("label") is None  # the record is not modified
    assert html_report.sweep_heading(sweep) == "flip rate by corruption"
    frag = html_report._sweep_html(DESIGNED, "designed")
    assert "<h3>flip rate by corruption</h3>" in frag
    assert "every audit here: layer4 · L∞ budget ε = 4/255 · 100% of the probe poisoned" \
        in frag


def test_refine_sweep_finds_the_axis_that_varies():
    two_budgets = {"x": "fraction", "points": [
        dict(DESIGNED["points"][0]),
        dict(DESIGNED["points"][1], corruption="bernoulli:std=0.03,fraction=1.0,seed=0")]}
    sweep = refine_sweep(two_budgets)
    assert sweep["x"] == "linf" and [p["x"] for p in sweep["points"]] == \
        [0.01568627450980392, 0.03]
    assert html_report.sweep_heading(sweep) == "flip rate against perturbation budget ε (L∞)"
    layers = {"x": "std", "points": [{"x": 0.1, "layer": n, "series": "gaussian",
                                      "corruption": "gaussian:std=0.1"}
                                     for n in ("layer3", "layer4")]}
    assert refine_sweep(layers)["x"] == "layer"
    # a sweep that already varies keeps its x; eps/std that bound pixels are named L∞
    eps = {"x": "eps", "points": [{"x": k / 255, "series": "pgd",
                                   "corruption": f"pgd:eps={k / 255}"} for k in (2, 4)]}
    assert refine_sweep(eps)["x"] == "linf"
    sig = {"x": "std", "points": [{"x": s, "series": "gaussian",
                                   "corruption": f"gaussian:std={s}"} for s in (0.1, 0.2)]}
    assert refine_sweep(sig) == sig


def test_degenerate_sweep_draws_bars():
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nemaudit.report import plots

    fig = plots.sweep_figure(refine_sweep(DESIGNED))
    ax = fig.axes[0]
    assert not ax.lines and len(ax.patches) == 3  # 2 all-unit bars, 1 detector bar (one n/a)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pgd eps=4/255 steps=10",
                                                             "bernoulli std=4/255"]
    assert any(t.get_text() == "n/a" for t in ax.texts)
    png = base64.b64decode(plots.sweep_png(refine_sweep(DESIGNED)))
    assert Image.open(io.BytesIO(png)).width > 200
    line = plots.sweep_figure({"x": "linf", "points": [
        {"x": k / 255, "flip_rate": k / 10, "flip_rate_detectors": k / 12, "series": "pgd"}
        for k in (2, 4)]})
    ax = line.axes[0]
    assert len(ax.lines) == 2 and [t.get_text() for t in ax.get_xticklabels()] == \
        ["2/255", "4/255"]
    assert re.search("L∞", ax.get_xlabel())


def test_sweep_points_carry_exact_interval_error_bars():
    from matplotlib.container import ErrorbarContainer

    from nemaudit.audit.confidence import binomial_interval
    from nemaudit.report.plots import sweep_figure

    pts = [{"x": s, "flip_rate": k / 32, "flip_rate_detectors": None, "changed": k,
            "units": 32, "layer": "layer4", "series": "gaussian"}
           for s, k in ((0.01, 1), (0.02, 3), (0.05, 8))]
    fig = sweep_figure({"x": "std", "points": pts})
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    segments = bars.lines[2][0].get_segments()
    for seg, (_, k) in zip(segments, ((0.01, 1), (0.02, 3), (0.05, 8))):
        iv = binomial_interval(k, 32)
        assert seg[0][1] == pytest.approx(iv.lo) and seg[1][1] == pytest.approx(iv.hi)
