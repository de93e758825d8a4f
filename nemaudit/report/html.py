"""Session reports as ONE self-contained HTML file, and the same content for pytest-html.

Everything is inline (CSS, JS, images as ``data:`` URIs, no web fonts) so the file can be
attached to a CI run, mailed, or opened offline years later and still look the same. The
markup is in ``templates/*.html.j2`` (jinja2, autoescaped: test names, concept labels and
messages are user data); this module computes what the templates show.
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

from markupsafe import Markup

from nemaudit.audit.methods import DEFAULT_METHOD, Method, record_payloads
from nemaudit.report.html_parts import asset, picture, render
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


def _scalar(key: str, v: Any) -> tuple[str, str, bool]:
    """A session/env value as a (key, text, code) item of the ``kv`` macro; containers as
    compact JSON in ``<code>``."""
    if isinstance(v, (dict, list, tuple)):
        return key, json.dumps(v, default=str), True
    return key, fmt_num(v), False


def _outcome(r: Record) -> str:
    """The outcome as a CSS class (an unknown outcome reads as an error)."""
    o = r.get("outcome")
    return o if o in OUTCOMES else "error"


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
    return " · ".join(parts)


def _header(records: Sequence[Record], session: Mapping[str, Any],
            env: Mapping[str, Any]) -> dict[str, Any]:
    """What ``header.html.j2`` shows: title, verdict, counts, environment and session."""
    s = summarize(records)
    decided = s["passed"] + s["warned"] + s["failed"] + s["error"]
    env_items = [_scalar(k, v) for k, v in env.items() if k not in ("git", "argv")]
    git = env.get("git") or {}
    env_items += [_scalar(f"git {k}", v) for k, v in git.items()]
    if env.get("argv"):
        env_items.append(("argv", " ".join(map(str, env["argv"])), True))
    return {"title": session.get("title") or "nemaudit report", "env_line": _env_line(env),
            "ok": s["ok"], "passed": s["passed"] + s["warned"], "warned": s["warned"],
            "bad": s["failed"] + s["error"],
            "decided": decided, "counts": [(o, s[o]) for o in OUTCOMES],
            "duration": f"{s['duration']:.1f} s", "env_items": env_items,
            "session_items": [_scalar(k, v) for k, v in session.items() if k != "title"]}


def _measured(r: Record) -> tuple[str, str]:
    return fmt_num(r.get("measured")), fmt_num(r.get("bound"))


def _headline(r: Record) -> tuple[Method, Any] | None:
    """The first method payload's headline metric (method, value), when it has one."""
    for method, payload in _payloads(r):
        if method.headline:
            return method, (payload.get("metrics") or {}).get(method.headline)
    return None


def _measured_cell(r: Record) -> dict[str, str]:
    """The summary's measured cell: the number, or (a passing Python assert leaves no
    expectation behind) what the audit measured, with a ``title`` saying so."""
    head = _headline(r)
    if r.get("measured") is None and not r.get("expectation") and head and head[1] is not None:
        method, v = head
        return {"text": f"{method.headline_label} {fmt_pct(v)}",
                "title": f"{(method.headline or '').replace('_', ' ')} over all units "
                         "(no expectation was recorded)"}
    return {"text": _measured(r)[0], "title": ""}


def summary_table(records: Sequence[Record]) -> str:
    """One row per property: outcome, expectation, measured vs bound, layer, corruption, time
    (and model, when the properties do not all audit the same one)."""
    models = {r.get("model") for r in records}
    show_model = len(models) > 1
    rows = [{"cls": _outcome(r), "outcome": r.get("outcome"), "index": i,
             "name": r.get("name") or r.get("nodeid"), "expectation": r.get("expectation") or "—",
             "measured": _measured_cell(r), "bound": _measured(r)[1],
             "layer": r.get("layer") or "—", "corruption": corruption_text(r.get("corruption")),
             "model": r.get("model") or "—", "duration": f"{float(r.get('duration') or 0):.2f} s"}
            for i, r in enumerate(records, 1)]
    caption = next(iter(models), None) if not show_model and models != {None} else None
    return render("summary.html.j2", rows=rows, show_model=show_model, caption=caption)


# --------------------------------------------------------------------------- one property


def _sweep_table(sweep: Mapping[str, Any], links: bool = False) -> dict[str, Any]:
    """The numbers behind a sweep plot (the ``sweep_table`` macro's view). ``links``: the
    overview's form, where series names already say kind and layer, and each point links to
    the test items it came from."""
    pts = list(sweep.get("points") or [])
    xk = str(sweep.get("x", "x"))
    rows = []
    for p in pts:
        c = p.get("corruption")
        text = corruption_text(parse_spec(c)) if isinstance(c, str) and ":" in c else (
            corruption_text(c) if isinstance(c, Mapping) else c or "")
        refs = p.get("records") or ([[p["record"], p.get("name")]] if p.get("record") else [])
        rows.append({"label": p.get("label") or p.get("series") or "",
                     "layer": p.get("layer") or "", "x": _fmt_x(xk, p.get("x")),
                     "flip": fmt_pct(p.get("flip_rate")),
                     "detectors": fmt_pct(p.get("flip_rate_detectors")), "corruption": text,
                     "refs": [(int(i), n) for i, n in refs] if links else []})
    return {"links": links, "n": len(pts), "rows": rows, "has_x": not sweep_is_degenerate(sweep),
            "x_label": X_LABELS.get(xk, xk)}


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
    said = {"layer": "{}", "linf": "L∞ budget ε = {}", "std": "noise σ = {}",
            "fraction": "{} of the probe poisoned"}
    notes = [said.get(k, k + " {}").format(fmt_pct(v, 0) if k == "fraction" else _fmt_x(k, v))
             for k, v in (sweep.get("same") or {}).items()]
    return render("sweep.html.j2", heading=heading, notes=notes,
                  png=picture(sweep_png, sweep, None), alt=f"{heading} for {name}",
                  table=_sweep_table(sweep))


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
        blocks.append({"heading": heading, "where": where, "n": n,
                       "png": picture(sweep_png, sw, None), "alt": f"{heading}, {where}",
                       "table": _sweep_table(sw, links=True)})
    return render("overview.html.j2", blocks=blocks)


def _section(method: Method, payload: Mapping[str, Any], index: int, interactive: bool,
             diff_limit: int | None) -> Markup:
    """A method's section, to insert as HTML: :meth:`Method.section` returns HTML by
    contract. The built-in ones come from autoescaping templates
    (:mod:`~nemaudit.report.netdissect_html`, :mod:`~nemaudit.report.milan_html`); another
    method's section is registered code, which escapes its payload itself (with
    ``html_parts.esc``, or a template of its own)."""
    return Markup(method.section(payload, index, interactive, diff_limit))


def _interval_text(iv: Any) -> str:
    """``95% interval over units: [0.012, 0.162] (1 of 32)``; "" without one."""
    if not isinstance(iv, Mapping) or iv.get("lo") is None or iv.get("hi") is None:
        return ""
    return (f"{float(iv.get('level', 0)):.0%} interval over units: [{fmt_num(iv['lo'], 3)}, "
            f"{fmt_num(iv['hi'], 3)}] ({iv.get('k')} of {iv.get('n')})")


def property_fragment(record: Record, index: int = 1, interactive: bool = True,
                      diff_limit: int | None = None) -> str:
    """One property's section: verdict, facts, the test's own sweep, then the section of each
    explanation method the record carries a payload of (:meth:`~nemaudit.audit.methods.
    Method.section`, in registry order). ``interactive=False`` drops what needs the page's
    script; ``diff_limit`` caps per-unit tables."""
    name = record.get("name") or record.get("nodeid") or f"property {index}"
    m, b = _measured(record)
    facts = [("model", record.get("model") or "—", False),
             ("probe", record.get("probe") or "—", False),
             ("layer", record.get("layer") or "—", False),
             ("corruption", corruption_text(record.get("corruption")), True),
             ("time", f'{float(record.get("duration") or 0):.2f} s', False)]
    payloads = _payloads(record)
    for method, payload in payloads:
        facts += [(k, fmt_num(v), False) for k, v in method.facts(payload)]
    return render(
        "property.html.j2", index=index, outcome=record.get("outcome"), cls=_outcome(record),
        name=name, nodeid=record.get("nodeid") or "", expectation=record.get("expectation"),
        measured=m, bound=b, message=record.get("message"), facts=facts,
        interval=_interval_text(record.get("interval")),
        expectations=[{"text": x.get("expectation"), "measured": fmt_num(x.get("measured")),
                       "bound": fmt_num(x.get("bound")),
                       "status": x.get("status") or ("passed" if x.get("ok") else "failed"),
                       "interval": _interval_text(x.get("interval"))}
                      for x in record.get("expectations") or []],
        # rendered by sweep.html.j2
        sweep=Markup(_sweep_html(record["sweep"], str(name)) if record.get("sweep") else ""),
        sections=[_section(method, payload, index, interactive, diff_limit)
                  for method, payload in payloads])


# --------------------------------------------------------------------------- documents


def render_html(records: Iterable[Record], session: Mapping[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    records = list(records)
    session = dict(session or {})
    env = session.pop("environment", None) or environment()
    overview, overview_error = Markup(), ""
    try:
        overview = Markup(overview_html(records))  # rendered by overview.html.j2
    except Exception as e:  # noqa: BLE001 - the overview is a courtesy, never lose the report
        overview_error = f"{type(e).__name__}: {e}"  # text: the page template escapes it
    # CSS and JS are the package's own files (fixed text, no record data): inlined as they
    # are, and the CSP hashes exactly what is inlined
    style = "body{margin:0;background:#fff}\n" + asset("report.css")
    script = "\n" + asset("report.js") + "\n"
    # summary and sections: Markup, rendered by their own (autoescaping) templates
    page = render("page.html.j2", csp=csp(style, script), style=Markup(style),
                  script=Markup(script), ok=summarize(records)["ok"],
                  header=_header(records, session, env), summary=Markup(summary_table(records)),
                  overview=overview, overview_error=overview_error,
                  sections=[Markup(property_fragment(r, i)) for i, r in enumerate(records, 1)],
                  schema=SCHEMA)
    return page + "\n"


def csp(style: str, script: str | None) -> str:
    """The page's Content-Security-Policy: nothing but its own inline style and script (by
    hash: a script that a label name smuggled in would not match) and embedded images;
    no network at all. Style *attributes* stay allowed: they cannot run code. ``script``
    None: a page without script (``nemaudit compare --html``) allows none."""
    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    scripts = "'none'" if script is None else sha(script)
    return (f"default-src 'none'; img-src data:; style-src {sha(style)}; "
            f"style-src-attr 'unsafe-inline'; script-src {scripts}; base-uri 'none'; "
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
    # report.css is the package's own file, inlined as it is; body: property.html.j2's
    content = render("extras.html.j2", style=Markup(asset("report.css")), body=Markup(body))
    return [extras.html(content)]
