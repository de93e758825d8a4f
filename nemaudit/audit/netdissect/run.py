"""Run a Network Dissection audit: the clean side once (cached), the corrupted side, the diff.

- Shared corruptions (noise, FGSM, PGD on the classifier) build one corrupted probe and
  re-dissect every unit on it. When they poison a share p ≤ ``incremental_max_share`` of the
  images, only those images are run through the model again
  (:func:`nemaudit.explain.netdissect.incremental.redissect`); otherwise the whole probe is.
- The designed attack (Eq. 9) is per unit: unit u gets its own poisoned copy of the probe in
  which only the images holding its source or target concept change. Units are attacked in
  chunks (one forward/backward per PGD step for a chunk of units × images), and all attacked
  units are re-dissected together, each against its own changed images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from nemaudit import dist
from nemaudit.audit.netdissect.cache import CleanRunCache, clean_run_key
from nemaudit.audit.netdissect.result import AuditResult, accuracy, compare
from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.corrupt.base import Corruption, UnitCorruption, validate_units
from nemaudit.errors import SpecError
from nemaudit.explain.common.activations import probe_loader, stream_activations
from nemaudit.explain.common.quantile import TopQuantile
from nemaudit.explain.netdissect import DissectConfig, Dissection, dissect, tally_cached_pairs
from nemaudit.explain.netdissect.incremental import redissect
from nemaudit.explain.netdissect.tally import IoUTally
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import ProbeDataset
from nemaudit.progress import progress_task


@dataclass
class AuditConfig:
    dissect: DissectConfig = field(default_factory=DissectConfig)
    attack_batch: int = 32  # images per designed-attack batch
    unit_chunk: int = 16  # units attacked together (copies batched per forward/backward)
    max_units: int | None = None  # per-unit attacks: attack at most this many (evenly spaced)
    incremental: bool = True
    incremental_max_share: float = 0.5
    slack: float = 2.0  # quantile buffer slack kept for incremental re-dissection
    bootstrap: int = 0  # resamples of the probe's images for rate intervals (0: off)
    bootstrap_budget_mb: float = 256.0  # cap on the bootstrap's per-image tallies


@dataclass
class CleanRun:
    """The clean side of an audit: the dissection (with its incremental state) and the
    classifier's predictions on the probe."""

    dissection: Dissection
    predictions: torch.Tensor | None  # [N] predicted class per probe image, if meaningful
    targets: torch.Tensor | None


def _classifies_probe(model: torch.nn.Module, probe: ProbeDataset) -> bool:
    names = probe.class_names
    if not names or probe[0].target < 0:
        return False
    meta = getattr(model, "meta", {}) or {}
    return len(meta.get("class_names", names)) == len(names)


@torch.no_grad()
def predict(model: torch.nn.Module, probe: ProbeDataset, device: torch.device,
            batch_size: int = 64, indices: Sequence[int] | None = None,
            transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, target) for the probe images (optionally corrupted). In a process
    group each rank predicts its whole batches and every rank gets all predictions."""
    wanted = list(range(len(probe))) if indices is None else list(indices)
    group = dist.active()
    pos = (list(range(len(wanted))) if group is None
           else dist.shard_batches(len(wanted), batch_size, group.rank, group.world))
    preds, targets = [], []
    if pos:
        for batch in probe_loader(probe, batch_size, indices=[wanted[p] for p in pos]):
            batch = batch.to(device)
            images = batch.images
            if transform is not None:
                with torch.enable_grad():
                    images = transform(batch)
            preds.append(model(images).argmax(dim=1).cpu())
            targets.append(batch.targets.cpu())
    empty = torch.empty(0, dtype=torch.long)
    pred, target = (torch.cat(preds), torch.cat(targets)) if preds else (empty, empty)
    if group is None:
        return pred, target
    out_p = torch.empty(len(wanted), dtype=torch.long)
    out_t = torch.empty(len(wanted), dtype=torch.long)
    for where, p, t in dist.all_gather_objects((torch.tensor(pos, dtype=torch.long), pred,
                                                target), "gathering predictions"):
        out_p[where], out_t[where] = p.long(), t.long()
    return out_p, out_t


def clean_run(model: torch.nn.Module, layer: str, probe: ProbeDataset,
              config: AuditConfig, device: torch.device | str,
              cache: CleanRunCache | None = None, progress: bool = False) -> CleanRun:
    """The clean dissection with its incremental state, from the cache when possible."""
    device = torch.device(device)  # a public entry: "cpu" is as good as torch.device("cpu")
    cache = cache or CleanRunCache(None)
    fp = model.fingerprint() if hasattr(model, "fingerprint") else None  # type: ignore[operator]
    key = None
    if fp is not None:
        key = clean_run_key(fp, layer, probe.fingerprint(), config.dissect,
                            {"slack": config.slack, "device": device.type})
    if dist.active() is not None:
        return _clean_run_in_group(model, layer, probe, config, device, cache, key, progress)
    with cache.lock(key) if key is not None else contextlib.nullcontext():
        hit = cache.load(key, device) if key is not None else None
        if hit is not None:
            d, extras = hit
            return CleanRun(d, extras.get("predictions"), extras.get("targets"))
        d, preds, targets = _clean(model, layer, probe, config, device, progress)
        if key is not None:
            cache.save(key, d, {"predictions": preds, "targets": targets})
    return CleanRun(d, preds, targets)


def _clean(model, layer, probe, config, device, progress):
    d = dissect(model, layer, probe, config.dissect, device, progress=progress,
                keep_state=True, slack=config.slack)
    preds = targets = None
    if _classifies_probe(model, probe):
        preds, targets = predict(model, probe, device, config.dissect.batch_size)
    return d, preds, targets


def _clean_run_in_group(model, layer, probe, config, device, cache, key, progress) -> CleanRun:
    """The clean run in a process group: the ranks use the cache only if every one of them
    finds the entry (no rank may skip the collective dissection the others run); rank 0
    writes a new entry (no file lock is held across collectives: a lock held by one rank
    while it waits for the others would deadlock them)."""
    hit = cache.load(key, device) if key is not None else None
    if not dist.all_max(int(hit is None), "agreeing on the clean-run cache"):
        d, extras = hit  # type: ignore[misc]
        return CleanRun(d, extras.get("predictions"), extras.get("targets"))
    d, preds, targets = _clean(model, layer, probe, config, device, progress)
    if key is not None and dist.is_main():
        with cache.lock(key):
            cache.save(key, d, {"predictions": preds, "targets": targets})
    return CleanRun(d, preds, targets)


def _cat_pairs(maps: list[torch.Tensor], units: list[torch.Tensor],
               images: list[torch.Tensor], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps, units, images) of the pairs kept in lists of pieces; empty with a placeholder
    map shape ``[0, 1, 1]`` when there are none."""
    if maps:
        return (torch.cat(maps).to(device), torch.cat(units).to(device),
                torch.cat(images).to(device))
    return (torch.empty(0, 1, 1, device=device), torch.empty(0, dtype=torch.long, device=device),
            torch.empty(0, dtype=torch.long, device=device))


def _new_pairs(model, layer, probe, indices, device, transform, cut, batch_size,
               predictions: list | None = None):
    """The maps of changed images whose max reaches ``cut`` (each rank its whole batches of
    ``indices`` in a process group; every rank gets all pairs). With a ``predictions`` list,
    the same forward pass also classifies the changed images: ``(indices, classes)`` pieces
    are appended to it."""
    group = dist.active()
    if group is not None:
        indices = [indices[p] for p in dist.shard_batches(len(indices), batch_size, group.rank,
                                                          group.world)]
    maps, units, images, classes = [], [], [], []
    if indices:
        loader = probe_loader(probe, batch_size, indices=indices)
        outputs: list | None = [] if predictions is not None else None
        for batch, acts in stream_activations(model, layer, loader, device, transform, outputs):
            b, u = (acts.amax(dim=(2, 3)) >= cut[None]).nonzero(as_tuple=True)
            maps.append(acts[b, u])
            units.append(u)
            images.append(batch.indices[b])
            if outputs is not None:
                classes.append((batch.indices.cpu(), outputs.pop().argmax(dim=1).cpu()))
    if group is not None:
        parts = dist.all_gather_objects((maps, units, images, classes), "gathering changed maps")
        maps, units, images = ([t.to(device) for part in parts for t in part[i]]
                               for i in range(3))
        classes = [c for part in parts for c in part[3]]
    if predictions is not None:
        predictions.extend(classes)
    return _cat_pairs(maps, units, images, device)


def _shared(model, layer, probe, corruption, base, config, device, progress, collect=None):
    clean = base.dissection
    poisoned = corruption.poisoned_indices(probe)
    transform = lambda batch: corruption(batch, model)  # noqa: E731
    info = {"poisoned_images": len(poisoned), "mode": "unchanged"}
    classified: list = []  # (indices, classes) of poisoned images, from the incremental pass
    if not poisoned:
        corrupted = clean
    else:
        corrupted = None
        share = len(poisoned) / len(probe)
        if config.incremental and share <= config.incremental_max_share and clean.state is not None \
                and clean.state.maps is not None:
            changed = torch.zeros(len(probe), dtype=torch.bool)
            changed[poisoned] = True
            pairs = _new_pairs(model, layer, probe, poisoned, device, transform,
                               clean.state.cut, config.dissect.batch_size,
                               classified if base.predictions is not None else None)
            corrupted, inexact = redissect(clean, probe, changed, *pairs,
                                           batch_size=config.dissect.batch_size)
            if collect is not None:  # the corrupted side's pairs, for a probe bootstrap
                collect.update(changed=changed, new=pairs)
            info["mode"] = "incremental"
            if inexact.any():
                corrupted = None
        if corrupted is None:
            corrupted = dissect(model, layer, probe, config.dissect, device, progress=progress,
                                transform=transform, keep_state=collect is not None,
                                slack=config.slack)
            info["mode"] = "full"
    if base.predictions is not None:
        preds = base.predictions.clone()
        if classified:
            for idx, cls in classified:
                preds[idx] = cls
        elif poisoned:
            preds[poisoned] = predict(model, probe, device, config.dissect.batch_size,
                                      indices=poisoned, transform=transform)[0]
        info["accuracy_clean"] = accuracy(base.predictions, base.targets)
        info["accuracy_corrupted"] = accuracy(preds, base.targets)
    rows, metrics = compare(clean, corrupted)
    return corrupted, rows, metrics, info


def _pick_units(clean: Dissection, units, max_units):
    if units is not None:
        return validate_units(units, clean.units)
    labels, _ = clean.best()
    labelled = (labels > 0).nonzero().flatten().tolist()
    if max_units is not None and len(labelled) > max_units:
        step = len(labelled) / max_units
        labelled = [labelled[math.floor(i * step)] for i in range(max_units)]
    return labelled


def _presence(probe: ProbeDataset, concepts: list[int], batch_size: int, device) -> torch.Tensor:
    """bool [N, K]: does image n carry concept concepts[k] (pixel or image-level)?"""
    ids = torch.tensor(concepts, dtype=torch.long, device=device)
    out = []
    for batch in probe_loader(probe, batch_size):
        batch = batch.to(device)
        b = len(batch)
        hit = torch.zeros(b, len(concepts), dtype=torch.bool, device=device)
        if batch.pixel_labels.numel():
            hit |= (batch.pixel_labels.reshape(b, 1, -1) == ids.view(1, -1, 1)).any(dim=2)
        if batch.image_labels.numel():
            hit |= (batch.image_labels.reshape(b, 1, -1) == ids.view(1, -1, 1)).any(dim=2)
        out.append(hit)
    return torch.cat(out)


def _per_unit(model, layer, probe, corruption: UnitCorruption, base, config, device, units,
              progress, collect=None):
    clean = base.dissection
    labels, _ = clean.best()
    attacked = _pick_units(clean, units, config.max_units)
    if not attacked:
        raise ValueError(f"layer {layer!r}: no unit has a concept to attack")
    sources = {u: int(labels[u]) for u in attacked}
    if any(s == 0 for s in sources.values()):
        bad = [u for u, s in sources.items() if s == 0]
        raise ValueError(f"unit(s) {bad[:10]} have no clean concept (IoU 0): nothing to attack")
    targets = corruption.unit_targets_for(clean.iou().cpu(), labels.cpu(), attacked)
    attacked = [u for u in attacked if u in targets]
    if not attacked:
        raise ValueError(f"every selected unit already detects the target {corruption.target!r}")
    needed = sorted(set(sources.values()) | set(targets.values()))
    pos = {c: i for i, c in enumerate(needed)}
    presence = _presence(probe, needed, config.dissect.batch_size, device).cpu()
    selected = torch.zeros(len(probe), dtype=torch.bool)
    selected[corruption.poisoned_indices(probe)] = True
    relevant = {u: (presence[:, pos[sources[u]]] | presence[:, pos[targets[u]]]) & selected
                for u in attacked}
    group = dist.active()
    # in a process group each rank attacks and re-dissects its blocks of units (the chunks a
    # single process forms); the rows are gathered below
    mine = attacked if group is None else dist.shard_items(attacked, group.rank, group.world,
                                                           block=config.unit_chunk)
    changed = torch.zeros(clean.units, len(probe), dtype=torch.bool)
    maps, pair_units, pair_images, before, after = [], [], [], [], []
    images = (torch.stack([relevant[u] for u in mine]).any(dim=0).nonzero().flatten().tolist()
              if mine else [])
    loader = probe_loader(probe, config.attack_batch, indices=images) if images else []  # type: ignore[var-annotated]
    with progress_task(f"attack {layer} ({len(mine)} units)", len(images), progress) as task, \
            LayerRecorder(model, [layer], stop_at_layer=True) as rec:
        for batch in loader:
            batch = batch.to(device)
            idx = batch.indices.cpu()
            todo = [u for u in mine if relevant[u][idx].any()]
            for s in range(0, len(todo), config.unit_chunk):
                chunk = todo[s:s + config.unit_chunk]
                res = corruption.attack_units(model, layer, batch, chunk,
                                              [sources[u] for u in chunk],
                                              None if corruption.targeted
                                              else {u: targets[u] for u in chunk})
                pu, pb = res.poisoned.nonzero(as_tuple=True)
                chunk_t = torch.tensor(chunk, device=device)
                before.append(res.objective_before[pu, pb].double().cpu())
                after.append(res.objective_after[pu, pb].double().cpu())
                # every new map is kept (they are few): a unit whose threshold the kept
                # state cannot read exactly is recomputed in full from them
                if res.maps is not None:  # the attack's last forward pass gave them
                    maps.append(res.maps[pu, pb].float())
                    pair_units.append(chunk_t[pu])
                    pair_images.append(batch.indices[pb])
                else:
                    with torch.no_grad():
                        for a in range(0, pu.numel(), config.dissect.batch_size):
                            sl = slice(a, a + config.dissect.batch_size)
                            rec.run(res.images[pu[sl], pb[sl]])
                            acts = rec[layer].float()
                            u_sel = chunk_t[pu[sl]]
                            maps.append(acts[torch.arange(acts.shape[0], device=device), u_sel])
                            pair_units.append(u_sel)
                            pair_images.append(batch.indices[pb[sl]])
                changed[chunk_t[pu].cpu(), idx[pb.cpu()]] = True
            task.advance(len(batch))
    pairs = _cat_pairs(maps, pair_units, pair_images, device)
    # a unit's rows depend on its own pairs only: each rank re-dissects (and, where the kept
    # state cannot read its threshold, recomputes in full) the units it attacked, and the
    # rows are gathered, so no rank repeats another's work
    if clean.state is not None and clean.state.maps is not None:
        corrupted, inexact = redissect(clean, probe, changed, *pairs,
                                       units=torch.tensor(mine, dtype=torch.long),
                                       batch_size=config.dissect.batch_size)
        full_units = inexact.nonzero().flatten().tolist()
    else:  # the clean candidate cache overflowed: every attacked unit is recomputed in full
        corrupted, full_units = _writable_copy(clean), sorted(mine)
    if full_units:
        _recompute_units(model, layer, probe, clean, corrupted, full_units, *pairs, config,
                         device, collect=collect)
    if group is not None:
        pairs, full_units, before, after = _gather_units(corrupted, mine, pairs, full_units,
                                                         before, after, collect, device)
        changed = dist.all_sum(changed.to(torch.int64), "gathering poisoned images") > 0
    corrupted.meta["inexact_units"] = []  # every inexact unit was recomputed
    if full_units:
        corrupted.meta["recomputed_in_full"] = full_units
    # sums in a fixed order (ascending values), so any split over ranks gives the same bits
    objective = {"before": float(torch.cat(before).sort().values.sum()) if before else 0.0,
                 "after": float(torch.cat(after).sort().values.sum()) if after else 0.0,
                 "pairs": sum(int(t.numel()) for t in before)}
    if collect is not None:  # the corrupted side's pairs, for a probe bootstrap
        collect.update(changed=changed, new=pairs, recomputed=full_units, targets=targets)
    rows, metrics = compare(clean, corrupted, attacked, targets)
    n_poisoned = changed[attacked].sum(dim=1).float()
    info = {"mode": "per-unit incremental", "attacked_units": len(attacked),
            "units_recomputed_in_full": len(full_units),
            "poisoned_images_per_unit_mean": float(n_poisoned.mean()),
            "poisoned_share_per_unit_mean": float(n_poisoned.mean()) / len(probe),
            "objective_mean_before": objective["before"] / max(objective["pairs"], 1),
            "objective_mean_after": objective["after"] / max(objective["pairs"], 1)}
    return corrupted, rows, metrics, info


def _writable_copy(clean):
    """``clean`` with its own thresholds and tally, for rows written in place (and no state)."""
    t = clean.tally
    tally = dataclasses.replace(t, both=t.both.clone(), unit_cat=t.unit_cat.clone(),
                                unit_pixels=t.unit_pixels.clone(), label=t.label.clone())
    return dataclasses.replace(clean, thresholds=clean.thresholds.clone(), tally=tally,
                               meta=dict(clean.meta, incremental=True), state=None)


def _gather_units(corrupted, mine, pairs, full_units, before, after, collect, device):
    """Every rank's re-dissected rows written into ``corrupted`` on every rank (in place);
    returns all ranks' pairs (only gathered for a probe bootstrap, which reads them), units
    recomputed in full (ascending, as one process lists them) and objective pieces."""
    fields = ("both", "unit_cat", "unit_pixels")
    rows = torch.tensor(mine, dtype=torch.long, device=device)
    piece = {"units": rows, "thresholds": corrupted.thresholds[rows],
             "tally": [getattr(corrupted.tally, f)[rows] for f in fields],
             "full": full_units, "before": before, "after": after,
             "pairs": pairs if collect is not None else None,
             "full_pairs": collect.get("full", []) if collect is not None else None}
    parts = dist.all_gather_objects(piece, "gathering the units' re-dissections")
    for part in parts:
        u = part["units"].to(device)
        corrupted.thresholds[u] = part["thresholds"].to(device)
        for f, t in zip(fields, part["tally"], strict=True):
            getattr(corrupted.tally, f)[u] = t.to(device)
    if collect is not None:
        held = [part["pairs"] for part in parts if part["pairs"][0].shape[0]]
        pairs = _cat_pairs(*([p[i] for p in held] for i in range(3)), device)
        collect["full"] = [e for part in parts for e in part["full_pairs"]]
    return (pairs, sorted(u for part in parts for u in part["full"]),
            [t for part in parts for t in part["before"]],
            [t for part in parts for t in part["after"]])


def _recompute_units(model, layer, probe, clean, corrupted, units, new_maps, new_units,
                     new_images, config, device, budget_bytes: float = 256 * 2**20,
                     collect=None):
    """Exact per-unit re-dissection from every activation, for the units whose attack moved
    more of their top values than the clean state kept (typical of strong detectors: their
    concept's images *are* their top activations). One clean forward pass per chunk of units
    gives all their maps; each unit's changed images get its own new maps; then the quantile
    and the tally as usual. Rows are written into ``corrupted`` in place."""
    n = len(probe)
    lab_cat = clean.label_category().to(device)
    todo = list(units)
    while todo:
        with torch.no_grad(), LayerRecorder(model, [layer], stop_at_layer=True) as rec:
            full, chunk = None, None
            for batch in probe_loader(probe, config.dissect.batch_size):
                batch = batch.to(device)
                rec.run(batch.images)
                acts = rec[layer].float()
                if full is None:
                    per = max(1, int(budget_bytes // (n * acts[0, 0].numel() * 4)))
                    chunk, todo = todo[:per], todo[per:]
                    full = torch.empty(n, len(chunk), *acts.shape[-2:], device=device)
                full[batch.indices] = acts[:, chunk]
        cols = torch.tensor(chunk, device=device)
        k_of = torch.full((clean.units,), -1, dtype=torch.long, device=device)
        k_of[cols] = torch.arange(len(chunk), device=device)  # type: ignore[arg-type]
        sel = k_of[new_units] >= 0
        full[new_images[sel], k_of[new_units[sel]]] = new_maps[sel]  # each unit's own world
        quant = TopQuantile.empty(len(chunk), n * full[0, 0].numel(), config.dissect.level, device)  # type: ignore[arg-type]
        quant.update(full)  # type: ignore[arg-type]
        thresholds = clean.thresholds.clone()
        thresholds[cols] = quant.readout()
        img, k = (full.amax(dim=(2, 3)) > thresholds[cols][None]).nonzero(as_tuple=True)
        fresh = IoUTally.zeros(clean.units, clean.tally.both.shape[1],
                               clean.tally.unit_cat.shape[1], device)
        tally_cached_pairs(full[img, k], cols[k], img, thresholds, probe,
                           config.dissect.batch_size, lab_cat, fresh, device)
        if collect is not None:
            collect.setdefault("full", []).append((full[img, k], cols[k], img))
        corrupted.thresholds[cols] = thresholds[cols]
        corrupted.tally.both[cols] = fresh.both[cols]
        corrupted.tally.unit_cat[cols] = fresh.unit_cat[cols]
        corrupted.tally.unit_pixels[cols] = fresh.unit_pixels[cols]
        del full


def audit(model: torch.nn.Module, layer: str, probe: ProbeDataset,
          corruption: Corruption | str, config: AuditConfig | None = None,
          device: torch.device | str = "cpu", cache_dir: str | None = None,
          units: Sequence[int] | None = None, progress: bool = False) -> AuditResult:
    """Dissect ``layer`` clean and corrupted and return the per-unit diff and metrics."""
    from nemaudit.corrupt.spec import bound_corruption

    t0 = time.perf_counter()
    config = config or AuditConfig()
    device = torch.device(device)
    corruption = bound_corruption(corruption, probe)
    base = clean_run(model, layer, probe, config, device, CleanRunCache(cache_dir), progress)
    collect: dict | None = {} if config.bootstrap else None
    if corruption.shared:
        if units is not None:
            validate_units(units, base.dissection.units)
        corrupted, rows, metrics, info = _shared(model, layer, probe, corruption, base, config,
                                                 device, progress, collect)
        if units is not None:
            rows, metrics = compare(base.dissection, corrupted, list(units))
    else:
        if not isinstance(corruption, UnitCorruption):
            raise SpecError(f"corruption kind {corruption.kind!r} is per unit (shared=False) but "
                            "does not subclass nemaudit.corrupt.base.UnitCorruption, the "
                            "interface per-unit audits call")
        corrupted, rows, metrics, info = _per_unit(model, layer, probe, corruption, base, config,
                                                   device, units, progress, collect)
    for k in ("accuracy_clean", "accuracy_corrupted"):
        metrics[k] = info.pop(k, None)
    boot = None
    if collect is not None:
        from nemaudit.audit.netdissect.bootstrap import audit_bootstrap

        boot, info["bootstrap"] = audit_bootstrap(probe, base.dissection, corrupted, collect,
                                                  [r["unit"] for r in rows], config, device)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["probe"] = probe.name
    info["images"] = len(probe)
    context = {"model": model, "probe": probe, "corruption": corruption, "config": config,
               "device": device, "targets": {r["unit"]: r["target"] for r in rows}}
    return AuditResult(layer, corruption.describe(), rows, metrics, info, base.dissection,
                       corrupted, context, probe_bootstrap=boot)


def audit_config(request: AuditRequest, resolved: Resolved) -> AuditConfig:
    """The runner's settings from a request (its own ``eta``/``iou_threshold``) and the run's
    batch size and default unit cap."""
    kw: dict = {"batch_size": resolved.batch_size, "num_workers": resolved.workers}
    for key in ("eta", "iou_threshold"):
        if request.get(key) is not None:
            kw[key] = request.get(key)
    cap = request.max_units if request.max_units is not None else resolved.max_units
    return AuditConfig(dissect=DissectConfig(**kw), max_units=cap,
                       bootstrap=request.get("bootstrap", 0))


def run_request(request: AuditRequest, resolved: Resolved) -> AuditResult:
    """The registered method's entry point (:class:`nemaudit.audit.netdissect.NetDissect`)."""
    return audit(resolved.model, resolved.layer, resolved.probe, resolved.corruption,
                 audit_config(request, resolved), device=resolved.device,
                 cache_dir=resolved.cache_dir, units=request.units, progress=resolved.progress)


def clean_dissection(request: AuditRequest, resolved: Resolved) -> Dissection:
    """The clean dissection a request's audit starts from (shared cache)."""
    base = clean_run(resolved.model, resolved.layer, resolved.probe,
                     audit_config(request, resolved), resolved.device,
                     CleanRunCache(resolved.cache_dir), resolved.progress)
    return base.dissection
