"""The ``nemaudit`` command: dissect, audit, describe (MILAN) and train from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from nemaudit.errors import NemauditError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nemaudit:conceptnet",
                   help="torchvision:NAME, package.module:function, or nemaudit:NAME "
                        "(default: the bundled nemaudit:conceptnet)")
    p.add_argument("--weights", default=None, help="local checkpoint (loaded with weights_only=True)")
    p.add_argument("--normalize", default=None,
                   help="imagenet | none | netdissect (the reference's (255x - mean)/(255*0.224)) "
                        "| MEAN,MEAN,MEAN/STD,STD,STD (default: the model's own; imagenet for "
                        "torchvision models)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--probe", default="synthetic:n=2000,seed=0",
                   help="synthetic:n=2000,seed=0 | broden:PATH[,split=val][,max=N] | folder:PATH")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_normalize(text: str | None):
    if text is None or text in ("imagenet", "none", "netdissect"):
        return text
    try:
        mean, std = text.split("/")
        return (tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(",")))
    except ValueError:
        raise NemauditError(f"--normalize {text!r}: expected imagenet, none, netdissect, or "
                            "'m1,m2,m3/s1,s2,s3'") from None


def cmd_dissect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nemaudit.explain.netdissect import DissectConfig, dissect
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe
    from nemaudit.report.terminal import dissection_table

    device = resolve_device(args.device)
    model = load_model(args.model, weights=args.weights,
                       normalize=_parse_normalize(args.normalize), device=device)
    probe = load_probe(args.probe)
    config = DissectConfig(eta=args.eta, iou_threshold=args.iou_threshold,
                           batch_size=args.batch_size)
    results = []
    console = Console(stderr=False)
    for layer in args.layer:
        t0 = time.perf_counter()
        d = dissect(model, layer, probe, config, device=device, progress=not args.quiet)
        d.meta.update({"model": args.model, "weights": args.weights, "probe_spec": args.probe,
                       "device": str(device), "seconds": round(time.perf_counter() - t0, 3),
                       "normalize": getattr(model, "normalize_spec", None)})
        results.append(d)
        console.print(dissection_table(d, max_rows=args.show))
    doc = {"schema": "nemaudit.dissect-run/1",
           "layers": [d.to_json() for d in results]}
    if args.out:
        _write_json(Path(args.out), doc)
        console.print(f"wrote {args.out}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from nemaudit.audit import AuditConfig, audit
    from nemaudit.explain.netdissect import DissectConfig
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe
    from nemaudit.report.terminal import audit_table

    device = resolve_device(args.device)
    model = load_model(args.model, weights=args.weights,
                       normalize=_parse_normalize(args.normalize), device=device)
    probe = load_probe(args.probe)
    config = AuditConfig(dissect=DissectConfig(eta=args.eta, batch_size=args.batch_size),
                         max_units=args.max_units)
    units = [int(u) for u in args.units.split(",")] if args.units else None
    console = Console()
    docs = []
    for layer in args.layer:
        for spec in args.corruption:
            r = audit(model, layer, probe, spec, config, device=device,
                      cache_dir=None if args.no_cache else args.cache_dir, units=units,
                      progress=not args.quiet)
            r.meta.update({"model": args.model, "probe_spec": args.probe, "device": str(device)})
            console.print(audit_table(r, max_rows=args.show))
            docs.append(r.to_json())
    if args.out:
        _write_json(Path(args.out), {"schema": "nemaudit.audit-run/1", "audits": docs})
        console.print(f"wrote {args.out}")
    return 0


def _write_json(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)


def cmd_train(args: argparse.Namespace) -> int:
    from nemaudit.model.train import main as train_main

    return int(train_main(args.rest) or 0)


def cmd_train_milan(args: argparse.Namespace) -> int:
    from nemaudit.explain.milan.train import main as train_main

    return int(train_main(args.rest) or 0)


def add_describe_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``describe`` subcommand to an ``add_subparsers()`` object."""
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
    from nemaudit.explain.milan.cli import cmd_describe as run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemaudit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dissect", help="Network Dissection of one or more layers")
    _add_model_args(p)
    p.add_argument("--layer", action="append", required=True,
                   help="layer name (repeat for several layers)")
    p.add_argument("--eta", type=float, default=0.005, help="top-η quantile (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04)
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--show", type=int, default=20, help="units shown in the summary table")
    p.set_defaults(func=cmd_dissect)
    p = sub.add_parser("audit", help="dissect clean and corrupted, print metrics and the "
                                     "per-unit diff")
    _add_model_args(p)
    p.add_argument("--layer", action="append", required=True, help="layer name (repeatable)")
    p.add_argument("--corruption", action="append", required=True,
                   help="e.g. gaussian:std=0.02,fraction=1.0 | bernoulli:std=6/255 | "
                        "pgd:eps=4/255,steps=10,targeted=false | fgsm:eps=2/255 (repeatable)")
    p.add_argument("--units", default=None, help="comma-separated unit indices (default: all)")
    p.add_argument("--max-units", type=int, default=None,
                   help="per-unit attacks: attack at most this many units (evenly spaced)")
    p.add_argument("--eta", type=float, default=0.005)
    p.add_argument("--cache-dir", default=".nemaudit-cache")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", default=None, help="write per-unit rows and metrics as JSON here")
    p.add_argument("--show", type=int, default=15, help="changed units shown")
    p.set_defaults(func=cmd_audit)
    add_describe_parser(sub)
    p = sub.add_parser("train", help="train the bundled concept-world model "
                                     "(arguments go to python -m nemaudit.model.train)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-milan", help="train the bundled offline MILAN (arguments go to "
                                           "python -m nemaudit.explain.milan.train)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train_milan)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # the train commands forward every argument (options included) to their own parsers
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "rest", None) is not None:
        args.rest = extra + list(args.rest)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (NemauditError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nemaudit: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
