"""The explanation-method registry: what a method is to the rest of nemaudit.

Modelled on the corruption ``KINDS`` registry (:mod:`nemaudit.corrupt.spec`): a name maps to
the ``module:Class`` of a :class:`Method`, imported on first use. A Method *declares* (no
torch needed, so spec files validate with audits off) its name, the prefix its metrics take
in expectations (``milan.``), its metric schema, the extra settings it accepts, and the
record key its report payload lives under; and it *does*, importing torch only then: audit a
request clean vs corrupted, build the reports' payload (pictures), render its HTML section.

Adding a method: a folder under ``explain/``, a package under ``audit/`` (declaration,
runner and result), one line in :data:`METHODS`, optionally an HTML section module. The
harness, the records, the expectation grammar and the report skeleton find it here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from nemaudit.audit.fields import Field
from nemaudit.errors import SpecError

#: method name → "module:Class" (the declaration modules are torch-free)
METHODS: dict[str, str] = {
    "netdissect": "nemaudit.audit.netdissect:NetDissect",
    "milan": "nemaudit.audit.milan:Milan",
    "radius": "nemaudit.audit.radius:Radius",
    "saliency": "nemaudit.audit.saliency:Saliency",
    "fooling": "nemaudit.audit.saliency:Fooling",
}
#: the method whose metrics are written without a prefix
DEFAULT_METHOD = "netdissect"


@dataclass(frozen=True)
class MetricShape:
    """How a metric is indexed in expectations: ``arity`` = the allowed numbers of ``[key]``
    subscripts; ``help`` says it in words (``"number, or [category]"``)."""

    help: str = "number"
    arity: tuple[int, ...] = (0,)
    #: a share of units (k of n): it has an exact binomial interval, so ``@ 95%`` applies
    rate: bool = False


class Method:
    """Base of every explanation method's declaration (see the module docstring)."""

    name: ClassVar[str]
    #: prefix of the method's metrics in expectations ("" for the default method)
    prefix: ClassVar[str] = ""
    title: ClassVar[str]
    #: the fixture's verb for it (``nemaudit.audit(...)``, ``nemaudit.describe(...)``)
    verb: ClassVar[str] = ""
    #: the record key its payload is stored under in reports (JSON schema nemaudit.report/2)
    record_key: ClassVar[str]
    #: metric → shape; every metric :meth:`MethodResult.metrics` may hold
    metrics: ClassVar[dict[str, MetricShape]]
    #: settings only this method reads (spec-file fields, fixture keywords, CLI flags)
    fields: ClassVar[dict[str, Field]] = {}
    #: whether ``repeats=R`` (several draws of the corruption) means something for it
    repeatable: ClassVar[bool] = True
    #: whether it compares clean vs corrupted *probes* (False: the model is what changes)
    needs_corruption: ClassVar[bool] = True
    #: the metric a report shows when a test recorded no expectation (a passing ``assert``)
    headline: ClassVar[str | None] = None

    # -- declared facts ---------------------------------------------------------------
    def metric_names(self) -> list[str]:
        """The metrics as expectations write them (with the prefix)."""
        return [self.prefix + m for m in self.metrics]

    def check_keys(self, metric: str, keys: tuple[str, ...]) -> str | None:
        """A message when ``metric[keys]`` is malformed whatever the probe (grammar time)."""
        return None

    def lookup(self, metric: str, keys: tuple[str, ...], metrics: Mapping[str, Any]) -> Any:
        """The value ``metric`` (as written, with the prefix) starts from before its ``keys``
        index it; a method whose metric is a number bare and a table with keys overrides
        this."""
        return metrics[metric]

    def check_expectation(self, metric: str, keys: tuple[str, ...], probe: Any) -> str | None:
        """A message when ``metric[keys]`` cannot exist for ``probe`` (e.g. an unknown
        category), checked before the audit runs; None when fine."""
        return None

    # -- work (imports torch) -----------------------------------------------------------
    def preload(self, request: Any, resolve: Any) -> None:
        """Load what this method's audit of ``request`` will need besides the model, probe
        and corruption (``resolve(kind, spec, **settings)``), so a bad spec fails at setup."""

    def run(self, request: Any, resolved: Any) -> Any:
        """Audit ``request`` (an :class:`~nemaudit.audit.request.AuditRequest`, clean vs
        corrupted) on the resolved model, probe and layer
        (:class:`~nemaudit.audit.request.Resolved`); returns a
        :class:`~nemaudit.audit.result.MethodResult`."""
        raise NotImplementedError

    def payload(self, result: Any, *, max_units: int, k: int) -> dict:
        """The reports' JSON payload of ``result`` with pictures of its most changed units."""
        return result.to_json()

    #: a short word for the headline metric in summaries (``flip 6.2%``)
    headline_label: ClassVar[str] = ""

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """(name, value) pairs for the property's facts line in the HTML report."""
        return []

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        """This method's HTML section of a property (``""``: nothing beyond the skeleton);
        ``interactive=False`` leaves out what needs the page's script, ``diff_limit`` caps
        per-unit tables."""
        return ""

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        """One line for failure messages: ``3/32 units changed concept (…)``."""
        return f"{metrics.get('changed', 0)}/{metrics.get('units', 0)} units changed"

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_LOADED: dict[str, Method] = {}


def get_method(name: str) -> Method:
    """The registered method ``name``; a SpecError lists the valid names."""
    if name not in _LOADED:
        if name not in METHODS:
            raise SpecError(f"unknown explanation method {name!r}; valid methods: "
                            f"{', '.join(METHODS)}")
        module, cls = METHODS[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def all_methods() -> Iterator[Method]:
    """Every registered method, in registry order."""
    return (get_method(n) for n in METHODS)


def method_of_metric(metric: str) -> Method | None:
    """The method whose metric ``metric`` (as written in an expectation) is, else None."""
    default = None
    for m in all_methods():
        if m.prefix and metric.startswith(m.prefix):
            return m if metric[len(m.prefix):] in m.metrics else None
        if not m.prefix:
            default = m
    if "." not in metric and default is not None and metric in default.metrics:
        return default
    return None


def method_of_prefix(metric: str) -> Method | None:
    """The method whose prefix ``metric`` carries (whether or not the name exists)."""
    for m in all_methods():
        if m.prefix and metric.startswith(m.prefix):
            return m
    return get_method(DEFAULT_METHOD) if "." not in metric else None


def record_payloads(record: Mapping[str, Any]) -> list[tuple[Method, Mapping[str, Any]]]:
    """The method payloads a report record carries, in registry order."""
    out = []
    for m in all_methods():
        payload = record.get(m.record_key)
        if isinstance(payload, Mapping):
            out.append((m, payload))
    return out
