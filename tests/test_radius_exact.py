"""The two radius searches value by value against oracles whose answer is known: each unit
(or the property) breaks exactly at a chosen budget, so the bracket, the count of audits, the
quantiles and the unit selection can be checked exactly — no model is run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nemaudit.audit.netdissect import run as ndrun
from nemaudit.audit.radius import breaking
from nemaudit.audit.radius.budget import spec_at
from nemaudit.audit.radius.run import run_request
from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.errors import SpecError
from nemaudit.probe.base import Concept

CONCEPTS = [Concept(0, "-", ""), Concept(1, "red", "colour"), Concept(2, "box", "object")]


class Oracle:
    """audit() stand-in: unit u changes at a budget ≥ radius[u] (inf: never)."""

    def __init__(self, radius: dict[int, float], key: str = "std") -> None:
        self.radius, self.key, self.calls = radius, key, []

    def __call__(self, model, layer, probe, spec, config, *, device=None, cache_dir=None,
                 units=None):
        from nemaudit.specs import tokenize

        budget = float(tokenize(spec, "corruption").fields[self.key])
        self.calls.append((budget, list(units)))
        return SimpleNamespace(rows=[{"unit": u, "changed": budget >= self.radius[u]}
                                     for u in units])


def clean(labels, ious, iou_threshold=0.04):
    return SimpleNamespace(best=lambda: (torch.tensor(labels),
                                         torch.tensor(ious, dtype=torch.float64)),
                           units=len(labels), concepts=CONCEPTS,
                           config=SimpleNamespace(iou_threshold=iou_threshold))


@pytest.fixture
def search(monkeypatch):
    """run_request(settings, radius, labels, ious) with the oracle and a fake clean run."""

    def go(radius, labels, ious, corruption="gaussian:std=0.5", run_cap=None, **settings):
        oracle = Oracle(radius, "eps" if corruption.startswith(("pgd", "fgsm")) else "std")
        monkeypatch.setattr(ndrun, "audit", oracle)
        monkeypatch.setattr(ndrun, "clean_dissection", lambda req, res: clean(labels, ious))
        req = AuditRequest.build("radius", corruption=corruption, **settings)
        res = Resolved(None, None, "layer4", corruption, "cpu", max_units=run_cap)
        return run_request(req, res), oracle

    return go


def test_each_unit_s_radius_is_bracketed_within_the_tolerance(search):
    radius = {0: 0.1, 1: 0.33, 2: math.inf, 3: 0.5, 4: 0.01}
    r, oracle = search(radius, [1, 1, 2, 1, 2], [0.5] * 5, radius_tolerance=0.02)
    rows = {row["unit"]: row for row in r.rows}
    assert list(rows) == [0, 1, 2, 3, 4]
    for u, true in radius.items():
        row = rows[u]
        lo, hi = row["bracket"]
        assert row["budget"] == "std" and row["radius"] == hi
        if math.isinf(true):
            assert (lo, hi) == (0.0, 0.5) and not row["broken"] and row["censored"]
            continue
        assert row["broken"] and not row["censored"]
        assert lo < true <= hi and hi - lo <= 0.02, (u, lo, hi)
    assert rows[3]["bracket"][1] == 0.5  # breaks exactly at the top
    assert rows[0]["clean_label"] == "red" and rows[2]["clean_label"] == "box"
    assert rows[0]["clean_iou"] == 0.5
    # the first audit is at the top, over every unit; later ones only the open units
    assert oracle.calls[0] == (0.5, [0, 1, 2, 3, 4])
    assert all(2 not in units for _, units in oracle.calls[1:])
    assert r.metrics["evaluations"] == len(oracle.calls)
    assert r.meta["tolerance"] == 0.02 and r.meta["budget_key"] == "std"
    assert r.meta["units_searched"] == "detectors"


def test_units_at_the_same_midpoint_share_one_audit(search):
    r, oracle = search({0: 0.2, 1: 0.2, 2: 0.2}, [1, 1, 1], [0.5] * 3, radius_tolerance=0.05)
    assert all(len(units) == 3 for _, units in oracle.calls)  # one audit per bisection step
    assert len({tuple(row["bracket"]) for row in r.rows}) == 1
    budgets = [b for b, _ in oracle.calls]
    assert budgets[0] == 0.5 and budgets == sorted(set(budgets), key=budgets.index)


def test_midpoints_sit_on_a_grid_a_quarter_of_the_tolerance_wide(search):
    tol = 0.04
    r, oracle = search({0: 0.137}, [1], [0.5], radius_tolerance=tol)
    grid = tol / 4
    for b, _ in oracle.calls[1:]:
        assert abs(b / grid - round(b / grid)) < 1e-9, b
    lo, hi = r.rows[0]["bracket"]
    assert lo < 0.137 <= hi and hi - lo <= tol


def test_the_default_tolerance_is_a_32nd_of_the_top(search):
    r, _ = search({0: 0.3}, [1], [0.5])
    assert r.meta["tolerance"] == 0.5 / 32
    lo, hi = r.rows[0]["bracket"]
    assert hi - lo <= 0.5 / 32


def test_summary_metrics_are_the_quantiles_of_the_radii(search):
    radius = {u: 0.05 * (u + 1) for u in range(7)}
    r, _ = search(radius, [1] * 7, [0.5] * 7, radius_tolerance=0.001)
    radii = np.array([row["radius"] for row in r.rows])
    m = r.metrics
    assert m["units"] == 7 and m["max_budget"] == 0.5 and m["broken_rate"] == 1.0
    assert m["median"] == pytest.approx(float(np.median(radii)))
    assert m["mean"] == pytest.approx(float(radii.mean()))
    assert m["min"] == float(radii.min())
    # "inclusive" deciles: numpy's linear percentiles
    assert m["q10"] == pytest.approx(float(np.percentile(radii, 10)))
    assert m["q90"] == pytest.approx(float(np.percentile(radii, 90)))


def test_a_single_unit_and_censored_units(search):
    r, _ = search({0: math.inf, 1: 0.25}, [1, 1], [0.5, 0.5], units=(1,),
                  radius_tolerance=0.01)
    assert [row["unit"] for row in r.rows] == [1]
    m = r.metrics
    assert m["q10"] == m["q90"] == m["median"] == m["min"] == r.rows[0]["radius"]
    r, _ = search({0: math.inf, 1: 0.25}, [1, 1], [0.5, 0.5], radius_tolerance=0.01)
    assert r.metrics["broken_rate"] == 0.5
    assert r.rows[0]["radius"] == 0.5  # censored: the largest budget, a lower bound


@pytest.mark.parametrize("which, want", [("detectors", [0, 3]), ("labelled", [0, 1, 3]),
                                         ("all", [0, 1, 2, 3])])
def test_which_units_are_searched(search, which, want):
    labels, ious = [1, 2, 0, 1], [0.04, 0.0399, 0.0, 0.5]  # unit 0 exactly at the threshold
    r, _ = search(dict.fromkeys(range(4), 0.25), labels, ious, radius_units=which,
                  radius_tolerance=0.1)
    assert [row["unit"] for row in r.rows] == want
    assert r.rows[[row["unit"] for row in r.rows].index(want[-1])]["clean_label"] == "red"
    if which == "all":
        assert r.rows[2]["clean_label"] is None


@pytest.mark.parametrize("cap, where, want", [(3, "request", [0, 3, 6]), (4, "run", [0, 2, 5, 7]),
                                              (10, "request", list(range(10))),
                                              (1, "run", [0])])
def test_a_unit_cap_spreads_the_searched_units_evenly(search, cap, where, want):
    kw = {"max_units": cap} if where == "request" else {}
    r, _ = search(dict.fromkeys(range(10), 0.25), [1] * 10, [0.5] * 10,
                  run_cap=cap if where == "run" else None, radius_tolerance=0.1, **kw)
    assert [row["unit"] for row in r.rows] == want


def test_the_request_s_cap_wins_over_the_run_s(search):
    r, _ = search(dict.fromkeys(range(10), 0.25), [1] * 10, [0.5] * 10, run_cap=2,
                  radius_tolerance=0.1, max_units=5)
    assert len(r.rows) == 5


def test_an_attack_budget_is_eps(search):
    r, oracle = search({0: 0.02}, [1], [0.5], corruption="pgd:eps=0.0625,steps=1",
                       radius_tolerance=0.004)
    assert r.rows[0]["budget"] == "eps" and r.meta["budget_key"] == "eps"
    assert oracle.calls[0][0] == 0.0625


@pytest.mark.parametrize("corruption, message", [
    ("gaussian:fraction=0.5", "a radius search needs the largest budget to search in the spec "
                              "(std=...), e.g. gaussian:std=0.2"),
    ("jpeg:quality=50", "its budget quality is not one that grows with the corruption's "
                        "strength (std, eps); a radius search bisects such a budget"),
    ("gaussian:std=0", "the budget std=0.0 must be > 0"),
    ("gaussian:std=abc", "std='abc' is not a number"),
])
def test_bad_radius_requests_say_why(search, corruption, message):
    with pytest.raises(SpecError) as e:
        search({0: 0.1}, [1], [0.5], corruption=corruption)
    assert message in str(e.value)


def test_a_kind_without_a_budget_is_refused_naming_the_keys_searched(monkeypatch):
    """A registered corruption kind that declares no budget (a plugin's) has nothing to
    bisect: the message names the keys a search can take."""
    from nemaudit.audit.radius.budget import budget_key
    from nemaudit.corrupt import kinds

    monkeypatch.setitem(kinds.KINDS, "blur", kinds.Kind("tests.toys:Blur"))
    with pytest.raises(SpecError) as e:
        budget_key("blur:std=0.2", "radius search")
    assert str(e.value) == ("corruption 'blur:std=0.2': a radius search needs the largest "
                            "budget to search in the spec (std/eps=...), e.g. gaussian:std=0.2")


def test_no_unit_to_search_is_an_error(search):
    with pytest.raises(SpecError, match=r"^layer 'layer4': no detectors units to search$"):
        search({0: 0.1}, [0], [0.0])


def test_spec_at_replaces_only_the_budget():
    assert spec_at("gaussian:std=0.5,fraction=0.25,seed=3", "std", 0.125) == \
        "gaussian:std=0.125,fraction=0.25,seed=3"
    assert spec_at("pgd:eps=8/255,steps=2", "eps", 0.5) == "pgd:eps=0.5,steps=2"


# --------------------------------------------------------------------------- breaking budget

class PropertyAuditor:
    """An Auditor stand-in whose flip rate is ``rate(σ)``; with an interval ``(lo, hi)`` the
    result carries it, so ``@`` expectations can warn."""

    def __init__(self, rate, interval=None) -> None:
        self.rate, self.interval, self.budgets = rate, interval, []

    def seeded(self, spec):
        return spec

    def run(self, req):
        from nemaudit.specs import tokenize

        s = float(tokenize(req.corruption, "corruption").fields["std"])
        self.budgets.append(s)
        iv = self.interval

        class R:
            method, layer, metrics = "netdissect", "layer4", {"flip_rate": self.rate(s)}

            def interval(self, metric, keys=(), level=0.95):
                return None if iv is None else SimpleNamespace(lo=iv[0], hi=iv[1])

        return R()


def req(top=0.5):
    return AuditRequest.build("netdissect", layer="layer4", corruption=f"gaussian:std={top}")


@pytest.mark.parametrize("tol, audits", [(0.5 / 64, 1 + 6), (0.5 / 8, 1 + 3),
                                         (0.5, 2)])  # no halving: the clean run is audited
def test_bisection_brackets_the_breaking_budget(tol, audits):
    a = PropertyAuditor(lambda s: 0.5 if s >= 0.3 else 0.0)
    b = breaking.smallest_breaking_budget(a, req(), "flip_rate <= 0.1", tolerance=tol)
    lo, hi = b.bracket
    assert b.broken and b.budget == hi and lo < 0.3 <= hi and hi - lo <= tol * (1 + 1e-9)
    assert b.evaluations == len(b.trail) == len(a.budgets) == audits
    assert a.budgets[0] == 0.5 and b.tolerance == tol and b.top == 0.5
    assert (b.key, b.kind, b.layer, b.expectation) == ("std", "gaussian", "layer4",
                                                       "flip_rate <= 0.1")
    for t in b.trail:
        assert t["broken"] == (t["budget"] >= 0.3) and t["measured"] == a.rate(t["budget"])
        assert t["status"] == ("failed" if t["broken"] else "passed")


def test_the_default_tolerance_is_a_64th_of_the_top():
    b = breaking.smallest_breaking_budget(PropertyAuditor(lambda s: float(s >= 0.2)), req(),
                                          "flip_rate <= 0.5")
    assert b.tolerance == 0.5 / 64 and b.evaluations == 7


def test_a_property_that_holds_at_the_top_is_censored():
    b = breaking.smallest_breaking_budget(PropertyAuditor(lambda s: 0.0), req(),
                                          "flip_rate <= 0.1")
    assert not b.broken and b.budget is None and b.bracket == (0.5, math.inf)
    assert b.evaluations == 1
    doc = b.to_json()
    assert doc["bracket"] == [0.5, None] and doc["budget"] is None and doc["broken"] is False
    assert doc["schema"] == breaking.SCHEMA and doc["max_budget"] == 0.5
    assert b.summary() == ("'flip_rate <= 0.1' holds up to std=0.5 (1 audit(s)): no breaking "
                           "std within the range")


def test_broken_even_clean_is_budget_zero_and_held_near_zero_is_not():
    always = PropertyAuditor(lambda s: 1.0)
    b = breaking.smallest_breaking_budget(always, req(), "flip_rate <= 0.1", tolerance=0.125)
    assert b.bracket == (0.0, 0.0) and b.broken and always.budgets[-1] == 0.0
    assert b.evaluations == 1 + 2 + 1
    tiny = PropertyAuditor(lambda s: float(s > 0))  # holds only at σ = 0
    b = breaking.smallest_breaking_budget(tiny, req(), "flip_rate <= 0.1", tolerance=0.125)
    assert b.bracket == (0.0, 0.125) and b.budget == 0.125 and tiny.budgets[-1] == 0.0
    assert b.summary().startswith("'flip_rate <= 0.1' breaks at std=0.125 (holds at 0; 4 "
                                  "audits, ")


def test_strict_counts_a_warned_verdict_as_broken():
    rate = lambda s: 0.05  # noqa: E731 - holds at every σ, but its interval reaches 0.2
    a = PropertyAuditor(rate, interval=(0.0, 0.2))
    lax = breaking.smallest_breaking_budget(a, req(), "flip_rate <= 0.1 @ 0.95")
    assert not lax.broken and lax.trail[0]["status"] == "warned"
    strict = breaking.smallest_breaking_budget(PropertyAuditor(rate, interval=(0.0, 0.2)),
                                               req(), "flip_rate <= 0.1 @ 0.95", strict=True,
                                               tolerance=0.25)
    assert strict.broken and strict.trail[0] == {"budget": 0.5, "status": "warned",
                                                 "measured": 0.05, "broken": True}


@pytest.mark.parametrize("request_, expect, tolerance, message", [
    (req(), "flip_rate <= 0.1", 0.0, "tolerance 0.0: expected a number in (0, 0.5]"),
    (req(), "flip_rate <= 0.1", 0.75, "tolerance 0.75: expected a number in (0, 0.5]"),
    (req(), "flip_rate <= 0.1", math.nan, "tolerance nan"),
    (req(), "milan.manipulated_rate <= 0.1", None, "measures a milan audit, the request is a "
                                                  "netdissect audit"),
    (req(), "unchanged_since_baseline", None, "compares clean explanations with a baseline"),
    (req().but(corruption="jpeg:quality=50"), "flip_rate <= 0.1", None,
     "its budget quality is not one that grows"),
    (req().but(corruption="gaussian:fraction=0.5"), "flip_rate <= 0.1", None,
     "needs the largest budget to search in the spec (std=...), e.g. gaussian:std=0.2"),
    (req().but(corruption="gaussian:std=-1"), "flip_rate <= 0.1", None,
     "the budget std=-1.0 must be > 0"),
])
def test_bad_breaking_searches_say_why(request_, expect, tolerance, message):
    with pytest.raises(SpecError) as e:
        breaking.smallest_breaking_budget(PropertyAuditor(lambda s: 0.0), request_, expect,
                                          tolerance=tolerance)
    assert message in str(e.value)


def test_a_radius_request_cannot_be_searched_again():
    r = AuditRequest.build("radius", corruption="gaussian:std=0.5")
    with pytest.raises(SpecError, match="sets its corruption budget itself"):
        breaking.smallest_breaking_budget(PropertyAuditor(lambda s: 0.0), r,
                                          "radius.median >= 0.1")


def test_the_search_takes_a_parsed_expectation_too():
    from nemaudit.expectations import parse_expectation

    b = breaking.smallest_breaking_budget(PropertyAuditor(lambda s: float(s >= 0.25)), req(),
                                          parse_expectation("flip_rate <= 0.5"), tolerance=0.25)
    assert b.bracket == (0.0, 0.25) and b.evaluations == 3


# --------------------------------------------------------------------------- views, messages

def test_a_bracket_exactly_the_tolerance_wide_is_done(search):
    """Top 0.5, tolerance 0.125: audits at 0.5, 0.25 and 0.375 leave [0.25, 0.375], exactly
    the tolerance wide: no fourth audit."""
    r, oracle = search({0: 0.3}, [1], [0.5], radius_tolerance=0.125)
    assert [b for b, _ in oracle.calls] == [0.5, 0.25, 0.375]
    assert r.rows[0]["bracket"] == [0.25, 0.375] and r.metrics["evaluations"] == 3


def test_the_result_names_the_layer_the_corruption_and_what_censoring_means(search):
    from nemaudit.corrupt.spec import parse_corruption

    r, _ = search({0: 0.3}, [1], [0.5], radius_tolerance=0.125)
    assert r.layer == "layer4"
    assert r.corruption == parse_corruption("gaussian:std=0.5").describe()
    assert r.meta["note"] == ("a censored unit did not change within the range: its radius is "
                              "reported as the largest budget (a lower bound)")


def test_with_a_zero_iou_threshold_detectors_still_need_a_concept(search, monkeypatch):
    monkeypatch.setattr(ndrun, "clean_dissection",
                        lambda req, res: clean([0, 1], [0.0, 0.0], iou_threshold=0.0))
    oracle = Oracle({0: 0.1, 1: 0.1})
    monkeypatch.setattr(ndrun, "audit", oracle)
    req = AuditRequest.build("radius", corruption="gaussian:std=0.5", radius_tolerance=0.25)
    r = run_request(req, Resolved(None, None, "layer4", "gaussian:std=0.5", "cpu"))
    assert [row["unit"] for row in r.rows] == [1]


def test_radius_result_views():
    from nemaudit.audit.radius.run import RadiusResult

    rows = [{"unit": 3, "clean_label": "sky", "budget": "std", "radius": 0.125,
             "bracket": [0.0625, 0.125], "broken": True},
            {"unit": 12, "clean_label": None, "budget": "eps", "radius": 0.5,
             "bracket": [0.5, 0.5], "broken": False}]
    r = RadiusResult("l", {}, rows, {}, {})
    assert r.diff_line(rows[0]) == "unit    3: sky changes at std 0.125 (bracket [0.0625, 0.125])"
    assert r.diff_line(rows[1]) == "unit   12: — changes at eps 0.5 (bracket [0.5, 0.5])"
    assert [r.diff_order(x) for x in rows] == [0.125, 0.5]
    assert r.indicators("broken_rate") == [(True, True), (False, True)]
    assert r.indicators("median") is None


def test_the_radius_method_summarises_and_dispatches(monkeypatch):
    from nemaudit.audit.methods import get_method
    from nemaudit.audit.radius import run as radius_run

    m = get_method("radius")
    assert m.change_summary({"units": 8, "max_budget": 0.5, "median": 0.25,
                             "broken_rate": 0.375}) == (
        "8 units searched up to 0.5: median radius 0.25, 38% broken within the range")
    assert m.change_summary({}) == ("0 units searched up to None: median radius None, 0% "
                                    "broken within the range")
    assert m.change_summary({"broken_rate": 1.0}).endswith(": median radius None, 100% broken "
                                                           "within the range")
    from nemaudit.report import radius_html

    monkeypatch.setattr(radius_html, "radius_section", lambda payload, index: (payload, index))
    assert m.section({"p": 1}, 4, False) == ({"p": 1}, 4)
    seen = []
    monkeypatch.setattr(radius_run, "run_request", lambda req, res: seen.append((req, res)) or 7)
    assert m.run("REQ", "RES") == 7 and seen == [("REQ", "RES")]


def test_a_breaking_budget_s_json():
    b = breaking.BreakingBudget("flip_rate <= 0.1", "layer4", "gaussian", "std", 0.5, 0.01,
                                (0.125, 0.25), True, 3, 1.23456, [{"budget": 0.5}])
    assert b.to_json() == {"schema": "nemaudit.breaking/1", "expectation": "flip_rate <= 0.1",
                           "layer": "layer4", "kind": "gaussian", "budget_key": "std",
                           "max_budget": 0.5, "tolerance": 0.01, "broken": True,
                           "budget": 0.25, "bracket": [0.125, 0.25], "evaluations": 3,
                           "seconds": 1.235, "trail": [{"budget": 0.5}]}


def test_breaking_search_messages_in_full():
    a = PropertyAuditor(lambda s: 0.0)
    with pytest.raises(SpecError) as e:
        breaking.smallest_breaking_budget(a, req(), "unchanged_since_baseline")
    assert str(e.value) == ("'unchanged_since_baseline' compares clean explanations with a "
                            "baseline; a corruption budget cannot break it")
    r = AuditRequest.build("radius", corruption="gaussian:std=0.5")
    with pytest.raises(SpecError) as e:
        breaking.smallest_breaking_budget(a, r, "radius.median >= 0.1")
    assert str(e.value) == ("a radius audit sets its corruption budget itself; search the "
                            "breaking budget of a property of another method")
    obj = type("A", (PropertyAuditor,), {"seeded": lambda self, spec: object()})(lambda s: 0.0)
    with pytest.raises(SpecError) as e:
        breaking.smallest_breaking_budget(obj, req(), "flip_rate <= 0.1")
    assert str(e.value) == ("a breaking-budget search needs the corruption as a spec string "
                            "(its budget is varied), e.g. 'gaussian:std=0.2'")
    with pytest.raises(SpecError) as e:
        breaking.smallest_breaking_budget(a, req().but(corruption="gaussian:fraction=0.5"),
                                          "flip_rate <= 0.1")
    assert str(e.value) == ("corruption 'gaussian:fraction=0.5': a breaking-budget search "
                            "needs the largest budget to search in the spec (std=...), e.g. "
                            "gaussian:std=0.2")
    b = breaking.smallest_breaking_budget(PropertyAuditor(lambda s: float(s >= 0.25)), req(),
                                          "flip_rate <= 0.5", tolerance=0.25)
    assert 0 <= b.seconds < 60


def test_a_radius_search_of_a_corruption_object_says_so():
    with pytest.raises(SpecError) as e:
        run_request(AuditRequest.build("radius"), Resolved(None, None, "l", object(), "cpu"))
    assert str(e.value) == ("a radius search needs the corruption as a spec string (its budget "
                            "is varied), e.g. 'gaussian:std=0.1'")


def test_two_units_have_interpolated_deciles(search):
    r, _ = search({0: 0.1, 1: 0.3}, [1, 1], [0.5, 0.5], radius_tolerance=0.001)
    a, b = sorted(row["radius"] for row in r.rows)
    assert r.metrics["q10"] == pytest.approx(a + 0.1 * (b - a))
    assert r.metrics["q90"] == pytest.approx(a + 0.9 * (b - a))
