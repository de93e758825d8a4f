"""What a failing property prints: the verdict, where it was measured, the capped diff.

Shared by spec-file items, ``nemaudit.expect(...)`` and plain ``assert result.metric <= x``
(through ``pytest_assertrepr_compare``); every method's wording comes from its registry
entry (:meth:`nemaudit.audit.methods.Method.change_summary`) and its result's ``diff_lines``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from nemaudit.audit.methods import get_method
from nemaudit.errors import NemauditError, SpecError

DIFF_LINES = 15
_FLIP = {"<=": ">=", "<": ">", ">=": "<=", ">": "<", "==": "==", "!=": "!="}


def fmt(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.4g}"


def corruption_spec(result: Any) -> str:
    """The spec string of the corruption a result was measured under."""
    c = (result.context or {}).get("corruption")
    if c is not None and hasattr(c, "spec"):
        return c.spec()
    d = dict(result.corruption)
    kind = d.pop("kind", "?")
    d.pop("shared", None)
    return f"{kind}:" + ",".join(f"{k}={v}" for k, v in d.items() if v is not None)


def audit_context(result: Any, model: str | None, probe: str | None) -> str:
    return (f"layer {result.layer} · model {model} · probe {probe} · "
            f"corruption {corruption_spec(result)}")


def change_summary(result: Any) -> str:
    return get_method(result.method).change_summary(result.metrics)


def interval_text(e: Any, interval: Any) -> str:
    """``holds at the point estimate but not at its 95% bound: [0.01, 0.16] over 32 units``."""
    if interval is None:
        return "has no confidence interval here (no units to count)"
    return (f"holds at the point estimate but not at its {interval.level:.0%} bound: "
            f"[{interval.lo:.3g}, {interval.hi:.3g}] over {interval.n} units "
            f"({interval.k} of {interval.n})")


def failure_message(e: Any, measured: float | None, result: Any, model: str | None,
                    probe: str | None, limit: int = DIFF_LINES, verdict: Any = None) -> str:
    """What a failing expectation prints: verdict, context, and the capped per-unit diff
    (for a warning failed by ``--nemaudit-fail-on-warn``: its interval)."""
    if verdict is not None and verdict.status == "warned":
        head = (f"{e.text} {interval_text(e, verdict.interval)} (a warning, failed by "
                "--nemaudit-fail-on-warn)")
    else:
        head = (f"{e.subject} {e.op} {e.bound:g} does not hold: measured {fmt(measured)}, "
                f"bound {e.bound:g}")
    diff = result.diff_lines(limit)
    lines = [head, "  " + audit_context(result, model, probe), "  " + change_summary(result)
             + (":" if diff else "")]
    lines += ["    " + d for d in diff]
    return "\n".join(lines)


def shallow(e: NemauditError) -> NemauditError:
    """The same error without its traceback into nemaudit's internals."""
    try:
        return type(e)(*e.args)
    except TypeError:
        return SpecError(str(e))


def explanation_budget(config: pytest.Config) -> tuple[int, int]:
    """Lines/chars pytest will show of an assert explanation (mirrors its truncation rules),
    so the per-unit diff fits instead of being cut off mid-list."""
    try:
        verbose = config.get_verbosity("assertions")
    except (TypeError, ValueError, AttributeError):
        verbose = config.getoption("verbose", 0) or 0
    if verbose >= 2 or os.environ.get("CI") or os.environ.get("BUILD_NUMBER"):
        return DIFF_LINES + 4, 10**9
    try:
        lines, chars = config.getini("truncation_limit_lines"), config.getini("truncation_limit_chars")
    except ValueError:
        lines = chars = None
    max_lines = 8 if lines in (None, "") else int(lines) or DIFF_LINES + 4
    max_chars = 640 if chars in (None, "") else int(chars) or 10**9
    return min(max_lines, DIFF_LINES + 4), max_chars


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def assertrepr(config: pytest.Config, current: Any, op: str, left: Any, right: Any
               ) -> list[str] | None:
    """``pytest_assertrepr_compare`` for a :class:`~nemaudit.audit.result.Metric` compared
    with a number: the measured value, the audit's context and its per-unit diff. ``current``
    (the running item's record, or None) notes ``==``/``!=`` comparisons, which
    :data:`~nemaudit.audit.result.COMPARISON_HOOKS` does not see."""
    mod = sys.modules.get("nemaudit.audit.result")
    if mod is None:
        return None
    metric_t = mod.Metric
    if isinstance(left, metric_t) and _is_number(right):
        metric, bound = left, float(right)
    elif isinstance(right, metric_t) and _is_number(left):
        metric, bound, op = right, float(left), _FLIP.get(op, op)
    else:
        return None
    result = metric.result
    if result is None or op not in _FLIP:
        return None
    name = metric.name or "metric"
    if current is not None and op in ("==", "!="):
        current.note_expectation(f"{name} {op} {bound:g}", float(metric), bound, False, result)
    specs = result.meta.get("specs", {})
    max_lines, max_chars = explanation_budget(config)
    lines = [f"{name} {op} {bound:g} does not hold: measured {float(metric):.4g}, "
             f"bound {bound:g}",
             audit_context(result, specs.get("model"), specs.get("probe")),
             change_summary(result) + ":"]
    diff = result.diff_lines(DIFF_LINES)
    if diff and diff[-1].startswith("…"):
        diff = diff[:-1]
    total = len(result.changed_units)
    room = max_lines - len(lines) - 1
    used = sum(map(len, lines))
    shown: list[str] = []
    for d in diff:
        if len(shown) >= room or used + len(d) + 40 > max_chars:
            break
        shown.append(d)
        used += len(d)
    lines += shown
    if total > len(shown):
        hint = "" if len(shown) >= DIFF_LINES else f"; -vv shows up to {DIFF_LINES}"
        lines.append(f"… {total - len(shown)} more changed unit(s){hint}")
    elif not total:
        lines[-1] = lines[-1].rstrip(":")
    return lines
