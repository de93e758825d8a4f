"""The Network Dissection part of a property's HTML section (the ``audit`` payload of a
report record, :func:`nemaudit.audit.netdissect.pictures.report_payload`): metric cards, the
Xie table of detector shares with its chart, the per-unit diff and the exemplars.

Registered as :meth:`nemaudit.audit.netdissect.NetDissect.section`; the report skeleton
(:mod:`nemaudit.report.html`) never calls it by name. The markup is in
``templates/netdissect*.html.j2``; this module computes what they show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from nemaudit.report.html_parts import picture, render
from nemaudit.report.json_report import fmt_num, fmt_pct, target_wording
from nemaudit.report.plots import XIE_COLUMNS, detector_share_png, xie_rows


def _cards(m: Mapping[str, Any], corruption: Mapping[str, Any] | None = None
           ) -> list[tuple[str, str, str]]:
    """(label, value, sub) of the metric cards."""
    cards = [("flip rate (all units)", fmt_pct(m.get("flip_rate")),
              f"{m.get('changed', '?')} of {m.get('units', '?')} units changed concept"),
             ("flip rate (detectors)", fmt_pct(m.get("flip_rate_detectors")),
              f"over {m.get('detectors', '?')} clean detectors")]
    if "targeted_success_rate" in m:
        label, sub = target_wording(corruption)
        cards.append((label, fmt_pct(m.get("targeted_success_rate")), sub))
    cards.append(("mean source-IoU drop", fmt_num(m.get("mean_source_iou_drop"), 3),
                  "IoU of the clean concept, clean − corrupted"))
    if m.get("accuracy_clean") is not None or m.get("accuracy_corrupted") is not None:
        cards.append(("accuracy", f"{fmt_pct(m.get('accuracy_clean'))} → "
                                  f"{fmt_pct(m.get('accuracy_corrupted'))}",
                      "classifier on the probe, clean → corrupted"))
    share = m.get("detector_share") or {}
    if share:
        cards.append(("detector share", f"{fmt_pct((share.get('clean') or {}).get('all'))} → "
                                        f"{fmt_pct((share.get('corrupted') or {}).get('all'))}",
                      "units with IoU ≥ threshold, clean → corrupted"))
    return cards


def xie_table(m: Mapping[str, Any]) -> str:
    """Detector share per category (C/T/S/M/P/O/All), clean vs corrupted, plus the change
    and the flip rate of units by their clean category."""
    rows = xie_rows(m)
    per_cat = m.get("per_category_flip_rate") or {}
    delta: list[tuple[str, str]] = []
    for c in XIE_COLUMNS:
        a, b = rows["clean"][c], rows["corrupted"][c]
        if a is None or b is None:
            delta.append(("—", ""))
        else:
            d = 100 * (b - a)
            delta.append((f"{d:+.1f} pp", "moved" if abs(d) >= 0.05 else "muted"))
    flips = [per_cat.get(cat) if cat != "all" else m.get("flip_rate")
             for cat in XIE_COLUMNS.values()]
    return render("netdissect_xie.html.j2", columns=list(XIE_COLUMNS.items()),
                  sides=[(side, [fmt_pct(rows[side][c]) for c in XIE_COLUMNS])
                         for side in ("clean", "corrupted")],
                  delta=delta, flips=[fmt_pct(v) for v in flips])


def _num(v: Any, digits: int = 4) -> tuple[str, str] | None:
    """A number cell: (sort value, text); None for a missing value."""
    return None if v is None else (repr(float(v)), f"{float(v):.{digits}f}")


def _diff_row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"cls": " ".join(c for c, on in (("changed", r.get("changed")),
                                            ("nodet", not r.get("clean_detector"))) if on),
            "unit": int(r["unit"]), "changed": bool(r.get("changed")),
            "clean": (r.get("clean_label"), r.get("clean_category") or ""),
            "corrupted": (r.get("corrupted_label"), r.get("corrupted_category") or ""),
            "nums": [_num(r.get(k)) for k in ("clean_iou", "corrupted_iou", "source_iou_after",
                                              "source_iou_drop")],
            "target": r.get("target"), "target_hit": bool(r.get("target_hit")),
            "detector": f"{'yes' if r.get('clean_detector') else 'no'} → "
                        f"{'yes' if r.get('corrupted_detector') else 'no'}"}


def diff_table(rows: Sequence[Mapping[str, Any]], table_id: str, interactive: bool = True,
               limit: int | None = None) -> str:
    """The per-unit diff. Interactive: every unit, sortable headers and a filter box plus a
    "changed only" switch (driven by report.js). Static (pytest-html, where scripts do not
    run): the changed units only, strongest first, capped at ``limit``."""
    targets = any(r.get("target") for r in rows)
    if not interactive:
        rows = sorted((r for r in rows if r.get("changed")), key=lambda r: -r["clean_iou"])
    else:
        rows = sorted(rows, key=lambda r: (not r.get("changed"), -r["clean_iou"]))
    more = 0
    if limit is not None and len(rows) > limit:
        rows, more = rows[:limit], len(rows) - limit
    cols: list[tuple[str, str | None, str]] = [
        ("unit", "num", ""), ("clean concept", "str", ""),
        ("IoU", "num", "IoU of the clean concept on the clean probe"), ("", None, ""),
        ("corrupted concept", "str", ""),
        ("IoU", "num", "IoU of the corrupted concept on the corrupted probe"),
        ("source after", "num", "IoU of the clean concept on the corrupted probe"),
        ("drop", "num", "clean IoU − source after")]
    if targets:
        cols.append(("target", "str", "the attack's target concept (✓: reached)"))
    cols += [("detector", "str", "IoU ≥ threshold, clean → corrupted"),
             ("changed", "num", "")]
    head = [{"label": label, "kind": kind, "tip": tip,
             "cls": " ".join(c for c, on in (("sortable", interactive and kind),
                                             ("num", kind == "num")) if on)}
            for label, kind, tip in cols]
    body = [_diff_row(r) for r in rows]
    return render("netdissect_diff.html.j2", table_id=table_id, interactive=interactive,
                  head=head, rows=body, targets=targets, more=more,
                  any_changed=any(r["changed"] for r in body))


def _linf(v: Any) -> str:
    if v is None:
        return "?"
    k = 255 * float(v)
    if k == 0:
        return "0 (not poisoned)"
    return f"{round(k)}/255" if abs(k - round(k)) < 0.05 else f"{k:.1f}/255"


def exemplars_html(audit: Mapping[str, Any], changed_only: bool = True) -> str:
    """Top-activating images per unit with the unit's mask, clean beside corrupted."""
    rows = {r["unit"]: r for r in audit.get("units") or []}
    blocks: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for ex in audit.get("exemplars") or []:
        # a lean JSON report (nemaudit.report/2) keeps the numbers but not the pictures
        images = [im for im in ex.get("images") or [] if im.get("clean") or im.get("corrupted")]
        if not images:
            continue
        r = rows.get(ex["unit"], {})
        block = {"unit": int(ex["unit"]), "clean_label": r.get("clean_label") or "—",
                 "clean_iou": fmt_num(r.get("clean_iou"), 3),
                 "arrow": "→" if r.get("changed") else "=",
                 "corrupted_label": r.get("corrupted_label") or "—",
                 "corrupted_iou": fmt_num(r.get("corrupted_iou"), 3),
                 "threshold_clean": fmt_num(ex.get("threshold_clean"), 3),
                 "threshold_corrupted": fmt_num(ex.get("threshold_corrupted"), 3),
                 "pairs": [{"clean": im.get("clean"), "corrupted": im.get("corrupted"),
                            "index": int(im.get("index", -1)),
                            "clean_max": fmt_num(im.get("clean_max"), 3),
                            "corrupted_max": fmt_num(im.get("corrupted_max"), 3),
                            "linf": _linf(im.get("linf"))} for im in images]}
        (blocks if r.get("changed") else others).append(block)
    if not blocks and not changed_only and not others:
        return ""
    return render("netdissect_exemplars.html.j2", blocks=blocks, others=others,
                  changed_only=changed_only)


def netdissect_section(payload: Mapping[str, Any], index: int, interactive: bool = True,
                       diff_limit: int | None = None) -> str:
    """One Network Dissection audit of a property: metric cards, the Xie table and its chart,
    the per-unit diff (``diff-<index>``; static and capped at ``diff_limit`` when not
    ``interactive``) and the exemplars."""
    mt = payload.get("metrics") or {}
    where = payload.get("layer")
    units = payload.get("units") or []
    diff = diff_table(units, f"diff-{index}", interactive, diff_limit) if units else ""
    # xie, diff and exemplars: Markup, rendered by their own (autoescaping) templates
    return render("netdissect.html.j2", cards=_cards(mt, payload.get("corruption")), xie=Markup(xie_table(mt)),
                  png=picture(detector_share_png, mt, None),
                  alt="detector share per category" + (f", {where}" if where else ""),
                  units=len(units), changed=sum(1 for r in units if r.get("changed")),
                  diff=Markup(diff), exemplars=Markup(exemplars_html(payload)))
