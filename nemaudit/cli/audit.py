"""``nemaudit audit``: Network Dissection clean vs corrupted, metrics and the per-unit diff."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nemaudit.cli import common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="dissect clean and corrupted, print metrics and the "
                                     "per-unit diff")
    common.add_model_args(p)
    p.add_argument("--layer", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--corruption", action="append", required=True,
                   help="e.g. gaussian:std=0.02,fraction=1.0 | bernoulli:std=6/255 | "
                        "pgd:eps=4/255,steps=10,targeted=false | fgsm:eps=2/255 (repeatable)")
    p.add_argument("--units", default=None, help="comma-separated unit indices (default: all)")
    p.add_argument("--max-units", type=int, default=None,
                   help="per-unit attacks: attack at most this many units (evenly spaced)")
    p.add_argument("--eta", type=float, default=0.005)
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="IoU of a detector (default 0.04)")
    common.add_cache_args(p)
    p.add_argument("--out", default=None, help="write per-unit rows and metrics as JSON here")
    p.add_argument("--show", type=int, default=15, help="changed units shown")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nemaudit.report.terminal import audit_table

    units = common.units_arg(args.units)
    requests = [common.request(args, "netdissect", layer=layer, corruption=spec, units=units,
                               max_units=args.max_units, eta=args.eta,
                               iou_threshold=args.iou_threshold)
                for layer in args.layer for spec in args.corruption]
    auditor = common.auditor(args)
    common.prepare(auditor, requests)
    console = Console()
    docs = []
    for req in requests:
        r = auditor.run(req)
        r.meta.update({"model": args.model, "probe_spec": args.probe,
                       "device": str(auditor.device)})
        console.print(audit_table(r, max_rows=args.show))
        docs.append(r.to_json())
    if args.out:
        common.write_json(Path(args.out), {"schema": "nemaudit.audit-run/1", "audits": docs})
        console.print(f"wrote {args.out}", markup=False)
    return 0
