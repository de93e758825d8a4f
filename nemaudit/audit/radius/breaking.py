"""The radius of a whole property: the smallest corruption budget at which its expectation
stops holding (``flip_rate <= 0.05`` under Gaussian noise: the σ where 5% of the units flip).

Captum's ``MinParamPerturbation`` finds, per input, the smallest perturbation parameter that
changes a model's output, by a linear or binary search over the parameter. This is the same
search over a *property*: the parameter is the corruption's budget key (``std`` for noise,
``eps`` for attacks: :data:`nemaudit.corrupt.kinds.KINDS`), the output the expectation's
verdict (:meth:`nemaudit.expectations.Expectation.judge`), and each evaluation a full audit
through the :class:`~nemaudit.auditor.Auditor` — which reuses the cached clean run, so an
evaluation costs one corrupted pass (an incremental one when a fraction is poisoned).

The search: the request's corruption names the kind and the *largest* budget B searched
(``gaussian:std=0.2`` searches σ in [0, 0.2]), as for the per-unit radius
(:mod:`nemaudit.audit.radius.run`). B is audited first; a property that holds at B is
*censored* (no breaking budget within the range). Otherwise bisection keeps a bracket
[lo, hi] with the property holding at lo (budget 0 is the clean run, where a flip rate is 0,
and is audited only when the bracket reaches it) and broken at hi, until hi − lo ≤ the
tolerance (B/64 by default): ``1 + ceil(log2(B / tolerance))`` audits. The answer is hi.

It assumes the verdict is monotone in the budget (broken at b, broken above b): true in
expectation for L∞ balls, and nearly so for noise, which is drawn once per seed and scaled
(a unit near a tie can still flip back). Where it is not, bisection returns *a* budget where
the verdict changes, within the tolerance; :attr:`BreakingBudget.trail` lists every audit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from nemaudit.audit.request import AuditRequest
from nemaudit.errors import SpecError

SCHEMA = "nemaudit.breaking/1"
#: brackets within this relative slack of the tolerance are done (float halving noise)
_SLACK = 1e-9


@dataclass
class BreakingBudget:
    """The smallest budget found to break a property, with the search that found it."""

    expectation: str
    layer: str | None
    kind: str
    #: the corruption's budget key (``std``, ``eps``)
    key: str
    #: the largest budget searched (the request's)
    top: float
    tolerance: float
    #: holds at ``bracket[0]``, broken at ``bracket[1]``; (top, inf) when censored
    bracket: tuple[float, float]
    #: whether the property broke within [0, top]
    broken: bool
    evaluations: int = 0
    seconds: float = 0.0
    #: every audit in the order run: {"budget", "status", "measured", "broken"}
    trail: list[dict] = field(default_factory=list)

    @property
    def budget(self) -> float | None:
        """The smallest breaking budget found (the bracket's upper end); None: censored."""
        return self.bracket[1] if self.broken else None

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "expectation": self.expectation, "layer": self.layer,
                "kind": self.kind, "budget_key": self.key, "max_budget": self.top,
                "tolerance": self.tolerance, "broken": self.broken, "budget": self.budget,
                "bracket": [self.bracket[0], None if math.isinf(self.bracket[1])
                            else self.bracket[1]],
                "evaluations": self.evaluations, "seconds": round(self.seconds, 3),
                "trail": self.trail}

    def summary(self) -> str:
        if not self.broken:
            return (f"{self.expectation!r} holds up to {self.key}={self.top:.4g} "
                    f"({self.evaluations} audit(s)): no breaking {self.key} within the range")
        return (f"{self.expectation!r} breaks at {self.key}={self.bracket[1]:.4g} "
                f"(holds at {self.bracket[0]:.4g}; {self.evaluations} audits, "
                f"{self.seconds:.1f} s)")


def smallest_breaking_budget(auditor: Any, request: AuditRequest, expectation: Any, *,
                             tolerance: float | None = None, strict: bool = False
                             ) -> BreakingBudget:
    """The smallest budget of ``request``'s corruption at which ``expectation`` (a string,
    or a parsed :class:`~nemaudit.expectations.Expectation`) no longer holds, by bisection
    in [0, B] (B the corruption's budget) down to ``tolerance`` (default B/64). ``strict``:
    a *warned* verdict (the point estimate holds, its ``@ level`` bound does not) counts as
    broken, as under ``--nemaudit-fail-on-warn``. Every audit runs on ``auditor`` (its clean
    cache and in-memory results are reused)."""
    from nemaudit.audit.radius.budget import budget_key, spec_at
    from nemaudit.expectations import metrics_of, parse_expectation

    exp = parse_expectation(expectation) if isinstance(expectation, str) else expectation
    if exp.is_baseline:
        raise SpecError(f"{exp.text!r} compares clean explanations with a baseline; a "
                        "corruption budget cannot break it")
    if exp.method != request.method:
        raise SpecError(f"{exp.text!r} measures a {exp.method} audit, the request is a "
                        f"{request.method} audit")
    if not request.declaration.repeatable or request.method == "radius":
        raise SpecError(f"a {request.method} audit sets its corruption budget itself; search "
                        "the breaking budget of a property of another method")
    spec = auditor.seeded(request.corruption)
    if not isinstance(spec, str):
        raise SpecError("a breaking-budget search needs the corruption as a spec string (its "
                        "budget is varied), e.g. 'gaussian:std=0.2'")
    kind, key, top = budget_key(spec, "breaking-budget search")
    tol = float(tolerance) if tolerance is not None else top / 64
    if not (math.isfinite(tol) and 0 < tol <= top):
        raise SpecError(f"tolerance {tolerance!r}: expected a number in (0, {top:.4g}]")
    t0 = time.perf_counter()
    trail: list[dict] = []
    layer = request.layer

    def breaks(budget: float) -> bool:
        nonlocal layer
        r = auditor.run(request.but(corruption=spec_at(spec, key, budget)))
        layer = r.layer
        verdict = exp.judge(metrics_of(r), r)
        broken = verdict.status == "failed" or (strict and verdict.status == "warned")
        trail.append({"budget": budget, "status": verdict.status,
                      "measured": verdict.measured, "broken": broken})
        return broken

    def result(bracket: tuple[float, float], broken: bool) -> BreakingBudget:
        return BreakingBudget(exp.text, layer, kind, key, top, tol, bracket, broken,
                              len(trail), time.perf_counter() - t0, trail)

    if not breaks(top):
        return result((top, math.inf), False)
    lo, hi = 0.0, top
    while hi - lo > tol * (1 + _SLACK):
        mid = (lo + hi) / 2
        if breaks(mid):
            hi = mid
        else:
            lo = mid
    if lo == 0.0 and breaks(0.0):  # broken all the way down: does it hold even clean?
        return result((0.0, 0.0), True)
    return result((lo, hi), True)
