"""The robustness-radius section of a property: metric cards and the radius histogram."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.report.html_parts import render
from nemaudit.report.json_report import fmt_eps, fmt_num, fmt_pct


def radius_png(payload: Mapping[str, Any]) -> str:
    """Histogram of the units' radii (censored units in their own colour), base64 PNG."""
    from nemaudit.report.plots import figure, figure_png

    rows = payload.get("units") or []
    fig = figure(6.0, 2.6)
    ax = fig.add_subplot()
    top = float((payload.get("metrics") or {}).get("max_budget") or 1.0)
    bins = [top * i / 16 for i in range(17)]
    ax.hist([[r["radius"] for r in rows if r.get("broken")],
             [r["radius"] for r in rows if not r.get("broken")]], bins=bins, stacked=True,
            color=["#0969da", "#d0d7de"], label=["changes within the range", "never changed"])
    ax.set_xlabel(f"radius ({(payload.get('meta') or {}).get('budget_key', 'budget')})")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    return figure_png(fig)


def radius_section(payload: Mapping[str, Any], index: int) -> str:
    m = payload.get("metrics") or {}
    cards = [("median radius", fmt_eps(m.get("median")), "half the units change below it"),
             ("10% / 90% quantiles", f"{fmt_eps(m.get('q10'))} / {fmt_eps(m.get('q90'))}", ""),
             ("broken within the range", fmt_pct(m.get("broken_rate")),
              f"of {m.get('units')} units, searched up to {fmt_eps(m.get('max_budget'))}"),
             ("evaluations", fmt_num(m.get("evaluations")), "audits the bisection ran")]
    try:
        chart = radius_png(payload)
    except ImportError:
        chart = None
    return render("radius.html.j2", cards=cards, chart=chart, index=index)
