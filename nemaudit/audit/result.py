"""AuditResult: the per-unit diff between a clean and a corrupted dissection, and metrics.

Every metric is computed here from the two dissections (and, for accuracy, the per-image
predictions), so each number a report prints can be traced to this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nemaudit.explain.netdissect import Dissection

SCHEMA = "nemaudit.audit/1"
#: the Xie table's columns: Broden categories by initial, plus All
XIE = {"C": "color", "T": "texture", "S": "scene", "M": "material", "P": "part", "O": "object"}


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


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@dataclass
class AuditResult:
    method = "netdissect"
    layer: str
    corruption: dict
    rows: list[dict]
    metrics: dict
    clean: Dissection | None = field(default=None, repr=False)
    corrupted: Dissection | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)
    #: live objects for pictures (model, probe, corruption, config, device); not serialised
    context: dict | None = field(default=None, repr=False)

    def __getattr__(self, name: str):
        metrics = self.__dict__.get("metrics", {})
        if name in metrics and isinstance(metrics[name], (int, float)):
            return Metric(metrics[name], name, self)
        raise AttributeError(f"AuditResult has no attribute or metric {name!r}; metrics: "
                             f"{sorted(metrics)}")

    @property
    def changed_units(self) -> list[dict]:
        return [r for r in self.rows if r["changed"]]

    def diff_lines(self, limit: int = 15, only_changed: bool = True) -> list[str]:
        """Readable per-unit diff: ``unit 12: car (0.081) → wheel (0.052)``."""
        rows = self.changed_units if only_changed else self.rows
        rows = sorted(rows, key=lambda r: -r["clean_iou"])
        out = []
        for r in rows[:limit]:
            tgt = f" [target {r['target']}{' hit' if r['target_hit'] else ''}]" if r.get("target") else ""
            out.append(f"unit {r['unit']:>4}: {r['clean_label'] or '—'} ({r['clean_iou']:.3f}) → "
                       f"{r['corrupted_label'] or '—'} ({r['corrupted_iou']:.3f}){tgt}")
        if len(rows) > limit:
            out.append(f"… {len(rows) - limit} more changed unit(s)")
        return out

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "layer": self.layer, "corruption": self.corruption,
                "metrics": self.metrics, "meta": self.meta, "units": self.rows}


def compare(clean: Dissection, corrupted: Dissection, units: list[int] | None = None,
            targets: dict[int, int] | None = None) -> tuple[list[dict], dict]:
    """Rows and metrics for ``units`` (default: all) of two dissections of the same layer.

    ``corrupted`` row u must be unit u's result in its own corrupted world (for per-unit
    attacks) or in the shared corrupted probe (for noise)."""
    units = list(range(clean.units)) if units is None else [int(u) for u in units]
    c_lab, c_iou = clean.best()
    k_lab, k_iou = corrupted.best()
    k_full = corrupted.iou().cpu()
    thr = clean.config.iou_threshold
    name = lambda i: clean.concepts[i].name if i > 0 else None  # noqa: E731
    cat = lambda i: clean.concepts[i].category if i > 0 else None  # noqa: E731
    rows = []
    for u in units:
        cl, kl = int(c_lab[u]), int(k_lab[u])
        row = {
            "unit": u,
            "clean_label": name(cl), "clean_category": cat(cl), "clean_iou": float(c_iou[u]),
            "clean_detector": bool(c_iou[u] >= thr and cl > 0),
            "corrupted_label": name(kl), "corrupted_category": cat(kl),
            "corrupted_iou": float(k_iou[u]),
            "corrupted_detector": bool(k_iou[u] >= thr and kl > 0),
            "changed": cl != kl,
            "source_iou_after": float(k_full[u, cl]) if cl > 0 else None,
            "clean_threshold": float(clean.thresholds[u]),
            "corrupted_threshold": float(corrupted.thresholds[u]),
        }
        row["source_iou_drop"] = (row["clean_iou"] - row["source_iou_after"]) if cl > 0 else None
        t = (targets or {}).get(u)
        row["target"] = name(t) if t else None
        row["target_hit"] = bool(t and kl == t)
        rows.append(row)
    return rows, metrics_from_rows(rows, clean.categories, targets is not None)


def metrics_from_rows(rows: list[dict], categories: list[str], targeted: bool) -> dict:
    n = len(rows)
    det = [r for r in rows if r["clean_detector"]]
    m: dict = {
        "units": n,
        "flip_rate": _rate([r["changed"] for r in rows]) or 0.0,
        "detectors": len(det),
        "flip_rate_detectors": _rate([r["changed"] for r in det]),
        "changed": sum(r["changed"] for r in rows),
    }
    if targeted:
        m["targeted_success_rate"] = _rate([r["target_hit"] for r in rows if r["target"]])
    drops = [r["source_iou_drop"] for r in rows if r["source_iou_drop"] is not None]
    m["mean_source_iou_drop"] = sum(drops) / len(drops) if drops else None
    m["per_category_flip_rate"] = {
        c: _rate([r["changed"] for r in rows if r["clean_category"] == c]) for c in categories}
    share = {}
    for side in ("clean", "corrupted"):
        per = {c: sum(r[f"{side}_detector"] and r[f"{side}_category"] == c for r in rows) / max(n, 1)
               for c in categories}
        per["all"] = sum(r[f"{side}_detector"] for r in rows) / max(n, 1)
        share[side] = per
    m["detector_share"] = share
    m["detector_share_clean"] = share["clean"]["all"]
    m["detector_share_corrupted"] = share["corrupted"]["all"]
    m["xie_table"] = {side: {k: share[side].get(v) for k, v in XIE.items() if v in share[side]}
                      | {"All": share[side]["all"]} for side in share}
    return m


def accuracy(pred: torch.Tensor, targets: torch.Tensor) -> float | None:
    ok = targets >= 0
    if not ok.any():
        return None
    return float((pred[ok] == targets[ok]).float().mean())
