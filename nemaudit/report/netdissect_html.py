"""The Network Dissection part of a property's HTML section (the ``audit`` payload of a
report record, :func:`nemaudit.audit.netdissect.pictures.report_payload`): metric cards, the
Xie table of detector shares with its chart, the per-unit diff and the exemplars.

Registered as :meth:`nemaudit.audit.netdissect.NetDissect.section`; the report skeleton
(:mod:`nemaudit.report.html`) never calls it by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemaudit.report.html_parts import card, card_row, esc, img, plot
from nemaudit.report.json_report import fmt_num, fmt_pct
from nemaudit.report.plots import XIE_COLUMNS, detector_share_png, xie_rows


def _cards(m: Mapping[str, Any]) -> str:
    cards = [card("flip rate (all units)", fmt_pct(m.get("flip_rate")),
                  f"{m.get('changed', '?')} of {m.get('units', '?')} units changed concept"),
             card("flip rate (detectors)", fmt_pct(m.get("flip_rate_detectors")),
                  f"over {m.get('detectors', '?')} clean detectors")]
    if "targeted_success_rate" in m:
        cards.append(card("targeted success", fmt_pct(m.get("targeted_success_rate")),
                          "units whose new concept is the attack's target"))
    cards.append(card("mean source-IoU drop", fmt_num(m.get("mean_source_iou_drop"), 3),
                      "IoU of the clean concept, clean − corrupted"))
    if m.get("accuracy_clean") is not None or m.get("accuracy_corrupted") is not None:
        cards.append(card("accuracy", f"{fmt_pct(m.get('accuracy_clean'))} → "
                                      f"{fmt_pct(m.get('accuracy_corrupted'))}",
                          "classifier on the probe, clean → corrupted"))
    share = m.get("detector_share") or {}
    if share:
        cards.append(card("detector share", f"{fmt_pct((share.get('clean') or {}).get('all'))} → "
                                            f"{fmt_pct((share.get('corrupted') or {}).get('all'))}",
                          "units with IoU ≥ threshold, clean → corrupted"))
    return card_row(cards)


def xie_table(m: Mapping[str, Any]) -> str:
    """Detector share per category (C/T/S/M/P/O/All), clean vs corrupted, plus the change
    and the flip rate of units by their clean category."""
    rows = xie_rows(m)
    per_cat = m.get("per_category_flip_rate") or {}
    head = "".join(f'<th class="num" title="{esc(cat)}">{esc(c)}</th>'
                   for c, cat in XIE_COLUMNS.items())
    body = []
    for side in ("clean", "corrupted"):
        body.append(f"<tr><th>{side}</th>" + "".join(
            f'<td class="num">{esc(fmt_pct(rows[side][c]))}</td>' for c in XIE_COLUMNS) + "</tr>")
    delta = []
    for c in XIE_COLUMNS:
        a, b = rows["clean"][c], rows["corrupted"][c]
        if a is None or b is None:
            delta.append('<td class="num">—</td>')
        else:
            d = 100 * (b - a)
            cls = "moved" if abs(d) >= 0.05 else "muted"
            delta.append(f'<td class="num {cls}">{d:+.1f} pp</td>')
    body.append("<tr><th>change</th>" + "".join(delta) + "</tr>")
    flips = [per_cat.get(cat) if cat != "all" else m.get("flip_rate")
             for cat in XIE_COLUMNS.values()]
    body.append('<tr><th title="share of the units labelled with this category on the clean '
                'side whose concept changed">flip rate</th>' + "".join(
                    f'<td class="num">{esc(fmt_pct(v))}</td>' for v in flips) + "</tr>")
    return (f'<table class="compact xie"><thead><tr><th>detector share</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _label(label: Any, cat: Any) -> str:
    if not label:
        return '<span class="muted">—</span>'
    return f'{esc(label)} <span class="cat">{esc(cat or "")}</span>'


def _diff_row(r: Mapping[str, Any], targets: bool) -> str:
    cls = " ".join(c for c, on in (("changed", r.get("changed")),
                                   ("nodet", not r.get("clean_detector"))) if on)

    def num(v: Any, digits: int = 4) -> str:
        if v is None:
            return '<td class="num" data-v="">—</td>'
        return f'<td class="num" data-v="{float(v)!r}">{float(v):.{digits}f}</td>'

    det = f"{'yes' if r.get('clean_detector') else 'no'} → " \
          f"{'yes' if r.get('corrupted_detector') else 'no'}"
    cells = [f'<td class="num" data-v="{int(r["unit"])}">{int(r["unit"])}</td>',
             f'<td class="lab">{_label(r.get("clean_label"), r.get("clean_category"))}</td>',
             num(r.get("clean_iou")),
             f'<td class="arrow">{"→" if r.get("changed") else "="}</td>',
             f'<td class="lab">{_label(r.get("corrupted_label"), r.get("corrupted_category"))}</td>',
             num(r.get("corrupted_iou")), num(r.get("source_iou_after")),
             num(r.get("source_iou_drop"))]
    if targets:
        t = r.get("target")
        tag = (f'<span class="tag {"hit" if r.get("target_hit") else "miss"}">'
               f'{esc(t)}{" ✓" if r.get("target_hit") else ""}</span>') if t else "—"
        cells.append(f'<td data-v="{esc(t or "")}">{tag}</td>')
    cells.append(f"<td>{esc(det)}</td>")
    cells.append(f'<td data-v="{int(bool(r.get("changed")))}">'
                 f'{"changed" if r.get("changed") else ""}</td>')
    return f'<tr class="{cls}">{"".join(cells)}</tr>'


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
    cols = [("unit", "num", ""), ("clean concept", "str", ""),
            ("IoU", "num", "IoU of the clean concept on the clean probe"), ("", None, ""),
            ("corrupted concept", "str", ""),
            ("IoU", "num", "IoU of the corrupted concept on the corrupted probe"),
            ("source after", "num", "IoU of the clean concept on the corrupted probe"),
            ("drop", "num", "clean IoU − source after")]
    if targets:
        cols.append(("target", "str", "the attack's target concept (✓: reached)"))
    cols += [("detector", "str", "IoU ≥ threshold, clean → corrupted"),
             ("changed", "num", "")]
    head = ""
    for label, kind, tip in cols:
        cls = " ".join(c for c, on in (("sortable", interactive and kind), ("num", kind == "num"))
                       if on)
        typ = f' data-type="{kind}"' if kind else ""
        tip = f' title="{esc(tip)}"' if tip else ""
        head += f'<th class="{cls}"{typ}{tip}>{esc(label)}</th>'
    body = "".join(_diff_row(r, targets) for r in rows)
    n_changed = sum(1 for r in rows if r.get("changed"))
    controls = ""
    if interactive:
        controls = (f'<div class="controls" data-for="{esc(table_id)}" hidden>'
                    f'<input type="search" placeholder="filter: unit, concept, category…" '
                    f'aria-label="filter units">'
                    f'<label><input type="checkbox"{" checked" if n_changed else ""}> '
                    f'changed only</label><span class="muted count-shown"></span></div>')
    note = f'<p class="muted">… {more} more unit(s) not shown</p>' if more else ""
    return (f'{controls}<div class="scroll"><table class="diff" id="{esc(table_id)}">'
            f'<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}')


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
    blocks, others = [], []
    for ex in audit.get("exemplars") or []:
        # a lean JSON report (nemaudit.report/2) keeps the numbers but not the pictures
        images = [im for im in ex.get("images") or [] if im.get("clean") or im.get("corrupted")]
        if not images:
            continue
        r = rows.get(ex["unit"], {})
        title = (f'unit {int(ex["unit"])}: {esc(r.get("clean_label") or "—")} '
                 f'({fmt_num(r.get("clean_iou"), 3)}) {"→" if r.get("changed") else "="} '
                 f'{esc(r.get("corrupted_label") or "—")} ({fmt_num(r.get("corrupted_iou"), 3)})')
        pairs = []
        for im in images:
            pairs.append(
                f'<div class="pair"><figure>{img(im.get("clean"), "clean image with mask")}'
                f'<figcaption>clean</figcaption></figure>'
                f'<figure>{img(im.get("corrupted"), "corrupted image with mask")}'
                f'<figcaption>corrupted</figcaption></figure>'
                f'<div class="meta">image #{int(im.get("index", -1))}<br>'
                f'max {fmt_num(im.get("clean_max"), 3)} → '
                f'{fmt_num(im.get("corrupted_max"), 3)}<br>'
                f'L∞ {esc(_linf(im.get("linf")))}</div></div>')
        thr = (f'<div class="muted" style="font-size:12px">threshold '
               f'{fmt_num(ex.get("threshold_clean"), 3)} → '
               f'{fmt_num(ex.get("threshold_corrupted"), 3)}</div>')
        block = (f'<div class="ex"><div class="title">{title}</div>{thr}'
                 f'<div class="pairs">{"".join(pairs)}</div></div>')
        (blocks if r.get("changed") else others).append(block)
    out = ""
    if blocks:
        out += f'<div class="exemplars">{"".join(blocks)}</div>'
    elif changed_only:
        out += ('<p class="muted">no exemplars of changed units (a unit that never fires '
                'above its clean threshold has none).</p>')
    if others:
        out += (f'<details><summary>{len(others)} unchanged unit(s)</summary>'
                f'<div class="exemplars">{"".join(others)}</div></details>')
    if not out:
        return ""
    legend = ('<p class="muted">Each unit\'s top-activating clean probe images; '
              '<span class="legend-sw"></span> outlines the unit\'s mask (activation above the '
              'side\'s threshold), the rest is dimmed.</p>')
    return legend + out


def netdissect_section(payload: Mapping[str, Any], index: int, interactive: bool = True,
                       diff_limit: int | None = None) -> str:
    """One Network Dissection audit of a property: metric cards, the Xie table and its chart,
    the per-unit diff (``diff-<index>``; static and capped at ``diff_limit`` when not
    ``interactive``) and the exemplars."""
    mt = payload.get("metrics") or {}
    where = payload.get("layer")
    alt = "detector share per category" + (f", {where}" if where else "")
    chart = plot(detector_share_png, mt, None, alt=alt)
    parts = [_cards(mt),
             '<h3>interpretable units per category (Xie table)</h3>'
             f'<div class="row2"><div>{xie_table(mt)}</div><div class="chart">{chart}</div></div>']
    units = payload.get("units") or []
    if units:
        n_changed = sum(1 for r in units if r.get("changed"))
        parts.append(f'<h3>per-unit diff <span class="muted">({n_changed} of {len(units)} '
                     f'units changed concept)</span></h3>')
        parts.append(diff_table(units, f"diff-{index}", interactive, diff_limit))
    ex = exemplars_html(payload)
    if ex:
        parts.append(f"<h3>exemplars</h3>{ex}")
    return "".join(parts)
