"""MILAN's exemplars: per unit, the k probe images with the highest spatial max, with masks.

Steps 1–2 of the shared pipeline, at MILAN's settings (k = 15, η = 0.01, i.e. the 0.99
quantile): the threshold T_u is the exact streaming quantile of every raw activation
(:class:`~nemaudit.explain.common.quantile.TopQuantile`), the masks are
:func:`~nemaudit.explain.common.masks.unit_masks` (bilinear upsample, strict ``>``).

One forward pass does everything, with memory bounded by the units, not the probe: per unit a
running top-``depth`` of (spatial max, image index) — and, within a memory budget, the raw
maps of those images — merged batch by batch. Both states are mergeable (the top-d of a
union is the top-d of the shards' top-d). Ties in the max go to the lower image index: a
dead unit (all zeros) must get the same exemplars on every run, and ``torch.topk`` does not
promise which tied element it returns, so the merge is a two-key stable sort of the d + B
candidates (as cheap as ``topk`` at these sizes). If the maps would not fit the budget, a
second, labels-free pass over just the exemplar images recomputes them.

``keep_state=True`` keeps what a per-unit attack needs to recompute a unit's exemplars after
poisoning a few of its images, without another pass over the probe: the quantile buffers
with image ids (with ``slack``) and ``depth`` > k ranked candidates with their maps
(:func:`update_exemplars`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from nemaudit.explain.common.activations import check_finite, probe_loader, stream_activations
from nemaudit.explain.common.masks import unit_masks
from nemaudit.explain.common.quantile import TopQuantile, read_quantile
from nemaudit.explain.netdissect.incremental import _pad_by_unit
from nemaudit.model.layers import LayerRecorder, validate_units
from nemaudit.probe.base import ProbeBatch, ProbeDataset, collate
from nemaudit.progress import progress_task

__all__ = [
    "ExemplarConfig",
    "ExemplarState",
    "ExemplarTally",
    "Exemplars",
    "TopExemplars",
    "compute_exemplars",
    "compute_exemplars_layers",
    "rank_candidates",
    "update_exemplars",
]

ImageTransform = Callable[[ProbeBatch], torch.Tensor]


@dataclass
class ExemplarConfig:
    """MILAN's exemplar settings (Hernandez et al., 2022): k = 15 images, top-1% masks."""

    k: int = 15
    eta: float = 0.01
    quantile_level: float | None = None  # None: 1 − η
    batch_size: int = 64
    maps_budget_mb: float = 256.0  # above this, a second pass recomputes the exemplar maps

    @property
    def level(self) -> float:
        return 1.0 - self.eta if self.quantile_level is None else self.quantile_level

    def as_dict(self) -> dict:
        return {"k": self.k, "eta": self.eta, "quantile_level": self.level}


def rank_candidates(values: torch.Tensor, indices: torch.Tensor, depth: int
                    ) -> torch.Tensor:
    """Positions ``[U, ≤depth]`` of the top ``depth`` columns of ``values [U, n]`` ordered by
    value descending, ties to the lower ``indices`` (two stable sorts: deterministic)."""
    by_index = torch.argsort(indices, dim=1, stable=True)
    v = values.gather(1, by_index)
    order = torch.argsort(v, dim=1, descending=True, stable=True)
    return by_index.gather(1, order)[:, :depth]


@dataclass
class TopExemplars:
    """Running per-unit top-``depth`` images by spatial max (mergeable), optionally with maps."""

    depth: int
    values: torch.Tensor  # [U, d] maxes, descending
    indices: torch.Tensor  # [U, d] probe indices
    maps: torch.Tensor | None  # [U, d, h, w] raw maps, or None when not kept

    @classmethod
    def empty(cls, units: int, depth: int, device: torch.device | str = "cpu",
              keep_maps: bool = True) -> TopExemplars:
        return cls(depth, torch.empty(units, 0, device=device),
                   torch.empty(units, 0, dtype=torch.int64, device=device),
                   None if not keep_maps else torch.empty(units, 0, 0, 0, device=device))

    def update(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        """Merge a batch ``acts [B, U, h, w]`` of images ``indices [B]``."""
        mx = acts.amax(dim=(2, 3)).t()  # [U, B]
        idx = indices.to(self.indices.device)[None, :].expand(mx.shape[0], -1)
        maps = None
        if self.maps is not None:
            new = acts.transpose(0, 1)
            maps = new if self.maps.shape[1] == 0 else torch.cat([self.maps, new], dim=1)
        self._keep(torch.cat([self.values, mx], 1), torch.cat([self.indices, idx], 1), maps)

    def merge(self, other: TopExemplars) -> TopExemplars:
        """The state of the union of both shards (exact)."""
        if self.depth != other.depth or (self.maps is None) != (other.maps is None):
            raise ValueError("can only merge exemplar states of the same depth and kind")
        out = TopExemplars(self.depth, self.values, self.indices, self.maps)
        maps = None if self.maps is None else torch.cat([self.maps, other.maps], 1)  # type: ignore[list-item]
        out._keep(torch.cat([self.values, other.values], 1),
                  torch.cat([self.indices, other.indices], 1), maps)
        return out

    def _keep(self, vals: torch.Tensor, idx: torch.Tensor, maps: torch.Tensor | None) -> None:
        pos = rank_candidates(vals, idx, self.depth)
        self.values, self.indices = vals.gather(1, pos), idx.gather(1, pos)
        if maps is not None:
            self.maps = maps.gather(1, pos[:, :, None, None].expand(-1, -1, *maps.shape[2:]))


@dataclass
class ExemplarState:
    """What a per-unit attack needs to recompute exemplars incrementally."""

    quant: TopQuantile  # with image ids and slack
    cut: torch.Tensor  # [U] the buffers' smallest kept value
    top: TopExemplars  # depth > k candidates, with maps
    n_images: int


@dataclass
class Exemplars:
    """Rows are units of one layer: ``indices [U, k]`` probe images (by descending max),
    their ``maxes``, bool ``masks [U, k, h, w]`` at the segmentation size, and ``thresholds``.

    Images are read from ``probe`` (through ``transform`` for a shared corruption), unless
    ``pixels [U, k, 3, H, W]`` holds each unit's own images (a per-unit attack poisons a
    different copy for every unit).
    """

    layer: str
    units: torch.Tensor  # [U] unit ids of the rows
    indices: torch.Tensor
    maxes: torch.Tensor
    masks: torch.Tensor
    thresholds: torch.Tensor
    probe: ProbeDataset | None = field(default=None, repr=False)
    transform: ImageTransform | None = field(default=None, repr=False)
    pixels: torch.Tensor | None = field(default=None, repr=False)
    state: ExemplarState | None = field(default=None, repr=False)
    config: ExemplarConfig = field(default_factory=ExemplarConfig)
    device: torch.device | None = None  # where ``transform`` runs (the audited model's device)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @classmethod
    def concat(cls, parts: Sequence[Exemplars]) -> Exemplars:
        """Rows of several sets (e.g. several layers) over the same probe, to encode their
        images in one pass; ``layer`` becomes the comma-joined layer names."""
        first = parts[0]
        if any(p.probe is not first.probe or p.pixels is not None for p in parts):
            raise ValueError("can only concatenate exemplars read from the same probe")
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        return replace(first, layer=",".join(p.layer for p in parts), units=cat("units"),
                       indices=cat("indices"), maxes=cat("maxes"), masks=cat("masks"),
                       thresholds=cat("thresholds"), state=None)

    def subset(self, rows: Sequence[int] | torch.Tensor) -> Exemplars:
        """The exemplars of some rows only (no incremental state)."""
        r = torch.as_tensor(rows, dtype=torch.int64)
        return replace(self, units=self.units[r], indices=self.indices[r], maxes=self.maxes[r],
                       masks=self.masks[r], thresholds=self.thresholds[r],
                       pixels=None if self.pixels is None else self.pixels[r], state=None)

    def load(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Probe images ``[n, 3, H, W]`` (through ``transform``) for probe ``indices``."""
        if self.probe is None:
            raise ValueError("these exemplars carry no probe to read images from")
        batch = collate([self.probe[int(i)] for i in torch.as_tensor(indices).tolist()])
        if self.transform is None:
            return batch.images
        if self.device is not None:
            batch = batch.to(self.device)
        with torch.enable_grad():
            return self.transform(batch).detach().cpu()

    def images(self, rows: Sequence[int] | torch.Tensor | None = None,
               first: int | None = None) -> torch.Tensor:
        """The rows' exemplar images ``[r, k, 3, H, W]`` in [0, 1] (what a captioner sees);
        ``first``: only each row's top ``first`` exemplars (pictures need a few)."""
        r = torch.arange(len(self)) if rows is None else torch.as_tensor(rows, dtype=torch.int64)
        if self.pixels is not None:
            return self.pixels[r][:, :first]
        idx = self.indices[r][:, :first].cpu()
        uniq, inv = torch.unique(idx.flatten(), return_inverse=True)
        imgs = self.load(uniq)
        return imgs[inv].reshape(*idx.shape, *imgs.shape[1:])

    def rows(self) -> list[dict]:
        """JSON-ready per-unit rows (exemplar indices and maxes, threshold)."""
        return [{"unit": int(u), "threshold": float(t), "exemplars": i, "maxes": m}
                for u, t, i, m in zip(self.units.tolist(), self.thresholds.tolist(),
                                      self.indices.tolist(), self.maxes.tolist())]


class ExemplarTally:
    """The streaming state of one layer: quantile buffers and the running top-``depth``."""

    def __init__(self, n_images: int, config: ExemplarConfig, device: torch.device,
                 keep_state: bool, depth: int, slack: float, keep_maps: bool = False) -> None:
        self.n, self.config, self.device = n_images, config, device
        self.keep_state, self.depth, self.slack = keep_state, depth, slack
        self.keep_maps = keep_maps  # always keep the candidates' maps (no second pass)
        self.quant: TopQuantile | None = None
        self.top: TopExemplars | None = None

    def add(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        if self.quant is None:
            u, per = acts.shape[1], acts[0, 0].numel()
            self.quant = TopQuantile.empty(u, self.n * per, self.config.level, self.device,
                                           slack=self.slack if self.keep_state else 1.0,
                                           track_ids=self.keep_state)
            need = u * (self.depth + self.config.batch_size) * per * 4
            keep_maps = self.keep_state or self.keep_maps \
                or need <= self.config.maps_budget_mb * 2**20
            self.top = TopExemplars.empty(u, self.depth, self.device, keep_maps=keep_maps)
        self.quant.update(acts, indices)
        self.top.update(acts, indices)

    def finish(self, model: torch.nn.Module, layer: str, probe: ProbeDataset,
               sel: torch.Tensor | None, size: tuple[int, int],
               transform: ImageTransform | None) -> Exemplars:
        quant, top = self.quant, self.top
        assert quant is not None and top is not None
        k = min(self.config.k, self.n)
        thresholds = quant.readout()
        unit_ids = torch.arange(thresholds.shape[0]) if sel is None else sel
        if top.maps is None:
            top.maps = _second_pass(model, layer, probe, top.indices[:, :k], sel, self.device,
                                    self.config.batch_size, transform)
        masks = _masks(top.maps[:, :k], thresholds, size)
        state = (ExemplarState(quant, quant.lower_bound(), top, self.n)
                 if self.keep_state else None)
        return Exemplars(layer, unit_ids.cpu(), top.indices[:, :k].cpu(),
                         top.values[:, :k].cpu(), masks.cpu(), thresholds.cpu(), probe,
                         transform, None, state, self.config, self.device)


def compute_exemplars(model: torch.nn.Module, layer: str, probe: ProbeDataset,
                      config: ExemplarConfig | None = None, *,
                      units: Sequence[int] | None = None, size: tuple[int, int] | None = None,
                      device: torch.device | str = "cpu", transform: ImageTransform | None = None,
                      keep_state: bool = False, depth: int | None = None, slack: float = 3.0,
                      progress: bool = False) -> Exemplars:
    """MILAN's exemplars of ``layer`` (all units, or ``units``) on ``probe`` in one pass.

    ``transform(batch) -> images`` corrupts the probe on the fly (a shared corruption);
    ``size`` is the mask resolution (default: the probe's segmentation size).
    ``keep_state`` keeps ``depth`` (default 2k) ranked candidates with their maps and the
    quantile buffers with ``slack`` for :func:`update_exemplars`.
    """
    config = config or ExemplarConfig()
    device = torch.device(device)
    sel = None if units is None else torch.as_tensor(list(units), dtype=torch.int64)
    tally = _tally(len(probe), config, device, keep_state, depth, slack)
    loader = probe_loader(probe, config.batch_size)
    with progress_task(f"exemplars {layer}", len(probe), progress) as task:
        for batch, acts in stream_activations(model, layer, loader, device, transform):
            if sel is not None:
                if tally.quant is None:  # first batch: the layer's width is known now
                    validate_units(sel.tolist(), acts.shape[1])
                acts = acts[:, sel.to(acts.device)]
            tally.add(acts, batch.indices)
            task.advance(len(batch))
    return tally.finish(model, layer, probe, sel, tuple(size or probe.seg_size), transform)  # type: ignore[arg-type]


def _tally(n: int, config: ExemplarConfig, device: torch.device, keep_state: bool,
           depth: int | None, slack: float) -> ExemplarTally:
    k = min(config.k, n)
    depth = min(n, max(k, depth if depth is not None else (2 * k if keep_state else k)))
    return ExemplarTally(n, config, device, keep_state, depth, slack)


@torch.no_grad()
def compute_exemplars_layers(model: torch.nn.Module, layers: Sequence[str],
                             probe: ProbeDataset, config: ExemplarConfig | None = None, *,
                             device: torch.device | str = "cpu", progress: bool = False
                             ) -> dict[str, Exemplars]:
    """:func:`compute_exemplars` of several layers from one forward pass per batch (what
    building training data for every layer of a model needs)."""
    config = config or ExemplarConfig()
    device = torch.device(device)
    tallies = {name: _tally(len(probe), config, device, False, None, 1.0) for name in layers}
    model.eval()
    with progress_task("exemplars " + ",".join(layers), len(probe), progress) as task, \
            LayerRecorder(model, list(layers), stop_at_layer=True) as rec:
        for batch in probe_loader(probe, config.batch_size):
            batch = batch.to(device)
            rec.run(batch.images)
            for name in layers:
                acts = rec[name].float()
                check_finite(acts, batch.indices, name)
                tallies[name].add(acts, batch.indices)
            task.advance(len(batch))
    size = tuple(probe.seg_size)
    return {name: t.finish(model, name, probe, None, size, None) for name, t in tallies.items()}  # type: ignore[arg-type]


def _masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    u, k = maps.shape[:2]
    if u * k == 0:
        return torch.zeros(u, k, *size, dtype=torch.bool, device=maps.device)
    return unit_masks(maps.reshape(u * k, *maps.shape[2:]), thresholds.repeat_interleave(k),
                      size).reshape(u, k, *size)


@torch.no_grad()
def _second_pass(model: torch.nn.Module, layer: str, probe: ProbeDataset,
                 indices: torch.Tensor, sel: torch.Tensor | None, device: torch.device,
                 batch_size: int, transform: ImageTransform | None) -> torch.Tensor:
    """Raw maps ``[U, k, h, w]`` of the exemplar images only (no labels read)."""
    uniq = torch.unique(indices.flatten()).cpu()
    maps = None
    loader = probe_loader(probe, batch_size, indices=uniq.tolist())
    rows = torch.arange(indices.shape[0], device=indices.device)
    for batch, acts in stream_activations(model, layer, loader, device, transform):
        if sel is not None:
            acts = acts[:, sel.to(acts.device)]
        if maps is None:
            maps = torch.zeros(*indices.shape, *acts.shape[2:], device=device)
        pos = torch.searchsorted(batch.indices.to(indices.device), indices)
        pos = pos.clamp(max=len(batch) - 1)
        hit = batch.indices.to(indices.device)[pos] == indices  # [U, k]
        u, j = hit.nonzero(as_tuple=True)
        maps[u, j] = acts[pos[u, j], rows[u]]
    assert maps is not None
    return maps


@torch.no_grad()
def recompute_exemplars(model: torch.nn.Module, clean: Exemplars,
                        rows: Sequence[int] | torch.Tensor, new_maps: torch.Tensor,
                        new_rows: torch.Tensor, new_images: torch.Tensor
                        ) -> Exemplars:
    """The exact exemplars of ``rows`` from every activation, when :func:`update_exemplars`
    cannot read them from the kept state: one clean pass over the probe for these units, each
    row's changed images replaced by its own new maps (``new_maps[f]`` is row ``new_rows[f]``'s
    map on image ``new_images[f]``, as for :func:`update_exemplars`)."""
    if clean.probe is None:
        raise ValueError("these exemplars carry no probe to recompute from")
    r = torch.as_tensor(rows, dtype=torch.int64)
    units = clean.units[r]
    config = clean.config
    device = clean.device or torch.device("cpu")
    probe = clean.probe
    tally = ExemplarTally(len(probe), config, device, keep_state=False, depth=clean.k,
                          slack=1.0, keep_maps=True)
    new_rows, new_images = new_rows.to(device), new_images.to(device)
    new_maps = new_maps.to(device)
    loader = probe_loader(probe, config.batch_size)
    for batch, acts in stream_activations(model, clean.layer, loader, device):
        acts = acts[:, units.to(acts.device)].clone()
        idx = batch.indices.to(device)
        pos = torch.searchsorted(idx, new_images).clamp(max=len(idx) - 1)
        hit = (idx[pos] == new_images).nonzero().flatten()
        acts[pos[hit], new_rows[hit]] = new_maps[hit]
        tally.add(acts, idx)
    out = tally.finish(model, clean.layer, probe, units, tuple(clean.masks.shape[2:]), None)  # type: ignore[arg-type]
    return replace(out, config=config, device=clean.device)


def update_exemplars(clean: Exemplars, rows: Sequence[int] | torch.Tensor,
                     changed: torch.Tensor, new_maps: torch.Tensor, new_rows: torch.Tensor,
                     new_images: torch.Tensor) -> tuple[Exemplars, torch.Tensor]:
    """Recompute the exemplars of ``rows`` after some of their images changed, per unit.

    ``changed [len(rows), N]`` says which probe images changed for which row (each row has
    its own poisoned copy of the probe); ``new_maps[f]`` is row ``new_rows[f]``'s new raw map
    on image ``new_images[f]`` (every changed image of that row). Thresholds are re-read from
    the kept buffers (values of changed images dropped, new values added) and the exemplars
    re-ranked among the kept candidates of unchanged images and the changed images.

    Returns the updated exemplars of ``rows`` (no images attached: the caller knows which
    pixels changed) and bool ``[len(rows)]``: rows whose new threshold or ranking could not be
    read exactly from the kept state (:func:`recompute_exemplars` gives those exactly).
    """
    st = clean.state
    if st is None or st.top.maps is None:
        raise ValueError("the clean exemplars kept no state: compute_exemplars(keep_state=True)")
    r = torch.as_tensor(rows, dtype=torch.int64, device=st.cut.device)
    n_rows, k = r.numel(), clean.k
    device = st.cut.device
    changed, new_maps = changed.to(device), new_maps.to(device)
    new_rows, new_images = new_rows.to(device), new_images.to(device)
    q = st.quant
    # 1. thresholds: as nemaudit.explain.netdissect.incremental.redissect, per row
    kept = q.values[r].masked_fill(changed.gather(1, q.ids[r]), -torch.inf)
    flat = new_maps.flatten(1)
    cut = st.cut[r]
    f, pos = (flat >= cut[new_rows][:, None]).nonzero(as_tuple=True)
    added = _pad_by_unit(new_rows[f], flat[f, pos], n_rows)
    pool = torch.cat([kept, added], dim=1)
    exact = torch.isfinite(pool).sum(dim=1) >= q.needed
    if q.capacity >= q.n_total:
        exact[:] = True
    thresholds = read_quantile(pool.clamp(min=torch.finfo(pool.dtype).min), q.count, q.level)
    # 2. ranking: unchanged kept candidates + every changed image's new max
    top = st.top
    c_idx, c_val, c_maps = top.indices[r], top.values[r], top.maps[r]
    gone = changed.gather(1, c_idx)
    c_val = c_val.masked_fill(gone, -torch.inf)
    exact &= ((~gone).sum(dim=1) >= k) | (top.depth >= st.n_images)
    width = int(torch.bincount(new_rows, minlength=n_rows).max()) if new_rows.numel() else 0
    n_val = _pad_by_unit(new_rows, new_maps.amax(dim=(1, 2)), n_rows)
    slot = _pad_by_unit(new_rows, torch.arange(new_rows.numel(), device=device,
                                               dtype=torch.float32), n_rows)
    n_idx = torch.full((n_rows, width), -1, dtype=torch.int64, device=device)
    ok = torch.isfinite(slot)
    n_idx[ok] = new_images[slot[ok].long()]
    vals = torch.cat([c_val, n_val], 1)
    idx = torch.cat([c_idx, n_idx], 1)
    # dropped candidates sort last whatever their index
    order = rank_candidates(vals, torch.where(torch.isfinite(vals), idx, idx.max() + 1), k)
    out_idx, out_val = idx.gather(1, order), vals.gather(1, order)
    fh, fw = c_maps.shape[2:]
    n_maps = torch.zeros(n_rows, width, fh, fw, device=device)
    n_maps[ok] = new_maps[slot[ok].long()]
    maps = torch.cat([c_maps, n_maps], 1).gather(
        1, order[:, :, None, None].expand(-1, -1, fh, fw))
    masks = _masks(maps, thresholds, tuple(clean.masks.shape[2:]))  # type: ignore[arg-type]
    out = replace(clean, units=clean.units[r.cpu()], indices=out_idx.cpu(), maxes=out_val.cpu(),
                  masks=masks.cpu(), thresholds=thresholds.cpu(), pixels=None, state=None,
                  transform=None)
    return out, (~exact).cpu()
