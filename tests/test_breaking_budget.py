"""The radius of a whole property: bisection over the corruption's budget finds the smallest
σ at which an expectation fails, as a fine grid scanned from below does; censored searches,
properties broken without corruption, bad requests, and the ``nemaudit radius`` door."""

from __future__ import annotations

import json

import pytest

from nemaudit.audit.radius.breaking import smallest_breaking_budget
from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor
from nemaudit.cli import main
from nemaudit.errors import SpecError
from nemaudit.expectations import metrics_of, parse_expectation

MODEL, PROBE = "nemaudit:conceptnet", "synthetic:n=40,seed=0"
TOP = 0.08
EXPECT = "flip_rate <= 0.1"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("clean-cache"))


@pytest.fixture(scope="module")
def auditor(cache):
    return Auditor("cpu", cache_dir=cache, batch_size=40)


def _request(top: float = TOP) -> AuditRequest:
    return AuditRequest.build("netdissect", model=MODEL, probe=PROBE, layer="layer4",
                              corruption=f"gaussian:std={top}")


def test_bisection_equals_the_smallest_failing_sigma_on_a_fine_grid(auditor):
    tol = TOP / 32
    found = smallest_breaking_budget(auditor, _request(), EXPECT, tolerance=tol)
    assert found.broken and found.key == "std" and found.layer == "layer4"
    lo, hi = found.bracket
    assert found.budget == hi and 0 < hi - lo <= tol + 1e-12
    assert found.evaluations == len(found.trail) == 1 + 5  # top, then log2(32) halvings
    # the grid: σ in steps of tol/2 from below, up to the first budget where it fails
    exp, step = parse_expectation(EXPECT), tol / 2
    first, grid_audits = None, 0
    for i in range(1, round(TOP / step) + 1):
        r = auditor.run(_request().but(corruption=f"gaussian:std={i * step!r}"))
        grid_audits += 1
        if not exp.evaluate(metrics_of(r))[0]:
            first = i * step
            break
    assert first is not None
    assert abs(found.budget - first) <= tol, (found.trail, first)
    assert found.evaluations < grid_audits
    # each trail entry is the verdict at that budget: broken above the answer, held below it
    for t in found.trail:
        assert t["broken"] == (t["budget"] >= hi)
    assert json.loads(json.dumps(found.to_json()))["budget"] == hi


def test_censored_and_broken_without_corruption(auditor):
    held = smallest_breaking_budget(auditor, _request(), "flip_rate <= 1")
    assert not held.broken and held.budget is None and held.evaluations == 1
    assert "holds up to std=0.08" in held.summary()
    # fails at every budget, clean included: the answer is 0 (one audit more, at σ = 0)
    never = smallest_breaking_budget(auditor, _request(), "flip_rate >= 0.9",
                                     tolerance=TOP / 4)
    assert never.broken and never.bracket == (0.0, 0.0) and never.trail[-1]["budget"] == 0.0
    assert never.evaluations == 1 + 2 + 1


def test_bad_searches_are_errors_that_say_why(auditor):
    with pytest.raises(SpecError, match="largest budget"):
        smallest_breaking_budget(auditor, _request().but(corruption="gaussian:fraction=0.5"),
                                 EXPECT)
    with pytest.raises(SpecError, match="grows with"):
        smallest_breaking_budget(auditor, _request().but(corruption="jpeg:quality=50"), EXPECT)
    with pytest.raises(SpecError, match="milan audit"):
        smallest_breaking_budget(auditor, _request(), "milan.manipulated_rate <= 0.1")
    with pytest.raises(SpecError, match="baseline"):
        smallest_breaking_budget(auditor, _request(), "unchanged_since_baseline")
    with pytest.raises(SpecError, match="tolerance"):
        smallest_breaking_budget(auditor, _request(), EXPECT, tolerance=1.0)


def test_cli_radius_with_expect_and_per_unit(tmp_path, cache, capsys):
    out = tmp_path / "b.json"
    base = ["radius", "--model", MODEL, "--probe", PROBE, "--layer", "layer4", "--quiet",
            "--cache-dir", cache]
    assert main([*base, "--corruption", f"gaussian:std={TOP}", "--expect", EXPECT,
                 "--tolerance", str(TOP / 8), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"'{EXPECT}' breaks at std=" in text and "std=0.08: failed" in text
    (search,) = json.loads(out.read_text())["searches"]
    assert search["broken"] and search["evaluations"] == 4 and search["budget_key"] == "std"
    # without --expect: each unit's radius (the registered radius method)
    assert main([*base, "--corruption", f"gaussian:std={TOP}", "--units", "0,1",
                 "--tolerance", str(TOP / 4)]) == 0
    assert "units searched up to 0.08" in capsys.readouterr().out
    assert main([*base, "--corruption", "jpeg:quality=50", "--expect", EXPECT]) == 2
    assert "grows with" in capsys.readouterr().err
