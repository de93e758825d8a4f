"""Network Dissection as a registered method (:data:`nemaudit.audit.methods.METHODS`).

This module only declares (torch-free): metric schema, settings, payload and HTML section
hooks. The audit itself is :func:`nemaudit.audit.netdissect.run.audit`, its result
:class:`nemaudit.audit.netdissect.result.AuditResult`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.audit.fields import Field, FloatRange, IntRange
from nemaudit.audit.methods import Method, MetricShape

_N = MetricShape()
_R = MetricShape(rate=True)
_SIDES = ("clean", "corrupted")
#: audit meta shown among a property's facts in the HTML report
_FACTS = ("mode", "images", "poisoned_images", "attacked_units", "poisoned_share_per_unit_mean",
          "objective_mean_before", "objective_mean_after")


class NetDissect(Method):
    name = "netdissect"
    prefix = ""
    title = "Network Dissection"
    verb = "audit"
    record_key = "audit"
    headline = "flip_rate"
    headline_label = "flip"
    metrics = {
        "units": _N, "flip_rate": _R, "detectors": _N, "flip_rate_detectors": _R,
        "changed": _N, "targeted_success_rate": _R, "mean_source_iou_drop": _N,
        "accuracy_clean": _N, "accuracy_corrupted": _N,
        "detector_share_clean": MetricShape("number, or [category]", (0, 1), rate=True),
        "detector_share_corrupted": MetricShape("number, or [category]", (0, 1), rate=True),
        "per_category_flip_rate": MetricShape("[category]", (1,), rate=True),
        "detector_share": MetricShape("[clean|corrupted][category|all]", (2,), rate=True),
        "xie_table": MetricShape("[clean|corrupted][C|T|S|M|P|O|All]", (2,), rate=True),
    }
    fields = {
        "eta": Field(FloatRange(0.0, 1.0, lo_open=True, hi_open=True), "top-η quantile"),
        "iou_threshold": Field(FloatRange(0.0, 1.0), "IoU of a detector"),
        "bootstrap": Field(IntRange(0, 100_000), "resamples of the probe's images (0: off): "
                                                  "flip-rate intervals cover units and probe "
                                                  "images, from per-image tallies (no new "
                                                  "forward pass)"),
    }

    def check_keys(self, metric: str, keys: tuple[str, ...]) -> str | None:
        """Grammar-time check of the first key (the side) of two-key metrics."""
        if metric in ("detector_share", "xie_table") and keys and keys[0] not in _SIDES:
            return (f"{metric}[{keys[0]!r}]: the first key is the side, one of "
                    f"{', '.join(_SIDES)}")
        return None

    def lookup(self, metric: str, keys: tuple[str, ...], metrics: Mapping[str, Any]) -> Any:
        if keys and metric in ("detector_share_clean", "detector_share_corrupted"):
            return metrics.get("detector_share", {}).get(metric.rsplit("_", 1)[1], {})
        return metrics[metric]

    def check_expectation(self, metric: str, keys: tuple[str, ...], probe: Any) -> str | None:
        cats = list(probe.categories)
        bad = None
        if metric == "per_category_flip_rate" and keys[0] not in cats:
            bad = keys[0]
        elif metric == "detector_share" and keys[1] not in [*cats, "all"]:
            bad = keys[1]
        elif metric in ("detector_share_clean", "detector_share_corrupted") and keys \
                and keys[0] not in [*cats, "all"]:
            bad = keys[0]
        if bad is None:
            return None
        return f"unknown category {bad!r}; this probe's categories: {', '.join([*cats, 'all'])}"

    def run(self, request, resolved):
        from nemaudit.audit.netdissect.run import run_request

        return run_request(request, resolved)

    def payload(self, result, *, max_units: int, k: int) -> dict:
        from nemaudit.audit.netdissect.pictures import report_payload

        return report_payload(result, max_units=max_units, k=k)

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        meta = payload.get("meta") or {}
        return [(k.replace("_", " "), meta[k]) for k in _FACTS if meta.get(k) is not None]

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        from nemaudit.report.netdissect_html import netdissect_section

        return netdissect_section(payload, index, interactive, diff_limit)

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        det = metrics.get("detectors") or 0
        fd = metrics.get("flip_rate_detectors")
        det_changed = round(fd * det) if fd is not None else 0
        return (f"{metrics.get('changed', 0)}/{metrics.get('units', 0)} units changed concept "
                f"({det_changed}/{det} clean detectors)")
