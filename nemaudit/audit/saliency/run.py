"""The saliency and fooling audits: maps of two models on the same held-out images.

:func:`run_saliency` compares a candidate with a reference model; :func:`run_fooling` first
makes the candidate (a fooled copy of the model, :func:`nemaudit.corrupt.manipulate.train.fool`),
then measures it the same way, plus the FSR of every interpreter (the paper's transfer table)
and a re-dissection of the layer with Network Dissection (does it notice?).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.audit.result import MethodResult
from nemaudit.audit.saliency import INTERPRETER_NAMES
from nemaudit.errors import SpecError

DEFAULT_IMAGES = 64
DEFAULT_THRESHOLD = 0.5


@dataclass
class SaliencyResult(MethodResult):
    """Per image: Spearman ρ between the reference's and the candidate's maps, per
    interpreter; ``changed`` when the first interpreter's ρ is below the threshold."""

    method = "saliency"
    schema = "nemaudit.saliency/1"
    changed_noun = "image(s) whose map changed"

    def diff_order(self, row: dict) -> Any:
        return row["spearman"].get(self.meta["interpreters"][0], 1.0)

    def diff_line(self, r: dict) -> str:
        rho = " ".join(f"{i} {v:+.3f}" for i, v in r["spearman"].items())
        pred = f"pred {r['reference_pred']}→{r['candidate_pred']}"
        return f"image {r['index']:>5} (class {r['label']}): ρ {rho}; {pred}"

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        if metric.startswith("changed_rate_"):
            i = metric[len("changed_rate_"):]
            thr = self.meta["spearman_threshold"]
            return [(r["spearman"][i] < thr, True) for r in self.rows if i in r["spearman"]]
        return None


@dataclass
class FoolingResult(MethodResult):
    """Per held-out image: the test loss of each interpreter and whether it lies in R."""

    method = "fooling"
    schema = "nemaudit.fooling/1"
    changed_flag = "fooled"
    changed_noun = "fooled image(s)"

    def diff_order(self, row: dict) -> Any:
        """Most fooled first: the lowest test loss for Location/Top-k, the highest for
        Center-mass and Active (their R is an upper range)."""
        t = row["test_loss"].get(self.meta["interpreter"], 0.0)
        t = sum(t) / len(t) if isinstance(t, list) else t
        return -t if self.meta["fooling"] in ("center", "active") else t

    def diff_line(self, r: dict) -> str:
        i = self.meta["interpreter"]
        t = r["test_loss"].get(i)
        tl = t if isinstance(t, float) else (t or [0.0])[0]
        return (f"image {r['index']:>5} (class {r['label']}): test loss {i} {tl:.3f} "
                f"in R {self.meta['interval']}; ρ vs original {r['spearman'].get(i, 0):+.3f}")

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        if metric in ("fsr", "fsr_c1", "fsr_c2") or metric.startswith("fsr_"):
            i = self.meta["interpreter"] if metric in ("fsr", "fsr_c1", "fsr_c2") \
                else metric[len("fsr_"):]
            col = {"fsr_c1": 0, "fsr_c2": 1}.get(metric)
            out = []
            for r in self.rows:
                h = r["hit"].get(i)
                if h is None:
                    continue
                if isinstance(h, list):
                    out.extend([(bool(h[col]), True)] if col is not None
                               else [(bool(x), True) for x in h])
                else:
                    out.append((bool(h), True))
            return out
        if metric in ("nd_flip_rate", "nd_flip_rate_detectors"):
            nd = self.meta.get("nd_rows") or []
            pool = (lambda r: True) if metric == "nd_flip_rate" else \
                (lambda r: r["clean_detector"])
            return [(bool(r["changed"]), bool(pool(r))) for r in nd]
        return None


# --------------------------------------------------------------------------- shared parts

def _interpreters(request: AuditRequest) -> tuple[str, ...]:
    return tuple(request.get("interpreters") or INTERPRETER_NAMES)


def _layer_of(request: AuditRequest, resolved: Resolved) -> str:
    layer = request.get("saliency_layer") or resolved.layer
    from nemaudit.model.layers import resolve_layer

    try:
        resolve_layer(resolved.model, layer)
    except Exception as e:
        raise SpecError(f"saliency_layer: {e}") from None
    return layer


def compare_maps(reference: torch.nn.Module, candidate: torch.nn.Module,
                 images: torch.Tensor, labels: torch.Tensor, interpreters: tuple[str, ...],
                 layer: str, *, aopc_steps: int = 8, seed: int = 0, batch_size: int = 32
                 ) -> dict[str, Any]:
    """Maps of both models, Spearman ρ per image and interpreter, AOPC of each model's maps
    (and of a random order), top-1/top-5 of both: what both audits report."""
    from nemaudit.corrupt.manipulate.data import predict
    from nemaudit.corrupt.manipulate.evaluate import accuracy, maps
    from nemaudit.explain.saliency import needs_layer
    from nemaudit.explain.saliency.metrics import aopc, spearman

    device = next(candidate.parameters()).device
    out: dict[str, Any] = {"maps": {}, "spearman": {}, "aopc": {}, "aopc_reference": {}}

    def aopc_of(model, m, random_order=False):
        vals = [aopc(model, images[i:i + batch_size].to(device),
                     labels[i:i + batch_size].to(device), m[i:i + batch_size].to(device),
                     steps=aopc_steps, seed=seed + i, random_order=random_order).cpu()
                for i in range(0, len(images), batch_size)]
        return torch.cat(vals)

    for interp in interpreters:
        lyr = layer if needs_layer(interp) else None
        ref = maps(reference, images, labels, interp, lyr, batch_size)
        cand = maps(candidate, images, labels, interp, lyr, batch_size)
        out["maps"][interp] = (ref, cand)
        out["spearman"][interp] = spearman(ref, cand)
        out["aopc"][interp] = aopc_of(candidate, cand)
        out["aopc_reference"][interp] = aopc_of(reference, ref)
    first = interpreters[0]
    out["aopc_random"] = aopc_of(candidate, out["maps"][first][1], random_order=True)
    out["accuracy_reference"] = accuracy(reference, images, labels)
    out["accuracy_candidate"] = accuracy(candidate, images, labels)
    out["reference_pred"] = predict(reference, images).argmax(1)
    out["candidate_pred"] = predict(candidate, images).argmax(1)
    return out


def _map_metrics(cmp: dict[str, Any], interpreters: tuple[str, ...], threshold: float
                 ) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for i in interpreters:
        rho = cmp["spearman"][i].double()
        m[f"spearman_{i}"] = float(rho.mean())
        m[f"changed_rate_{i}"] = float((rho < threshold).double().mean())
        m[f"aopc_{i}"] = float(cmp["aopc"][i].mean())
        m[f"aopc_reference_{i}"] = float(cmp["aopc_reference"][i].mean())
    m["aopc_random"] = float(cmp["aopc_random"].mean())
    return m


def _accuracy_metrics(cmp: dict[str, Any], ref_name: str) -> dict[str, float]:
    a, r = cmp["accuracy_candidate"], cmp["accuracy_reference"]
    return {"top1": a["top1"], "top5": a["top5"], f"top1_{ref_name}": r["top1"],
            f"top5_{ref_name}": r["top5"], "top1_drop": r["top1"] - a["top1"],
            "top5_drop": r["top5"] - a["top5"]}


def _held_out(resolved: Resolved, model: torch.nn.Module, n: int | None,
              indices: list[int] | None = None):
    from nemaudit.corrupt.manipulate.data import labelled_images

    probe = resolved.probe
    idx = list(range(len(probe))) if indices is None else list(indices)
    if n is not None:
        idx = idx[:n]
    if not idx:
        raise SpecError("no held-out images to measure the maps on")
    return labelled_images(probe, model, idx, batch_size=resolved.batch_size)


# --------------------------------------------------------------------------- saliency

def run_saliency(request: AuditRequest, resolved: Resolved) -> SaliencyResult:
    """Candidate (the request's model) vs reference (``reference=``) on the probe's images."""
    t0 = time.perf_counter()
    if resolved.corruption is not None:
        raise SpecError("a saliency audit compares two models on clean images and takes no "
                        "corruption; to corrupt the model use method 'fooling'")
    ref_spec = request.get("reference")
    if not ref_spec:
        raise SpecError("a saliency audit needs reference=<the trusted model's spec>")
    try:
        reference = resolved.resolve("model", ref_spec,
                                     weights=request.get("reference_weights"))
    except Exception as e:
        raise SpecError(f"reference {ref_spec!r}: {e}") from None
    candidate = resolved.model
    interpreters = _interpreters(request)
    layer = _layer_of(request, resolved)
    threshold = float(request.get("spearman_threshold", DEFAULT_THRESHOLD))
    held = _held_out(resolved, reference, request.get("images", DEFAULT_IMAGES))
    cmp = compare_maps(reference, candidate, held.images, held.labels, interpreters, layer,
                       aopc_steps=request.get("aopc_steps", 8), batch_size=resolved.batch_size)
    metrics = {"images": len(held), **_map_metrics(cmp, interpreters, threshold),
               **_accuracy_metrics(cmp, "reference")}
    rows = [{"index": int(held.indices[j]), "label": int(held.labels[j]),
             "spearman": {i: float(cmp["spearman"][i][j]) for i in interpreters},
             "reference_pred": int(cmp["reference_pred"][j]),
             "candidate_pred": int(cmp["candidate_pred"][j]),
             "changed": bool(cmp["spearman"][interpreters[0]][j] < threshold)}
            for j in range(len(held))]
    meta = {"interpreters": list(interpreters), "saliency_layer": layer,
            "spearman_threshold": threshold, "reference": ref_spec,
            "label_source": held.label_source, "seconds": round(time.perf_counter() - t0, 3)}
    ctx = {"images": held.images, "maps": cmp["maps"], "order": "spearman"}
    return SaliencyResult(layer, {"kind": "model", "reference": ref_spec}, rows, metrics, meta,
                          context=ctx)


# --------------------------------------------------------------------------- fooling

def fooling_config(request: AuditRequest, layer: str) -> Any:
    from nemaudit.corrupt.manipulate import FoolingConfig

    kw: dict[str, Any] = {"layer": layer}  # the rest unset: FoolingConfig's defaults
    for key, name in (("fooling", "fooling"), ("interpreter", "interpreter"),
                      ("fool_lr", "lr"), ("fool_lambda", "lam"), ("fool_epochs", "epochs"),
                      ("fool_batch_size", "batch_size"), ("fool_seed", "seed"),
                      ("active_classes", "classes"), ("max_top1_drop", "max_top1_drop")):
        if request.get(key) is not None:
            kw[name] = request.get(key)
    config = FoolingConfig(**kw)
    lo, hi = request.get("fsr_low"), request.get("fsr_high")
    if lo is None and hi is None:
        return config
    from dataclasses import replace

    from nemaudit.corrupt.manipulate.losses import FSR_INTERVALS

    d_lo, d_hi = FSR_INTERVALS[config.fooling]
    interval = (d_lo if lo is None else lo, d_hi if hi is None else hi)
    if interval[0] > interval[1]:
        raise SpecError(f"fsr_low {interval[0]} is above fsr_high {interval[1]}")
    return replace(config, interval=interval)


def run_fooling(request: AuditRequest, resolved: Resolved) -> FoolingResult:
    """Fool the request's model, then measure FSR (every interpreter), accuracy, maps and
    Network Dissection of the layer, against the original."""
    from nemaudit.corrupt.manipulate.data import labelled_images, split
    from nemaudit.corrupt.manipulate.evaluate import test_losses
    from nemaudit.corrupt.manipulate.losses import FSR_INTERVALS
    from nemaudit.corrupt.manipulate.train import fool

    t0 = time.perf_counter()
    if resolved.corruption is not None:
        raise SpecError("a fooling audit corrupts the model itself and takes no probe "
                        "corruption")
    original = resolved.model
    layer = _layer_of(request, resolved)
    config = fooling_config(request, layer)
    interpreters = _interpreters(request)
    if config.interpreter not in interpreters:
        interpreters = (config.interpreter, *interpreters)
    n_held = request.get("images", DEFAULT_IMAGES)
    train_spec = request.get("train_probe")
    if train_spec:
        try:
            train_probe = resolved.resolve("probe", train_spec)
        except Exception as e:
            raise SpecError(f"train_probe {train_spec!r}: {e}") from None
        train = labelled_images(train_probe, original, batch_size=resolved.batch_size)
        held = _held_out(resolved, original, n_held)
    else:
        tr_idx, held_idx = split(len(resolved.probe))
        train = labelled_images(resolved.probe, original, tr_idx, batch_size=resolved.batch_size)
        held = _held_out(resolved, original, n_held, held_idx)
    if request.get("train_images"):
        train = train.take(request.get("train_images"))
    class_names = (getattr(original, "meta", {}) or {}).get("class_names")
    run = fool(original, train, held, config, class_names=class_names,
               progress=resolved.progress)
    fooled = run.model
    x = run.active_images if run.active_images is not None else held.images
    labels = held.labels[:len(x)]
    interval = config.interval or FSR_INTERVALS[config.fooling]
    losses = {i: test_losses(config.fooling, i, layer, fooled, original, x, labels,
                             classes=run.classes, interval=interval) for i in interpreters}
    cmp = compare_maps(original, fooled, held.images, held.labels, interpreters, layer,
                       aopc_steps=request.get("aopc_steps", 8), seed=config.seed,
                       batch_size=resolved.batch_size)
    metrics: dict[str, Any] = {"images": len(x), **_map_metrics(cmp, interpreters,
                                                                DEFAULT_THRESHOLD),
                               **_accuracy_metrics(cmp, "original")}
    for i, tl in losses.items():
        f = tl.fsr()
        metrics[f"fsr_{i}"] = float(sum(f) / len(f))
    own = losses[config.interpreter]
    metrics["fsr"] = metrics[f"fsr_{config.interpreter}"]
    if config.fooling == "active":
        metrics["fsr_c1"], metrics["fsr_c2"] = own.fsr()
    metrics["test_loss_mean"] = float(own.losses.float().mean())
    metrics["epochs"] = len(run.history) - 1
    metrics["best_epoch"] = run.best_epoch
    rows = []
    def val(t: torch.Tensor, j: int) -> Any:
        v = t[j]
        return v.tolist() if v.dim() else (float(v) if v.is_floating_point() else bool(v))

    for j in range(len(x)):
        rows.append({"index": int(held.indices[j]), "label": int(labels[j]),
                     "test_loss": {i: val(tl.losses, j) for i, tl in losses.items()},
                     "hit": {i: val(tl.hits, j) for i, tl in losses.items()},
                     # x has at most len(held) images (active: that many composites)
                     "spearman": {i: float(cmp["spearman"][i][j]) for i in interpreters},
                     "fooled": bool(own.hits[j].all())})
    meta: dict[str, Any] = {
        "fooling": config.fooling, "interpreter": config.interpreter, "lr": config.lr,
        "lam": config.lam, "epochs_run": len(run.history) - 1, "best_epoch": run.best_epoch,
        "history": run.history, "interval": list(interval), "interpreters": list(interpreters),
        "saliency_layer": layer, "train_images": len(train), "label_source": train.label_source,
        "classes": list(run.classes) if run.classes else None, "settings": config.to_json()}
    if request.get("dissect", True):
        metrics.update(_dissect_both(request, resolved, fooled, meta))
    save = request.get("save_weights")
    from nemaudit import dist

    if save and dist.is_main():  # in a process group every rank holds the same weights
        from nemaudit.corrupt.manipulate.save import save_fooled

        w, side = save_fooled(run, save, {"model": str(request.model), "layer": layer,
                                          "probe": str(request.probe), "metrics": metrics})
        meta["weights"], meta["sidecar"] = str(w), str(side)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    ctx = {"images": x, "maps": {i: cmp["maps"][i] for i in interpreters}, "fooled": fooled,
           "run": run}
    corruption = {"kind": "fooling", "fooling": config.fooling,
                  "interpreter": config.interpreter, "lr": config.lr, "lam": config.lam}
    return FoolingResult(layer, corruption, rows, metrics, meta, context=ctx)


def _dissect_both(request: AuditRequest, resolved: Resolved, fooled: torch.nn.Module,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """Network Dissection of the layer in the original and the fooled model, unit by unit."""
    from nemaudit.audit.netdissect.cache import CleanRunCache
    from nemaudit.audit.netdissect.result import compare
    from nemaudit.audit.netdissect.run import audit_config, clean_run

    config = audit_config(request, resolved)
    cache = CleanRunCache(resolved.cache_dir)
    base = clean_run(resolved.model, resolved.layer, resolved.probe, config, resolved.device,
                     cache, resolved.progress)
    after = clean_run(fooled, resolved.layer, resolved.probe, config, resolved.device, cache,
                      resolved.progress)
    rows, m = compare(base.dissection, after.dissection)
    meta["nd_rows"] = [{k: r[k] for k in ("unit", "clean_label", "corrupted_label", "changed",
                                          "clean_detector", "clean_iou", "corrupted_iou")}
                       for r in rows]
    meta["nd_layer"] = resolved.layer
    return {"nd_units": m["units"], "nd_changed": m["changed"], "nd_flip_rate": m["flip_rate"],
            "nd_flip_rate_detectors": m.get("flip_rate_detectors")}
