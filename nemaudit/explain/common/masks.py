"""Steps 1–2 of the unified pipeline that every method shares: unit masks.

M_u(x) = [bilinear-upsample(f_u(x)) > T_u] at the segmentation resolution. Bilinear with
``align_corners=False`` is what PIL's (and so the reference's ``imresize(mode='F')``)
bilinear upsampling computes; the mask is a strict ``>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample ``[..., h, w]`` activation maps to ``size``."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    if tuple(maps.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return flat.reshape(*lead, *size)


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks for maps ``[N, h, w]`` with per-map thresholds ``[N]`` → bool ``[N, *size]``."""
    return upsample(maps, size) > thresholds.reshape(-1, 1, 1)
