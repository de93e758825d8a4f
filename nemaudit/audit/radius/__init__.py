"""Robustness radius as a registered method: per unit, the smallest corruption budget that
changes its Network Dissection concept (σ for noise, ε for attacks), by bisection.

Declared here torch-free; the search is :func:`nemaudit.audit.radius.run.run_request`. The
corruption of the request names the kind and the *largest* budget searched
(``pgd:eps=8/255,steps=10`` searches ε in [0, 8/255]); its budget key comes from the
corruption registry (:data:`nemaudit.corrupt.kinds.KINDS`). Properties read like
``radius.median >= 4/255`` (or ``method = "radius"`` and ``median >= 4/255``).

The radius of a whole property (the smallest budget at which its expectation fails) is
:func:`nemaudit.audit.radius.breaking.smallest_breaking_budget` (``nemaudit radius --expect``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.audit.fields import Field, FloatRange
from nemaudit.audit.methods import Method, MetricShape

_N = MetricShape()
_UNIT_SETS = ("detectors", "labelled", "all")


def _check_units_set(v: Any) -> str:
    if v not in _UNIT_SETS:
        raise TypeError(" or ".join(f'"{s}"' for s in _UNIT_SETS))
    return str(v)


class Radius(Method):
    name = "radius"
    prefix = "radius."
    title = "Robustness radius"
    verb = "radius"
    record_key = "radius"
    headline = "median"
    repeatable = False  # its budget search sets the corruption itself
    headline_label = "radius median"
    metrics = {"units": _N, "median": _N, "q10": _N, "q90": _N, "mean": _N, "min": _N,
               "max_budget": _N, "evaluations": _N,
               "broken_rate": MetricShape(rate=True)}
    fields = {
        "radius_tolerance": Field(FloatRange(0.0, 1.0, lo_open=True),
                                  "radius: the search stops when a unit's bracket is this "
                                  "narrow (default: the largest budget / 32)"),
        "radius_units": Field(_check_units_set, "radius: which units (detectors, labelled, "
                                                "all; default detectors)"),
    }

    def run(self, request, resolved):
        from nemaudit.audit.radius.run import run_request

        return run_request(request, resolved)

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        from nemaudit.report.radius_html import radius_section

        return radius_section(payload, index)

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        return (f"{metrics.get('units', 0)} units searched up to {metrics.get('max_budget')}: "
                f"median radius {metrics.get('median')}, "
                f"{100 * (metrics.get('broken_rate') or 0):.0f}% broken within the range")
