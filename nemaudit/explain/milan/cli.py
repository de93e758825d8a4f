"""``nemaudit describe``: MILAN descriptions of units, and optionally their robustness audit.

The options are declared in ``nemaudit/cli.py`` (so ``nemaudit --help`` imports no torch);
this module runs the command.

    nemaudit describe --layer layer4 --units 0,1,2
    nemaudit describe --layer layer4 --corruption gaussian:std=0.02 --out milan.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_describe(args: argparse.Namespace) -> int:
    """Describe (and optionally audit) the units of each ``--layer``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from nemaudit.cli import _parse_normalize, _write_json
    from nemaudit.corrupt.spec import parse_corruption
    from nemaudit.explain.milan.describer import MilanDescriber
    from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe

    for spec in args.corruption or []:  # a bad spec fails now, not after the clean pass
        parse_corruption(spec)
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
