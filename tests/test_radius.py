"""The robustness radius (a registered method): bisection agrees with a fine grid search,
censoring, per-unit attacks, and properties through spec files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemaudit.audit.netdissect.run import AuditConfig, audit
from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor
from nemaudit.expectations import parse_expectation
from nemaudit.explain.netdissect import DissectConfig

TOYS = str(Path(__file__).with_name("toys.py"))
TOY = {"model": f"{TOYS}:ToyNet", "probe": f"python:{TOYS}:ToyProbe(n=32)",
       "layer": "layer2", "normalize": "none"}


@pytest.fixture(scope="module")
def auditor():
    return Auditor("cpu", batch_size=32)


def test_bisection_equals_the_smallest_budget_on_a_fine_grid(auditor):
    top, tol = 0.5, 0.5 / 32
    r = auditor.run(AuditRequest.build("radius", corruption=f"gaussian:std={top}",
                                       radius_units="labelled", radius_tolerance=tol, **TOY))
    units = [row["unit"] for row in r.rows]
    model, probe = auditor.model(TOY["model"], normalize="none"), auditor.probe(TOY["probe"])
    step = top / 64
    grid = [step * i for i in range(1, 65)]
    flags = {u: [] for u in units}
    for b in grid:  # one shared-noise audit per grid point answers for every unit
        res = audit(model, "layer2", probe, f"gaussian:std={b},seed=0",
                    AuditConfig(dissect=DissectConfig(batch_size=32)), units=units)
        for row in res.rows:
            flags[row["unit"]].append(row["changed"])
    monotone = [u for u in units if flags[u] == sorted(flags[u])]  # a step: off, then on
    assert monotone, "the toy should have units whose response to σ is a step"
    for row in r.rows:
        if row["unit"] in monotone and row["broken"]:
            first = grid[flags[row["unit"]].index(True)]
            assert abs(row["radius"] - first) <= tol + step, (row, first)
            assert row["bracket"][1] - row["bracket"][0] <= tol
    assert r.metrics["evaluations"] < len(grid)  # cheaper than the grid


def test_censored_units_report_the_largest_budget_and_per_unit_attacks_work(auditor):
    r = auditor.run(AuditRequest.build("radius", corruption="gaussian:std=0.0001",
                                       radius_units="labelled", **TOY))
    assert all(row["censored"] and row["radius"] == 0.0001 for row in r.rows)
    assert r.metrics["broken_rate"] == 0.0 and r.metrics["evaluations"] == 1
    pgd = auditor.run(AuditRequest.build("radius", corruption="pgd:eps=32/255,steps=2",
                                         units=[3, 12], radius_tolerance=4 / 255, **TOY))
    assert [row["unit"] for row in pgd.rows] == [3, 12] and pgd.rows[0]["budget"] == "eps"
    for row in pgd.rows:
        assert row["censored"] or row["bracket"][1] - row["bracket"][0] <= 4 / 255
    e = parse_expectation("radius.broken_rate >= 0.5 @ 95%")
    assert e.judge({"radius." + k: v for k, v in pgd.metrics.items()}, pgd).status in (
        "passed", "warned", "failed")


def test_radius_properties_run_from_spec_files(pytester):
    pytester.makepyfile(toys=Path(TOYS).read_text())
    pytester.makefile(".toml", nemaudit_radius="""
        [defaults]
        model = "toys.py:ToyNet"
        normalize = "none"
        probe = "python:toys.py:ToyProbe(n=32)"

        [[property]]
        name = "noise radius"
        layers = ["layer2"]
        corruption = "gaussian:std=0.5"
        radius_units = "labelled"
        expect = ["radius.median >= 0.01", "radius.min <= 0.5"]

        [[property]]
        name = "too strict"
        layers = ["layer2"]
        method = "radius"
        corruption = "gaussian:std=0.5"
        radius_units = "labelled"
        expect = "median >= 0.49"
    """)
    result = pytester.runpytest_subprocess("--nemaudit", "--nemaudit-cache-dir", "none",
                                           "--nemaudit-html", "r.html", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*radius.median >= 0.49 does not hold*",
                                 "*units searched up to 0.5: median radius*"])
    assert "robustness radius" in (pytester.path / "r.html").read_text()


pytest_plugins = ["pytester"]
