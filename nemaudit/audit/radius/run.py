"""The radius search: per unit, the smallest budget at which its concept changes.

Parallel bisection on a budget grid: every unit starts with the bracket [0, B] (B the
request's budget, which is evaluated first: a unit unchanged at B is *censored*, its radius
only known to exceed B, and is reported as B). Each round evaluates the midpoints of the open
brackets, snapped to a grid of the tolerance so that units share evaluations, until every
bracket is narrower than the tolerance; a unit's radius is its bracket's upper end. Every
evaluation is a Network Dissection audit (:func:`nemaudit.audit.netdissect.run.audit`) that
reuses the cached clean run and re-dissects incrementally; a shared corruption (noise)
answers for all units at once, a per-unit attack for the units it is given. The search
assumes a unit that changes at budget b also changes above it (true for the attacks'
L∞ balls in expectation, and for noise drawn with the same seed and scaled).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.audit.result import MethodResult
from nemaudit.errors import SpecError

SCHEMA = "nemaudit.radius/1"


@dataclass
class RadiusResult(MethodResult):
    """Per unit: its radius (the smallest budget found to change its concept)."""

    method = "radius"
    schema = SCHEMA
    changed_flag = "broken"
    changed_noun = "broken unit(s)"

    def diff_order(self, row: dict) -> float:
        return row["radius"]

    def diff_line(self, r: dict) -> str:
        return (f"unit {r['unit']:>4}: {r['clean_label'] or '—'} changes at "
                f"{r['budget']} {r['radius']:.4g} (bracket [{r['bracket'][0]:.4g}, "
                f"{r['bracket'][1]:.4g}])")

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        if metric == "broken_rate":
            return [(bool(r["broken"]), True) for r in self.rows]
        return None


def run_request(request: AuditRequest, resolved: Resolved) -> RadiusResult:
    """The registered method's entry point (:class:`nemaudit.audit.radius.Radius`)."""
    from nemaudit.audit.netdissect.run import audit, audit_config, clean_dissection
    from nemaudit.audit.radius.budget import budget_key, spec_at

    spec = resolved.corruption
    if not isinstance(spec, str):
        raise SpecError("a radius search needs the corruption as a spec string (its budget "
                        "is varied), e.g. 'gaussian:std=0.1'")
    _, key, top = budget_key(spec, "radius search")
    tol = float(request.get("radius_tolerance", top / 32))
    config = audit_config(request, resolved)
    clean = clean_dissection(request, resolved)
    labels, ious = clean.best()
    which = request.get("radius_units", "detectors")
    if request.units is not None:
        units = list(request.units)
    else:
        keep = {"all": lambda u: True, "labelled": lambda u: int(labels[u]) > 0,
                "detectors": lambda u: int(labels[u]) > 0
                and float(ious[u]) >= clean.config.iou_threshold}[which]
        units = [u for u in range(clean.units) if keep(u)]
        cap = request.max_units if request.max_units is not None else resolved.max_units
        if cap is not None and len(units) > cap:
            step = len(units) / cap
            units = [units[math.floor(i * step)] for i in range(cap)]
    if not units:
        raise SpecError(f"layer {resolved.layer!r}: no {which} units to search")
    grid = tol / 4
    evaluations = 0

    def changed_at(budget: float, group: list[int]) -> dict[int, bool]:
        nonlocal evaluations
        evaluations += 1
        r = audit(resolved.model, resolved.layer, resolved.probe, spec_at(spec, key, budget),
                  config, device=resolved.device, cache_dir=resolved.cache_dir, units=group)
        return {row["unit"]: bool(row["changed"]) for row in r.rows}

    lo = dict.fromkeys(units, 0.0)
    hi = dict.fromkeys(units, top)
    at_top = changed_at(top, units)
    open_units = [u for u in units if at_top[u]]
    while True:
        todo = [u for u in open_units if hi[u] - lo[u] > tol]
        if not todo:
            break
        by_mid: dict[float, list[int]] = {}
        for u in todo:
            mid = round(((lo[u] + hi[u]) / 2) / grid) * grid
            mid = min(max(mid, lo[u] + grid / 2), hi[u] - grid / 2)
            by_mid.setdefault(mid, []).append(u)
        for mid, group in sorted(by_mid.items()):
            flags = changed_at(mid, group)
            for u in group:
                if flags[u]:
                    hi[u] = mid
                else:
                    lo[u] = mid
    rows: list[dict[str, Any]] = []
    for u in units:
        broken = at_top[u]
        rows.append({"unit": int(u), "budget": key, "radius": hi[u], "bracket": [lo[u], hi[u]],
                     "broken": broken, "censored": not broken,
                     "clean_label": clean.concepts[int(labels[u])].name if int(labels[u]) > 0
                     else None, "clean_iou": float(ious[u])})
    radii = [r["radius"] for r in rows]
    q = statistics.quantiles(radii, n=10, method="inclusive") if len(radii) > 1 else radii * 9
    metrics = {"units": len(rows), "median": float(statistics.median(radii)),
               "q10": float(q[0]), "q90": float(q[-1]), "mean": float(statistics.fmean(radii)),
               "min": float(min(radii)), "max_budget": top, "evaluations": evaluations,
               "broken_rate": sum(r["broken"] for r in rows) / len(rows)}
    meta = {"tolerance": tol, "budget_key": key, "units_searched": which,
            "note": "a censored unit did not change within the range: its radius is reported "
                    "as the largest budget (a lower bound)"}
    from nemaudit.corrupt.spec import parse_corruption

    return RadiusResult(resolved.layer, parse_corruption(spec).describe(), rows, metrics, meta)
