"""Per-image Network Dissection tallies: the probe resampled without a forward pass.

Every field of the IoU tally (:mod:`.tally`) is a sum over probe images, so the tally of a
probe in which image x counts w_x times is Σ_x w_x·tally(x). A bootstrap over probe images
(multinomial weights w) therefore needs only each image's own tally, and those are read
once from the (image, unit) pairs the dissection already tallied — the candidate cache
(:class:`~nemaudit.explain.netdissect.dissect.DissectState`) — plus the labels of every
image: no new forward pass.

**A conditional bootstrap.** The thresholds T_u stay at their measured values: resampling
re-weights each image's masks, it does not recompute the top-η quantile on the resample.
So the bootstrap covers the probe's variation *given* the thresholds; the quantile of ~η·N·h·w
values moves far less than the IoUs of rare concepts, which is where the flips come from.

**Memory.** Nothing is ``[N, U, C]`` dense. The fields are sparse ``[rows, N]`` matrices
(COO, float64 counts; rows = unit·C + concept for ``both``, unit·K + category for
``unit_cat``, concept for ``label``): one entry per distinct label inside a fired mask,
per (image, unit) pair, per category it touches, and per label present in an image. An entry
costs 24 bytes (two int64 indices and a float64 count); when the entries would exceed
``budget_bytes`` (:data:`BUDGET_BYTES`, 256 MiB ≈ 11 M entries; building them peaks at about
twice that while the parts are joined) building stops with a :class:`TallyBudgetError` that
says so, and the caller goes without a probe bootstrap. Counts are float64 integers (exact below 2⁵³), so Σ_x tally(x) is the
dissection's tally exactly and weighted sums are exact too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemaudit.explain.common.activations import probe_loader
from nemaudit.explain.netdissect.tally import IoUTally, tally_pairs
from nemaudit.probe.base import ProbeDataset

#: default cap on the per-image tallies' sparse entries (24 bytes each)
BUDGET_BYTES = 256 * 2**20
_ENTRY_BYTES = 24
#: pairs whose dense [pairs, concepts] scratch tally is built at once (bytes)
_SCRATCH_BYTES = 32 * 2**20


class TallyBudgetError(MemoryError):
    """The per-image tallies would exceed their memory budget."""


#: (maps [P, h, w], units [P], images [P] probe indices): (image, unit) pairs with their maps
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class ImageTallies:
    """Each probe image's IoU tally, as sparse ``[rows, N]`` float64 matrices (columns are
    probe images): ``both`` rows u·C + c, ``unit_cat`` rows u·K + k, ``unit_pixels`` rows u,
    ``label`` rows c."""

    both: torch.Tensor
    unit_cat: torch.Tensor
    unit_pixels: torch.Tensor
    label: torch.Tensor
    units: int
    concepts: int
    categories: int
    images: int

    @property
    def nbytes(self) -> int:
        return _ENTRY_BYTES * sum(int(t._nnz()) for t in (self.both, self.unit_cat,
                                                             self.unit_pixels, self.label))

    def weighted(self, weights: torch.Tensor) -> IoUTally:
        """The tallies of ``B`` re-weighted probes, ``weights [B, N]`` (image x counted
        ``weights[b, x]`` times): an :class:`IoUTally` whose fields carry a leading ``[B]``
        (float64; ``both [B, U, C]``, ``unit_cat [B, U, K]``, ``label [B, C]``), so
        :meth:`IoUTally.iou` gives ``[B, U, C]``. All-ones weights give the probe's tally."""
        w = weights.to(torch.float64).T.contiguous()  # [N, B]
        b = w.shape[1]

        def mm(s: torch.Tensor, *shape: int) -> torch.Tensor:
            return torch.sparse.mm(s, w.to(s.device)).T.reshape(b, *shape)

        return IoUTally(mm(self.both, self.units, self.concepts),
                        mm(self.unit_cat, self.units, self.categories),
                        mm(self.unit_pixels, self.units), mm(self.label, self.concepts),
                        images=self.images)

    def total(self) -> IoUTally:
        """Σ over images: the dissection's tally (int64)."""
        t = self.weighted(torch.ones(1, self.images, dtype=torch.float64))
        both, unit_cat, unit_pixels, label = (x[0].round().long() for x in (
            t.both, t.unit_cat, t.unit_pixels, t.label))
        return IoUTally(both, unit_cat, unit_pixels, label, images=self.images)


class _Builder:
    """Collects COO entries (row, image, count) of one side's per-image tallies."""

    def __init__(self, units: int, concepts: int, categories: int, images: int,
                 budget: _Budget, device: torch.device) -> None:
        self.shape = (units, concepts, categories, images)
        self.device = device
        self.budget = budget
        self.parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
            "both": [], "unit_cat": [], "unit_pixels": [], "label": []}

    def add(self, field: str, rows: torch.Tensor, images: torch.Tensor, counts: torch.Tensor
            ) -> None:
        self.budget.spend(rows.numel())
        self.parts[field].append((rows, images, counts.to(torch.float64)))

    def add_pairs(self, maps: torch.Tensor, units: torch.Tensor, images: torch.Tensor,
                  rows: torch.Tensor, thresholds: torch.Tensor, pixel_labels: torch.Tensor,
                  image_labels: torch.Tensor, lab_cat: torch.Tensor) -> None:
        """The per-pair tallies of fired pairs (``rows``: their batch rows), each pair being
        one (image, unit): :func:`tally_pairs` with a pair index in place of the unit."""
        n_units, concepts, cats, _ = self.shape
        step = max(1, _SCRATCH_BYTES // (8 * (concepts + cats + 1)))
        for s in range(0, maps.shape[0], step):
            u, x = units[s:s + step], images[s:s + step]
            p = u.shape[0]
            scratch = IoUTally.zeros(p, concepts, cats, maps.device)
            tally_pairs(maps[s:s + step], torch.arange(p, device=maps.device), rows[s:s + step],
                        thresholds[u], pixel_labels, image_labels, lab_cat, scratch)
            for field, dense, width in (("both", scratch.both, concepts),
                                        ("unit_cat", scratch.unit_cat, cats)):
                f, c = dense.nonzero(as_tuple=True)
                self.add(field, u[f] * width + c, x[f], dense[f, c])
            keep = scratch.unit_pixels > 0
            self.add("unit_pixels", u[keep], x[keep], scratch.unit_pixels[keep])

    def add_labels(self, images: torch.Tensor, pixel_labels: torch.Tensor,
                   image_labels: torch.Tensor) -> None:
        """Σ |L_c(x)| per image, by the rule of :func:`~.tally.label_tally` (pixel counts
        across the stacked maps, the whole image per image-level label, never label 0)."""
        concepts = self.shape[1]
        b = images.shape[0]
        h, w = pixel_labels.shape[-2:]
        row = torch.arange(b, device=pixel_labels.device)
        pix = pixel_labels.reshape(b, -1)
        counts = torch.bincount((row[:, None] * concepts + pix).reshape(-1),
                                minlength=b * concepts)
        sc = image_labels.reshape(b, -1)
        keep = sc > 0
        scal = (row[:, None].expand_as(sc) * concepts + sc)[keep]
        counts = counts + torch.bincount(scal, minlength=b * concepts) * (h * w)
        counts = counts.view(b, concepts)
        counts[:, 0] = 0
        r, c = counts.nonzero(as_tuple=True)
        self.add("label", c, images[r], counts[r, c])

    def build(self) -> ImageTallies:
        units, concepts, cats, n = self.shape
        size = {"both": units * concepts, "unit_cat": units * cats, "unit_pixels": units,
                "label": concepts}
        out = {}
        for field, parts in self.parts.items():
            if parts:
                rows, imgs, vals = (torch.cat(t) for t in zip(*parts))
            else:
                rows = imgs = torch.empty(0, dtype=torch.int64, device=self.device)
                vals = torch.empty(0, dtype=torch.float64, device=self.device)
            out[field] = torch.sparse_coo_tensor(torch.stack([rows, imgs]), vals,
                                                 (size[field], n),
                                                 check_invariants=True).coalesce()
        return ImageTallies(out["both"], out["unit_cat"], out["unit_pixels"], out["label"],
                            units, concepts, cats, n)


class _Budget:
    def __init__(self, budget_bytes: float) -> None:
        self.limit = budget_bytes
        self.used = 0

    def spend(self, entries: int) -> None:
        self.used += entries * _ENTRY_BYTES
        if self.used > self.limit:
            raise TallyBudgetError(
                f"per-image tallies need more than {self.limit / 2**20:.0f} MiB of sparse "
                f"entries ({_ENTRY_BYTES} bytes each: one per label inside each fired mask "
                "of each image); raise the budget or use fewer images or units")


def _fired(pairs: Pairs, thresholds: torch.Tensor) -> Pairs:
    """The pairs whose mask is non-empty (max > T_u, as the dissection tallies them), sorted
    by image."""
    maps, units, images = pairs
    fire = maps.amax(dim=(1, 2)) > thresholds[units] if maps.shape[0] else \
        torch.zeros(0, dtype=torch.bool, device=maps.device)
    maps, units, images = maps[fire], units[fire], images[fire]
    order = torch.argsort(images, stable=True)
    return maps[order], units[order], images[order]


def image_tallies(probe: ProbeDataset, sides: Sequence[tuple[Pairs, torch.Tensor]],
                  lab_cat: torch.Tensor, batch_size: int = 64,
                  device: torch.device | str = "cpu",
                  budget_bytes: float = BUDGET_BYTES) -> list[ImageTallies]:
    """Per-image tallies of one or more dissections of ``probe`` (clean and corrupted sides),
    each given as (its (image, unit) pairs, its thresholds ``[U]``), in one pass over the
    probe's labels. Pairs that do not fire at the thresholds are dropped; every pair that
    fires must be there (the dissection's candidate cache holds them). ``budget_bytes``
    caps the entries of all sides together (:class:`TallyBudgetError`)."""
    device = torch.device(device)
    lab_cat = lab_cat.to(device)
    concepts, cats, n = len(lab_cat), len(probe.categories), len(probe)
    budget = _Budget(budget_bytes)
    fired = [_fired(tuple(t.to(device) for t in pairs), thr.to(device))  # type: ignore[arg-type]
             for pairs, thr in sides]
    builders = [_Builder(int(thr.shape[0]), concepts, cats, n, budget, device)
                for _, thr in sides]
    for batch in probe_loader(probe, batch_size):
        batch = batch.to(device)
        builders[0].add_labels(batch.indices, batch.pixel_labels, batch.image_labels)
        for (maps, units, images), (_, thr), b in zip(fired, sides, builders):
            lo = int(torch.searchsorted(images, batch.indices[0]))
            hi = int(torch.searchsorted(images, batch.indices[-1], right=True))
            if hi > lo:
                rows = torch.searchsorted(batch.indices, images[lo:hi])
                b.add_pairs(maps[lo:hi], units[lo:hi], images[lo:hi], rows, thr.to(device),
                            batch.pixel_labels, batch.image_labels, lab_cat)
    for b in builders[1:]:  # labels do not change with the side
        b.parts["label"] = builders[0].parts["label"]
    return [b.build() for b in builders]


def image_tallies_tensors(acts: torch.Tensor, pixel_labels: torch.Tensor,
                          image_labels: torch.Tensor, thresholds: torch.Tensor,
                          lab_cat: torch.Tensor, categories: int,
                          budget_bytes: float = BUDGET_BYTES) -> ImageTallies:
    """Per-image tallies of precomputed activations ``[N, U, h, w]`` against labels
    ``[N, L, H, W]`` and ``[N, S]`` at ``thresholds`` (the counterpart of
    :func:`~nemaudit.explain.netdissect.dissect.dissect_tensors`, for tests and callers that
    hold features); ``categories`` is the number of categories."""
    n, u = acts.shape[:2]
    b = _Builder(u, len(lab_cat), categories, n, _Budget(budget_bytes), acts.device)
    idx = torch.arange(n, device=acts.device)
    b.add_labels(idx, pixel_labels, image_labels)
    x, unit = (acts.amax(dim=(2, 3)) > thresholds[None, :]).nonzero(as_tuple=True)
    b.add_pairs(acts[x, unit].float(), unit, x, x, thresholds, pixel_labels, image_labels,
                lab_cat.to(acts.device))
    return b.build()
