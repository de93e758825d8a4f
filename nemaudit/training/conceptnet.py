"""Train the bundled ``ConceptNet`` on the embedded concept world.

``python -m nemaudit.training.conceptnet`` (or ``nemaudit train``) writes ``conceptnet.pt`` (a
state_dict) and ``conceptnet.json`` (architecture sizes, class and concept names, training
arguments, metrics, the exact command) to ``--out`` (default: the package's weights folder).

Choices, and why:

- Data: ``SyntheticProbe`` with seeds ``data_seed`` / ``data_seed + 1`` (1 and 2 by default)
  for train / validation, so the default audit probe (seed 0) stays held out. All images are
  generated once into a uint8 tensor (6,000 x 3 x 112 x 112 = 226 MB) so epochs cost only the
  network; random horizontal flips are the only augmentation (they keep concept presence).
- Loss: cross-entropy on the class + binary cross-entropy on concept presence, summed over
  concepts and averaged over images (each concept is its own binary task at the scale of the
  CE term). A concept is present when it labels at least ``min_pixels`` pixels of the
  segmentation, or is an image-level label. The presence biases start at the training prior
  so the first steps are not spent learning that most concepts are absent.
- Adam with a short linear warm-up then cosine decay, batch 64, channels-last tensors (about
  2x faster convolutions on CPU than contiguous NCHW).
- Determinism: ``torch.manual_seed(seed)`` fixes initialisation and a seeded generator fixes
  the order and flips; on CPU the result is repeatable for a fixed thread count (float
  reductions in oneDNN kernels may differ across thread counts or machines); on CUDA cuDNN may
  pick nondeterministic kernels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nemaudit.model.bundled import BUNDLED, DEFAULT_BUNDLED, WEIGHTS_DIR, ConceptNet
from nemaudit.model.device import resolve_device
from nemaudit.model.load import NormalizedModel

DatasetFactory = Callable[[int, int], Any]  # (n, seed) -> ProbeDataset

#: Defaults: ~90k image-steps; measured ~400 images/s training on 2 idle CPU cores
#: (~230/s on one), so ~4 minutes idle and under 10 minutes with the cores shared.
DEFAULTS: dict[str, Any] = {
    "n_train": 6000, "n_val": 1000, "epochs": 15, "seed": 0, "data_seed": 1, "width": 16,
    "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-5, "presence_weight": 1.0,
    "min_pixels": 4, "image_size": 112, "seg_size": 56,
}
MAX_WEIGHTS_BYTES = 5 * 1024 * 1024
AUDIT_PROBE_SEED = 0


def synthetic_factory(image_size: int = 112, seg_size: int = 56) -> DatasetFactory:
    """The concept world at the training resolution (imported lazily)."""
    def make(n: int, seed: int) -> Any:
        try:
            from nemaudit.probe.synthetic import SyntheticProbe
        except ImportError as e:  # pragma: no cover - depends on the package state
            raise RuntimeError("nemaudit.probe.synthetic is not available; cannot build the "
                               "concept world to train on") from e
        return SyntheticProbe(n, seed, image_size=image_size, seg_size=seg_size)
    return make


class _Materialized:
    """A probe rendered once into memory: uint8 images, class targets, presence targets."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, presence: torch.Tensor):
        self.images, self.targets, self.presence = images, targets, presence

    def __len__(self) -> int:
        return self.images.shape[0]


def materialize(ds: Any, min_pixels: int, num_concepts: int,
                tick: Callable[[], None] | None = None) -> _Materialized:
    """Render every item of ``ds``; presence[i, c] = concept c labels >= ``min_pixels`` pixels
    of image i or is one of its image-level labels (column 0, "no label", stays 0)."""
    n = len(ds)
    first = ds[0]
    c, h, w = first.image.shape
    images = torch.empty(n, c, h, w, dtype=torch.uint8)
    targets = torch.empty(n, dtype=torch.int64)
    presence = torch.zeros(n, num_concepts, dtype=torch.bool)
    for i in range(n):
        item = first if i == 0 else ds[i]
        if item.image.shape != (c, h, w):
            raise ValueError(f"image {i} is {tuple(item.image.shape)}, expected {(c, h, w)}")
        images[i] = (item.image.clamp(0, 1) * 255).round().to(torch.uint8)
        if item.target < 0:
            raise ValueError(f"image {i} has no class target; training needs a probe with "
                             "class labels")
        targets[i] = item.target
        pl = item.pixel_labels.reshape(-1)
        if pl.numel():
            counts = torch.bincount(pl, minlength=num_concepts)[:num_concepts]
            presence[i] = counts >= min_pixels
        il = item.image_labels[item.image_labels > 0]
        presence[i, il] = True
        presence[i, 0] = False
        if tick is not None:
            tick()
    return _Materialized(images, targets, presence)


def _batch(data: _Materialized, idx: torch.Tensor, device: torch.device,
           flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = data.images[idx].to(device, non_blocking=True).float().div_(255)
    if flip is not None:
        x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(-1), x)
    x = x.contiguous(memory_format=torch.channels_last)
    return x, data.targets[idx].to(device), data.presence[idx].to(device).float()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-column ROC AUC (Mann-Whitney, ties averaged); NaN where a column lacks a class."""
    n, k = scores.shape
    out = torch.full((k,), float("nan"))
    labels = labels.bool()
    for j in range(k):
        pos = int(labels[:, j].sum())
        neg = n - pos
        if pos == 0 or neg == 0:
            continue
        s = scores[:, j].double()
        order = torch.argsort(s)
        sorted_s = s[order]
        ranks = torch.empty(n, dtype=torch.float64)
        # average ranks over ties
        _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True,
                                                      return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        avg = ends - (counts.double() - 1) / 2
        ranks[order] = avg[inverse]
        out[j] = float((ranks[labels[:, j]].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return out


@torch.no_grad()
def evaluate(model: NormalizedModel, data: _Materialized, device: torch.device,
             batch_size: int = 256) -> dict[str, Any]:
    """Class accuracy and presence accuracy/AUC (concept columns 1..)."""
    model.eval()
    correct, logits_all = 0, []
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x, y, _ = _batch(data, idx, device)
        cls, pres = model.model.forward_heads(model.normalize(x))  # type: ignore[operator]
        correct += int((cls.argmax(1) == y).sum())
        logits_all.append(pres.float().cpu())
    pres_logits = torch.cat(logits_all)[:, 1:]
    pres_true = data.presence[:, 1:]
    auc = roc_auc(pres_logits, pres_true)
    valid = ~torch.isnan(auc)
    pred = pres_logits > 0
    tp = int((pred & pres_true).sum())
    return {
        "class_accuracy": correct / len(data),
        "presence_accuracy": float((pred == pres_true).float().mean()),
        "presence_precision": tp / max(int(pred.sum()), 1),
        "presence_recall": tp / max(int(pres_true.sum()), 1),
        "presence_mean_auc": float(auc[valid].mean()) if valid.any() else float("nan"),
        "presence_auc_concepts": int(valid.sum()),
        "_auc": auc,  # per concept (column j -> concept id j + 1); removed before saving
    }


def _command_line(args: dict[str, Any], out_dir: Path) -> str:
    parts = ["python", "-m", "nemaudit.training.conceptnet", "--out", str(out_dir)]
    for key, default in DEFAULTS.items():
        if key in args and args[key] != default:
            parts += [f"--{key.replace('_', '-')}", str(args[key])]
    return shlex.join(parts)


def train_bundled(out_dir: str | Path, n_train: int = DEFAULTS["n_train"],
                  n_val: int = DEFAULTS["n_val"], epochs: int = DEFAULTS["epochs"],
                  seed: int = DEFAULTS["seed"], width: int = DEFAULTS["width"],
                  device: str = "auto", progress: bool = True, *,
                  data_seed: int = DEFAULTS["data_seed"],
                  batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                  weight_decay: float = DEFAULTS["weight_decay"],
                  presence_weight: float = DEFAULTS["presence_weight"],
                  min_pixels: int = DEFAULTS["min_pixels"],
                  image_size: int = DEFAULTS["image_size"], seg_size: int = DEFAULTS["seg_size"],
                  name: str = DEFAULT_BUNDLED, threads: int | None = None,
                  dataset_factory: DatasetFactory | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """Train ``ConceptNet`` and write ``<name>.pt`` + ``<name>.json`` to ``out_dir``.

    Returns the metrics dict (also stored in the JSON). ``dataset_factory(n, seed)`` replaces
    the concept world (tests use a tiny fake probe).
    """
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED)}")
    if min(n_train, n_val, epochs, batch_size, width) < 1:
        raise ValueError("n_train, n_val, epochs, batch_size and width must be positive")
    if AUDIT_PROBE_SEED in (data_seed, data_seed + 1):
        print(f"warning: data seed {data_seed} overlaps the default audit probe seed "
              f"{AUDIT_PROBE_SEED}; the audit probe will not be held out", file=sys.stderr)
    spec = BUNDLED[name]
    out_dir = Path(out_dir)
    args = {"n_train": n_train, "n_val": n_val, "epochs": epochs, "seed": seed,
            "data_seed": data_seed, "width": width, "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay, "presence_weight": presence_weight,
            "min_pixels": min_pixels, "image_size": image_size, "seg_size": seg_size}
    command = command or _command_line(args, out_dir)
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    factory = dataset_factory or synthetic_factory(image_size, seg_size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t_start = time.time()

    train_ds, val_ds = factory(n_train, data_seed), factory(n_val, data_seed + 1)
    num_concepts = int(train_ds.num_concepts)
    class_names = list(train_ds.class_names or [])

    with _progress(progress) as prog:
        task = prog.add_task("rendering train/val images", total=n_train + n_val, info="")
        tick = (lambda: prog.advance(task)) if progress else None
        train = materialize(train_ds, min_pixels, num_concepts, tick)
        val = materialize(val_ds, min_pixels, num_concepts, tick)
        t_data = time.time() - t_start
        num_classes = max(len(class_names), int(train.targets.max()) + 1)
        if not class_names:
            class_names = [str(i) for i in range(num_classes)]

        net = ConceptNet(num_classes=num_classes, num_concepts=num_concepts, width=width)
        prior = train.presence.float().mean(0).clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            net.presence.bias.copy_(torch.log(prior / (1 - prior)))
        model = NormalizedModel(net, spec.normalize).to(dev)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = max(1, len(train) // batch_size)  # drop the ragged last batch
        total = steps_per_epoch * epochs
        warmup = min(200, max(1, total // 20))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
            0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))))

        history: list[dict[str, float]] = []
        t_train0, seen = time.time(), 0
        ep_task = prog.add_task("training", total=total, info="")
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(train), generator=gen)
            flips = torch.rand(len(train), generator=gen) < 0.5
            loss_sum = cls_sum = pres_sum = correct = count = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                x, y, p = _batch(train, idx, dev, flips[idx])
                cls, pres = model.model.forward_heads(model.normalize(x))  # type: ignore[operator]
                l_cls = F.cross_entropy(cls, y)
                l_pres = F.binary_cross_entropy_with_logits(
                    pres[:, 1:], p[:, 1:], reduction="sum") / x.shape[0]
                loss = l_cls + presence_weight * l_pres
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bs = x.shape[0]
                seen += bs
                count += bs
                loss_sum += loss.item() * bs
                cls_sum += l_cls.item() * bs
                pres_sum += l_pres.item() * bs
                correct += float((cls.argmax(1) == y).sum())
                prog.update(ep_task, advance=1, info=f"epoch {epoch + 1}/{epochs} "
                            f"loss {loss_sum / count:.3f} acc {correct / count:.3f}")
            history.append({"epoch": epoch + 1, "loss": loss_sum / count,
                            "class_loss": cls_sum / count, "presence_loss": pres_sum / count,
                            "train_class_accuracy": correct / count})
        t_train = time.time() - t_train0
        val_metrics = evaluate(model, val, dev)

    auc = val_metrics.pop("_auc")
    concepts = list(getattr(train_ds, "concepts", []))
    by_cat: dict[str, list[float]] = {}
    for j, a in enumerate(auc.tolist()):
        if not math.isnan(a) and j + 1 < len(concepts):
            by_cat.setdefault(concepts[j + 1].category, []).append(a)
    metrics = {
        **{f"val_{k}": v for k, v in val_metrics.items()},
        "val_presence_mean_auc_by_category": {c: sum(v) / len(v) for c, v in by_cat.items()},
        "train_class_accuracy_last_epoch": history[-1]["train_class_accuracy"],
        "train_loss_last_epoch": history[-1]["loss"],
        "history": history,
        "train_images_per_second": seen / max(t_train, 1e-9),
        "seconds_data": t_data,
        "seconds_train": t_train,
        "seconds_total": time.time() - t_start,
    }
    _save(out_dir, name, model.model, spec, args, metrics, command, dev,  # type: ignore[arg-type]
          class_names=class_names, concepts=concepts, train_ds=train_ds,
          presence_rate=[round(v, 5) for v in prior.tolist()])
    if progress:
        _print_summary(metrics, out_dir / f"{name}.pt")
    return metrics


def _save(out_dir: Path, name: str, net: ConceptNet, spec: Any, args: dict[str, Any],
          metrics: dict[str, Any], command: str, dev: torch.device, *, class_names: list[str],
          concepts: list[Any], train_ds: Any, presence_rate: list[float]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    dtype = "float32"
    if sum(v.numel() * v.element_size() for v in sd.values()) > MAX_WEIGHTS_BYTES * 0.95:
        # Package data must stay small; loading copies into float32 parameters.
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
        dtype = "float16"
    weights = out_dir / f"{name}.pt"
    torch.save(sd, weights)
    blob = weights.read_bytes()
    meta = {
        "name": name,
        "architecture": type(net).__name__,
        "arch": {"num_classes": net.num_classes, "num_concepts": net.num_concepts,
                 "width": net.width},
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "normalize": spec.normalize,
        "default_layer": spec.default_layer,
        "input": {"image_size": args["image_size"], "range": "[0, 1] RGB, normalised by the "
                  "wrapper", "seg_size": args["seg_size"]},
        "class_names": class_names,
        "presence_head": "column j = concept id j; column 0 (no label) is untrained",
        "concepts": [[c.id, c.name, c.category] for c in concepts],
        "train_presence_rate": presence_rate,
        "probe": {"name": getattr(train_ds, "name", type(train_ds).__name__),
                  "class": f"{type(train_ds).__module__}.{type(train_ds).__qualname__}",
                  "train_seed": args["data_seed"], "val_seed": args["data_seed"] + 1},
        "training": args,
        "metrics": metrics,
        "command": command,
        "weights_file": weights.name,
        "weights_dtype": dtype,
        "weights_bytes": len(blob),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(dev), "threads": torch.get_num_threads(),
                        "platform": platform.platform()},
        "determinism": "seeded; repeatable on CPU for a fixed thread count; CUDA/cuDNN and "
                       "different thread counts may change float reductions",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / f"{name}.json").write_text(_dumps(_finite(meta)) + "\n", encoding="utf-8")


def _finite(obj: Any) -> Any:
    """NaN/inf (e.g. an AUC with no positives) -> null, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any, level: int = 0) -> str:
    """JSON with one line per short list (readable concept tables, diff-friendly)."""
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return nullcontext(_NoProgress())
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    refresh_per_second=2)


class _NoProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        pass

    def update(self, *a: Any, **k: Any) -> None:
        pass


def _print_summary(metrics: dict[str, Any], weights: Path) -> None:
    from rich.console import Console
    Console().print(
        f"[bold green]saved[/] {weights} ({weights.stat().st_size / 1e6:.2f} MB): "
        f"val class accuracy {metrics['val_class_accuracy']:.3f}, presence mean AUC "
        f"{metrics['val_presence_mean_auc']:.3f} over {metrics['val_presence_auc_concepts']} "
        f"concepts, {metrics['train_images_per_second']:.0f} images/s, "
        f"{metrics['seconds_total']:.0f} s total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options (shared with the ``nemaudit train`` subcommand)."""
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR,
                        help="output folder for <name>.pt and <name>.json "
                             "(default: the package's bundled weights folder)")
    parser.add_argument("--name", default=DEFAULT_BUNDLED, choices=sorted(BUNDLED))
    for key, default in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=default,
                            help=f"(default: {default})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None, prog: str = "python -m nemaudit.training.conceptnet") -> int:
    """Command-line entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description="Train the bundled ConceptNet "
                                     "on the embedded concept world.")
    add_arguments(parser)
    ns = parser.parse_args(argv)
    kwargs = {k: getattr(ns, k) for k in DEFAULTS}
    train_bundled(ns.out, device=ns.device, progress=not ns.no_progress, name=ns.name,
                  threads=ns.threads, command=shlex.join([*shlex.split(prog), *argv]), **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
