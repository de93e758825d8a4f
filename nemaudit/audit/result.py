"""What every method's audit result shares: metrics that remember where they came from.

:class:`MethodResult` is the base of :class:`~nemaudit.audit.netdissect.result.AuditResult`
(Network Dissection) and :class:`~nemaudit.audit.milan.run.MilanAuditResult`: per-unit rows,
metrics read as attributes that return :class:`Metric` floats (so a failing ``assert`` can
show the per-unit diff), the changed units, a readable diff and the JSON form with its
``method``. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: ``hook(metric, op, bound, holds)`` for every comparison of a Metric with a number: the
#: pytest plugin records them, so a plain ``assert`` that passes still reports its value
COMPARISON_HOOKS: list[Callable[[Metric, str, float, bool], None]] = []


def _comparison(op: str, method: str) -> Callable[[Metric, object], bool]:
    def compare(self: Metric, other: object) -> bool:
        holds = getattr(float, method)(self, other)
        if holds is not NotImplemented and COMPARISON_HOOKS and isinstance(other, (int, float)) \
                and not isinstance(other, bool):
            for hook in COMPARISON_HOOKS:
                hook(self, op, float(other), bool(holds))
        return holds
    compare.__name__ = method
    return compare


class Metric(float):
    """A float that remembers the audit it came from, so a failing ``assert`` can show the
    per-unit diff (see the pytest plugin's ``pytest_assertrepr_compare``), and that tells
    :data:`COMPARISON_HOOKS` about every comparison (``0.05 >= m`` too: Python asks the
    float subclass first)."""

    result: Any
    name: str

    def __new__(cls, value: float, name: str = "", result: Any = None) -> Metric:
        obj = super().__new__(cls, value)
        obj.name, obj.result = name, result
        return obj

    __le__ = _comparison("<=", "__le__")
    __lt__ = _comparison("<", "__lt__")
    __ge__ = _comparison(">=", "__ge__")
    __gt__ = _comparison(">", "__gt__")


@dataclass
class MethodResult:
    """Clean vs corrupted explanations of one layer's units, per unit and as metrics."""

    #: the registered method (:data:`nemaudit.audit.methods.METHODS`) and the JSON schema
    method: ClassVar[str] = "?"
    schema: ClassVar[str] = "nemaudit.audit/1"
    #: the row flag that says a unit's explanation changed
    changed_flag: ClassVar[str] = "changed"
    #: how the diff names a changed unit ("changed unit(s)", "manipulated unit(s)")
    changed_noun: ClassVar[str] = "changed unit(s)"

    layer: str
    corruption: dict
    rows: list[dict]
    metrics: dict
    meta: dict = field(default_factory=dict)
    clean: Any = field(default=None, repr=False)
    corrupted: Any = field(default=None, repr=False)
    #: live objects for pictures (model, probe, corruption, config, device); not serialised
    context: dict | None = field(default=None, repr=False)
    #: every draw of a repeated audit (``repeats=R``; this result is the first), else None
    draws: list | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Metric:
        metrics = self.__dict__.get("metrics", {})
        if name in metrics and isinstance(metrics[name], (int, float)):
            return Metric(metrics[name], name, self)
        raise AttributeError(f"{type(self).__name__} has no attribute or metric {name!r}; "
                             f"metrics: {sorted(metrics)}")

    @property
    def changed_units(self) -> list[dict]:
        """Rows of the units whose explanation changed."""
        return [r for r in self.rows if r[self.changed_flag]]

    def diff_order(self, row: dict) -> Any:
        """Sort key of the diff: most telling change first."""
        return 0

    def diff_line(self, row: dict) -> str:
        """One unit of the diff."""
        raise NotImplementedError

    def diff_lines(self, limit: int = 15, only_changed: bool = True) -> list[str]:
        """A readable per-unit diff, capped at ``limit`` lines plus a count of the rest."""
        rows = sorted(self.changed_units if only_changed else self.rows, key=self.diff_order)
        out = [self.diff_line(r) for r in rows[:limit]]
        if len(rows) > limit:
            out.append(f"… {len(rows) - limit} more {self.changed_noun}")
        return out

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        """Per row, (is it a hit, is it in the pool) of a rate metric (its bare name and
        keys); None for metrics that are no share of units."""
        return None

    def counts(self, metric: str, keys: tuple[str, ...] = ()) -> tuple[int, int] | None:
        """(k, n) behind a rate metric: k hits among the n units of its pool."""
        flags = self.indicators(metric, tuple(keys))
        if flags is None:
            return None
        return sum(h for h, p in flags if p), sum(p for _, p in flags)

    def interval(self, metric: str, keys: tuple[str, ...] = (), level: float = 0.95) -> Any:
        """The interval of a rate metric (:class:`~nemaudit.audit.confidence.Interval`), or
        None when it has none: exact binomial over units for one draw; over units *and*
        draws when the audit was repeated (:attr:`draws`). A method may widen it (Network
        Dissection's ``bootstrap=B`` adds the probe images)."""
        from nemaudit.audit.confidence import binomial_interval, repeated_interval

        keys = tuple(keys)
        if self.draws:
            per_draw = [d.indicators(metric, keys) for d in self.draws]
            if any(f is None for f in per_draw):
                return None
            return repeated_interval(per_draw, level)  # type: ignore[arg-type]
        c = self.counts(metric, keys)
        return None if c is None or c[1] == 0 else binomial_interval(c[0], c[1], level)

    def to_json(self) -> dict:
        return {"schema": self.schema, "method": self.method, "layer": self.layer,
                "corruption": self.corruption, "metrics": self.metrics, "meta": self.meta,
                "units": self.rows}
