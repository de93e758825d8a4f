"""What every ``nemaudit`` command shares: the model/probe/device flags, turning flags into
audit requests (validated by the same rules as spec files), the Auditor, and writing JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nemaudit.audit.request import AuditRequest

#: request field → the flag that sets it (errors name the flag the user typed)
FLAGS = {"model": "--model", "weights": "--weights", "normalize": "--normalize",
         "probe": "--probe", "layer": "--layer", "corruption": "--corruption",
         "units": "--units", "max_units": "--max-units", "eta": "--eta",
         "iou_threshold": "--iou-threshold", "exemplars": "--k", "f1_threshold": "--threshold",
         "describer": "--describer", "exemplar_eta": "--eta", "attack_images": "--attack-images",
         "beam_size": "--beam-size", "lam": "--lam"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nemaudit:conceptnet",
                   help="torchvision:NAME, package.module:function, path/file.py:function or "
                        "nemaudit:NAME (default: the bundled nemaudit:conceptnet)")
    p.add_argument("--weights", default=None, help="local checkpoint (loaded with weights_only=True)")
    p.add_argument("--normalize", default=None,
                   help="imagenet | none | netdissect (the reference's (255x - mean)/(255*0.224)) "
                        "| MEAN,MEAN,MEAN/STD,STD,STD (default: the model's own; imagenet for "
                        "torchvision models)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--probe", default="synthetic:n=2000,seed=0",
                   help="synthetic:n=2000,seed=0 | broden:PATH[,split=val][,max=N] | "
                        "folder:PATH | python:module:callable(...)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes decoding the probe ahead of the forward "
                        "pass (default 0: in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=".nemaudit-cache",
                   help="clean-run cache, shared with pytest --nemaudit (default .nemaudit-cache)")
    p.add_argument("--no-cache", action="store_true")


def units_arg(text: str | None) -> list[int] | None:
    """``--units 0,3,7``; a bad list is a clear error naming the flag."""
    from nemaudit.errors import SpecError

    if not text:
        return None
    try:
        return [int(u) for u in text.split(",") if u.strip()]
    except ValueError:
        raise SpecError(f"--units {text!r}: expected comma-separated unit indices, "
                        "e.g. 0,3,7") from None


def settings_arg(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs → typed settings (numbers, booleans, else text)."""
    from nemaudit.errors import SpecError
    from nemaudit.specs import guess, normalize_key

    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise SpecError(f"--set {pair!r}: expected KEY=VALUE")
        out[normalize_key(key)] = guess(value)
    return out


def request(args: argparse.Namespace, method: str, **values: Any) -> AuditRequest:
    """An audit request from the shared flags plus ``values``, validated as spec files are."""
    return AuditRequest.build(method, name=lambda f: FLAGS.get(f, f"--set {f}="),
                              model=args.model, weights=args.weights,
                              normalize=args.normalize, probe=args.probe, **values)


def auditor(args: argparse.Namespace, cache: bool = True) -> Any:
    """The Auditor the command runs on (the same class the pytest fixture uses)."""
    from nemaudit.auditor import Auditor

    if args.batch_size < 1:
        from nemaudit.errors import SpecError

        raise SpecError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    if getattr(args, "workers", 0) < 0:
        from nemaudit.errors import SpecError

        raise SpecError(f"--workers {args.workers}: expected an integer >= 0")
    cache_dir = None
    if cache and not getattr(args, "no_cache", False):
        cache_dir = getattr(args, "cache_dir", None)
    return Auditor(args.device, cache_dir=cache_dir, batch_size=args.batch_size,
                   workers=getattr(args, "workers", 0), progress=not args.quiet)


def prepare(args: argparse.Namespace, auditor: Any, requests: list[AuditRequest]) -> None:
    """Check ``--out`` and resolve every request before any work, so a bad path or spec
    fails in a second, naming the flag, not after the first layer's audit."""
    from nemaudit.auditor import RequestError
    from nemaudit.errors import SpecError

    check_out(args)
    for r in requests:
        try:
            auditor.prepare(r)
        except RequestError as e:
            raise SpecError(f"{FLAGS.get(e.field, e.field)}: {e}") from None


def check_out(args: argparse.Namespace) -> None:
    """A bad ``--out`` fails now, before any forward pass, not after the whole run."""
    if getattr(args, "out", None):
        from nemaudit.files import check_output

        check_output(args.out, "--out")


def write_json(args: argparse.Namespace, doc: dict, console: Any) -> int:
    """Write ``--out``; if that fails after all (disk full, folder gone), keep the result
    beside the cache and say where (exit code 1: the requested file is not there)."""
    from nemaudit.files import atomic_write_text, save_elsewhere

    text = json.dumps(doc, indent=1)
    try:
        atomic_write_text(args.out, text)
    except OSError as e:
        kept = save_elsewhere(text.encode(), f"{args.command}.json",
                              [getattr(args, "cache_dir", None), ".nemaudit-cache"])
        print(f"nemaudit: could not write {args.out} ({e}); the result is saved in {kept}",
              file=sys.stderr)
        return 1
    console.print(f"wrote {args.out}", markup=False)
    return 0
