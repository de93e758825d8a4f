"""Comparing heatmaps: rank correlation, centre of mass, and AOPC (batched, on the device).

- :func:`spearman`: Spearman's ρ per image pair with *average ranks for ties* (as
  :func:`scipy.stats.spearmanr`): Grad-CAM and the ``_t`` maps are ReLU'd, so many pixels tie
  at zero, and ordinal ranks would invent an order among them.
- :func:`center_of_mass`: the heatmap's centre (row, column), indices from 1, on the min-max
  normalised map — as the authors' code computes it for the Center-mass fooling.
- :func:`aopc`: area over the most-relevant-first perturbation curve (Samek et al. 2017):
  the map, pooled over a grid of cells, orders the cells; step k replaces the first k·g²/32
  cells by uniform noise (seeded; after 8 steps a quarter of the image, as Samek et al.
  perturb the top regions only, not the whole image) and records the drop of the class
  logit. The same with a random
  cell order gives the reference curve: a map that explains the model drops the logit faster
  than random; a lying map (a fooled model's) does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.explain.common.masks import upsample  # the one bilinear rule (PIL's)

EPS = 1e-8  #: keeps a constant map finite when it is normalised (shared with the interpreters)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1..n) along the last dimension of ``x`` ``[B, n]``, ties sharing their mean rank."""
    s, order = x.sort(dim=-1)
    left = torch.searchsorted(s.contiguous(), s.contiguous(), right=False)
    right = torch.searchsorted(s.contiguous(), s.contiguous(), right=True)
    ranks_sorted = (left + right + 1).to(x.dtype) / 2  # mean of positions left+1 .. right
    return torch.empty_like(ranks_sorted).scatter_(-1, order, ranks_sorted)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between ``a[i]`` and ``b[i]`` (maps of the same shape) → ``[B]``. A
    constant map has no ranking: its ρ is 0 (scipy returns NaN there)."""
    if a.shape != b.shape:
        from nemaudit.errors import SpecError

        raise SpecError(f"heatmaps of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}; "
                        "compare maps of the same interpreter and layer")
    ra = average_ranks(a.flatten(1).double())
    rb = average_ranks(b.flatten(1).double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / den.clamp_min(1e-300)
    return torch.where(den > 0, rho, torch.zeros_like(rho)).to(a.dtype)


def min_max(h: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling to [0, 1] (``[B, h, w]``)."""
    lo = h.flatten(1).amin(1)[:, None, None]
    hi = h.flatten(1).amax(1)[:, None, None]
    return (h - lo) / (hi - lo + EPS)


def center_of_mass(h: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: (row, column) centre of each min-max normalised map, indices from 1."""
    h = min_max(h)
    rows = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)
    cols = torch.arange(1, h.shape[2] + 1, device=h.device, dtype=h.dtype)
    total = h.sum((1, 2)) + EPS
    r = (h.sum(2) * rows).sum(1) / total
    c = (h.sum(1) * cols).sum(1) / total
    return torch.stack([r, c], 1)


def _cell_order(maps: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Cells of a ``grid``×``grid`` partition of the image, most relevant first ``[B, g*g]``."""
    cells = F.adaptive_avg_pool2d(upsample(maps, size)[:, None], grid).flatten(1)
    return cells.argsort(dim=1, descending=True, stable=True)


@torch.no_grad()
def aopc(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor,
         *, steps: int = 8, grid: int = 8, seed: int = 0, random_order: bool = False
         ) -> torch.Tensor:
    """Per image, AOPC = 1/(L+1) Σ_{k=0..L} (f(x) − f(x^(k))), ``f`` the class logit and
    ``x^(k)`` the image with its ``k·g²/32`` most relevant cells (or random cells, with
    ``random_order``) replaced by uniform noise → ``[B]``."""
    b, _, hh, ww = images.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    if random_order:
        order = torch.rand(b, grid * grid, generator=g).argsort(1).to(images.device)
    else:
        order = _cell_order(maps, grid, (hh, ww))
    noise = torch.rand(images.shape, generator=g).to(images.device, images.dtype)
    # cell id of every pixel, then the step at which each pixel's cell is removed
    cy = torch.arange(hh, device=images.device) * grid // hh
    cx = torch.arange(ww, device=images.device) * grid // ww
    cell_of_pixel = (cy[:, None] * grid + cx[None, :]).flatten()  # [H*W]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(grid * grid,
                                                                   device=order.device)
                                            .expand(b, -1))
    per_step = max(1, grid * grid // 32)  # 2 of 64 cells a step: at most a quarter is noise
    removed_at = (rank.gather(1, cell_of_pixel.expand(b, -1)).float() / per_step).floor() + 1
    removed_at = removed_at.reshape(b, 1, hh, ww)
    targets = targets.long().reshape(-1, 1)
    base = model(images).gather(1, targets).squeeze(1)
    drops = []
    for k in range(1, steps + 1):
        x = torch.where(removed_at <= k, noise, images)
        drops.append(base - model(x).gather(1, targets).squeeze(1))
    return torch.stack(drops, 1).sum(1) / (steps + 1)
