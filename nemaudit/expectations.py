"""The expectation grammar: ``"flip_rate <= 0.05"``, never ``eval``. Torch-free.

``<metric>[<key>]... <op> <number>`` with ``<= < >= > ==``, or the word
``unchanged_since_baseline``; a rate may add ``@ 95%`` (judged at its confidence bound:
:meth:`Expectation.judge`). Metric names come from the method registry
(:data:`nemaudit.audit.methods.METHODS`): the default method's (Network Dissection) are bare,
another method's carry its prefix (``milan.manipulated_rate <= 0.1``); where the method is
known from context (a MILAN result, ``method = "milan"``) bare names are that method's
(:func:`in_method`). Numbers may be fractions (``4/255``).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nemaudit.audit.methods import (
    DEFAULT_METHOD,
    all_methods,
    get_method,
    method_of_metric,
    method_of_prefix,
)
from nemaudit.errors import SpecError

__all__ = ["BASELINE", "OPS", "Expectation", "ExpectationError", "Verdict", "in_method",
           "metrics_of", "parse_expectation"]

#: the word that makes a property compare the clean explanations with a committed baseline
BASELINE = "unchanged_since_baseline"

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}
_OPS_TEXT = "<=, <, >=, >, =="
_NAME_RE = re.compile(r"(?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*")
_KEY_RE = re.compile(r"""\[\s*(?:'([^'\]]*)'|"([^"\]]*)"|([\w-]+))\s*\]""")
_OP_RE = re.compile(r"<=|>=|==|<|>|!=|=<|=>|=|≤|≥")
_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+\.?\d*)?")


class ExpectationError(SpecError):
    """An expectation string does not follow the grammar (the message says what does)."""


@dataclass(frozen=True)
class Expectation:
    """One parsed expectation: ``metric[key]... op bound``, or the baseline check."""

    text: str
    metric: str = ""
    keys: tuple[str, ...] = ()
    op: str = ""
    bound: float | None = None
    #: ``@ 95%``: judge the rate's confidence bound, not only its point estimate
    confidence: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.metric == BASELINE

    @property
    def method(self) -> str:
        """The registered explanation method whose audit measures this."""
        m = method_of_prefix(self.metric)
        return m.name if m is not None else DEFAULT_METHOD

    @property
    def subject(self) -> str:
        """``metric['key']`` as written canonically (for reports)."""
        return self.metric + "".join(f"[{k!r}]" for k in self.keys)

    def lookup(self, metrics: Mapping[str, Any]) -> Any:
        """The measured value; a SpecError lists the valid keys when one is unknown."""
        if self.metric not in metrics:
            raise ExpectationError(f"{self.text!r}: this audit has no metric {self.metric!r} "
                                   f"(it has: {', '.join(sorted(metrics))})")
        m = method_of_prefix(self.metric) or get_method(DEFAULT_METHOD)
        keys = list(self.keys)
        value: Any = m.lookup(self.metric, self.keys, metrics)
        where = self.metric
        for k in keys:
            if not isinstance(value, Mapping) or k not in value:
                valid = ", ".join(map(str, value)) if isinstance(value, Mapping) else "none"
                raise ExpectationError(f"{self.text!r}: {where} has no key {k!r}; valid keys: "
                                       f"{valid}")
            value = value[k]
            where += f"[{k!r}]"
        return value

    def judge(self, metrics: Mapping[str, Any], result: Any) -> Verdict:
        """pass / warn / fail: without ``@`` the point estimate decides (pass or fail); with
        ``@ level`` a rate passes only when its exact interval over units lies within the
        bound (the upper end for ``<``/``<=``, the lower for ``>``/``>=``), and *warns* when
        the point estimate holds but the bound does not."""
        ok, measured = self.evaluate(metrics)
        if not ok:
            return Verdict("failed", measured)
        if self.confidence is None:
            return Verdict("passed", measured)
        m = method_of_prefix(self.metric) or get_method(DEFAULT_METHOD)
        interval = result.interval(self.metric[len(m.prefix):], self.keys, self.confidence)
        if interval is None:
            return Verdict("warned", measured)
        edge = interval.hi if self.op in ("<", "<=") else interval.lo
        assert self.bound is not None
        holds = OPS[self.op](edge, self.bound)
        return Verdict("passed" if holds else "warned", measured, interval)

    def evaluate(self, metrics: Mapping[str, Any]) -> tuple[bool, float | None]:
        """(holds?, measured value); an undefined measurement (None) never holds."""
        value = self.lookup(metrics)
        if value is None:
            return False, None
        if isinstance(value, Mapping) or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            raise ExpectationError(f"{self.text!r}: {self.subject} is not a number "
                                   f"({type(value).__name__}); index it with [key]")
        assert self.bound is not None
        return bool(OPS[self.op](float(value), self.bound)), float(value)


def _number(text: str) -> float | None:
    t = text.strip()
    if not _NUM_RE.fullmatch(t):
        return None
    try:
        v = float(Fraction(t.replace(" ", ""))) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) else None


def parse_expectation(text: Any) -> Expectation:
    """Parse ``"flip_rate <= 0.05"``, ``"detector_share['corrupted']['object'] >= 0.2"``,
    ``"per_category_flip_rate['object'] < 4/255"`` or ``"unchanged_since_baseline"``."""
    if not isinstance(text, str) or not text.strip():
        raise ExpectationError(f"expected a string like 'flip_rate <= 0.05' or "
                               f"'{BASELINE}', got {text!r}")
    s = text.strip()
    if s == BASELINE:
        return Expectation(s, BASELINE)
    m = _NAME_RE.match(s)
    if not m:
        raise ExpectationError(f"{s!r}: expected a metric name first, as in 'flip_rate <= 0.05'")
    metric, pos = m.group(), m.end()
    method = method_of_metric(metric)
    if method is None:
        raise ExpectationError(f"{s!r}: {_unknown_metric(metric)}")
    shape = method.metrics[metric[len(method.prefix):]]
    keys: list[str] = []
    while True:
        while pos < len(s) and s[pos].isspace():
            pos += 1
        km = _KEY_RE.match(s, pos)
        if not km:
            break
        keys.append(next(g for g in km.groups() if g is not None))
        pos = km.end()
    if pos < len(s) and s[pos] == "[":
        raise ExpectationError(f"{s!r}: bad subscript at {s[pos:]!r}; write ['key'] or [key]")
    if len(keys) not in shape.arity:
        raise ExpectationError(f"{s!r}: {metric} takes {shape.help} — "
                               f"{' or '.join(str(a) for a in shape.arity)} subscript(s), "
                               f"got {len(keys)}")
    bad = method.check_keys(metric[len(method.prefix):], tuple(keys))
    if bad:
        raise ExpectationError(f"{s!r}: {bad}")
    rest = s[pos:].lstrip()
    om = _OP_RE.match(rest)
    if not om:
        raise ExpectationError(f"{s!r}: expected a comparison after {metric}"
                               f"{''.join(f'[{k!r}]' for k in keys)}; allowed operators: "
                               f"{_OPS_TEXT}")
    op = om.group()
    if op not in OPS:
        raise ExpectationError(f"{s!r}: unknown operator {op!r}; allowed operators: {_OPS_TEXT}")
    num, at, level_text = rest[om.end():].partition("@")
    bound = _number(num)
    if bound is None:
        raise ExpectationError(f"{s!r}: expected a number after {op!r}, got {num.strip()!r} "
                               "(decimals, 1e-3 or fractions like 4/255)")
    confidence = None
    if at:
        confidence = _level(level_text)
        if confidence is None:
            raise ExpectationError(f"{s!r}: expected a confidence level after '@', like 95% or "
                                   f"0.95, got {level_text.strip()!r}")
        if op == "==":
            raise ExpectationError(f"{s!r}: '@ level' needs a one-sided bound (<, <=, >, >=)")
        if not shape.rate:
            rates = [n for n, sh in method.metrics.items() if sh.rate]
            raise ExpectationError(f"{s!r}: {metric} is not a share of units, so it has no "
                                   f"binomial interval; '@ level' applies to "
                                   f"{', '.join(method.prefix + r for r in rates)}")
    return Expectation(s, metric, tuple(keys), op, bound, confidence)


def _level(text: str) -> float | None:
    """``95%``, ``99.9 %`` or ``0.95`` → 0.95; anything else (or outside (0, 1)) → None."""
    t = text.strip()
    pct = t.endswith("%")
    v = _number(t[:-1] if pct else t)
    if v is None:
        return None
    v = v / 100 if pct else v
    return v if 0 < v < 1 else None


@dataclass(frozen=True)
class Verdict:
    """An expectation's outcome: ``passed``, ``warned`` (the point estimate holds, its
    confidence bound does not) or ``failed``, with the measured value and the interval."""

    status: str
    measured: float | None
    interval: Any = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _unknown_metric(metric: str) -> str:
    """Why ``metric`` is not a metric, with the closest name and the valid ones."""
    methods = list(all_methods())
    names = [n for m in methods for n in m.metric_names()]
    close = difflib.get_close_matches(metric, [*names, BASELINE], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    owner = method_of_prefix(metric)
    if owner is not None and owner.prefix:
        return (f"unknown metric {metric!r}{hint}; {owner.title} metrics: "
                f"{', '.join(owner.metric_names())}")
    if owner is not None:
        others = "; ".join(f"{m.title} metrics: {m.prefix}<{'|'.join(m.metrics)}>"
                           for m in methods if m.prefix)
        return (f"unknown metric {metric!r}{hint}; known metrics: "
                f"{', '.join(owner.metric_names())}; {others}; or the word {BASELINE!r}")
    prefixes = " or ".join(f"{m.prefix}<name> ({m.title})" for m in methods if m.prefix)
    return (f"unknown metric namespace {metric.split('.')[0]!r}{hint}; metrics are plain names "
            f"({get_method(DEFAULT_METHOD).title}) or {prefixes}")


def in_method(text: str, method: str) -> str:
    """An expectation written where bare names mean ``method``'s metrics (a MILAN result,
    ``method = "milan"``): ``"manipulated_rate <= 0.1"`` → ``"milan.manipulated_rate <= 0.1"``.
    Texts that already carry the prefix, and the baseline word, are returned as they are."""
    m = get_method(method)
    t = text.strip()
    if not m.prefix or t.startswith(m.prefix) or t == BASELINE:
        return t
    name = _NAME_RE.match(t)
    if name and name.group() not in m.metrics:
        raise ExpectationError(
            f"{t!r}: metric names here are {m.title} metrics, and {name.group()!r} is not one; "
            f"{m.title} metrics: {', '.join(m.metrics)} ({get_method(DEFAULT_METHOD).title} "
            f"metrics go in a property without method = \"{m.name}\", or on a "
            "nemaudit.audit(...) result)")
    return m.prefix + t


def metrics_of(result: Any) -> dict[str, Any]:
    """A result's metrics under the names expectations read (with its method's prefix)."""
    prefix = get_method(result.method).prefix
    return {prefix + k: v for k, v in result.metrics.items()}
