"""The HTML section of saliency and fooling audits: metric cards, the FSR (transfer) and
accuracy tables as charts, the fine-tuning history, and the worst images with the
reference's and the candidate's maps side by side."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.report.html_parts import render
from nemaudit.report.json_report import fmt_num, fmt_pct

REFERENCE, CANDIDATE, RANDOM = "#4c72b0", "#dd8452", "#8c8c8c"


def _interval(k: int, n: int) -> tuple[float, float]:
    from nemaudit.audit.confidence import binomial_interval

    iv = binomial_interval(k, n, 0.95)
    return iv.lo, iv.hi


def _fsr_counts(doc: Mapping[str, Any], interp: str) -> tuple[int, int]:
    hits = [r["hit"].get(interp) for r in doc.get("units") or [] if interp in r.get("hit", {})]
    flat = [x for h in hits for x in (h if isinstance(h, list) else [h])]
    return sum(bool(x) for x in flat), len(flat)


def charts(doc: Mapping[str, Any]) -> dict[str, str]:
    """Base64 PNG charts of a saliency/fooling payload (matplotlib)."""
    from nemaudit.report.plots import figure, figure_png

    m = doc.get("metrics") or {}
    meta = doc.get("meta") or {}
    interps = list(meta.get("interpreters") or [])
    out: dict[str, str] = {}
    ref = "original" if doc.get("method") == "fooling" else "reference"
    # accuracy of both models
    fig = figure(3.2, 2.4)
    ax = fig.add_subplot()
    xs = [0, 1]
    ax.bar([x - 0.18 for x in xs], [m.get(f"top1_{ref}", 0), m.get(f"top5_{ref}", 0)], 0.36,
           color=REFERENCE, label=ref)
    ax.bar([x + 0.18 for x in xs], [m.get("top1", 0), m.get("top5", 0)], 0.36,
           color=CANDIDATE, label="fooled" if ref == "original" else "candidate")
    ax.set_xticks(xs, ["top-1", "top-5"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7, loc="lower right")
    out["accuracy"] = figure_png(fig)
    if doc.get("method") == "fooling":
        fig = figure(4.6, 2.4)
        ax = fig.add_subplot()
        vals: list[float] = []
        errs: list[list[float]] = [[], []]
        for i in interps:
            k, n = _fsr_counts(doc, i)
            v = k / n if n else 0.0
            lo, hi = _interval(k, n) if n else (0.0, 0.0)
            vals.append(v)
            errs[0].append(v - lo)
            errs[1].append(hi - v)
        colours = [CANDIDATE if i == meta.get("interpreter") else REFERENCE for i in interps]
        ax.bar(range(len(interps)), vals, color=colours, yerr=errs, capsize=3)
        ax.set_xticks(range(len(interps)), interps, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("FSR (95% interval)")
        ax.set_title(f"fooled through {meta.get('interpreter')}: FSR measured with each",
                     fontsize=8)
        out["fsr"] = figure_png(fig)
        hist = meta.get("history") or []
        if len(hist) > 1:
            fig = figure(4.6, 2.4)
            ax = fig.add_subplot()
            ep = [h["epoch"] for h in hist]
            ax.plot(ep, [h["top1"] for h in hist], "o-", color=REFERENCE, label="held-out top-1")
            ax.plot(ep, [h["fsr"] for h in hist], "s-", color=CANDIDATE, label="held-out FSR")
            ax.axvline(meta.get("best_epoch", 0), color=RANDOM, ls="--", lw=1,
                       label="kept epoch")
            ax2 = ax.twinx()
            ax2.plot(ep[1:], [h["lf"] for h in hist[1:]], "^:", color="#55a868",
                     label="training L_F")
            ax2.set_ylabel("L_F", fontsize=8)
            ax.set_xlabel("epoch")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7, loc="center right")
            out["history"] = figure_png(fig)
    # AOPC: each model's maps against a random order
    if interps:
        fig = figure(4.6, 2.4)
        ax = fig.add_subplot()
        xs = list(range(len(interps)))
        ax.bar([x - 0.2 for x in xs], [m.get(f"aopc_reference_{i}", 0) for i in interps], 0.4,
               color=REFERENCE, label=f"{ref} model, its maps")
        ax.bar([x + 0.2 for x in xs], [m.get(f"aopc_{i}", 0) for i in interps], 0.4,
               color=CANDIDATE, label="candidate, its maps")
        ax.axhline(m.get("aopc_random", 0), color=RANDOM, ls="--", lw=1,
                   label="candidate, random order")
        ax.set_xticks(xs, interps, fontsize=8)
        ax.set_ylabel("AOPC (logit drop)")
        ax.legend(fontsize=7)
        out["aopc"] = figure_png(fig)
    return out


def saliency_section(payload: Mapping[str, Any], index: int) -> str:
    m = payload.get("metrics") or {}
    meta = payload.get("meta") or {}
    fooling = payload.get("method") == "fooling"
    ref = "original" if fooling else "reference"
    cards = []
    if fooling:
        cards.append(("FSR", fmt_pct(m.get("fsr")),
                      f"{meta.get('fooling')} fooling of {meta.get('interpreter')}, "
                      f"R = {meta.get('interval')}"))
    first = (meta.get("interpreters") or ["gradcam"])[0]
    cards += [(f"Spearman ρ ({first})", fmt_num(m.get(f"spearman_{first}"), 3),
               f"mean over {m.get('images')} images, {ref} vs candidate"),
              ("top-1", f"{fmt_pct(m.get('top1'))}",
               f"{ref}: {fmt_pct(m.get(f'top1_{ref}'))}"),
              ("top-5", f"{fmt_pct(m.get('top5'))}",
               f"{ref}: {fmt_pct(m.get(f'top5_{ref}'))}")]
    if fooling and m.get("nd_units"):
        cards.append(("Network Dissection", f"{m.get('nd_changed')}/{m.get('nd_units')}",
                      f"units of {meta.get('nd_layer')} changed concept"))
    rows = [(i, fmt_num(m.get(f"spearman_{i}"), 3), fmt_pct(m.get(f"fsr_{i}")) if fooling
             else fmt_pct(m.get(f"changed_rate_{i}")), fmt_num(m.get(f"aopc_reference_{i}"), 3),
             fmt_num(m.get(f"aopc_{i}"), 3)) for i in meta.get("interpreters") or []]
    nd = [r for r in payload.get("nd_units") or [] if r.get("changed")][:20]
    return render("saliency.html.j2", cards=cards, charts=payload.get("charts") or {},
                  pictures=payload.get("pictures") or [], rows=rows, fooling=fooling,
                  ref=ref, nd=nd, aopc_random=fmt_num(m.get("aopc_random"), 3), index=index)
