"""A paired bootstrap over probe images for a clean-vs-corrupted Network Dissection audit.

A flip rate measured on one probe would differ on other images. Because the IoU tally is a
sum over images, a resampled probe's tally is a weighted sum of per-image tallies
(:mod:`nemaudit.explain.netdissect.images`): no forward pass. Each of B resamples draws
multinomial image weights w (N draws from the N images, seeded), and applies the *same*
weights to both sides (paired: image x counts w_x times clean and corrupted alike). Each
side's IoU = both / (unit_cat + label − both) is recomputed from the weighted tallies
(:meth:`IoUTally.iou`), its best concept taken by the dissection's own rule
(:func:`~nemaudit.explain.netdissect.dissect.best_concepts`: ties to the lower id, id 0 when
nothing scores), and the per-unit flags (changed, clean detector at ``iou_threshold``, …)
by the audit's own (:func:`~nemaudit.audit.netdissect.flags.unit_flags`), so each rate
of :data:`~nemaudit.audit.netdissect.flags.RATE_FLAGS` is defined exactly as the
measured one. All-ones weights give back the measured rows.

The bootstrap is *conditional on the thresholds*: T_u stays at its measured value on both
sides (recomputing the top-η quantile would need every activation again).

The interval (:func:`probe_interval`) is a percentile interval over the B resamples; by
default each resample also resamples the audited units (with replacement), so it covers the
choice of units and of probe images (``covers="units+probe"``; crossing both resamplings is
slightly conservative). With ``repeats=R`` each draw carries its own bootstrap on the same
image weights; a unit's hit is then its frequency over the draws (``"units+draws+probe"``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nemaudit.audit.confidence import Interval
from nemaudit.audit.netdissect.flags import RATE_FLAGS, unit_flags
from nemaudit.explain.netdissect.dissect import Dissection, best_concepts
from nemaudit.explain.netdissect.images import (
    ImageTallies,
    Pairs,
    TallyBudgetError,
    image_tallies,
)
from nemaudit.probe.base import ProbeDataset

#: resamples drawn per generator (and computed together, memory allowing): the weights of
#: resample b depend only on (seed, b), never on how resamples are batched
CHUNK = 32
#: scratch memory for the weighted tallies and IoUs of a batch of resamples (bytes)
SCRATCH_BYTES = 256 * 2**20


def multinomial_weights(n: int, start: int, stop: int, seed: int) -> np.ndarray:
    """Weights ``[stop − start, n]`` of resamples start..stop−1: each row counts how often
    each of the n images is drawn in n draws with replacement (a multinomial(n, 1/n)).
    Resample b comes from generator chunk b // :data:`CHUNK` of ``seed``."""
    out = []
    for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        rng = np.random.default_rng([seed, 0, c])  # ([seed, 1]: the units, below)
        idx = rng.integers(0, n, size=(CHUNK, n))
        rows = np.arange(CHUNK)[:, None] * n + idx
        out.append(np.bincount(rows.ravel(), minlength=CHUNK * n).reshape(CHUNK, n))
    w = np.concatenate(out)
    first = (start // CHUNK) * CHUNK
    return w[start - first:stop - first]


def resample_flags(clean: ImageTallies, corrupted: ImageTallies, label_category: torch.Tensor,
                   iou_threshold: float, weights: torch.Tensor, units: torch.Tensor,
                   targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-unit flags ``[B, len(units)]`` of the probes re-weighted by ``weights [B, N]``,
    both sides with the same weights (:func:`unit_flags`; ``targets [U]`` target ids,
    0 = none)."""
    best = []
    for side in (clean, corrupted):
        iou = side.weighted(weights).iou(label_category)  # [B, U, C]
        best.append(best_concepts(iou[:, units]))
    (c_lab, c_iou), (k_lab, k_iou) = best
    return unit_flags(c_lab, c_iou, k_lab, k_iou, iou_threshold,
                      None if targets is None else targets[units])


@dataclass
class ProbeBootstrap:
    """Per resample and audited unit, the flags of :func:`unit_flags` (bool ``[B, n]``)."""

    flags: dict[str, np.ndarray]
    seed: int

    @property
    def resamples(self) -> int:
        return int(next(iter(self.flags.values())).shape[0])


def bootstrap(clean: ImageTallies, corrupted: ImageTallies, label_category: torch.Tensor,
              iou_threshold: float, units: Sequence[int], resamples: int, seed: int = 0,
              targets: torch.Tensor | None = None) -> ProbeBootstrap:
    """``resamples`` paired resamples of the probe's images (see the module docstring)."""
    n = clean.images
    units_t = torch.as_tensor(list(units), dtype=torch.long)
    device = clean.both.device
    per = 8 * clean.units * (clean.concepts + clean.categories) * 4  # tallies, union, IoU
    step = int(max(1, min(CHUNK, SCRATCH_BYTES // max(per, 1))))
    parts: dict[str, list[np.ndarray]] = {}
    lab_cat = label_category.to(device)
    for s in range(0, resamples, step):
        w = torch.from_numpy(multinomial_weights(n, s, min(s + step, resamples), seed))
        flags = resample_flags(clean, corrupted, lab_cat, iou_threshold, w.to(device),
                               units_t.to(device), None if targets is None else targets.to(device))
        for k, v in flags.items():
            parts.setdefault(k, []).append(v.cpu().numpy())
    return ProbeBootstrap({k: np.concatenate(v) for k, v in parts.items()}, seed)


def probe_interval(boots: Sequence[ProbeBootstrap], metric: str, level: float = 0.95,
                   k: int = 0, n: int = 0, units: bool = True) -> Interval | None:
    """The percentile interval of ``metric`` (a key of :data:`RATE_FLAGS`) over the
    resamples of ``boots`` (one per draw of a repeated audit, all on the same image
    weights); ``k`` of ``n`` are the measured counts it reports. ``units``: also resample
    the audited units (seeded). Resamples whose pool is empty (no clean detector left) are
    dropped; None when every one is, or when the flags lack the metric's."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    hit_key, pool_key = RATE_FLAGS[metric]
    if any(hit_key not in b.flags or (pool_key and pool_key not in b.flags) for b in boots):
        return None
    first = boots[0]
    hits = np.mean([b.flags[hit_key] for b in boots], axis=0)  # [B, n] frequency over draws
    pool = first.flags[pool_key] if pool_key else np.ones(hits.shape, dtype=bool)
    b_n, n_units = hits.shape
    if units:
        rng = np.random.default_rng([first.seed, 1])  # (weights: [seed, 0, chunk])
        pick = rng.integers(0, n_units, size=(b_n, n_units))
        hits = np.take_along_axis(hits, pick, axis=1)
        pool = np.take_along_axis(pool, pick, axis=1)
    den = pool.sum(axis=1)
    ok = den > 0
    if not ok.any():
        return None
    rates = (hits * pool).sum(axis=1)[ok] / den[ok]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(rates, [alpha, 1 - alpha])
    covers = ("units+" if units else "") + ("draws+" if len(boots) > 1 else "") + "probe"
    return Interval(float(lo), float(hi), float(level), int(k), int(n), covers=covers)


def corrupted_pairs(clean: Dissection, changed: torch.Tensor | None, new: Pairs | None,
                    recomputed: Sequence[int] = (), full: Sequence[Pairs] = ()) -> Pairs:
    """The (image, unit) pairs of the corrupted side of an incremental audit: the clean
    candidate maps of the images that did not change (``changed`` bool ``[N]``, or ``[U, N]``
    per unit), the ``new`` maps of those that did, and for the units ``recomputed`` in full,
    only the pairs of their full recomputation (``full``)."""
    st = clean.state
    assert st is not None and st.maps is not None and st.units is not None \
        and st.images is not None
    keep = torch.ones(st.units.shape[0], dtype=torch.bool, device=st.units.device)
    if changed is not None:
        ch = changed.to(st.units.device)
        keep = ~(ch[st.images] if ch.dim() == 1 else ch[st.units, st.images])
    redo = torch.zeros(clean.units, dtype=torch.bool, device=st.units.device)
    if len(recomputed):
        redo[torch.as_tensor(list(recomputed), device=redo.device)] = True
    keep &= ~redo[st.units]
    maps, units, images = [st.maps[keep]], [st.units[keep]], [st.images[keep]]
    if new is not None and new[0].shape[0]:
        nk = ~redo[new[1].to(redo.device)]
        maps.append(new[0][nk].to(st.maps.device).reshape(-1, *st.maps.shape[1:]))
        units.append(new[1][nk].to(st.units.device))
        images.append(new[2][nk].to(st.units.device))
    for m, u, x in full:
        maps.append(m.to(st.maps.device))
        units.append(u.to(st.units.device))
        images.append(x.to(st.units.device))
    return torch.cat(maps), torch.cat(units), torch.cat(images)


def _corrupted_side(clean: Dissection, corrupted: Dissection, collect: dict) -> Pairs | None:
    """The corrupted side's (image, unit) pairs from what the audit collected: the clean
    pairs when nothing changed, a full re-dissection's kept state, or the incremental
    union (:func:`corrupted_pairs`); None when a candidate cache overflowed."""
    if corrupted is clean:
        st = clean.state
    elif corrupted.state is not None:  # a full re-dissection (kept for this)
        st = corrupted.state
    elif "changed" in collect:
        return corrupted_pairs(clean, collect["changed"], collect["new"],
                               collect.get("recomputed", ()), collect.get("full", ()))
    else:
        return None
    if st is None or st.maps is None:
        return None
    return st.maps, st.units, st.images  # type: ignore[return-value]


def audit_bootstrap(probe: ProbeDataset, clean: Dissection, corrupted: Dissection,
                    collect: dict, units: Sequence[int], config: Any, device: torch.device,
                    seed: int = 0) -> tuple[ProbeBootstrap | None, dict]:
    """The probe bootstrap of an audit (``config``: its
    :class:`~nemaudit.audit.netdissect.run.AuditConfig`, ``bootstrap`` resamples;
    ``collect``: what the runner kept of the corrupted side) and a summary for its meta.
    ``(None, {..., "skipped": why})`` when it cannot be had without a forward pass (a
    candidate cache over its budget) or the per-image tallies would exceed
    ``config.bootstrap_budget_mb``: the rates then keep their interval over units, and a
    warning says why."""
    t0 = time.perf_counter()
    resamples = int(config.bootstrap)
    budget_bytes = config.bootstrap_budget_mb * 2**20
    side = _corrupted_side(clean, corrupted, collect) if clean.state is not None \
        and clean.state.maps is not None else None
    if corrupted is not clean and corrupted.state is not None:
        corrupted.state = None  # kept only for this: the result does not carry it
    summary: dict = {"resamples": resamples, "seed": seed}
    if side is None:
        return _skipped(summary, "no per-image pairs to resample: a candidate cache exceeded "
                        f"its budget (cache_budget_mb={clean.config.cache_budget_mb}); "
                        "raise it for a probe bootstrap")
    st = clean.state
    assert st is not None
    try:
        tallies = image_tallies(probe, [((st.maps, st.units, st.images), clean.thresholds),  # type: ignore[list-item]
                                        (side, corrupted.thresholds)],
                                clean.label_category(), config.dissect.batch_size, device,
                                budget_bytes)
    except TallyBudgetError as e:
        return _skipped(summary, str(e))
    rows = torch.as_tensor(list(units), dtype=torch.long)
    for tally, d in zip(tallies, (clean, corrupted)):  # they must add up to what was measured
        total = tally.total()
        if not (torch.equal(total.both[rows].cpu(), d.tally.both[rows].cpu())
                and torch.equal(total.unit_cat[rows].cpu(), d.tally.unit_cat[rows].cpu())
                and torch.equal(total.label.cpu(), d.tally.label.cpu())):
            raise RuntimeError("nemaudit: the per-image tallies do not add up to the measured "
                               "tally (a bug: please report it)")
    tgt = None
    if collect.get("targets"):
        tgt = torch.zeros(clean.units, dtype=torch.long)
        for u, t in collect["targets"].items():
            tgt[u] = t
    boot = bootstrap(tallies[0], tallies[1], clean.label_category(), clean.config.iou_threshold,
                     units, resamples, seed, tgt)
    summary.update(covers="units+probe", conditional_on="thresholds",
                   tally_mib=round(sum(t.nbytes for t in tallies) / 2**20, 3),
                   seconds=round(time.perf_counter() - t0, 3))
    return boot, summary


def _skipped(summary: dict, why: str) -> tuple[None, dict]:
    import warnings

    from nemaudit.errors import NemauditWarning

    warnings.warn(f"nemaudit: no probe bootstrap ({why}); rate intervals cover units only",
                  NemauditWarning, stacklevel=3)
    return None, {**summary, "skipped": why}
