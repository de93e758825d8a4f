"""``nemaudit dissect``: Network Dissection of one or more layers (the clean side an audit
starts from, from the cache the pytest plugin shares)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from nemaudit.cli import common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dissect", help="Network Dissection of one or more layers")
    common.add_model_args(p)
    p.add_argument("--layer", action="append", required=True,
                   help="layer name (repeat for several layers)")
    p.add_argument("--eta", type=float, default=0.005, help="top-η quantile (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04)
    common.add_cache_args(p)
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--show", type=int, default=20, help="units shown in the summary table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nemaudit.report.terminal import dissection_table

    requests = [common.request(args, "netdissect", layer=layer, eta=args.eta,
                               iou_threshold=args.iou_threshold) for layer in args.layer]
    auditor = common.auditor(args)
    common.prepare(args, auditor, requests)
    console = Console(stderr=False)
    results = []
    for req in requests:
        t0 = time.perf_counter()
        d = auditor.clean_dissection(req)
        model = auditor.model(req.model, req.weights, req.normalize)
        d.meta.update({"model": args.model, "weights": args.weights, "probe_spec": args.probe,
                       "device": str(auditor.device),
                       "seconds": round(time.perf_counter() - t0, 3),
                       "normalize": getattr(model, "normalize_spec", None)})
        results.append(d)
        console.print(dissection_table(d, max_rows=args.show))
    doc = {"schema": "nemaudit.dissect-run/1", "layers": [d.to_json() for d in results]}
    return common.write_json(args, doc, console) if args.out else 0
