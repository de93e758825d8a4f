"""The MILAN part of a property's HTML section: descriptions clean vs corrupted, with exemplars.

Reads the record's ``milan`` payload (:func:`nemaudit.audit.milan.pictures.milan_payload`): the
audit's metrics, one row per unit (both descriptions, their F1-BERT, manipulated or not) and,
for the most changed units, their exemplar images with masks on each side. The markup is in
``templates/milan.html.j2``; this module computes what it shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemaudit.report.html_parts import render
from nemaudit.report.json_report import fmt_num, fmt_pct


def _cards(m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, sub) of the metric cards."""
    thr = m.get("threshold")
    return [
        ("manipulated (MILAN)", fmt_pct(m.get("manipulated_rate")),
         f"{m.get('changed', '?')} of {m.get('units', '?')} units at F1-BERT ≤ "
         f"{fmt_num(thr, 3)}"),
        ("F1-BERT clean vs corrupted", f"{fmt_num(m.get('f1_mean'), 3)} ± "
                                       f"{fmt_num(m.get('f1_std'), 3)}",
         f"mean ± std over units; min {fmt_num(m.get('f1_min'), 3)}"),
        ("description changed", fmt_pct(m.get("description_change_rate")),
         "units whose words differ at all"),
        ("exemplars kept", fmt_pct(m.get("exemplar_overlap_mean")),
         "mean share of a unit's clean exemplars still among its top k"),
    ]


def _table(rows: Sequence[Mapping[str, Any]], interactive: bool) -> list[dict[str, Any]]:
    """The per-unit rows, manipulated and lowest F1-BERT first (static: changed words only)."""
    rows = sorted(rows, key=lambda r: (not r.get("manipulated"), float(r.get("f1", 1.0))))
    if not interactive:
        rows = [r for r in rows if r.get("clean") != r.get("corrupted")]
    out = []
    for r in rows:
        k = len(r.get("clean_exemplars") or []) or 1
        kept = int(r.get("exemplars_kept", 0))
        f1 = float(r.get("f1", 0))
        out.append({"unit": int(r["unit"]), "clean": r.get("clean"),
                    "corrupted": r.get("corrupted"), "f1": (repr(f1), f"{f1:.3f}"),
                    "kept": (repr(kept / k), f"{kept}/{k}"),
                    "manipulated": bool(r.get("manipulated"))})
    return out


def _strip(images: Sequence[Mapping[str, Any]], side: str) -> dict[str, Any]:
    return {"side": side, "images": [{"png": im.get("png"), "index": int(im.get("index", -1)),
                                      "max": fmt_num(im.get("max"), 3)} for im in images]}


def _exemplars(milan: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = {r["unit"]: r for r in milan.get("units") or []}
    blocks = []
    for ex in milan.get("exemplars") or []:
        r = rows.get(ex.get("unit"), {})
        strips = [_strip(ex.get("clean") or [], "clean")]
        if ex.get("corrupted"):
            strips.append(_strip(ex["corrupted"], "corrupted"))
        blocks.append({"unit": int(ex["unit"]), "f1": fmt_num(r.get("f1"), 3),
                       "manipulated": bool(r.get("manipulated")), "clean": r.get("clean"),
                       "corrupted": r.get("corrupted"), "strips": strips,
                       "note": None if ex.get("corrupted") else ex.get("note")})
    return blocks


def milan_section(milan: Mapping[str, Any], index: int, interactive: bool = True) -> str:
    """The MILAN audit of one property: metric cards, the per-unit table, exemplars."""
    m = milan.get("metrics") or {}
    rows = milan.get("units") or []
    table = _table(rows, interactive) if rows else []
    return render("milan.html.j2", changed=m.get("changed", 0), units=len(rows),
                  cards=_cards(m), has_table=bool(rows), table_id=f"milan-{index}",
                  interactive=interactive, rows=table,
                  any_changed=any(r["manipulated"] for r in table),
                  blocks=_exemplars(milan))
