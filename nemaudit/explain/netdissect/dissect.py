"""Network Dissection, streamed, exact, and vectorised.

One forward pass over the probe does three things per batch: it feeds the per-unit top-η
quantile buffers, counts label areas, and keeps the raw maps of (image, unit) pairs that can
still fire (their max is above the quantile's running lower bound — a small share once the
buffers fill). When the thresholds are known, a second pass reads only the *labels* of the
images with candidate pairs and tallies the masks (:mod:`.tally`). If the
candidate cache ever exceeds its memory budget, it is dropped and the second pass re-runs the
forward pass instead: slower, same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from nemaudit.explain.common.activations import probe_loader, stream_activations
from nemaudit.explain.common.quantile import TopQuantile, merge_across_ranks, reference_level
from nemaudit.explain.netdissect.tally import (
    IoUTally,
    accumulate,
    check_label_range,
    label_tally,
    tally_pairs,
)
from nemaudit.probe.base import ProbeDataset
from nemaudit.progress import progress_task

SCHEMA = "nemaudit.dissection/1"


@dataclass
class DissectConfig:
    """Network Dissection settings; the defaults are the reference's."""

    eta: float = 0.005  # top-η quantile for the threshold
    quantile_level: float | None = None  # None: the level the reference reads (994/999)
    iou_threshold: float = 0.04  # a unit is a detector when its best IoU reaches this
    top_k: int = 5
    batch_size: int = 64
    cache_budget_mb: float = 512.0
    num_workers: int = 0  # DataLoader workers decoding the probe ahead of the forward pass

    @property
    def cache_budget_bytes(self) -> float:
        """The candidate cache's budget; the pixel table of a kept state gets half of it."""
        return self.cache_budget_mb * 2**20

    @property
    def level(self) -> float:
        return reference_level(self.eta) if self.quantile_level is None else self.quantile_level

    def as_dict(self) -> dict:
        return {"eta": self.eta, "quantile_level": self.level, "iou_threshold": self.iou_threshold,
                "top_k": self.top_k}


class CandidateCache:
    """Raw maps of (image, unit) pairs whose max exceeds the unit's running lower bound."""

    def __init__(self, budget_bytes: float, device: torch.device | str = "cpu") -> None:
        self.budget = budget_bytes
        self.device = device
        self.maps: list[torch.Tensor] = []
        self.units: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.maxes: list[torch.Tensor] = []
        self.nbytes = 0
        self._last_pruned = 0
        self.overflow = False

    def add(self, acts: torch.Tensor, indices: torch.Tensor, bound: torch.Tensor) -> None:
        if self.overflow:
            return
        mx = acts.amax(dim=(2, 3))
        b, u = (mx > bound[None, :]).nonzero(as_tuple=True)
        if b.numel():
            self.maps.append(acts[b, u].clone())
            self.units.append(u)
            self.images.append(indices[b])
            self.maxes.append(mx[b, u])
            self.nbytes += self.maps[-1].numel() * 4
        if self.nbytes > self.budget or self.nbytes > max(2 * self._last_pruned, 16 << 20):
            self.prune(bound)
            if self.nbytes > self.budget:
                self.overflow = True
                self.maps, self.units, self.images, self.maxes = [], [], [], []

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(maps [P, h, w], units [P], images [P], maxes [P]) of the cached pairs."""
        if not self.maps:
            z = torch.empty(0, dtype=torch.int64, device=self.device)
            return torch.empty(0, 1, 1, device=self.device), z, z, torch.empty(0, device=self.device)
        if len(self.maps) > 1:
            self.maps, self.units, self.images, self.maxes = ([torch.cat(x)] for x in (
                self.maps, self.units, self.images, self.maxes))
        return self.maps[0], self.units[0], self.images[0], self.maxes[0]

    def prune(self, bound: torch.Tensor) -> None:
        if not self.maps:
            return
        maps, units, images, maxes = (torch.cat(x) for x in
                                      (self.maps, self.units, self.images, self.maxes))
        keep = maxes > bound[units]
        self.maps, self.units, self.images, self.maxes = ([maps[keep]], [units[keep]],
                                                          [images[keep]], [maxes[keep]])
        self.nbytes = self._last_pruned = int(keep.sum()) * maps[0].numel() * 4


@dataclass
class DissectState:
    """What a clean run keeps so a corrupted run can recompute only the changed images:
    the top values with their image ids (with slack) and the raw maps of every (image, unit)
    pair whose max exceeds ``cut`` (the buffers' smallest value, a floor for any threshold
    the incremental path may produce)."""

    quant: TopQuantile
    cut: torch.Tensor  # [U]
    maps: torch.Tensor | None  # [P, h, w]; None if the candidate cache overflowed
    units: torch.Tensor | None  # [P]
    images: torch.Tensor | None  # [P]
    maxes: torch.Tensor | None  # [P]
    #: every upsampled pixel of a cached pair above its unit's ``cut``, with its labels: the
    #: pairs' masks at any thresholds ≥ cut, without upsampling or reading labels again
    #: (:class:`PixelTable`); None when over its budget
    pixels: PixelTable | None = None


@dataclass
class PixelTable:
    """The cached pairs' mask pixels at the lowest threshold any re-dissection can read.

    Entry e is a pixel of pair ``pair[e]`` (an index into the state's cached pairs) whose
    upsampled activation ``value[e]`` exceeds the pair's unit's cut, with the pixel's labels
    ``labels[e]`` (one per label layer, 0 = none). ``scalars[p]`` are pair p's image-level
    entries. The mask of pair p at a threshold T ≥ cut is exactly its entries with value > T,
    so the pair's tally at any such T is :func:`.tally.accumulate` of those entries
    (:meth:`tally`) — what makes incremental re-dissection cost what the change costs.
    A pair's entries are stored by descending value, so its mask at T is a prefix of its run
    (found by one binary search in :attr:`pair_key`): no entry below T is read."""

    pair: torch.Tensor  # [E] int64, ascending; within a pair, by descending value
    value: torch.Tensor  # [E] float32
    labels: torch.Tensor  # [E, L] int32
    scalars: torch.Tensor  # [P, S] int64
    offsets: torch.Tensor  # [P + 1]: pair p's entries are offsets[p]:offsets[p + 1]
    #: the entries again, sorted by (unit, value): ``key`` = unit·2³² + the value's order-
    #: preserving 32-bit code, ``key_pair`` their pairs — a unit's entries between two
    #: thresholds are one range of it (:meth:`between`)
    key: torch.Tensor  # [E] int64, ascending
    key_pair: torch.Tensor  # [E] int64
    #: pair·2³² + (2³² − 1 − the value's order code), per entry in storage order: ascending
    pair_key: torch.Tensor  # [E] int64

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device: torch.device | str) -> PixelTable:
        return PixelTable(**{k: t.to(device) for k, t in self.to_dict().items()})

    def between(self, lo: torch.Tensor, hi: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Pairs (indices) with an entry of value in (lo[u], hi[u]] for their unit u among
        ``units``: binary searches in :attr:`key`, work proportional to those entries."""
        u = units.to(torch.int64)
        start = torch.searchsorted(self.key, _order_key(u, lo[u]), right=True)
        stop = torch.searchsorted(self.key, _order_key(u, hi[u]), right=True)
        return self.key_pair[_ranges(start, stop)]

    def mask_ends(self, idx: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """For pairs ``idx``, the end of each one's entries with value > ``thresholds[k]``
        (its mask at that threshold is ``offsets[idx[k]]:end[k]``)."""
        return torch.searchsorted(self.pair_key, _pair_key(idx, thresholds))

    def tally(self, select: torch.Tensor, units: torch.Tensor, thresholds: torch.Tensor,
              label_category: torch.Tensor, out: IoUTally) -> None:
        """Add the contributions of the pairs ``select`` (bool ``[P]``; pair p is unit
        ``units[p]``'s) at ``thresholds`` to ``out``."""
        idx = select.nonzero().flatten()
        if idx.numel() == 0:
            return
        start = self.offsets[idx]
        stop = self.mask_ends(idx, thresholds[units[idx]])
        count = (stop - start).clamp(min=0)
        e = _ranges(start, stop)  # every mask pixel of the pairs, nothing below threshold
        f = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), count)
        accumulate(out, units[idx], count, f, self.labels[e], self.scalars[idx],
                   label_category)


@dataclass
class Dissection:
    """The result of dissecting one layer: thresholds, the mergeable tally, and IoUs."""

    layer: str
    thresholds: torch.Tensor  # [U]
    tally: IoUTally
    concepts: list  # probe concepts (index = id)
    categories: list[str]
    config: DissectConfig
    meta: dict = field(default_factory=dict)
    state: DissectState | None = None  # kept for incremental re-dissection (keep_state=True)

    @property
    def units(self) -> int:
        return int(self.thresholds.shape[0])

    def label_category(self) -> torch.Tensor:
        return label_category(self.concepts, self.categories)

    def iou(self) -> torch.Tensor:
        """``[U, C]`` IoU of every unit with every concept."""
        return self.tally.iou(self.label_category())

    def ranking(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Concepts per unit sorted by IoU, ties to the lower concept id (stable sort)."""
        iou = self.iou().cpu()
        vals, idx = iou.sort(dim=1, descending=True, stable=True)
        return vals, idx

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(label id [U], IoU [U])``; id 0 for units whose best IoU is 0 (never fire on a
        labelled pixel)."""
        return best_concepts(self.iou().cpu())

    def rows(self) -> list[dict]:
        """One JSON-ready row per unit: label, category, IoU and the top-k concepts."""
        vals, idx = self.ranking()
        k = self.config.top_k
        out = []
        for u in range(self.units):
            top = [{"concept": self.concepts[c].name, "category": self.concepts[c].category,
                    "iou": float(v)} for v, c in zip(vals[u, :k].tolist(), idx[u, :k].tolist())
                   if v > 0]
            first = top[0] if top else None
            out.append({
                "unit": u,
                "label": first["concept"] if first else None,
                "category": first["category"] if first else None,
                "iou": first["iou"] if first else 0.0,
                "detector": bool(first and first["iou"] >= self.config.iou_threshold),
                "threshold": float(self.thresholds[u]),
                "mask_pixels": int(self.tally.unit_pixels[u]),
                "top": top,
            })
        return out

    def detectors(self) -> dict:
        """Detector counts per category (a unit counts in its label's category)."""
        label, iou = self.best()
        per = {c: 0 for c in self.categories}
        is_det = iou >= self.config.iou_threshold
        for lid in label[is_det].tolist():
            per[self.concepts[lid].category] += 1
        total = int(is_det.sum())
        return {"per_category": per, "total": total, "units": self.units,
                "share": total / max(self.units, 1),
                "unique_concepts": len(set(label[is_det].tolist()))}

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "layer": self.layer, "settings": self.config.as_dict(),
                "meta": self.meta, "thresholds": self.thresholds.tolist(),
                "detectors": self.detectors(), "units": self.rows()}


def best_concepts(iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(label id, IoU)`` of the best concept along the last axis of ``iou [..., C]``: ties
    to the lower concept id (the first of :meth:`Dissection.ranking`'s stable sort), id 0
    where the best IoU is 0. Leading axes are kept (``[B, U]`` for resampled probes)."""
    best_iou, best = iou.max(dim=-1)  # the first maximal index: the lower id
    return torch.where(best_iou > 0, best, torch.zeros_like(best)), best_iou


def label_category(concepts: list, categories: list[str]) -> torch.Tensor:
    """Category index of each concept id (−1 for the placeholder id 0)."""
    pos = {c: i for i, c in enumerate(categories)}
    return torch.tensor([-1] + [pos[c.category] for c in concepts[1:]], dtype=torch.int64)


def dissect(model: torch.nn.Module, layer: str, probe: ProbeDataset,
            config: DissectConfig | None = None, device: torch.device | str = "cpu",
            progress: bool = False, transform=None, keep_state: bool = False,
            slack: float = 2.0, distributed: bool = True) -> Dissection:
    """Dissect ``layer`` of ``model`` (which takes [0, 1] images) on ``probe``.

    ``transform(batch) -> images`` corrupts each batch on the fly (nothing is saved);
    ``keep_state`` keeps what :func:`nemaudit.explain.netdissect.incremental.redissect` needs, with
    ``slack``× the quantile buffer.

    In a process group (:mod:`nemaudit.dist`, ``distributed=True``) each rank dissects its
    shard of whole batches; the quantile state is merged and the tallies summed, so every
    rank returns the single-process result (with ``keep_state``, every rank holds the whole
    state: the candidate maps are gathered).
    """
    from nemaudit import dist

    config = config or DissectConfig()
    device = torch.device(device)
    group = dist.active() if distributed else None
    categories = probe.categories
    lab_cat = label_category(probe.concepts, categories).to(device)
    n_concepts = probe.num_concepts
    shard = None if group is None else dist.shard_batches(len(probe), config.batch_size,
                                                          group.rank, group.world)
    loader = probe_loader(probe, config.batch_size, indices=shard,
                          num_workers=config.num_workers, pin_memory=device.type == "cuda")
    quant: TopQuantile | None = None
    label_counts = torch.zeros(n_concepts, dtype=torch.int64, device=device)
    cache = CandidateCache(config.cache_budget_bytes, device)
    total = len(probe) if shard is None else len(shard)
    with progress_task(f"dissect {layer}", total, progress) as task:
        for batch, acts in stream_activations(model, layer, loader, device, transform):
            check_label_range(batch.pixel_labels, batch.image_labels, n_concepts, batch.indices,
                              len(categories))
            if quant is None:
                quant = _empty_quantile(acts.shape[1], len(probe) * acts[0, 0].numel(), config,
                                        device, slack, keep_state)
            quant.update(acts, batch.indices)
            label_counts += label_tally(batch.pixel_labels, batch.image_labels, n_concepts)
            cache.add(acts, batch.indices, quant.lower_bound())
            task.advance(len(batch))
    if group is not None:
        if quant is None:  # a rank with no batch of its own (a probe smaller than the group)
            shape = _layer_shape(model, layer, probe, device)
            quant = _empty_quantile(shape[0], len(probe) * shape[1] * shape[2], config, device,
                                    slack, keep_state)
        quant = merge_across_ranks(quant)
        dist.all_sum(label_counts, "summing label areas")
        cache.overflow = bool(dist.all_max(int(cache.overflow), "agreeing on the cache"))
    assert quant is not None
    thresholds = quant.readout()
    tally = IoUTally.zeros(thresholds.shape[0], n_concepts, len(categories), device)
    tally.images = len(probe)
    state = None
    if not cache.overflow:
        cut = quant.lower_bound()
        cache.prune(cut)
        maps, units, images, maxes = cache.tensors()
        fire = maxes > thresholds[units]
        tally_cached_pairs(maps[fire], units[fire], images[fire], thresholds, probe,
                           config.batch_size, lab_cat, tally, device)
        if keep_state:
            if group is not None:
                maps, units, images, maxes = _gather_pairs(maps, units, images, maxes, device)
            state = DissectState(quant, cut, maps, units, images, maxes,  # type: ignore[arg-type]
                                 pixel_table(maps, units, images, cut, probe,
                                             config.batch_size, device,
                                             config.cache_budget_bytes / 2))
    else:
        if keep_state:
            state = DissectState(quant, quant.lower_bound(), None, None, None, None)  # type: ignore[arg-type]
        with progress_task(f"tally {layer} (2nd pass)", total, progress) as task:
            for batch, acts in stream_activations(model, layer, loader, device, transform):
                tally_batch(acts, batch.pixel_labels, batch.image_labels, thresholds, lab_cat, tally)
                task.advance(len(batch))
    if group is not None:  # distributed=False: this rank's whole-probe tally is the result
        tally.sum_across_ranks()
    tally.label = label_counts
    meta = {"probe": probe.name, "images": len(probe),
            "cache_overflow": cache.overflow}
    if group is not None:
        meta["ranks"] = group.world
    return Dissection(layer, thresholds, tally, list(probe.concepts), categories, config,
                      meta=meta, state=state)


def _ranges(start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """The positions ``start[i]:stop[i]`` for every i, concatenated."""
    sizes = (stop - start).clamp(min=0)
    total = int(sizes.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.int64, device=start.device)
    base = torch.repeat_interleave(start - (torch.cumsum(sizes, 0) - sizes), sizes)
    return base + torch.arange(total, device=start.device)


def _order_key(units: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """unit·2³² + a 32-bit code of the float32 value that sorts as the value does (the IEEE
    bits, with the magnitude bits of negatives flipped, shifted to be non-negative)."""
    values = values.float() + 0.0  # −0.0 + 0.0 = +0.0: equal floats, equal codes
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    code = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31
    return units.to(torch.int64) * 2**32 + code


def _pair_key(pairs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """pair·2³² + (2³² − 1 − order code of the value): ascending = by pair, then by
    descending value (:class:`PixelTable`'s storage order)."""
    code = _order_key(torch.zeros_like(pairs), values)
    return pairs.to(torch.int64) * 2**32 + (2**32 - 1 - code)


def pixel_table(maps: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
                cut: torch.Tensor, probe: ProbeDataset, batch_size: int, device: torch.device,
                budget_bytes: float, chunk: int = 2048) -> PixelTable | None:
    """The :class:`PixelTable` of cached pairs (maps of ``units`` on ``images``): one
    upsampling and one label read per pair, done once with the clean run. None when it
    would exceed ``budget_bytes`` (36 bytes and 4 per label layer an entry)."""
    from nemaudit.explain.common.masks import upsample

    size = tuple(probe.seg_size)
    p_all = maps.shape[0]
    order = torch.argsort(images, stable=True)
    pairs, values, labels, scal_rows, scal = [], [], [], [], []
    total = 0
    if p_all:
        sorted_images = images[order]
        wanted = torch.unique(sorted_images).cpu()
        for batch in probe_loader(probe, batch_size, indices=wanted.tolist()):
            batch = batch.to(device)
            lo = int(torch.searchsorted(sorted_images, batch.indices[0]))
            hi = int(torch.searchsorted(sorted_images, batch.indices[-1], right=True))
            for a in range(lo, hi, chunk):
                sel = order[a:min(hi, a + chunk)]
                row = torch.searchsorted(batch.indices, images[sel])
                up = upsample(maps[sel], size)  # type: ignore[arg-type]
                f, i, j = (up > cut[units[sel]][:, None, None]).nonzero(as_tuple=True)
                lab = batch.pixel_labels[row[f], :, i, j].to(torch.int32)
                total += f.numel() * (36 + 4 * lab.shape[1])
                if total > budget_bytes:
                    return None
                pairs.append(sel[f])
                values.append(up[f, i, j])
                labels.append(lab)
                scal_rows.append(sel)
                scal.append(batch.image_labels[row])
    n_layers = max((t.shape[1] for t in labels), default=0)
    n_scal = max((t.shape[1] for t in scal), default=0)
    pad = lambda t, w: torch.nn.functional.pad(t, (0, w - t.shape[1]))  # noqa: E731
    scalars = torch.zeros(p_all, n_scal, dtype=torch.int64, device=device)
    for rows, t in zip(scal_rows, scal):
        scalars[rows] = pad(t, n_scal)
    if not pairs:  # no cached pair at all: the same path over no entries
        pairs = [torch.empty(0, dtype=torch.int64, device=device)]
        values = [torch.empty(0, device=device)]
        labels = [torch.empty(0, n_layers, dtype=torch.int32, device=device)]
    pair = torch.cat(pairs)
    value = torch.cat(values)
    pair_key, by_pair = torch.sort(_pair_key(pair, value), stable=True)
    offsets = torch.zeros(p_all + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(torch.bincount(pair, minlength=p_all), 0)
    key, by_key = torch.sort(_order_key(units[pair], value), stable=True)
    return PixelTable(pair[by_pair], value[by_pair],
                      torch.cat([pad(t, n_layers) for t in labels])[by_pair], scalars, offsets,
                      key, pair[by_key], pair_key)


def _empty_quantile(units: int, n_total: int, config: DissectConfig, device: torch.device,
                    slack: float, keep_state: bool) -> TopQuantile:
    return TopQuantile.empty(units, n_total, config.level, device,
                             slack=slack if keep_state else 1.0, track_ids=keep_state)


def _layer_shape(model: torch.nn.Module, layer: str, probe: ProbeDataset,
                 device: torch.device) -> tuple[int, int, int]:
    """(units, h, w) of ``layer`` from one probe image (for a rank without a shard)."""
    loader = probe_loader(probe, 1, indices=[0])  # refuses an empty probe
    _, acts = next(iter(stream_activations(model, layer, loader, device)))
    return int(acts.shape[1]), int(acts.shape[2]), int(acts.shape[3])


def _gather_pairs(maps: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
                  maxes: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's candidate (image, unit) maps, so each rank holds the whole state."""
    from nemaudit import dist

    parts = dist.all_gather_objects((maps, units, images, maxes), "gathering candidate maps")
    maps = torch.cat([p[0].reshape(-1, *p[0].shape[1:]) for p in parts if p[0].shape[0]]
                     or [maps]).to(device)
    units, images, maxes = (torch.cat([p[i] for p in parts]).to(device) for i in (1, 2, 3))
    return maps, units, images, maxes


def tally_batch(acts: torch.Tensor, pixel_labels: torch.Tensor, image_labels: torch.Tensor,
                thresholds: torch.Tensor, lab_cat: torch.Tensor, tally: IoUTally) -> None:
    """Tally every (image, unit) pair of a batch of activations whose max exceeds T_u."""
    b, u = (acts.amax(dim=(2, 3)) > thresholds[None, :]).nonzero(as_tuple=True)
    tally_pairs(acts[b, u], u, b, thresholds, pixel_labels, image_labels, lab_cat, tally)


def tally_cached_pairs(maps: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
                       thresholds: torch.Tensor, probe: ProbeDataset, batch_size: int,
                       lab_cat: torch.Tensor, tally: IoUTally, device: torch.device) -> None:
    """Tally stored (image, unit) maps, reading the labels of just the images involved."""
    if maps.shape[0] == 0:
        return
    order = torch.argsort(images, stable=True)
    maps, units, images = maps[order], units[order], images[order]
    wanted = torch.unique(images).cpu()
    for batch in probe_loader(probe, batch_size, indices=wanted.tolist()):
        batch = batch.to(device)
        lo = torch.searchsorted(images, batch.indices[0])
        hi = torch.searchsorted(images, batch.indices[-1], right=True)
        row = torch.searchsorted(batch.indices, images[lo:hi])
        tally_pairs(maps[lo:hi], units[lo:hi], row, thresholds, batch.pixel_labels,
                    batch.image_labels, lab_cat, tally)


def dissect_tensors(acts: torch.Tensor, pixel_labels: torch.Tensor, image_labels: torch.Tensor,
                    concepts: list, categories: list[str] | None = None,
                    config: DissectConfig | None = None,
                    thresholds: torch.Tensor | None = None, layer: str = "tensor") -> Dissection:
    """Dissect precomputed activations ``[N, U, h, w]`` against labels ``[N, L, H, W]`` and
    ``[N, S]`` — the same tally as :func:`dissect`, for tests and for callers that already
    hold features. ``thresholds`` overrides the quantile."""
    config = config or DissectConfig()
    if categories is None:
        categories = list(dict.fromkeys(c.category for c in concepts[1:]))
    n_concepts = len(concepts)
    check_label_range(pixel_labels, image_labels, n_concepts, torch.arange(acts.shape[0]),
                      len(categories))
    if thresholds is None:
        quant = TopQuantile.empty(acts.shape[1], acts[:, 0].numel(), config.level, acts.device)
        quant.update(acts)
        thresholds = quant.readout()
    lab_cat = label_category(concepts, categories).to(acts.device)
    tally = IoUTally.zeros(acts.shape[1], n_concepts, len(categories), acts.device)
    tally.label = label_tally(pixel_labels, image_labels, n_concepts)
    tally.images = acts.shape[0]
    tally_batch(acts.float(), pixel_labels, image_labels, thresholds, lab_cat, tally)
    return Dissection(layer, thresholds, tally, list(concepts), list(categories), config)
