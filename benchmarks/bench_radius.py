"""Cost of the per-unit robustness radius: parallel bisection against a grid search of the
same resolution, side by side in one run on the embedded default (a measurement, not a test).

The bisection is the registered ``radius`` method (:mod:`nemaudit.audit.radius.run`): each
unit's bracket [0, B] halves until it is narrower than the tolerance, midpoints snapped to a
grid of tolerance/4 so that units share audits. The grid search audits every budget
tol, 2·tol, …, B and gives each unit the first budget where its concept changed: the same
resolution (a unit's answer within one tolerance of its first change), the same clean run
(from the on-disk cache, computed first and not counted), the same seed.

Noise is a shared corruption (one audit answers every unit), so the grid costs B/tol audits
whatever the number of units, and the bisection's cost depends on how many distinct
midpoints the units need. With ``--pgd``: the per-unit attack instead, where every audit
attacks each unit still open, so both searches pay per unit.

    python benchmarks/bench_radius.py [--n 100] [--layer layer4] [--std 0.1]
        [--tolerance 0.003125] [--max-units 32] [--pgd --eps 8/255 --steps 3]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--layer", default="layer4")
    p.add_argument("--std", type=float, default=0.1, help="largest σ searched (noise)")
    p.add_argument("--tolerance", type=float, default=None, help="default: budget / 32")
    p.add_argument("--max-units", type=int, default=32)
    p.add_argument("--pgd", action="store_true", help="the per-unit attack instead of noise")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cache-dir", default=".nemaudit-cache")
    a = p.parse_args()

    from nemaudit.audit.netdissect.run import audit, audit_config
    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor

    if a.pgd:
        top, key = float(Fraction(a.eps)), "eps"
        spec = f"pgd:eps={a.eps},steps={a.steps},seed=0"
        at = lambda b: f"pgd:eps={b!r},steps={a.steps},seed=0"  # noqa: E731
    else:
        top, key = a.std, "std"
        spec = f"gaussian:std={a.std},fraction=1.0,seed=0"
        at = lambda b: f"gaussian:std={b!r},fraction=1.0,seed=0"  # noqa: E731
    tol = a.tolerance or top / 32
    common = {"model": "nemaudit:conceptnet", "probe": f"synthetic:n={a.n},seed=0",
              "layer": a.layer}
    auditor = Auditor("cpu", cache_dir=a.cache_dir, max_units=a.max_units)
    request = AuditRequest.build("radius", corruption=spec, radius_tolerance=tol, **common)
    resolved = auditor.resolve(request)
    auditor.clean_dissection(request)  # warm the clean cache: neither search pays for it

    t0 = time.perf_counter()
    r = auditor.run(request)
    t_bis = time.perf_counter() - t0
    units = [row["unit"] for row in r.rows]

    # the grid: every budget k·tol up to the top, each unit's first change
    config = audit_config(request, resolved)
    steps = round(top / tol)
    first: dict[int, float | None] = dict.fromkeys(units)
    t0 = time.perf_counter()
    grid_audits = 0
    for k in range(1, steps + 1):
        open_units = [u for u in units if first[u] is None]
        if not open_units:
            break
        grid_audits += 1
        res = audit(resolved.model, resolved.layer, resolved.probe, at(k * tol), config,
                    device=resolved.device, cache_dir=a.cache_dir,
                    units=open_units if a.pgd else units)
        for row in res.rows:
            if row["changed"] and first.get(row["unit"], 0.0) is None:
                first[row["unit"]] = k * tol
    t_grid = time.perf_counter() - t0

    agree = within = 0
    for row in r.rows:
        g = first[row["unit"]]
        if (g is None) == (not row["broken"]):
            agree += 1
            if g is None or abs(row["radius"] - g) <= tol + 1e-12:
                within += 1
    what = f"PGD ε ≤ {a.eps}, {a.steps} steps" if a.pgd else f"Gaussian σ ≤ {a.std}"
    print(f"per-unit radius, conceptnet {a.layer} on synthetic:n={a.n}, {what}, "
          f"{len(units)} units, tolerance {tol:.4g} ({key})")
    print(f"{'search':<12} {'audits':>7} {'wall s':>8}")
    print(f"{'bisection':<12} {r.metrics['evaluations']:>7} {t_bis:>8.2f}")
    print(f"{'grid':<12} {grid_audits:>7} {t_grid:>8.2f}   (stops once every unit changed)")
    print(f"grid / bisection: {t_grid / t_bis:.2f}× the wall time, "
          f"{grid_audits / max(1, r.metrics['evaluations']):.2f}× the audits")
    print(f"agreement: {agree}/{len(units)} units broken-or-not alike, {within}/{len(units)} "
          f"within one tolerance of the grid's first change; median radius "
          f"{r.metrics['median']:.4g}")


if __name__ == "__main__":
    main()
