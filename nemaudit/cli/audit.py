"""``nemaudit audit``: a layer's explanations clean vs corrupted, metrics and the per-unit diff.

Network Dissection by default; ``--method NAME`` audits with any registered method
(:data:`nemaudit.audit.methods.METHODS`), its own settings given as ``--set key=value``.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--method", default="netdissect",
                   help="the explanation method audited (default netdissect; milan, or any "
                        "registered method)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a setting of the method (repeatable), e.g. --set exemplars=5 with "
                        "--method milan; the spec-file fields of that method")
    p.add_argument("--eta", type=float, default=None, help="Network Dissection: top-η "
                                                          "quantile (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="Network Dissection: IoU of a detector (default 0.04)")
    common.add_cache_args(p)
    p.add_argument("--out", default=None, help="write per-unit rows and metrics as JSON here")
    p.add_argument("--show", type=int, default=15, help="changed units shown")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nemaudit.audit.methods import DEFAULT_METHOD, get_method
    from nemaudit.report.terminal import audit_table

    units = common.units_arg(args.units)
    own = common.settings_arg(args.settings)
    if args.method == DEFAULT_METHOD:
        own.update(eta=args.eta, iou_threshold=args.iou_threshold)
    elif args.eta is not None or args.iou_threshold is not None:
        from nemaudit.errors import SpecError

        raise SpecError(f"--eta and --iou-threshold are Network Dissection settings; with "
                        f"--method {args.method} give its own with --set (valid: "
                        f"{', '.join(get_method(args.method).fields) or 'none'})")
    requests = [common.request(args, args.method, layer=layer, corruption=spec, units=units,
                               max_units=args.max_units, **own)
                for layer in args.layer for spec in args.corruption]
    auditor = common.auditor(args)
    common.prepare(args, auditor, requests)
    console = Console()
    docs = []
    for req in requests:
        r = auditor.run(req)
        r.meta.update({"model": args.model, "probe_spec": args.probe,
                       "device": str(auditor.device)})
        if r.method == DEFAULT_METHOD:
            console.print(audit_table(r, max_rows=args.show))
        else:
            console.print(f"{r.layer} · {req.corruption}: "
                          f"{get_method(r.method).change_summary(r.metrics)}", markup=False)
            for line in r.diff_lines(args.show):
                console.print("  " + line, markup=False)
        docs.append(r.to_json())
    doc = {"schema": "nemaudit.audit-run/1", "audits": docs}
    return common.write_json(args, doc, console) if args.out else 0
