"""Exact, mergeable per-unit top-η quantiles of raw activations.

Network Dissection thresholds unit u at the top-η quantile of *all* its raw activations
(every spatial position of every probe image). Keeping every activation is what made the
reference write 12.7 GB memmaps; but a quantile near the top only depends on the largest
values. With the total count n known up front (images × positions), linear interpolation at
level q reads the values at ascending ranks ⌊q(n−1)⌋ and ⌈q(n−1)⌉, i.e. among the top
``m = n − ⌊q(n−1)⌋`` values. So each unit keeps a buffer of its top m values: memory is
η·n per unit, updates are one ``topk`` per batch, and two shards' buffers merge exactly
(top-m of a union = top-m of the union of the shards' top-m).

The reference (NetDissect-Lite) reads its streaming sketch at ``readout(1000)[994]``, i.e. at
level 994/999 ≈ 0.994995 for η = 0.005; :func:`reference_level` reproduces that rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def reference_level(eta: float) -> float:
    """The quantile level NetDissect-Lite actually reads for a top-η threshold.

    It evaluates ``readout(1000)[:, int(1000 * (1 - eta) - 1)]`` on 1000 levels spaced evenly
    over [0, 1], so the level is ``i / 999`` with ``i = int(1000 * (1 - eta) - 1)``.
    """
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    i = int(1000 * (1 - eta) - 1)
    return i / 999


def buffer_size(n_total: int, level: float) -> int:
    """How many top values are needed to interpolate the ``level`` quantile of n values."""
    if n_total < 1:
        raise ValueError("cannot take a quantile of an empty set")
    return n_total - math.floor(level * (n_total - 1))


@dataclass
class TopQuantile:
    """Per-unit buffers of the largest activations seen, sized for ``n_total`` values.

    ``values`` is ``[units, ≤capacity]``; ``count`` is how many values per unit have been
    seen. ``slack`` > 1 keeps more than the quantile needs, and ``ids`` (optional) records the
    probe image of every kept value: together they let an audit remove the values of changed
    images and still read the exact quantile (:mod:`nemaudit.explain.netdissect.incremental`).
    """

    level: float
    n_total: int
    values: torch.Tensor
    count: int = 0
    slack: float = 1.0
    ids: torch.Tensor | None = None

    @classmethod
    def empty(cls, units: int, n_total: int, level: float, device: torch.device | str = "cpu",
              slack: float = 1.0, track_ids: bool = False) -> TopQuantile:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"quantile level must be in [0, 1], got {level}")
        if slack < 1.0:
            raise ValueError(f"slack must be >= 1, got {slack}")
        buffer_size(n_total, level)  # validates n_total
        ids = torch.empty(units, 0, dtype=torch.int64, device=device) if track_ids else None
        return cls(level, n_total, torch.empty(units, 0, device=device), 0, slack, ids)

    @property
    def needed(self) -> int:
        """How many top values the quantile reads (m)."""
        return buffer_size(self.n_total, self.level)

    @property
    def capacity(self) -> int:
        return min(self.n_total, math.ceil(self.slack * self.needed))

    def update(self, acts: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Add a batch of activations ``[B, U, ...]`` (every position counts as one value);
        ``indices`` ``[B]`` are the images' probe indices, required when tracking ids."""
        flat = acts.detach().transpose(0, 1).reshape(acts.shape[1], -1).float()
        self.count += flat.shape[1]
        if self.count > self.n_total:
            raise ValueError(f"saw {self.count} values per unit but was sized for {self.n_total}")
        ids = None
        if self.ids is not None:
            if indices is None:
                raise ValueError("this quantile state tracks image ids: pass indices")
            per = acts[0, 0].numel()
            ids = torch.cat([self.ids, indices.to(self.ids.device).repeat_interleave(per)
                             .expand(flat.shape[0], -1)], dim=1)
        self._keep_top(torch.cat([self.values, flat], dim=1), ids)

    def _keep_top(self, vals: torch.Tensor, ids: torch.Tensor | None) -> None:
        m = self.capacity
        if vals.shape[1] > m:
            vals, pos = vals.topk(m, dim=1, sorted=False)
            ids = None if ids is None else ids.gather(1, pos)
        self.values, self.ids = vals, ids

    def merge(self, other: TopQuantile) -> TopQuantile:
        """The state of the union of both shards' values (exact)."""
        if (self.level, self.n_total, self.slack) != (other.level, other.n_total, other.slack):
            raise ValueError("can only merge quantile states with the same level, total size "
                             "and slack")
        if (self.ids is None) != (other.ids is None):
            raise ValueError("cannot merge a state that tracks image ids with one that does not")
        out = TopQuantile(self.level, self.n_total, self.values, self.count + other.count,
                          self.slack)
        if out.count > out.n_total:
            raise ValueError(f"merged count {out.count} exceeds the declared total {out.n_total}")
        ids = None
        if self.ids is not None and other.ids is not None:
            ids = torch.cat([self.ids, other.ids.to(self.ids.device)], 1)
        out._keep_top(torch.cat([self.values, other.values.to(self.values.device)], dim=1), ids)
        return out

    def lower_bound(self) -> torch.Tensor:
        """A per-unit value that the final quantile can never fall below.

        Once the buffer is full, its smallest value only grows as data arrives, and the final
        quantile is at least the final buffer's smallest value. Before that: −inf.
        """
        if self.values.shape[1] < self.capacity:
            return torch.full((self.values.shape[0],), -math.inf, device=self.values.device)
        return self.values.min(dim=1).values

    def readout(self) -> torch.Tensor:
        """The per-unit quantile at ``level`` over all values seen (linear interpolation, as
        ``torch.quantile``/``numpy.quantile`` do)."""
        return read_quantile(self.values, self.count, self.level)


def merge_across_ranks(quant: TopQuantile) -> TopQuantile:
    """The state of the whole probe from every rank's state of its shard (exact, as
    :meth:`TopQuantile.merge`): each rank's top values (and image ids) are gathered, the
    counts summed, and the top ``capacity`` kept — the same on every rank."""
    from nemaudit.dist import active, all_gather_rows, all_sum

    if active() is None:
        return quant
    values = torch.cat(all_gather_rows(quant.values, -torch.inf, "merging quantile buffers"), 1)
    ids = None
    if quant.ids is not None:
        ids = torch.cat(all_gather_rows(quant.ids, -1, "merging quantile image ids"), 1)
    count = int(all_sum(torch.tensor([quant.count], dtype=torch.int64), "counting values"))
    out = TopQuantile(quant.level, quant.n_total, quant.values[:, :0], count, quant.slack)
    if count > out.n_total:
        raise ValueError(f"the ranks saw {count} values per unit, more than the declared "
                         f"{out.n_total}: did two ranks take the same images?")
    # all_gather_rows cuts each rank's rows back to its own width: no padding is left
    out._keep_top(values, ids)
    return out


def read_quantile(top: torch.Tensor, n: int, level: float) -> torch.Tensor:
    """The ``level`` quantile of n values per row, given (at least) each row's largest
    ``buffer_size(n, level)`` values in ``top`` (any order; −inf padding allowed)."""
    if n == 0:
        raise ValueError("no activations seen: the probe is empty")
    pos = level * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    top = top.sort(dim=1, descending=True).values
    # ascending rank r is descending rank n-1-r
    a, b = top[:, n - 1 - lo], top[:, n - 1 - hi]
    return torch.lerp(a, b, pos - lo) if hi != lo else a
