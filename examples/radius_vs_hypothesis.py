"""The smallest σ that breaks a property, found two ways on the embedded default:

(a) bisection over the corruption's budget (:func:`nemaudit.audit.radius.breaking.
    smallest_breaking_budget`, ``nemaudit radius --expect``), at its default tolerance and
    at hypothesis' resolution, and
(b) hypothesis shrinking: :func:`hypothesis.find` over :func:`nemaudit.strategies.noise`
    (σ drawn on a 1000-step grid, so a shrunk counterexample is close to the smallest
    budget) with the property's failure as the condition.

Both use one seed (noise drawn once and scaled, as the bisection assumes), an Auditor of
their own and the same clean run (computed first, from the on-disk cache; loading it and
reading the probe are not counted). Printed: each answer,
the audits it needed and its wall time.

    python examples/radius_vs_hypothesis.py [--n 100] [--layer layer4]
        [--expect "flip_rate <= 0.1"] [--max-std 0.1] [--tolerance 0.0016]
"""

from __future__ import annotations

import argparse
import time


class Counting:
    """An Auditor wrapper that counts the audits actually computed (not cache replays)."""

    def __init__(self, auditor) -> None:
        self.auditor = auditor
        self.specs: list[str] = []

    def __getattr__(self, name):
        return getattr(self.auditor, name)

    def run(self, request):
        key = str(request.corruption)
        if key not in self.specs:
            self.specs.append(key)
        return self.auditor.run(request)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--layer", default="layer4")
    p.add_argument("--expect", default="flip_rate <= 0.1")
    p.add_argument("--max-std", type=float, default=0.1)
    p.add_argument("--tolerance", type=float, default=None,
                   help="bisection bracket (default max-std/64)")
    p.add_argument("--max-examples", type=int, default=200)
    p.add_argument("--cache-dir", default=".nemaudit-cache")
    a = p.parse_args()

    from hypothesis import HealthCheck, find, settings

    from nemaudit.audit.radius.breaking import smallest_breaking_budget
    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor
    from nemaudit.expectations import metrics_of, parse_expectation
    from nemaudit.strategies import noise

    model, probe = "nemaudit:conceptnet", f"synthetic:n={a.n},seed=0"
    exp = parse_expectation(a.expect)
    base = AuditRequest.build("netdissect", model=model, probe=probe, layer=a.layer,
                              corruption=f"gaussian:std={a.max_std},fraction=1.0,seed=0")
    tol = a.tolerance or a.max_std / 64

    def warm() -> Counting:
        """An Auditor of its own, its clean run loaded (from the on-disk cache after the
        first) and its probe read once: neither search pays for those."""
        auditor = Auditor("cpu", cache_dir=a.cache_dir)
        auditor.clean_dissection(base)
        auditor.run(base.but(corruption="gaussian:std=0.0,fraction=1.0,seed=0"))
        return Counting(auditor)

    # (a) bisection
    bis = warm()
    t0 = time.perf_counter()
    found = smallest_breaking_budget(bis, base, exp, tolerance=tol)
    t_bis = time.perf_counter() - t0
    # (a') the same bisection at hypothesis' resolution (its 1000-step grid of σ)
    fine = warm()
    t0 = time.perf_counter()
    found_fine = smallest_breaking_budget(fine, base, exp, tolerance=a.max_std / 1000)
    t_fine = time.perf_counter() - t0

    # (b) hypothesis: the simplest noise that breaks the property
    hyp = warm()

    def breaks(spec: str) -> bool:
        r = hyp.run(base.but(corruption=spec))
        return exp.judge(metrics_of(r), r).status == "failed"

    strategy = noise(kinds=("gaussian",), max_std=a.max_std, min_fraction=1.0,
                     max_fraction=1.0, seeds=0)
    t0 = time.perf_counter()
    shrunk = find(strategy, breaks,
                  settings=settings(max_examples=a.max_examples, database=None, deadline=None,
                                    derandomize=True,
                                    suppress_health_check=list(HealthCheck)))
    t_hyp = time.perf_counter() - t0
    std = float(shrunk.split("std=")[1].split(",")[0])
    grid = a.max_std / 1000

    print(f"property {a.expect!r} at {a.layer}, conceptnet on {probe}, gaussian σ ≤ {a.max_std}")
    print(f"{'search':<22} {'smallest breaking σ':>20} {'resolution':>11} {'audits':>7} "
          f"{'wall s':>8}")
    b = found.budget
    print(f"{'(a) bisection':<22} {('—' if b is None else f'{b:.5f}'):>20} {tol:>11.5f} "
          f"{len(bis.specs):>7} {t_bis:>8.1f}")
    bf = found_fine.budget
    print(f"{'(a) bisection, fine':<22} {('—' if bf is None else f'{bf:.5f}'):>20} "
          f"{a.max_std / 1000:>11.5f} {len(fine.specs):>7} {t_fine:>8.1f}")
    print(f"{'(b) hypothesis.find':<22} {std:>20.5f} {grid:>11.5f} {len(hyp.specs):>7} "
          f"{t_hyp:>8.1f}")
    print(f"bisection bracket [{found.bracket[0]:.5f}, {found.bracket[1]:.5f}]; "
          f"hypothesis' counterexample: {shrunk}")
    if b is not None:
        print(f"|difference| = {abs(b - std):.5f} "
              f"({abs(b - std) / tol:.2f} bisection tolerances)")


if __name__ == "__main__":
    main()
