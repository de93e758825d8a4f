"""``nemaudit describe``: MILAN descriptions of units, and optionally their robustness audit.

    nemaudit describe --layer layer4 --units 0,1,2
    nemaudit describe --layer layer4 --corruption gaussian:std=0.02 --out milan.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from nemaudit.cli import common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("describe", help="MILAN natural-language descriptions of units "
                                        "(offline), optionally clean vs corrupted")
    common.add_model_args(p)
    p.add_argument("--layer", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--units", default=None, help="comma-separated unit indices (default: all)")
    p.add_argument("--describer", default=None,
                   help="milan:PATH (MILAN weights with their .json) | "
                        "python:module:callable(...) (any Describer); default: the bundled")
    p.add_argument("--milan", default=None, help="MILAN weights (.pt with its .json next to "
                                                 "it): the same as --describer milan:PATH")
    p.add_argument("--k", type=int, default=15, help="exemplars per unit (default 15)")
    p.add_argument("--eta", type=float, default=0.01, help="top-η masks (default 0.01)")
    p.add_argument("--beam-size", type=int, default=None, help="default 50")
    p.add_argument("--lam", type=float, default=None,
                   help="reranking weight λ in log p(d|E) − λ log p(d) (default 0.2)")
    p.add_argument("--candidates", type=int, default=0,
                   help="also print this many reranked beam candidates per unit")
    p.add_argument("--corruption", action="append", default=None,
                   help="audit the descriptions under a corruption (repeatable), e.g. "
                        "gaussian:std=0.02 | pgd:eps=4/255,steps=10")
    p.add_argument("--threshold", type=float, default=None,
                   help="F1-BERT manipulation threshold (default: calibrated for MiniLM)")
    p.add_argument("--attack-images", type=int, default=None,
                   help="pgd: poison each unit's first N clean exemplars (default: all k)")
    p.add_argument("--max-units", type=int, default=None,
                   help="pgd: attack at most this many units (evenly spaced)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--show", type=int, default=30, help="units shown per table")
    p.set_defaults(func=run)


def _describer_spec(args: argparse.Namespace) -> str | None:
    from nemaudit.errors import SpecError

    if args.milan is not None and args.describer is not None:
        raise SpecError("give --describer or --milan, not both")
    return f"milan:{args.milan}" if args.milan is not None else args.describer


def run(args: argparse.Namespace) -> int:
    """Describe (and optionally audit) the units of each ``--layer``."""
    from rich.console import Console

    from nemaudit.errors import SpecError

    if args.candidates < 0:
        raise SpecError(f"--candidates {args.candidates}: expected an integer >= 0")
    units = common.units_arg(args.units)
    settings = {"units": units, "describer": _describer_spec(args), "exemplars": args.k,
                "exemplar_eta": args.eta, "beam_size": args.beam_size, "lam": args.lam,
                "f1_threshold": args.threshold, "attack_images": args.attack_images,
                "max_units": args.max_units}
    plain = [common.request(args, "milan", layer=layer, **settings) for layer in args.layer]
    audits = {layer: [common.request(args, "milan", layer=layer, corruption=spec, **settings)
                      for spec in args.corruption or []] for layer in args.layer}
    auditor = common.auditor(args, cache=False)
    common.prepare(args, auditor, [*plain, *(r for rs in audits.values() for r in rs)])
    console = Console()
    first = plain[0]
    describer = auditor.describer(first.get("describer"), **{
        k: first.get(k) for k in ("beam_size", "lam") if first.get(k) is not None})
    doc: dict[str, Any] = {"schema": "nemaudit.describe-run/1", "model": args.model,
                           "probe": args.probe, "describer": describer.describe_settings()
                           if hasattr(describer, "describe_settings")
                           else type(describer).__name__, "layers": [], "audits": []}
    for req in plain:
        doc["layers"].append(_describe(auditor, req, describer, args, console))
        for audit_req in audits[req.layer]:
            doc["audits"].append(_audit(auditor, audit_req, args, console))
    return common.write_json(args, doc, console) if args.out else 0


def _describe(auditor: Any, req: Any, describer: Any, args: argparse.Namespace,
              console: Any) -> dict:
    """The clean descriptions of one layer's units, as a table and a JSON entry."""
    from rich.table import Table
    from rich.text import Text

    from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars

    resolved = auditor.resolve(req, corruption=False)
    ex_cfg = ExemplarConfig(k=req.get("exemplars"), eta=req.get("exemplar_eta"),
                            batch_size=args.batch_size)
    ex = compute_exemplars(resolved.model, resolved.layer, resolved.probe, ex_cfg,
                           units=None if req.units is None else list(req.units),
                           device=auditor.device, progress=not args.quiet)
    texts = describer.describe(ex)
    cands = describer.candidates(ex) if args.candidates else None
    table = Table(title=Text(f"{resolved.layer}: MILAN descriptions ({len(ex)} units)"))
    for col in ("unit", "description", "top exemplars"):
        table.add_column(col)
    rows = []
    for r, text in enumerate(texts):
        row = {"unit": int(ex.units[r]), "description": text,
               "exemplars": ex.indices[r].tolist(), "threshold": float(ex.thresholds[r])}
        if cands is not None:
            row["candidates"] = [{"text": t, "log_p_caption": a, "log_p_lm": b}
                                 for t, a, b in cands[r][:args.candidates]]
        rows.append(row)
        if r < args.show:
            extra = ("\n" + "\n".join(f"  {c['text']}" for c in row["candidates"])
                     if cands is not None else "")
            table.add_row(str(row["unit"]), Text(text + extra),  # describer words: no markup
                          ",".join(map(str, row["exemplars"][:5])))
    console.print(table)
    return {"layer": resolved.layer, "settings": ex_cfg.as_dict(), "units": rows}


def _audit(auditor: Any, req: Any, args: argparse.Namespace, console: Any) -> dict:
    r = auditor.run(req)
    m = r.metrics
    from rich.markup import escape

    console.print(f"[bold]{escape(f'{r.layer} · {req.corruption}')}[/bold]: manipulated "
                  f"{m['changed']}/{m['units']} ({m['manipulated_rate']:.1%}) at F1-BERT ≤ "
                  f"{m['threshold']:.3f}; F1 mean {m['f1_mean']:.3f} ± {m['f1_std']:.3f}")
    for line in r.diff_lines(args.show):
        console.print("  " + line, markup=False)
    out = r.to_json()
    json.dumps(out)  # fail here, not when writing, if something is not serialisable
    return out
