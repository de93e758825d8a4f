"""Session reports as ONE self-contained HTML file, and the same content for pytest-html.

Everything is inline (CSS, JS, images as ``data:`` URIs, no web fonts) so the file can be
attached to a CI run, mailed, or opened offline years later and still look the same. All
text from records is escaped: test names, concept labels and messages are user data.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from nemaudit.report.json_report import (
    OUTCOMES,
    SCHEMA,
    atomic_write_text,
    corruption_text,
    environment,
    fmt_eps,
    fmt_num,
    fmt_pct,
    parse_spec,
    summarize,
)
from nemaudit.report.plots import (
    X_LABELS,
    refine_sweep,
    session_sweeps,
    sweep_is_degenerate,
    sweep_png,
)

Record = Mapping[str, Any]


def _e(v: Any) -> str:
    return escape("" if v is None else str(v), quote=True)


@cache
def _asset(name: str) -> str:
    # one joinpath argument at a time: Traversable.joinpath(*parts) needs Python 3.11
    return resources.files("nemaudit.report").joinpath("templates").joinpath(name).read_text(
        encoding="utf-8")


def _wbr(v: Any) -> str:
    """Escaped text with break opportunities after ``_``, ``/``, a ``.`` that is no decimal
    point, and before ``[``: names like ``flip_rate_detectors`` or
    ``test_noise_sweep_layer4[0.01]`` wrap in narrow table columns at their joints instead
    of mid-word or not at all."""
    return re.sub(r"([_/]|\.(?!\d))", r"\1<wbr>", _e(v)).replace("[", "<wbr>[")


def _badge(outcome: str | None) -> str:
    o = outcome if outcome in OUTCOMES else "error"
    return f'<span class="badge {o}">{_e(outcome or "error")}</span>'


def _img(b64: str | None, alt: str, cls: str = "") -> str:
    if not b64:
        return ""
    return (f'<img class="{_e(cls)}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{_e(b64)}">')


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="kv">{items}</dl>'


def _scalar(v: Any) -> str:
    """Escaped text for a session/env value; containers as compact JSON."""
    if isinstance(v, (dict, list, tuple)):
        return f"<code>{_e(json.dumps(v, default=str))}</code>"
    return _e(fmt_num(v))


# --------------------------------------------------------------------------- header


def _env_line(env: Mapping[str, Any]) -> str:
    git = env.get("git") or {}
    parts = [f"Python {env.get('python', '?')}"]
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    parts.append(f"CUDA: {env.get('cuda_device') or 'yes'}" if env.get("cuda") else "CPU (no CUDA)")
    parts.append(f"nemaudit {env.get('nemaudit', '?')}")
    if git.get("commit"):
        parts.append(f"git {git['commit'][:10]}{' (dirty)' if git.get('dirty') else ''}")
    if env.get("hostname"):
        parts.append(f"host {env['hostname']}")
    if env.get("timestamp"):
        parts.append(str(env["timestamp"]))
    return " · ".join(_e(p) for p in parts)


def _header(records: Sequence[Record], session: Mapping[str, Any], env: Mapping[str, Any]) -> str:
    s = summarize(records)
    decided = s["passed"] + s["failed"] + s["error"]
    if s["ok"]:
        verdict = (f'<span class="verdict ok">PASSED</span>all {s["passed"]} '
                   f'propert{"y" if s["passed"] == 1 else "ies"} held')
    else:
        bad = s["failed"] + s["error"]
        verdict = (f'<span class="verdict bad">FAILED</span>{bad} of {decided} '
                   f'propert{"y" if decided == 1 else "ies"} did not hold')
    counts = "".join(f'<div class="count {o}"><b>{s[o]}</b>{o}</div>' for o in OUTCOMES)
    counts += f'<div class="count"><b>{s["duration"]:.1f} s</b>total time</div>'
    title = session.get("title") or "nemaudit report"
    env_items = [(k, _scalar(v)) for k, v in env.items() if k not in ("git", "argv")]
    git = env.get("git") or {}
    env_items += [(f"git {k}", _scalar(v)) for k, v in git.items()]
    if env.get("argv"):
        env_items.append(("argv", f"<code>{_e(' '.join(map(str, env['argv'])))}</code>"))
    sess_items = [(k, _scalar(v)) for k, v in session.items() if k != "title"]
    details = f"<div>{_kv(env_items)}</div>"
    if sess_items:
        details = f"<div><h3>session</h3>{_kv(sess_items)}</div><div><h3>environment</h3>" \
                  f"{_kv(env_items)}</div>"
    return (f'<header class="top"><h1>{_e(title)}</h1>'
            f'<div class="muted">{_env_line(env)}</div>'
            f'<p style="font-size:16px;margin:14px 0 0">{verdict}</p>'
            f'<div class="counts">{counts}</div>'
            f'<details class="env"><summary>environment and session details</summary>'
            f'<div class="env-grid">{details}</div></details></header>')


def _measured(r: Record) -> tuple[str, str]:
    return fmt_num(r.get("measured")), fmt_num(r.get("bound"))


def _measured_cell(r: Record) -> str:
    m = _measured(r)[0]
    flip = ((r.get("audit") or {}).get("metrics") or {}).get("flip_rate")
    if r.get("measured") is None and not r.get("expectation") and flip is not None:
        # a passing Python assert leaves no expectation behind: show what the audit measured
        return (f'<span class="muted" title="flip rate over all units (no expectation was '
                f'recorded)">flip {_e(fmt_pct(flip))}</span>')
    return _e(m)


def summary_table(records: Sequence[Record]) -> str:
    """One row per property: outcome, expectation, measured vs bound, layer, corruption, time
    (and model, when the properties do not all audit the same one)."""
    models = {r.get("model") for r in records}
    show_model = len(models) > 1
    rows = []
    for i, r in enumerate(records, 1):
        b = _measured(r)[1]
        o = r.get("outcome") if r.get("outcome") in OUTCOMES else "error"
        model = f'<td>{_e(r.get("model") or "—")}</td>' if show_model else ""
        rows.append(
            f'<tr class="{o}"><td>{_badge(r.get("outcome"))}</td>'
            f'<td class="name"><a href="#p{i}">{_wbr(r.get("name") or r.get("nodeid"))}</a></td>'
            f'<td><code>{_wbr(r.get("expectation") or "—")}</code></td>'
            f'<td class="num">{_measured_cell(r)}</td><td class="num">{_e(b)}</td>'
            f'<td>{_e(r.get("layer") or "—")}</td>'
            f'<td class="mono">{_e(corruption_text(r.get("corruption")))}</td>{model}'
            f'<td class="num">{float(r.get("duration") or 0):.2f} s</td></tr>')
    caption = ""
    if not show_model and models != {None}:
        caption = f'<caption>model {_e(next(iter(models)))}</caption>'
    return ('<div class="scroll-x"><table class="summary">'
            f'{caption}<thead><tr><th>outcome</th><th>property</th>'
            '<th>expectation</th><th class="num">measured</th><th class="num">bound</th>'
            f'<th>layer</th><th>corruption</th>{"<th>model</th>" if show_model else ""}'
            '<th class="num">time</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')


# --------------------------------------------------------------------------- one property


def _card(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div><div class="sub">{_e(sub)}</div></div>')


def _cards(m: Mapping[str, Any]) -> str:
    cards = [_card("flip rate (all units)", fmt_pct(m.get("flip_rate")),
                   f"{m.get('changed', '?')} of {m.get('units', '?')} units changed concept"),
             _card("flip rate (detectors)", fmt_pct(m.get("flip_rate_detectors")),
                   f"over {m.get('detectors', '?')} clean detectors")]
    if "targeted_success_rate" in m:
        cards.append(_card("targeted success", fmt_pct(m.get("targeted_success_rate")),
                           "units whose new concept is the attack's target"))
    cards.append(_card("mean source-IoU drop", fmt_num(m.get("mean_source_iou_drop"), 3),
                       "IoU of the clean concept, clean − corrupted"))
    if m.get("accuracy_clean") is not None or m.get("accuracy_corrupted") is not None:
        cards.append(_card("accuracy", f"{fmt_pct(m.get('accuracy_clean'))} → "
                                       f"{fmt_pct(m.get('accuracy_corrupted'))}",
                           "classifier on the probe, clean → corrupted"))
    share = m.get("detector_share") or {}
    if share:
        cards.append(_card("detector share", f"{fmt_pct((share.get('clean') or {}).get('all'))} → "
                                             f"{fmt_pct((share.get('corrupted') or {}).get('all'))}",
                           "units with IoU ≥ threshold, clean → corrupted"))
    return f'<div class="cards">{"".join(cards)}</div>'


def xie_table(m: Mapping[str, Any]) -> str:
    """Detector share per category (C/T/S/M/P/O/All), clean vs corrupted, plus the change
    and the flip rate of units by their clean category."""
    from nemaudit.report.plots import XIE_COLUMNS, xie_rows

    rows = xie_rows(m)
    per_cat = m.get("per_category_flip_rate") or {}
    head = "".join(f'<th class="num" title="{_e(cat)}">{_e(c)}</th>'
                   for c, cat in XIE_COLUMNS.items())
    body = []
    for side in ("clean", "corrupted"):
        body.append(f"<tr><th>{side}</th>" + "".join(
            f'<td class="num">{_e(fmt_pct(rows[side][c]))}</td>' for c in XIE_COLUMNS) + "</tr>")
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
                    f'<td class="num">{_e(fmt_pct(v))}</td>' for v in flips) + "</tr>")
    return (f'<table class="compact xie"><thead><tr><th>detector share</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _plot(fn, *args, alt: str) -> str:
    try:
        return _img(fn(*args), alt, "plot")
    except ImportError:
        return '<p class="muted">plots need matplotlib: pip install "nemaudit[report]"</p>'


def _label(label: Any, cat: Any) -> str:
    if not label:
        return '<span class="muted">—</span>'
    return f'{_e(label)} <span class="cat">{_e(cat or "")}</span>'


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
               f'{_e(t)}{" ✓" if r.get("target_hit") else ""}</span>') if t else "—"
        cells.append(f'<td data-v="{_e(t or "")}">{tag}</td>')
    cells.append(f"<td>{_e(det)}</td>")
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
        tip = f' title="{_e(tip)}"' if tip else ""
        head += f'<th class="{cls}"{typ}{tip}>{_e(label)}</th>'
    body = "".join(_diff_row(r, targets) for r in rows)
    n_changed = sum(1 for r in rows if r.get("changed"))
    controls = ""
    if interactive:
        controls = (f'<div class="controls" data-for="{_e(table_id)}" hidden>'
                    f'<input type="search" placeholder="filter: unit, concept, category…" '
                    f'aria-label="filter units">'
                    f'<label><input type="checkbox"{" checked" if n_changed else ""}> '
                    f'changed only</label><span class="muted count-shown"></span></div>')
    note = f'<p class="muted">… {more} more unit(s) not shown</p>' if more else ""
    return (f'{controls}<div class="scroll"><table class="diff" id="{_e(table_id)}">'
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
        title = (f'unit {int(ex["unit"])}: {_e(r.get("clean_label") or "—")} '
                 f'({fmt_num(r.get("clean_iou"), 3)}) {"→" if r.get("changed") else "="} '
                 f'{_e(r.get("corrupted_label") or "—")} ({fmt_num(r.get("corrupted_iou"), 3)})')
        pairs = []
        for im in images:
            pairs.append(
                f'<div class="pair"><figure>{_img(im.get("clean"), "clean image with mask")}'
                f'<figcaption>clean</figcaption></figure>'
                f'<figure>{_img(im.get("corrupted"), "corrupted image with mask")}'
                f'<figcaption>corrupted</figcaption></figure>'
                f'<div class="meta">image #{int(im.get("index", -1))}<br>'
                f'max {fmt_num(im.get("clean_max"), 3)} → '
                f'{fmt_num(im.get("corrupted_max"), 3)}<br>'
                f'L∞ {_e(_linf(im.get("linf")))}</div></div>')
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


def _sweep_table(sweep: Mapping[str, Any], links: bool = False) -> str:
    """The numbers behind a sweep plot. ``links``: the overview's form, where series names
    already say kind and layer, and each point links to the test items it came from."""
    pts = list(sweep.get("points") or [])
    xk = str(sweep.get("x", "x"))
    xcol = "" if sweep_is_degenerate(sweep) else f'<th class="num">{_e(X_LABELS.get(xk, xk))}</th>'
    rows = []
    for p in pts:
        c = p.get("corruption")
        text = corruption_text(parse_spec(c)) if isinstance(c, str) and ":" in c else (
            corruption_text(c) if isinstance(c, Mapping) else c or "")
        cells = [f'<td>{_e(p.get("label") or p.get("series") or "")}</td>',
                 "" if links else f'<td>{_e(p.get("layer") or "")}</td>',
                 f'<td class="num">{_e(_fmt_x(xk, p.get("x")))}</td>' if xcol else "",
                 f'<td class="num">{_e(fmt_pct(p.get("flip_rate")))}</td>',
                 f'<td class="num">{_e(fmt_pct(p.get("flip_rate_detectors")))}</td>',
                 "" if links else f'<td class="mono">{_e(text)}</td>']
        if links:
            refs = p.get("records") or ([[p["record"], p.get("name")]] if p.get("record") else [])
            cells.append("<td>" + "<br>".join(f'<a href="#p{int(i)}">{_e(n)}</a>'
                                              for i, n in refs) + "</td>")
        rows.append(f'<tr>{"".join(cells)}</tr>')
    head = (f'<th>series</th>{"" if links else "<th>layer</th>"}{xcol}'
            '<th class="num">flip rate</th><th class="num">detectors</th>'
            f'{"<th>test items</th>" if links else "<th>corruption</th>"}')
    return (f'<details><summary>data ({len(pts)} point{"" if len(pts) == 1 else "s"})</summary>'
            f'<div class="scroll-x"><table class="compact"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></details>')


def _fmt_x(xkind: str, x: Any) -> str:
    return fmt_eps(x) if xkind in ("eps", "linf") else fmt_num(x)


def sweep_heading(sweep: Mapping[str, Any]) -> str:
    """"flip rate against noise σ", or "flip rate by corruption" when x does not vary."""
    if sweep_is_degenerate(sweep):
        return "flip rate by corruption"
    xk = str(sweep.get("x", "x"))
    return f"flip rate against {X_LABELS.get(xk, xk)}"


def _sweep_html(sweep: Mapping[str, Any], name: str) -> str:
    """One test's own sweep (several audits in one item), on an axis that varies if any."""
    if not sweep.get("points"):
        return ""
    sweep = refine_sweep(sweep)
    heading = sweep_heading(sweep)
    plot = _plot(sweep_png, sweep, None, alt=f"{heading} for {name}")
    same = sweep.get("same") or {}
    note = ""
    if same:
        said = {"layer": "{}", "linf": "L∞ budget ε = {}", "std": "noise σ = {}",
                "fraction": "{} of the probe poisoned"}
        vals = {k: fmt_pct(v, 0) if k == "fraction" else _fmt_x(k, v) for k, v in same.items()}
        note = ('<p class="muted">every audit here: ' + " · ".join(
            _e(said.get(k, k + " {}").format(v)) for k, v in vals.items()) + "</p>")
    return f'<h3>{_e(heading)}</h3>{note}<div class="chart">{plot}</div>{_sweep_table(sweep)}'


def overview_html(records: Sequence[Record]) -> str:
    """Flip rate across the session's test items: against the layer, Gaussian σ, the L∞
    budget and the poisoned fraction, wherever records differ in just that (see
    :func:`nemaudit.report.plots.session_sweeps`). Empty when no axis has two values."""
    sweeps = session_sweeps(records)
    if not sweeps:
        return ""
    blocks = []
    for sw in sweeps:
        heading = sweep_heading(sw)
        where = f'{sw["model"]} on {sw["probe"]}'
        if sw.get("method") not in (None, "netdissect"):
            where += f' ({sw["method"]})'
        n = len({i for p in sw["points"] for i, _ in p.get("records") or [[p.get("record"), 0]]})
        plot = _plot(sweep_png, sw, None, alt=f"{heading}, {where}")
        blocks.append(f'<div class="ov"><div class="ov-title"><b>{_e(heading)}</b> '
                      f'<span class="muted">{_e(where)} · {n} test items</span></div>'
                      f'{plot}{_sweep_table(sw, links=True)}</div>')
    return ('<h3>overview <span class="muted">flip rate across test items; solid: all units, '
            'dashed: clean detectors</span></h3>'
            f'<div class="overview">{"".join(blocks)}</div>')


def property_fragment(record: Record, index: int = 1, interactive: bool = True,
                      diff_limit: int | None = None) -> str:
    """One property's section: verdict, metrics, detector shares, sweep plot, per-unit diff
    and exemplars. ``interactive=False`` drops what needs the page's script."""
    outcome = record.get("outcome") if record.get("outcome") in OUTCOMES else "error"
    name = record.get("name") or record.get("nodeid") or f"property {index}"
    m, b = _measured(record)
    expect = ""
    if record.get("expectation"):
        expect = (f'<div class="expect {outcome}"><code>{_e(record["expectation"])}</code> — '
                  f'measured <span class="measured">{_e(m)}</span> vs bound {_e(b)}</div>')
    msg = f'<pre class="message">{_e(record["message"])}</pre>' if record.get("message") else ""
    head = (f'<div class="head"><h2>{_badge(record.get("outcome"))} {_e(name)}</h2>'
            f'<div class="nodeid mono">{_e(record.get("nodeid") or "")}</div>{expect}{msg}</div>')
    facts = [("model", _e(record.get("model") or "—")), ("probe", _e(record.get("probe") or "—")),
             ("layer", _e(record.get("layer") or "—")),
             ("corruption", f'<code>{_e(corruption_text(record.get("corruption")))}</code>'),
             ("time", _e(f'{float(record.get("duration") or 0):.2f} s'))]
    audit = record.get("audit") or None
    parts = []
    if audit:
        meta = audit.get("meta") or {}
        for k in ("mode", "images", "poisoned_images", "attacked_units",
                  "poisoned_share_per_unit_mean", "objective_mean_before",
                  "objective_mean_after"):
            if meta.get(k) is not None:
                facts.append((k.replace("_", " "), _e(fmt_num(meta[k]))))
    parts.append(_kv(facts).replace('class="kv"', 'class="kv facts"', 1))
    if audit:
        mt = audit.get("metrics") or {}
        parts.append(_cards(mt))
        from nemaudit.report.plots import detector_share_png

        chart = _plot(detector_share_png, mt, None, alt=f"detector share per category, {name}")
        parts.append('<h3>interpretable units per category (Xie table)</h3>'
                     f'<div class="row2"><div>{xie_table(mt)}</div><div class="chart">{chart}</div></div>')
    if record.get("sweep"):
        parts.append(_sweep_html(record["sweep"], str(name)))
    if audit and audit.get("units"):
        units = audit["units"]
        n_changed = sum(1 for r in units if r.get("changed"))
        parts.append(f'<h3>per-unit diff <span class="muted">({n_changed} of {len(units)} '
                     f'units changed concept)</span></h3>')
        parts.append(diff_table(units, f"diff-{index}", interactive, diff_limit))
    if audit:
        ex = exemplars_html(audit)
        if ex:
            parts.append(f"<h3>exemplars</h3>{ex}")
    if record.get("milan"):
        from nemaudit.report.milan_html import milan_section

        parts.append(milan_section(record["milan"], index, interactive))
    return (f'<section class="prop {outcome}" id="p{index}">{head}'
            f'<div class="body">{"".join(parts)}</div></section>')


# --------------------------------------------------------------------------- documents


def _overview(records: Sequence[Record]) -> str:
    try:
        return overview_html(records)
    except Exception as e:  # noqa: BLE001 - the overview is a courtesy, never lose the report
        return f'<p class="muted">overview failed: {_e(type(e).__name__)}: {_e(e)}</p>'


def render_html(records: Iterable[Record], session: Mapping[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    records = list(records)
    session = dict(session or {})
    env = session.pop("environment", None) or environment()
    title = session.get("title") or "nemaudit report"
    s = summarize(records)
    sections = "".join(property_fragment(r, i) for i, r in enumerate(records, 1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)} — {"passed" if s["ok"] else "FAILED"}</title>'
        '<link rel="icon" href="data:,">'
        f'<style>body{{margin:0;background:#fff}}\n{_asset("report.css")}</style></head>'
        f'<body class="nemaudit"><div class="page">{_header(records, session, env)}'
        f'<h3>properties</h3>{summary_table(records)}{_overview(records)}{sections}'
        '<p class="muted" style="margin-top:40px;font-size:12px">generated by nemaudit · '
        f'schema {_e(SCHEMA)}</p></div>'
        f'<script>\n{_asset("report.js")}\n</script></body></html>\n')


def write_html(path: str | os.PathLike, records: Iterable[Record],
               session: Mapping[str, Any] | None = None) -> Path:
    """Write the self-contained HTML report (atomically); returns the path."""
    return atomic_write_text(path, render_html(records, session))


def pytest_html_extras(record: Record, diff_limit: int = 50) -> list:
    """pytest-html ``extras`` carrying this property's section (static: pytest-html inserts
    extras without running their scripts). ``[]`` when pytest-html is not installed."""
    try:
        from pytest_html import extras
    except ImportError:
        return []
    # a stable, page-unique index: many of these fragments share one pytest-html page
    index = zlib.crc32(str(record.get("nodeid") or record.get("name")).encode()) or 1
    body = property_fragment(record, index, interactive=False, diff_limit=diff_limit)
    content = f'<div class="nemaudit"><style>{_asset("report.css")}</style>{body}</div>'
    return [extras.html(content)]
