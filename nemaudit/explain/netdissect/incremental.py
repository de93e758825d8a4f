"""Incremental re-dissection: when only some probe images change, recompute only them.

A corruption that poisons a share p of the probe (noise on a fraction, or a per-unit
designed attack that touches the images holding the unit's source or target concept)
changes the activations of those images only. The clean run's :class:`DissectState` holds
each unit's top values with their image ids (with slack) and the raw maps of every (image,
unit) pair that could fire at any threshold ≥ ``cut``. Dropping the changed images' entries
and adding their new values gives the exact new threshold as long as at least m values ≥ cut
remain (checked per unit; a unit that fails is reported so the caller recomputes it in
full). Masks then only need the cached clean maps of unchanged images and the new maps of
changed ones, at the new thresholds: no forward pass over unchanged images.

``changed`` may differ per unit (``[U, N]``): that is how per-unit attacks, each with its
own poisoned copy of the probe, are re-dissected together in one vectorised call.
"""

from __future__ import annotations

import dataclasses

import torch

from nemaudit.explain.common.quantile import read_quantile
from nemaudit.explain.netdissect.dissect import Dissection, tally_cached_pairs
from nemaudit.explain.netdissect.tally import IoUTally
from nemaudit.probe.base import ProbeDataset


def _pad_by_unit(units: torch.Tensor, values: torch.Tensor, n_units: int) -> torch.Tensor:
    """Scatter (unit, value) pairs into a ``[U, max count]`` matrix padded with −inf."""
    counts = torch.bincount(units, minlength=n_units)
    width = int(counts.max()) if units.numel() else 0
    out = torch.full((n_units, width), -torch.inf, device=values.device)
    if units.numel():
        order = torch.argsort(units, stable=True)
        u = units[order]
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(u.numel(), device=u.device) - start[u]
        out[u, rank] = values[order]
    return out


def redissect(clean: Dissection, probe: ProbeDataset, changed: torch.Tensor,
              new_maps: torch.Tensor, new_units: torch.Tensor, new_images: torch.Tensor,
              units: torch.Tensor | None = None, batch_size: int = 64
              ) -> tuple[Dissection, torch.Tensor]:
    """Re-dissect after the images in ``changed`` (bool ``[N]`` or per unit ``[U, N]``) got
    new activations. ``new_maps[f]`` is unit ``new_units[f]``'s map on changed image
    ``new_images[f]``; pass at least every pair whose max is ≥ ``clean.state.cut[unit]``
    (others cannot matter). Only ``units`` (default: all) are recomputed.

    Returns the new dissection and a bool ``[U]`` of units whose new threshold could not be
    read exactly from the kept state (recompute those in full; their rows are unchanged).
    """
    st = clean.state
    if st is None or st.maps is None:
        raise ValueError("the clean dissection kept no incremental state "
                         "(run dissect(..., keep_state=True) within its cache budget)")
    device = clean.thresholds.device
    n_units = clean.units
    n_images = len(probe)
    changed = changed.to(device)
    if tuple(changed.shape) not in ((n_images,), (n_units, n_images)):
        raise ValueError(f"changed must be [N] or [U, N] = [{n_units}, {n_images}], "
                         f"got {tuple(changed.shape)}")
    if changed.dim() == 1:
        changed = changed[None, :].expand(n_units, -1)
    todo = torch.zeros(n_units, dtype=torch.bool, device=device)
    if units is None:
        todo[:] = True
    else:
        todo[units.to(device)] = True
    new_maps, new_units, new_images = (t.to(device) for t in (new_maps, new_units, new_images))

    # 1. thresholds: drop changed images' kept values, add the new values ≥ cut
    q = st.quant
    kept = q.values.masked_fill(changed.gather(1, q.ids), -torch.inf)  # type: ignore[arg-type]
    flat = new_maps.flatten(1)
    f, k = (flat >= st.cut[new_units][:, None]).nonzero(as_tuple=True)
    added = _pad_by_unit(new_units[f], flat[f, k], n_units)
    pool = torch.cat([kept, added], dim=1)
    # exact iff at least m values ≥ cut remain (also when the buffer held every value: a new
    # value below the cut is not in the pool, so the count says whether it could matter)
    exact = torch.isfinite(pool).sum(dim=1) >= q.needed
    new_t = read_quantile(pool.clamp(min=torch.finfo(pool.dtype).min), q.count, q.level)
    ok = todo & exact
    thresholds = torch.where(ok, new_t, clean.thresholds)

    # 2. the tally at the new thresholds
    if st.pixels is not None:
        tally = _delta_tally(clean, probe, changed, ok, thresholds, new_maps, new_units,
                             new_images, batch_size)
    else:
        tally = _full_tally(clean, probe, changed, ok, thresholds, new_maps, new_units,
                            new_images, batch_size)
    meta = dict(clean.meta, incremental=True,
                inexact_units=(todo & ~exact).nonzero().flatten().tolist())
    return dataclasses.replace(clean, thresholds=thresholds, tally=tally, meta=meta,
                               state=None), todo & ~exact


def _cat_maps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stack two sets of maps; an empty set may carry a placeholder shape ``[0, 1, 1]``."""
    if b.shape[0] == 0:
        return a
    if a.shape[0] == 0:
        return b
    return torch.cat([a, b])


def _full_tally(clean: Dissection, probe: ProbeDataset, changed: torch.Tensor, ok: torch.Tensor,
                thresholds: torch.Tensor, new_maps: torch.Tensor, new_units: torch.Tensor,
                new_images: torch.Tensor, batch_size: int) -> IoUTally:
    """Masks of every cached clean pair of unchanged images plus the new maps, at the new
    thresholds (rows of units not ``ok`` stay the clean ones)."""
    st = clean.state
    assert st is not None and st.maps is not None
    device = clean.thresholds.device
    c_keep = ok[st.units] & ~changed[st.units, st.images] & (st.maxes > thresholds[st.units])  # type: ignore[operator, index]
    n_keep = ok[new_units] & (new_maps.amax(dim=(1, 2)) > thresholds[new_units])
    maps = _cat_maps(st.maps[c_keep], new_maps[n_keep])
    pair_units = torch.cat([st.units[c_keep], new_units[n_keep]])  # type: ignore[index]
    pair_images = torch.cat([st.images[c_keep], new_images[n_keep]])  # type: ignore[index]
    fresh = IoUTally.zeros(clean.units, clean.tally.both.shape[1], clean.tally.unit_cat.shape[1],
                           device)
    tally_cached_pairs(maps, pair_units, pair_images, thresholds, probe, batch_size,
                       clean.label_category().to(device), fresh, device)
    keep_rows = ~ok
    return IoUTally(
        both=torch.where(keep_rows[:, None], clean.tally.both, fresh.both),
        unit_cat=torch.where(keep_rows[:, None], clean.tally.unit_cat, fresh.unit_cat),
        unit_pixels=torch.where(keep_rows, clean.tally.unit_pixels, fresh.unit_pixels),
        label=clean.tally.label.clone(), images=clean.tally.images)


def _delta_tally(clean: Dissection, probe: ProbeDataset, changed: torch.Tensor, ok: torch.Tensor,
                 thresholds: torch.Tensor, new_maps: torch.Tensor, new_units: torch.Tensor,
                 new_images: torch.Tensor, batch_size: int) -> IoUTally:
    """The clean tally, corrected only where it can differ (exact: every field is a sum of
    independent per-(image, unit) contributions):

    - a changed image's pair: its clean contribution at T0 out, its new one at T1 in;
    - an unchanged image's pair of a unit whose threshold moved T0 → T1: its mask differs
      only at pixels with a value between T0 and T1, so only pairs with such a pixel are
      re-tallied, T0 out, T1 in — from the state's :class:`PixelTable`, so without
      upsampling or reading their labels again;
    - every other pair has the same mask, hence the same contribution.

    The work grows with the changed images and the pixels near a threshold, not the probe.
    """
    st = clean.state
    assert st is not None and st.maps is not None and st.pixels is not None
    device = clean.thresholds.device
    t0 = clean.thresholds
    lab_cat = clean.label_category().to(device)
    cu, ci = st.units, st.images
    assert cu is not None and ci is not None and st.maxes is not None
    table = st.pixels
    changed_pair = changed[cu, ci]
    moved = ok & (thresholds != t0)
    lo, hi = torch.minimum(t0, thresholds), torch.maximum(t0, thresholds)
    band = torch.zeros(cu.shape[0], dtype=torch.bool, device=device)
    band[table.between(lo, hi, moved.nonzero().flatten())] = True
    band &= ~changed_pair
    shape = (clean.units, clean.tally.both.shape[1], clean.tally.unit_cat.shape[1])
    minus, plus = IoUTally.zeros(*shape, device), IoUTally.zeros(*shape, device)  # type: ignore[arg-type, misc]
    table.tally((ok[cu] & changed_pair) | band, cu, t0, lab_cat, minus)
    table.tally(band, cu, thresholds, lab_cat, plus)
    n_keep = ok[new_units] & (new_maps.amax(dim=(1, 2)) > thresholds[new_units])
    tally_cached_pairs(new_maps[n_keep], new_units[n_keep], new_images[n_keep], thresholds,
                       probe, batch_size, lab_cat, plus, device)
    out = clean.tally + plus - minus
    out.label, out.images = clean.tally.label.clone(), clean.tally.images
    return out
