"""AuditResult: the per-unit diff between a clean and a corrupted dissection, and metrics.

Every metric is computed here from the two dissections (and, for accuracy, the per-image
predictions), so each number a report prints can be traced to this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nemaudit.audit.netdissect.flags import RATE_FLAGS, unit_flags
from nemaudit.audit.result import MethodResult
from nemaudit.explain.netdissect import Dissection

SCHEMA = "nemaudit.audit/1"
#: the Xie table's columns: Broden categories by initial, plus All
XIE = {"C": "color", "T": "texture", "S": "scene", "M": "material", "P": "part", "O": "object"}


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@dataclass
class AuditResult(MethodResult):
    """Clean vs corrupted Network Dissection of one layer: per unit, both concepts and IoUs."""

    method = "netdissect"
    schema = SCHEMA
    clean: Dissection | None = field(default=None, repr=False)
    corrupted: Dissection | None = field(default=None, repr=False)
    #: the paired bootstrap over probe images (``bootstrap=B``), else None
    probe_bootstrap: Any = field(default=None, repr=False)

    def diff_order(self, row: dict) -> float:
        return -row["clean_iou"]

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        """Per row (hit, in the rate's pool), as :func:`metrics_from_rows` divides them."""
        rows = self.rows

        def share(hit: Callable[[dict], Any], among: Callable[[dict], Any] = lambda r: True
                  ) -> list[tuple[bool, bool]]:
            return [(bool(hit(r)), bool(among(r))) for r in rows]

        changed = lambda r: r["changed"]  # noqa: E731
        if not keys and metric in RATE_FLAGS:
            hit, pool = RATE_FLAGS[metric]
            return share(lambda r: r[hit], (lambda r: r[pool]) if pool else (lambda r: True))
        if metric == "per_category_flip_rate" and len(keys) == 1:
            return share(changed, lambda r: r["clean_category"] == keys[0])
        side, cat = None, "all"
        if metric in ("detector_share_clean", "detector_share_corrupted"):
            side, cat = metric.rsplit("_", 1)[1], (keys[0] if keys else "all")
        elif metric in ("detector_share", "xie_table") and len(keys) == 2:
            side, cat = keys
            if metric == "xie_table":
                cat = "all" if cat == "All" else XIE.get(cat, cat)
        if side not in ("clean", "corrupted"):
            return None
        return share(lambda r: r[f"{side}_detector"] and (cat == "all"
                                                          or r[f"{side}_category"] == cat))

    def interval(self, metric: str, keys: tuple[str, ...] = (), level: float = 0.95) -> Any:
        """With a probe bootstrap (``bootstrap=B``; every draw's, when repeated), the
        percentile interval of the keyless rates of :data:`RATE_FLAGS` over units and probe
        images (and draws); otherwise, and for the other rates, the base class's."""
        keys = tuple(keys)
        boots = [getattr(d, "probe_bootstrap", None) for d in (self.draws or [self])]
        if not keys and metric in RATE_FLAGS and all(b is not None for b in boots):
            from nemaudit.audit.netdissect.bootstrap import probe_interval

            counts = [d.counts(metric) or (0, 0) for d in (self.draws or [self])]
            iv = probe_interval(boots, metric, level, sum(c[0] for c in counts),  # type: ignore[arg-type]
                                sum(c[1] for c in counts))
            if iv is not None:
                return iv
        return super().interval(metric, keys, level)

    def diff_line(self, r: dict) -> str:
        """``unit 12: car (0.081) → wheel (0.052)``."""
        what = "runner-up" if self.corruption.get("targeted") is False else "target"
        tgt = f" [{what} {r['target']}{' reached' if r['target_hit'] else ''}]" \
            if r.get("target") else ""
        return (f"unit {r['unit']:>4}: {r['clean_label'] or '—'} ({r['clean_iou']:.3f}) → "
                f"{r['corrupted_label'] or '—'} ({r['corrupted_iou']:.3f}){tgt}")


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
    flags = {k: v.tolist() for k, v in unit_flags(c_lab, c_iou, k_lab, k_iou, thr).items()}
    name = lambda i: clean.concepts[i].name if i > 0 else None  # noqa: E731
    cat = lambda i: clean.concepts[i].category if i > 0 else None  # noqa: E731
    rows = []
    for u in units:
        cl, kl = int(c_lab[u]), int(k_lab[u])
        row = {
            "unit": u,
            "clean_label": name(cl), "clean_category": cat(cl), "clean_iou": float(c_iou[u]),
            "clean_detector": flags["clean_detector"][u],
            "corrupted_label": name(kl), "corrupted_category": cat(kl),
            "corrupted_iou": float(k_iou[u]),
            "corrupted_detector": flags["corrupted_detector"][u],
            "changed": flags["changed"][u],
            "source_iou_after": float(k_full[u, cl]) if cl > 0 else None,
            "clean_threshold": float(clean.thresholds[u]),
            "corrupted_threshold": float(corrupted.thresholds[u]),
        }
        row["source_iou_drop"] = (row["clean_iou"] - row["source_iou_after"]) if cl > 0 else None  # type: ignore[operator]
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
