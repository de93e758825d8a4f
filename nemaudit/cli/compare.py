"""``nemaudit compare A.json B.json``: what changed between two runs, per property and per
unit (with intervals), and optional regression gates (``--fail flip_rate:+5%``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two saved runs (JSON reports): verdicts, "
                                       "metrics and units that changed")
    p.add_argument("a", help="the reference run: a JSON report, or a runs folder (its newest)")
    p.add_argument("b", help="the run to compare with it")
    p.add_argument("--fail", action="append", default=[], metavar="METRIC:+N[%]",
                   help="exit 1 when METRIC grew by more than N (rates: +5%% = 5 points) in a "
                        "property present in both runs (repeatable)")
    p.add_argument("--units", type=int, default=10, help="changed units shown per property")
    p.add_argument("--out", default=None, help="write the comparison as JSON here")
    p.add_argument("--html", default=None, metavar="OUT.html",
                   help="write the two runs side by side as one self-contained HTML page "
                        "(verdicts, measured values with intervals, units that regressed "
                        "first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from nemaudit.cli import common
    from nemaudit.report.compare import Gate, compare_records, diff_json, load_run, regressions
    from nemaudit.report.json_report import fmt_num

    gates = [Gate.parse(g) for g in args.fail]
    common.check_out(args)
    if args.html:
        from nemaudit.files import check_output

        check_output(args.html, "--html")
    run_a, run_b = load_run(args.a), load_run(args.b)
    diffs, gone, new = compare_records(run_a["records"], run_b["records"])
    console = Console()
    table = Table(title=Text(f"{args.a} → {args.b}"), title_justify="left")
    for col in ("property", "outcome", "measured", "metric changes", "units changed"):
        table.add_column(col)
    for d in diffs:
        if not d.changed:
            continue
        moved = [f"{k} {fmt_num(a)} → {fmt_num(b)}" for k, (a, b) in d.metrics.items()
                 if a != b][:4]
        units = [f"{u['unit']}: {u['clean'][0] or '—'} → {u['clean'][1] or '—'}"
                 f"{' (now changes)' if u['changed'][1] and not u['changed'][0] else ''}"
                 for u in d.units[:args.units]]
        if len(d.units) > args.units:
            units.append(f"… {len(d.units) - args.units} more")
        iv = [i for i in d.intervals if i]
        measured = f"{fmt_num(d.measured[0])} → {fmt_num(d.measured[1])}"
        if iv:
            measured += "\n" + " → ".join(f"[{fmt_num(i['lo'], 3)}, {fmt_num(i['hi'], 3)}]"
                                           for i in d.intervals if i)
        table.add_row(Text(d.name), Text(f"{d.outcome[0]} → {d.outcome[1]}"), Text(measured),
                      Text("\n".join(moved)), Text("\n".join(units)))
    console.print(table)
    same = sum(not d.changed for d in diffs)
    console.print(Text(f"{len(diffs)} properties in both runs: {len(diffs) - same} changed, "
                       f"{same} the same; {len(gone)} only in the first, {len(new)} only in "
                       "the second"))
    broken = regressions(diffs, gates)
    for line in broken:
        console.print(Text(f"regression: {line}", style="red"))
    rc = 1 if broken else 0
    if args.html:
        from nemaudit.report.compare_html import write_compare_html

        write_compare_html(args.html, run_a, run_b, gates, args.units)
        console.print(Text(f"wrote {args.html}"))
    if args.out:
        common.write_json(args, {"schema": "nemaudit.compare/1", "a": args.a, "b": args.b,
                                 "properties": diff_json(diffs), "only_in_a": gone,
                                 "only_in_b": new, "regressions": broken}, console)
    return rc
