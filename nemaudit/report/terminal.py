"""Rich tables for the terminal: one dissection, one audit, and the session summary that
pytest prints (readable in an 80-column CI log as well as a wide terminal)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


def dissection_table(d, max_rows: int = 20) -> Table:
    """Detector summary per category plus the strongest units of one dissected layer."""
    det = d.detectors()
    # names come from the probe (label.csv) and the user: plain Text, never rich markup
    table = Table(title=Text(f"Network Dissection — {d.layer}: {det['total']}/{det['units']} "
                             f"units are detectors (IoU ≥ {d.config.iou_threshold}), "
                             f"{det['unique_concepts']} unique concepts"),
                  title_justify="left")
    table.add_column("unit", justify="right")
    table.add_column("label")
    table.add_column("category")
    table.add_column("IoU", justify="right")
    table.add_column("runner-up concepts")
    rows = sorted(d.rows(), key=lambda r: -r["iou"])
    for r in rows[:max_rows]:
        rest = ", ".join(f"{c['concept']} {c['iou']:.3f}" for c in r["top"][1:4])
        style = None if r["detector"] else "dim"
        table.add_row(str(r["unit"]), Text(r["label"] or "—"), Text(r["category"] or "—"),
                      f"{r['iou']:.4f}", Text(rest), style=style)
    per = ", ".join(f"{k} {v}" for k, v in det["per_category"].items())
    table.caption = Text(f"detectors per category: {per}")
    return table


_OUTCOME_STYLE = {"passed": "bold green", "warned": "bold magenta", "failed": "bold red",
                  "error": "bold yellow",
                  "skipped": "dim"}
_OUTCOME_SHORT = {"passed": "PASS", "warned": "WARN", "failed": "FAIL", "error": "ERR",
                  "skipped": "SKIP"}
#: console width from which the summary may give expectation and corruption columns of their own
WIDE = 120
_EXPECT_RE = re.compile(r"^\s*(?P<metric>.+?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<bound>[^\s@]+)"
                        r"\s*(?:@\s*(?P<level>\S+))?\s*$")
_SYMBOL = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "==": "=", "!=": "≠"}
#: the relation that does hold when the expected one does not
_NEGATED = {"<=": ">", ">=": "<", "<": "≥", ">": "≤", "==": "≠", "!=": "="}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def result_text(record: Mapping[str, Any], digits: int = 3) -> str:
    """What was measured against what, as the relation that actually holds: ``0.031 ≤ 0.25``
    for a pass, ``0.3 > 0.01`` for a failure; ``unchanged`` / ``3 units moved`` for baselines;
    the first method payload's headline metric (``flip 6.2%``) when no expectation was
    recorded (a passing Python ``assert``)."""
    from nemaudit.audit.methods import record_payloads
    from nemaudit.report.json_report import fmt_num, fmt_pct

    expectation = str(record.get("expectation") or "")
    measured, bound = record.get("measured"), record.get("bound")
    baseline = record.get("baseline") or {}
    if expectation == "unchanged_since_baseline" or baseline:
        if baseline.get("status") == "written":
            return "baseline written"
        if _number(measured):
            n = int(measured)  # type: ignore[arg-type]
            return "unchanged" if n == 0 else f"{n} unit{'' if n == 1 else 's'} moved"
    m = _EXPECT_RE.match(expectation)
    if m is None or not _number(bound):
        if _number(measured):
            return fmt_num(measured, digits)
        for method, payload in record_payloads(record):  # the first method's headline
            if payload and method.headline:
                v = (payload.get("metrics") or {}).get(method.headline)
                return f"{method.headline_label} {fmt_pct(v)}" if _number(v) else "—"
        return "—"
    if not _number(measured):
        return f"undefined {_SYMBOL[m['op']]} {fmt_num(bound, digits)}"
    from nemaudit.expectations import OPS  # the expectation grammar's own comparisons

    holds = OPS[m["op"]](measured, bound) if m["op"] in OPS else measured != bound  # type: ignore[arg-type]
    sym = _SYMBOL[m["op"]] if holds else _NEGATED[m["op"]]
    text = f"{fmt_num(measured, digits)} {sym} {fmt_num(bound, digits)}"
    interval = record.get("interval") or {}
    if m["level"] and _number(interval.get("hi")) and _number(interval.get("lo")):
        edge = interval["hi"] if m["op"] in ("<", "<=") else interval["lo"]
        text += f" (at {interval.get('level', 0):.0%}: {fmt_num(edge, digits)})"
    return text


def _metric(record: Mapping[str, Any]) -> str | None:
    m = _EXPECT_RE.match(str(record.get("expectation") or ""))
    return m["metric"] if m else None


def _name(record: Mapping[str, Any]) -> str:
    """The item's name, with its layer unless the name already says it (spec items do)."""
    name = str(record.get("name") or record.get("nodeid") or "?")
    layer = record.get("layer")
    return name if not layer or str(layer) in name else f"{name} · {layer}"


def _title(records: Sequence[Mapping[str, Any]]) -> str:
    from nemaudit.report.json_report import summarize

    s = summarize(records)
    from nemaudit.report.json_report import OUTCOMES

    counts = ", ".join(f"{s[o]} {o}" for o in OUTCOMES if s[o])
    return (f"nemaudit — {s['total']} propert{'y' if s['total'] == 1 else 'ies'}: "
            f"{counts or 'none run'} ({s['duration']:.1f} s)")


def _outcome(record: Mapping[str, Any], short: bool) -> Text:
    outcome = str(record.get("outcome") or "error")
    label = _OUTCOME_SHORT.get(outcome, outcome.upper()) if short else outcome.upper()
    return Text(label, style=_OUTCOME_STYLE.get(outcome, "bold yellow"))


def _result_cell(record: Mapping[str, Any], digits: int) -> Text:
    bad = record.get("outcome") in ("failed", "error")
    return Text(result_text(record, digits), style="red" if bad else "")


def _tally(r: Mapping[str, Any]) -> str | None:
    """``2 of 3 expectations held`` for an item that checked several (the row shows one)."""
    exps = r.get("expectations") or []
    if len(exps) < 2:
        return None
    held = sum(1 for x in exps if x.get("ok") and x.get("status") != "warned")
    warned = sum(1 for x in exps if x.get("status") == "warned")
    return (f"{held} of {len(exps)} expectations held"
            + (f", {warned} warned" if warned else ""))


def _detail(r: Mapping[str, Any], metric: bool = True, reason: bool = True) -> str:
    from nemaudit.report.json_report import corruption_text

    parts = [_metric(r) if metric else None,
             corruption_text(r.get("corruption")) if r.get("corruption") else None,
             _tally(r)]
    if reason and r.get("outcome") in ("error", "skipped") and r.get("message"):
        parts.append(str(r["message"]).strip().splitlines()[0])  # why it did not run
    return " · ".join(x for x in parts if x)


def narrow_summary(records: Sequence[Mapping[str, Any]]) -> Table:
    """The summary for CI logs (~80 columns): outcome · property · result · time, with the
    metric and the corruption as a dim second line that is cut, never wrapped, so a property
    takes two lines (three when its name is longer than the column)."""
    table = _table(records)
    table.add_column("", no_wrap=True)
    table.add_column("property", overflow="fold")
    table.add_column("result", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for r in records:
        cell: Any = Text(_name(r), overflow="fold")
        detail = _detail(r)
        if detail:
            cell = Group(cell, Text(detail, style="dim", no_wrap=True, overflow="ellipsis"))
        table.add_row(_outcome(r, short=True), cell, _result_cell(r, 2),
                      _seconds(float(r.get("duration") or 0)))
    return table


def wide_summary(records: Sequence[Mapping[str, Any]]) -> Table:
    """The summary for wide terminals: the expectation and the corruption get columns of
    their own, each as wide as its longest entry."""
    table = _table(records)
    table.add_column("outcome", no_wrap=True)
    table.add_column("property", overflow="fold")
    table.add_column("expectation", overflow="fold")
    table.add_column("result", justify="right", no_wrap=True)
    table.add_column("corruption", overflow="fold")
    table.add_column("time", justify="right", no_wrap=True)
    for r in records:
        table.add_row(_outcome(r, short=False), Text(_name(r), overflow="fold"),
                      Text(str(r.get("expectation") or "—")), _result_cell(r, 4),
                      Text(_detail(r, metric=False, reason=False) or "—", style="dim"),
                      f"{float(r.get('duration') or 0):.2f} s")
    return table


def _seconds(d: float) -> str:
    return f"{d:.1f} s" if d < 99.95 else f"{d:.0f} s"


def _table(records: Sequence[Mapping[str, Any]]) -> Table:
    # no outer edge, a rule under the header, two spaces between columns: every character
    # of an 80-column log goes to content; columns only as wide as their content
    return Table(title=_title(records), title_justify="left", box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")


class SessionSummary:
    """The session summary as a rich renderable that picks its layout when it is printed:
    :func:`wide_summary` when the console has ≥ :data:`WIDE` columns and every property fits
    on one line there, :func:`narrow_summary` otherwise (wrapped wide tables read worse than
    the narrow one)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], width: int | None = None) -> None:
        self.records = list(records)
        self.width = width

    def table(self, width: int, console: Console | None = None) -> Table:
        """The table for a console ``width`` columns wide."""
        if width >= WIDE:
            wide = wide_summary(self.records)
            console = console or Console(width=width)
            need = Measurement.get(console, console.options.update_width(10**4), wide).maximum
            if need <= width:
                return wide
        return narrow_summary(self.records)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(self.width or options.max_width, console)


def session_summary(records: Sequence[Mapping[str, Any]], width: int | None = None
                    ) -> SessionSummary:
    """One entry per property (outcome, measured against bound, corruption, time): the
    terminal twin of the HTML report's summary table. The layout follows the console's width
    at print time (pytest's terminal, an 80-column CI log), or ``width`` when given."""
    return SessionSummary(records, width)


def audit_table(result: Any, max_rows: int = 15) -> Table:
    """Metrics, detector share per category and the changed units' diff of one audit, from
    an :class:`~nemaudit.audit.result.AuditResult` or its JSON (``report_payload``) form."""
    from nemaudit.report.json_report import corruption_text, fmt_num, fmt_pct
    from nemaudit.report.plots import XIE_COLUMNS, xie_rows

    doc = result.to_json() if hasattr(result, "to_json") else dict(result)
    m = doc.get("metrics") or {}
    rows = doc.get("units") or []
    title = Text(f"Audit — {doc.get('layer', '?')} under "
                 f"{corruption_text(doc.get('corruption'))}")

    metrics = Table(title=title, title_justify="left", show_header=False, box=None,
                    padding=(0, 2, 0, 0))
    metrics.add_column(style="dim")
    metrics.add_column(justify="right")
    metrics.add_column(style="dim")
    metrics.add_row("flip rate (all units)", fmt_pct(m.get("flip_rate")),
                    f"{m.get('changed', '?')} of {m.get('units', '?')} units changed concept")
    metrics.add_row("flip rate (detectors)", fmt_pct(m.get("flip_rate_detectors")),
                    f"over {m.get('detectors', '?')} clean detectors")
    if "targeted_success_rate" in m:
        from nemaudit.report.json_report import target_wording

        label, sub = target_wording(doc.get("corruption"))
        metrics.add_row(label, fmt_pct(m.get("targeted_success_rate")), sub)
    metrics.add_row("mean source-IoU drop", fmt_num(m.get("mean_source_iou_drop"), 3), "")
    if m.get("accuracy_clean") is not None:
        metrics.add_row("accuracy", f"{fmt_pct(m.get('accuracy_clean'))} → "
                                    f"{fmt_pct(m.get('accuracy_corrupted'))}", "clean → corrupted")

    xie = Table(title="detector share per category", title_justify="left")
    xie.add_column("")
    for c in XIE_COLUMNS:
        xie.add_column(c, justify="right")
    shares = xie_rows(m)
    for side in ("clean", "corrupted"):
        xie.add_row(side, *(fmt_pct(shares[side][c]) for c in XIE_COLUMNS))

    changed = sorted((r for r in rows if r.get("changed")), key=lambda r: -r["clean_iou"])
    targets = any(r.get("target") for r in rows)
    diff = Table(title=f"changed units ({len(changed)} of {len(rows)})", title_justify="left")
    diff.add_column("unit", justify="right")
    diff.add_column("clean concept")
    diff.add_column("IoU", justify="right")
    diff.add_column("")
    diff.add_column("corrupted concept")
    diff.add_column("IoU", justify="right")
    diff.add_column("source IoU drop", justify="right")
    if targets:
        diff.add_column("target")
    for r in changed[:max_rows]:
        cells = [str(r["unit"]), _concept(r, "clean"), f"{r['clean_iou']:.4f}", "→",
                 _concept(r, "corrupted"), f"{r['corrupted_iou']:.4f}",
                 fmt_num(r.get("source_iou_drop"), 3)]
        if targets:
            t = r.get("target")
            cells.append(Text(f"{t} ✓" if r.get("target_hit") else str(t or "—"),
                              style="green" if r.get("target_hit") else ""))
        diff.add_row(*cells, style=None if r.get("clean_detector") else "dim")  # type: ignore[arg-type]
    if len(changed) > max_rows:
        diff.caption = f"… {len(changed) - max_rows} more changed unit(s)"
    if not changed:
        diff.caption = "no unit changed its concept"

    grid = Table.grid(padding=(0, 0, 1, 0))
    grid.add_column()
    for part in (metrics, xie, diff):
        grid.add_row(part)
    return grid


def _concept(row: Mapping[str, Any], side: str) -> Text:
    label, cat = row.get(f"{side}_label"), row.get(f"{side}_category")
    if not label:
        return Text("—", style="dim")
    return Text.assemble(str(label), (f" {cat}", "dim")) if cat else Text(str(label))
