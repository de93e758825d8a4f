"""The MILAN part of a property's HTML section: descriptions clean vs corrupted, with exemplars.

Reads the record's ``milan`` payload (:func:`nemaudit.audit.milan.pictures.milan_payload`): the
audit's metrics, one row per unit (both descriptions, their F1-BERT, manipulated or not) and,
for the most changed units, their exemplar images with masks on each side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemaudit.report.html_parts import card, card_row, esc, img
from nemaudit.report.json_report import fmt_num, fmt_pct


def _cards(m: Mapping[str, Any]) -> str:
    thr = m.get("threshold")
    return card_row([
        card("manipulated (MILAN)", fmt_pct(m.get("manipulated_rate")),
             f"{m.get('changed', '?')} of {m.get('units', '?')} units at F1-BERT ≤ "
             f"{fmt_num(thr, 3)}"),
        card("F1-BERT clean vs corrupted", f"{fmt_num(m.get('f1_mean'), 3)} ± "
                                           f"{fmt_num(m.get('f1_std'), 3)}",
             f"mean ± std over units; min {fmt_num(m.get('f1_min'), 3)}"),
        card("description changed", fmt_pct(m.get("description_change_rate")),
             "units whose words differ at all"),
        card("exemplars kept", fmt_pct(m.get("exemplar_overlap_mean")),
             "mean share of a unit's clean exemplars still among its top k"),
    ])


def _table(rows: Sequence[Mapping[str, Any]], table_id: str, interactive: bool) -> str:
    rows = sorted(rows, key=lambda r: (not r.get("manipulated"), float(r.get("f1", 1.0))))
    if not interactive:
        rows = [r for r in rows if r.get("clean") != r.get("corrupted")]
    head = "".join(
        f'<th class="{"sortable " if interactive else ""}{"num" if kind == "num" else ""}"'
        f' data-type="{kind}">{esc(label)}</th>'
        for label, kind in (("unit", "num"), ("clean description", "str"),
                            ("corrupted description", "str"), ("F1-BERT", "num"),
                            ("exemplars kept", "num"), ("manipulated", "num")))
    body = []
    for r in rows:
        k = len(r.get("clean_exemplars") or []) or 1
        kept = int(r.get("exemplars_kept", 0))
        body.append(
            f'<tr class="{"changed" if r.get("manipulated") else ""}">'
            f'<td class="num" data-v="{int(r["unit"])}">{int(r["unit"])}</td>'
            f'<td class="lab">{esc(r.get("clean"))}</td>'
            f'<td class="lab">{esc(r.get("corrupted"))}</td>'
            f'<td class="num" data-v="{float(r.get("f1", 0))!r}">{float(r.get("f1", 0)):.3f}</td>'
            f'<td class="num" data-v="{kept / k!r}">{kept}/{k}</td>'
            f'<td data-v="{int(bool(r.get("manipulated")))}">'
            f'{"manipulated" if r.get("manipulated") else ""}</td></tr>')
    controls = ""
    if interactive:
        any_changed = any(r.get("manipulated") for r in rows)
        controls = (f'<div class="controls" data-for="{esc(table_id)}" hidden>'
                    '<input type="search" placeholder="filter: unit, words…" '
                    'aria-label="filter units">'
                    f'<label><input type="checkbox"{" checked" if any_changed else ""}> '
                    'manipulated only</label><span class="muted count-shown"></span></div>')
    return (f'{controls}<div class="scroll"><table class="diff" id="{esc(table_id)}">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _strip(images: Sequence[Mapping[str, Any]], side: str) -> str:
    figs = "".join(
        f'<figure>{img(im.get("png"), f"{side} exemplar with mask")}'
        f'<figcaption>#{int(im.get("index", -1))} · max {fmt_num(im.get("max"), 3)}'
        f'</figcaption></figure>' for im in images)
    return f'<div class="strip"><div class="side">{side}</div>{figs}</div>'


def _exemplars(milan: Mapping[str, Any]) -> str:
    rows = {r["unit"]: r for r in milan.get("units") or []}
    blocks = []
    for ex in milan.get("exemplars") or []:
        r = rows.get(ex.get("unit"), {})
        verdict = "manipulated" if r.get("manipulated") else "kept"
        title = (f'unit {int(ex["unit"])} · F1-BERT {fmt_num(r.get("f1"), 3)} '
                 f'<span class="tag {"miss" if r.get("manipulated") else "hit"}">{verdict}'
                 '</span>')
        words = (f'<div class="words"><div><span class="muted">clean:</span> '
                 f'“{esc(r.get("clean"))}”</div><div><span class="muted">corrupted:</span> '
                 f'“{esc(r.get("corrupted"))}”</div></div>')
        strips = _strip(ex.get("clean") or [], "clean")
        if ex.get("corrupted"):
            strips += _strip(ex["corrupted"], "corrupted")
        elif ex.get("note"):
            strips += f'<p class="muted">{esc(ex["note"])}</p>'
        blocks.append(f'<div class="ex milan"><div class="title">{title}</div>{words}'
                      f'{strips}</div>')
    if not blocks:
        return ""
    legend = ('<p class="muted">The unit\'s top exemplars as MILAN sees them, clean and '
              'corrupted; <span class="legend-sw"></span> outlines the unit\'s top-1% mask.</p>')
    return legend + f'<div class="exemplars milan">{"".join(blocks)}</div>'


def milan_section(milan: Mapping[str, Any], index: int, interactive: bool = True) -> str:
    """The MILAN audit of one property: metric cards, the per-unit table, exemplars."""
    m = milan.get("metrics") or {}
    rows = milan.get("units") or []
    parts = [f'<h3>MILAN descriptions, clean vs corrupted <span class="muted">'
             f'({m.get("changed", 0)} of {len(rows)} units manipulated)</span></h3>',
             _cards(m)]
    if rows:
        parts.append(_table(rows, f"milan-{index}", interactive))
    ex = _exemplars(milan)
    if ex:
        parts.append(f"<h3>MILAN exemplars</h3>{ex}")
    return "".join(parts)
