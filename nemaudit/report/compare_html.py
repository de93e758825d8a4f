"""Two saved runs side by side as ONE self-contained HTML page (``nemaudit compare --html``).

The view of :func:`nemaudit.report.compare.compare_records`: per property the verdicts and
measured values (with their intervals) of the reference run (A) beside this run (B), the
metrics that moved, and the units whose clean explanation or robustness changed. What
regressed comes first: properties whose verdict got worse or that broke a gate, then those
that changed; within a property, units that now flip, then units whose concept changed, then
units that no longer flip.

Everything shown comes from two JSON files, i.e. from whoever wrote them: it is rendered by
the report's autoescaping templates (:mod:`nemaudit.report.html_parts`) under the report's
Content-Security-Policy, with no script at all. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from nemaudit.report.compare import Gate, RecordDiff, compare_records, regressions
from nemaudit.report.html import _env_line, _interval_text, csp
from nemaudit.report.html_parts import asset, render
from nemaudit.report.json_report import OUTCOMES, atomic_write_text, fmt_num, summarize

#: how bad an outcome is, for "did the verdict get worse" (unknown outcomes count as errors)
_SEVERITY = {"passed": 0, "skipped": 0, "warned": 1, "failed": 2, "error": 2}


def _severity(outcome: Any) -> int:
    return _SEVERITY.get(outcome, 2) if isinstance(outcome, str) else 2


def _cls(outcome: Any) -> str:
    return outcome if outcome in OUTCOMES else "error"


def _real(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _delta(a: Any, b: Any) -> str:
    x, y = _real(a), _real(b)
    if x is None or y is None:
        return ""
    d = y - x
    return "0" if d == 0 else f"{d:+.4g}"


def _interval(iv: Any) -> str:
    """``[0.012, 0.162]`` for a record's interval; "" without one."""
    if not isinstance(iv, Mapping) or _real(iv.get("lo")) is None or _real(iv.get("hi")) is None:
        return ""
    return f"[{fmt_num(iv['lo'], 3)}, {fmt_num(iv['hi'], 3)}]"


def _side(record: Mapping[str, Any]) -> dict[str, Any]:
    """One run's view of a property: verdict, expectation(s), measured value with interval."""
    exps = record.get("expectations") if isinstance(record.get("expectations"), list) else []
    return {"outcome": record.get("outcome"), "cls": _cls(record.get("outcome")),
            "expectation": record.get("expectation"),
            "measured": fmt_num(record.get("measured")), "bound": fmt_num(record.get("bound")),
            "interval": _interval(record.get("interval")),
            "interval_long": _interval_text(record.get("interval")),
            "expectations": [{"text": x.get("expectation"), "measured": fmt_num(x.get("measured")),
                              "status": _cls(x.get("status") or ("passed" if x.get("ok")
                                                                 else "failed")),
                              "interval": _interval(x.get("interval"))}
                             for x in exps if isinstance(x, Mapping)][:20],
            "message": str(record.get("message") or "")[:600]}


def _unit_rows(d: RecordDiff, limit: int) -> tuple[list[dict], int]:
    """The changed units, regressions first: now flips, concept changed, no longer flips."""
    rows: list[dict[str, Any]] = []
    for u in d.units:
        (ca, cb), (fa, fb) = u["clean"], u["changed"]
        tags = []
        if fb and not fa:
            tags.append(("now flips", "miss"))
        if ca != cb:
            tags.append(("concept changed", ""))
        if fa and not fb:
            tags.append(("no longer flips", "hit"))
        rank = 0 if fb and not fa else 1 if ca != cb else 2
        rows.append({"rank": rank, "method": u.get("method"), "unit": u.get("unit"),
                     "clean_a": ca, "clean_b": cb, "flips_a": fa, "flips_b": fb, "tags": tags})
    rows.sort(key=lambda r: r["rank"])  # stable: the unit order within a rank stays
    return rows[:limit], max(0, len(rows) - limit)


def compare_view(run_a: Mapping[str, Any], run_b: Mapping[str, Any],
                 gates: Sequence[Gate] = (), units: int = 10) -> dict[str, Any]:
    """What ``compare.html.j2`` shows, from two loaded runs
    (:func:`nemaudit.report.compare.load_run`: ``records``, ``environment``, ``path``)."""
    records_a, records_b = list(run_a.get("records") or []), list(run_b.get("records") or [])
    diffs, gone, new = compare_records(records_a, records_b)
    broken = regressions(diffs, gates)
    by_a = {r["nodeid"]: r for r in records_a}
    by_b = {r["nodeid"]: r for r in records_b}
    props: list[dict[str, Any]] = []
    for i, d in enumerate(diffs, 1):
        ra, rb = by_a[d.nodeid], by_b[d.nodeid]
        worse = _severity(d.outcome[1]) > _severity(d.outcome[0])
        better = _severity(d.outcome[1]) < _severity(d.outcome[0])
        gated = [line for g in gates for line in regressions([d], [g])]
        rank = 0 if worse else 1 if gated else 2 if d.changed else 3
        unit_rows, more = _unit_rows(d, units)
        metrics = [{"name": k, "a": fmt_num(a), "b": fmt_num(b), "delta": _delta(a, b)}
                   for k, (a, b) in d.metrics.items() if a != b]
        props.append({
            "index": i, "rank": rank, "name": d.name, "nodeid": d.nodeid,
            "status": ("worse" if worse else "gate" if gated else "better" if better
                       else "changed" if d.changed else "same"),
            "a": _side(ra), "b": _side(rb), "delta": _delta(*d.measured),
            "metrics": metrics, "same_metrics": len(d.metrics) - len(metrics),
            "units": unit_rows, "more_units": more, "units_changed": len(d.units),
            "now_flip": sum(1 for u in d.units if u["changed"][1] and not u["changed"][0]),
            "gated": gated, "changed": d.changed})
    props.sort(key=lambda p: p["rank"])  # regressions first; stable within a rank
    for p in props:  # anchors follow the order shown
        p["anchor"] = f"c{p['index']}"
    names_a = {r["nodeid"]: r.get("name") or r["nodeid"] for r in records_a}
    names_b = {r["nodeid"]: r.get("name") or r["nodeid"] for r in records_b}

    def run_info(run: Mapping[str, Any], records: list) -> dict[str, Any]:
        env = run.get("environment") if isinstance(run.get("environment"), Mapping) else {}
        s = summarize(r for r in records if isinstance(r, Mapping))
        return {"path": run.get("path") or "", "env_line": _env_line(env or {}),
                "counts": [(o, s[o]) for o in OUTCOMES if s[o]], "total": s["total"],
                "created": run.get("created") or ""}

    n_worse = sum(p["status"] == "worse" for p in props)
    return {"a": run_info(run_a, records_a), "b": run_info(run_b, records_b),
            "props": props, "regressions": broken, "worse": n_worse,
            "ok": not broken and not n_worse,
            "counts": {"both": len(diffs), "changed": sum(p["changed"] for p in props),
                       "same": sum(not p["changed"] for p in props), "only_a": len(gone),
                       "only_b": len(new), "worse": n_worse,
                       "better": sum(p["status"] == "better" for p in props)},
            "only_a": [(n, names_a[n]) for n in gone][:200],
            "only_b": [(n, names_b[n]) for n in new][:200],
            "gates": [g.text for g in gates]}


def render_compare_html(run_a: Mapping[str, Any], run_b: Mapping[str, Any],
                        gates: Sequence[Gate] = (), units: int = 10) -> str:
    """The comparison as one HTML string: the report's stylesheet inline, no script (the
    CSP allows none), every value from the runs escaped by the template."""
    style = "body{margin:0;background:#fff}\n" + asset("report.css")
    view = compare_view(run_a, run_b, gates, units)
    return render("compare.html.j2", csp=csp(style, None), style=Markup(style), **view) + "\n"


def write_compare_html(path: Any, run_a: Mapping[str, Any], run_b: Mapping[str, Any],
                       gates: Sequence[Gate] = (), units: int = 10) -> Any:
    """Write :func:`render_compare_html` to ``path`` (atomically); returns the path."""
    return atomic_write_text(path, render_compare_html(run_a, run_b, gates, units))
