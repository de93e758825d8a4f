"""``nemaudit describe``: MILAN descriptions of units, and optionally their robustness audit.

Wired into ``nemaudit/cli.py`` with ``add_describe_parser(sub)``; the model and probe options
are the shared ones of the other subcommands.

    nemaudit describe --layer layer4 --units 0,1,2
    nemaudit describe --layer layer4 --corruption gaussian:std=0.02 --out milan.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_describe_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``describe`` subcommand to an ``add_subparsers()`` object."""
    from nemaudit.cli import _add_model_args

    p = sub.add_parser("describe", help="MILAN natural-language descriptions of units "
                                        "(offline), optionally clean vs corrupted")
    _add_model_args(p)
    p.add_argument("--layer", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--units", default=None, help="comma-separated unit indices (default: all)")
    p.add_argument("--milan", default=None,
                   help="MILAN weights (.pt with its .json next to it; default: the bundled)")
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
    p.set_defaults(func=cmd_describe)
    return p


def cmd_describe(args: argparse.Namespace) -> int:
    """Describe (and optionally audit) the units of each ``--layer``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from nemaudit.cli import _parse_normalize, _write_json
    from nemaudit.explain.milan.describer import MilanDescriber
    from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe

    device = resolve_device(args.device)
    model = load_model(args.model, weights=args.weights,
                       normalize=_parse_normalize(args.normalize), device=device)
    probe = load_probe(args.probe)
    overrides = {k: v for k, v in (("beam_size", args.beam_size), ("lam", args.lam))
                 if v is not None}
    describer = MilanDescriber.load(args.milan, device="cpu", **overrides)
    ex_cfg = ExemplarConfig(k=args.k, eta=args.eta, batch_size=args.batch_size)
    units = [int(u) for u in args.units.split(",")] if args.units else None
    console = Console()
    doc: dict[str, Any] = {"schema": "nemaudit.describe-run/1", "model": args.model,
                           "probe": args.probe, "describer": describer.describe_settings(),
                           "layers": [], "audits": []}
    for layer in args.layer:
        ex = compute_exemplars(model, layer, probe, ex_cfg, units=units, device=device,
                               progress=not args.quiet)
        texts = describer.describe(ex)
        cands = describer.candidates(ex) if args.candidates else None
        table = Table(title=f"{layer}: MILAN descriptions ({len(ex)} units)")
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
                table.add_row(str(row["unit"]), text + extra,
                              ",".join(map(str, row["exemplars"][:5])))
        console.print(table)
        doc["layers"].append({"layer": layer, "settings": ex_cfg.as_dict(), "units": rows})
        for spec in args.corruption or []:
            doc["audits"].append(_audit(model, layer, probe, spec, describer, ex_cfg, units,
                                        args, device, console))
    if args.out:
        _write_json(Path(args.out), doc)
        console.print(f"wrote {args.out}")
    return 0


def _audit(model, layer, probe, spec, describer, ex_cfg, units, args, device, console) -> dict:
    from nemaudit.audit.milan import MilanAuditConfig, audit_milan

    cfg = MilanAuditConfig(exemplars=ex_cfg, threshold=args.threshold,
                           attack_images=args.attack_images, max_units=args.max_units)
    r = audit_milan(model, layer, probe, spec, describer=describer, config=cfg, device=device,
                    units=units, progress=not args.quiet)
    m = r.metrics
    console.print(f"[bold]{layer} · {spec}[/bold]: manipulated {m['changed']}/{m['units']} "
                  f"({m['manipulated_rate']:.1%}) at F1-BERT ≤ {m['threshold']:.3f}; "
                  f"F1 mean {m['f1_mean']:.3f} ± {m['f1_std']:.3f}")
    for line in r.diff_lines(args.show):
        console.print("  " + line, markup=False)
    out = r.to_json()
    json.dumps(out)  # fail here, not when writing, if something is not serialisable
    return out
