"""``nemaudit fool`` (red team: fine-tune a model to fool an interpreter, measure FSR, the
transfer to other interpreters, accuracy and Network Dissection) and ``nemaudit saliency``
(audit: a candidate model's maps against a reference's)."""

from __future__ import annotations

import argparse
from typing import Any

from nemaudit.cli import common

_INTERPRETERS = ("gradcam", "simplegrad", "simplegrad_t", "lrp", "lrp_t")


def _shared(p: argparse.ArgumentParser) -> None:
    common.add_model_args(p)
    p.add_argument("--layer", default=None, help="the layer of Grad-CAM and the _t maps, and "
                                                 "the one re-dissected (default: the model's)")
    p.add_argument("--interpreters", default=None,
                   help=f"comma-separated interpreters measured (default all: "
                        f"{','.join(_INTERPRETERS)})")
    p.add_argument("--images", type=int, default=None, help="held-out images measured "
                                                            "(default 64)")
    common.add_cache_args(p)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--show", type=int, default=10, help="per-image diff lines shown")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fool", help="fine-tune the model to fool an interpreter (Heo et al. "
                                    "2019): FSR, transfer, accuracy, dissection")
    _shared(p)
    p.add_argument("--fooling", default="location", help="location | topk | center | active")
    p.add_argument("--interpreter", default="gradcam", help="the interpreter fooled: "
                                                            + " | ".join(_INTERPRETERS))
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lam", type=float, default=None, help="λ, the weight of L_F (default 5)")
    p.add_argument("--epochs", type=int, default=None, help="most epochs (default 5)")
    p.add_argument("--fool-batch-size", type=int, default=None, help="fine-tuning batch size")
    p.add_argument("--max-top1-drop", type=float, default=None,
                   help="largest held-out top-1 drop an epoch may cost (default 0.02)")
    p.add_argument("--train-probe", default=None,
                   help="images to fine-tune on (default: 3/4 of --probe, the rest held out)")
    p.add_argument("--classes", default=None, help="active fooling: two classes, e.g. "
                                                   "beach,forest")
    p.add_argument("--seed", type=int, default=None, help="seed of the fine-tuning")
    p.add_argument("--save-weights", default=None,
                   help="write the fooled state_dict here (.pt) with a .json sidecar")
    p.add_argument("--no-dissect", action="store_true", help="skip the re-dissection")
    p.set_defaults(func=run_fool)
    q = sub.add_parser("saliency", help="compare a candidate model's saliency maps with a "
                                        "reference model's")
    _shared(q)
    q.add_argument("--reference", required=True, help="the trusted model's spec")
    q.add_argument("--reference-weights", default=None, help="its checkpoint")
    q.add_argument("--threshold", type=float, default=None,
                   help="an image's map counts as changed below this Spearman ρ (default 0.5)")
    q.set_defaults(func=run_saliency)


common.FLAGS.update({"fool_lr": "--lr", "fool_lambda": "--lam", "fool_epochs": "--epochs",
                     "fool_batch_size": "--fool-batch-size", "max_top1_drop": "--max-top1-drop",
                     "train_probe": "--train-probe", "active_classes": "--classes",
                     "fool_seed": "--seed", "save_weights": "--save-weights",
                     "interpreters": "--interpreters", "images": "--images",
                     "reference": "--reference", "reference_weights": "--reference-weights",
                     "spearman_threshold": "--threshold", "fooling": "--fooling",
                     "interpreter": "--interpreter"})


def _print(console: Any, result: Any, show: int) -> None:
    from nemaudit.audit.methods import get_method

    console.print(get_method(result.method).change_summary(result.metrics), markup=False)
    for line in result.diff_lines(show):
        console.print("  " + line, markup=False)


def _run(args: argparse.Namespace, method: str, values: dict[str, Any]) -> tuple[Any, Any]:
    from rich.console import Console

    values = {"layer": args.layer, "interpreters": args.interpreters, "images": args.images,
              **values}
    req = common.request(args, method, **values)
    auditor = common.auditor(args)
    common.prepare(args, auditor, [req])
    console = Console()
    return auditor.run(req), console


def run_fool(args: argparse.Namespace) -> int:
    r, console = _run(args, "fooling", {
        "fooling": args.fooling, "interpreter": args.interpreter, "fool_lr": args.lr,
        "fool_lambda": args.lam, "fool_epochs": args.epochs,
        "fool_batch_size": args.fool_batch_size, "max_top1_drop": args.max_top1_drop,
        "train_probe": args.train_probe, "active_classes": args.classes,
        "fool_seed": args.seed, "save_weights": args.save_weights,
        "dissect": False if args.no_dissect else None})
    _print(console, r, args.show)
    m = r.metrics
    interps = r.meta["interpreters"]
    console.print("FSR by interpreter (transfer): " + ", ".join(
        f"{i} {m[f'fsr_{i}']:.3f}" for i in interps), markup=False)
    doc = {"schema": "nemaudit.fool-run/1", "fooling": r.meta["fooling"],
           "interpreter": r.meta["interpreter"], "layer": r.layer,
           "fsr": {i: m[f"fsr_{i}"] for i in interps},
           "accuracy": {"original": {"top1": m["top1_original"], "top5": m["top5_original"]},
                        "fooled": {"top1": m["top1"], "top5": m["top5"]}},
           "weights": r.meta.get("weights"), "settings": r.meta["settings"],
           "network_dissection": {k: m.get(k) for k in ("nd_units", "nd_changed",
                                                        "nd_flip_rate",
                                                        "nd_flip_rate_detectors")},
           "audit": r.to_json()}
    return common.write_json(args, doc, console) if args.out else 0


def run_saliency(args: argparse.Namespace) -> int:
    r, console = _run(args, "saliency", {"reference": args.reference,
                                         "reference_weights": args.reference_weights,
                                         "spearman_threshold": args.threshold})
    _print(console, r, args.show)
    doc = {"schema": "nemaudit.saliency-run/1", "audit": r.to_json()}
    return common.write_json(args, doc, console) if args.out else 0
