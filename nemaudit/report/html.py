"""Session reports as ONE self-contained HTML file, and the same content for pytest-html.

Everything is inline (CSS, JS, images as ``data:`` URIs, no web fonts) so the file can be
attached to a CI run, mailed, or opened offline years later and still look the same. All
text from records is escaped: test names, concept labels and messages are user data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nemaudit.audit.methods import DEFAULT_METHOD, Method, record_payloads
from nemaudit.report.html_parts import asset, badge, esc, kv, plot, wbr
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


def _payloads(record: Record) -> list[tuple[Method, Mapping[str, Any]]]:
    """The record's method payloads that hold anything (an empty one has nothing to show)."""
    return [(m, p) for m, p in record_payloads(record) if p]


def _scalar(v: Any) -> str:
    """Escaped text for a session/env value; containers as compact JSON."""
    if isinstance(v, (dict, list, tuple)):
        return f"<code>{esc(json.dumps(v, default=str))}</code>"
    return esc(fmt_num(v))


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
    return " · ".join(esc(p) for p in parts)


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
        env_items.append(("argv", f"<code>{esc(' '.join(map(str, env['argv'])))}</code>"))
    sess_items = [(k, _scalar(v)) for k, v in session.items() if k != "title"]
    details = f"<div>{kv(env_items)}</div>"
    if sess_items:
        details = f"<div><h3>session</h3>{kv(sess_items)}</div><div><h3>environment</h3>" \
                  f"{kv(env_items)}</div>"
    return (f'<header class="top"><h1>{esc(title)}</h1>'
            f'<div class="muted">{_env_line(env)}</div>'
            f'<p style="font-size:16px;margin:14px 0 0">{verdict}</p>'
            f'<div class="counts">{counts}</div>'
            f'<details class="env"><summary>environment and session details</summary>'
            f'<div class="env-grid">{details}</div></details></header>')


def _measured(r: Record) -> tuple[str, str]:
    return fmt_num(r.get("measured")), fmt_num(r.get("bound"))


def _headline(r: Record) -> tuple[Method, Any] | None:
    """The first method payload's headline metric (method, value), when it has one."""
    for method, payload in _payloads(r):
        if method.headline:
            return method, (payload.get("metrics") or {}).get(method.headline)
    return None


def _measured_cell(r: Record) -> str:
    m = _measured(r)[0]
    head = _headline(r)
    if r.get("measured") is None and not r.get("expectation") and head and head[1] is not None:
        # a passing Python assert leaves no expectation behind: show what the audit measured
        method, v = head
        return (f'<span class="muted" title="{esc(method.headline.replace("_", " "))} over all '
                f'units (no expectation was recorded)">{esc(method.headline_label)} '
                f'{esc(fmt_pct(v))}</span>')
    return esc(m)


def summary_table(records: Sequence[Record]) -> str:
    """One row per property: outcome, expectation, measured vs bound, layer, corruption, time
    (and model, when the properties do not all audit the same one)."""
    models = {r.get("model") for r in records}
    show_model = len(models) > 1
    rows = []
    for i, r in enumerate(records, 1):
        b = _measured(r)[1]
        o = r.get("outcome") if r.get("outcome") in OUTCOMES else "error"
        model = f'<td>{esc(r.get("model") or "—")}</td>' if show_model else ""
        rows.append(
            f'<tr class="{o}"><td>{badge(r.get("outcome"))}</td>'
            f'<td class="name"><a href="#p{i}">{wbr(r.get("name") or r.get("nodeid"))}</a></td>'
            f'<td><code>{wbr(r.get("expectation") or "—")}</code></td>'
            f'<td class="num">{_measured_cell(r)}</td><td class="num">{esc(b)}</td>'
            f'<td>{esc(r.get("layer") or "—")}</td>'
            f'<td class="mono">{esc(corruption_text(r.get("corruption")))}</td>{model}'
            f'<td class="num">{float(r.get("duration") or 0):.2f} s</td></tr>')
    caption = ""
    if not show_model and models != {None}:
        caption = f'<caption>model {esc(next(iter(models)))}</caption>'
    return ('<div class="scroll-x"><table class="summary">'
            f'{caption}<thead><tr><th>outcome</th><th>property</th>'
            '<th>expectation</th><th class="num">measured</th><th class="num">bound</th>'
            f'<th>layer</th><th>corruption</th>{"<th>model</th>" if show_model else ""}'
            '<th class="num">time</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')


# --------------------------------------------------------------------------- one property


def _sweep_table(sweep: Mapping[str, Any], links: bool = False) -> str:
    """The numbers behind a sweep plot. ``links``: the overview's form, where series names
    already say kind and layer, and each point links to the test items it came from."""
    pts = list(sweep.get("points") or [])
    xk = str(sweep.get("x", "x"))
    xcol = "" if sweep_is_degenerate(sweep) else f'<th class="num">{esc(X_LABELS.get(xk, xk))}</th>'
    rows = []
    for p in pts:
        c = p.get("corruption")
        text = corruption_text(parse_spec(c)) if isinstance(c, str) and ":" in c else (
            corruption_text(c) if isinstance(c, Mapping) else c or "")
        cells = [f'<td>{esc(p.get("label") or p.get("series") or "")}</td>',
                 "" if links else f'<td>{esc(p.get("layer") or "")}</td>',
                 f'<td class="num">{esc(_fmt_x(xk, p.get("x")))}</td>' if xcol else "",
                 f'<td class="num">{esc(fmt_pct(p.get("flip_rate")))}</td>',
                 f'<td class="num">{esc(fmt_pct(p.get("flip_rate_detectors")))}</td>',
                 "" if links else f'<td class="mono">{esc(text)}</td>']
        if links:
            refs = p.get("records") or ([[p["record"], p.get("name")]] if p.get("record") else [])
            cells.append("<td>" + "<br>".join(f'<a href="#p{int(i)}">{esc(n)}</a>'
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
    chart = plot(sweep_png, sweep, None, alt=f"{heading} for {name}")
    same = sweep.get("same") or {}
    note = ""
    if same:
        said = {"layer": "{}", "linf": "L∞ budget ε = {}", "std": "noise σ = {}",
                "fraction": "{} of the probe poisoned"}
        vals = {k: fmt_pct(v, 0) if k == "fraction" else _fmt_x(k, v) for k, v in same.items()}
        note = ('<p class="muted">every audit here: ' + " · ".join(
            esc(said.get(k, k + " {}").format(v)) for k, v in vals.items()) + "</p>")
    return f'<h3>{esc(heading)}</h3>{note}<div class="chart">{chart}</div>{_sweep_table(sweep)}'


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
        if sw.get("method") not in (None, DEFAULT_METHOD):
            where += f' ({sw["method"]})'
        n = len({i for p in sw["points"] for i, _ in p.get("records") or [[p.get("record"), 0]]})
        chart = plot(sweep_png, sw, None, alt=f"{heading}, {where}")
        blocks.append(f'<div class="ov"><div class="ov-title"><b>{esc(heading)}</b> '
                      f'<span class="muted">{esc(where)} · {n} test items</span></div>'
                      f'{chart}{_sweep_table(sw, links=True)}</div>')
    return ('<h3>overview <span class="muted">flip rate across test items; solid: all units, '
            'dashed: clean detectors</span></h3>'
            f'<div class="overview">{"".join(blocks)}</div>')


def property_fragment(record: Record, index: int = 1, interactive: bool = True,
                      diff_limit: int | None = None) -> str:
    """One property's section: verdict, facts, the test's own sweep, then the section of each
    explanation method the record carries a payload of (:meth:`~nemaudit.audit.methods.
    Method.section`, in registry order). ``interactive=False`` drops what needs the page's
    script; ``diff_limit`` caps per-unit tables."""
    outcome = record.get("outcome") if record.get("outcome") in OUTCOMES else "error"
    name = record.get("name") or record.get("nodeid") or f"property {index}"
    m, b = _measured(record)
    expect = ""
    if record.get("expectation"):
        expect = (f'<div class="expect {outcome}"><code>{esc(record["expectation"])}</code> — '
                  f'measured <span class="measured">{esc(m)}</span> vs bound {esc(b)}</div>')
    msg = f'<pre class="message">{esc(record["message"])}</pre>' if record.get("message") else ""
    head = (f'<div class="head"><h2>{badge(record.get("outcome"))} {esc(name)}</h2>'
            f'<div class="nodeid mono">{esc(record.get("nodeid") or "")}</div>{expect}{msg}</div>')
    facts = [("model", esc(record.get("model") or "—")), ("probe", esc(record.get("probe") or "—")),
             ("layer", esc(record.get("layer") or "—")),
             ("corruption", f'<code>{esc(corruption_text(record.get("corruption")))}</code>'),
             ("time", esc(f'{float(record.get("duration") or 0):.2f} s'))]
    payloads = _payloads(record)
    for method, payload in payloads:
        facts += [(k, esc(fmt_num(v))) for k, v in method.facts(payload)]
    parts = [kv(facts).replace('class="kv"', 'class="kv facts"', 1)]
    if record.get("sweep"):
        parts.append(_sweep_html(record["sweep"], str(name)))
    for method, payload in payloads:
        parts.append(method.section(payload, index, interactive, diff_limit))
    return (f'<section class="prop {outcome}" id="p{index}">{head}'
            f'<div class="body">{"".join(parts)}</div></section>')


# --------------------------------------------------------------------------- documents


def _overview(records: Sequence[Record]) -> str:
    try:
        return overview_html(records)
    except Exception as e:  # noqa: BLE001 - the overview is a courtesy, never lose the report
        return f'<p class="muted">overview failed: {esc(type(e).__name__)}: {esc(e)}</p>'


def render_html(records: Iterable[Record], session: Mapping[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    records = list(records)
    session = dict(session or {})
    env = session.pop("environment", None) or environment()
    title = session.get("title") or "nemaudit report"
    s = summarize(records)
    sections = "".join(property_fragment(r, i) for i, r in enumerate(records, 1))
    style = f"body{{margin:0;background:#fff}}\n{asset('report.css')}"
    script = f"\n{asset('report.js')}\n"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp(style, script))}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)} — {"passed" if s["ok"] else "FAILED"}</title>'
        '<link rel="icon" href="data:,">'
        f'<style>{style}</style></head>'
        f'<body class="nemaudit"><div class="page">{_header(records, session, env)}'
        f'<h3>properties</h3>{summary_table(records)}{_overview(records)}{sections}'
        '<p class="muted" style="margin-top:40px;font-size:12px">generated by nemaudit · '
        f'schema {esc(SCHEMA)}</p></div>'
        f'<script>{script}</script></body></html>\n')


def csp(style: str, script: str) -> str:
    """The page's Content-Security-Policy: nothing but its own inline style and script (by
    hash: a script that a label name smuggled in would not match) and embedded images;
    no network at all. Style *attributes* stay allowed: they cannot run code."""
    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; img-src data:; style-src {sha(style)}; "
            f"style-src-attr 'unsafe-inline'; script-src {sha(script)}; base-uri 'none'; "
            "form-action 'none'")


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
    content = f'<div class="nemaudit"><style>{asset("report.css")}</style>{body}</div>'
    return [extras.html(content)]
