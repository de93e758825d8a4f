"""Pictures of units for reports, shared by every method: PNGs and mask overlays.

Computed on the worker that ran the audit and returned as base64 PNGs inside plain dicts,
so they travel through pytest-xdist and land in JSON and self-contained HTML reports. PNG is
lossless: a 4/255 perturbation survives into the picture.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
import torch.nn.functional as F


def png_b64(rgb: np.ndarray) -> str:
    """uint8 ``[H, W, 3]`` → base64 PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def overlay(image: torch.Tensor, mask: torch.Tensor, scale: int = 1) -> np.ndarray:
    """Darken outside the mask and outline it, NetDissect-style; ``image`` [3, H, W] in [0,1]."""
    h, w = image.shape[-2:]
    m = F.interpolate(mask[None, None].float(), size=(h, w), mode="nearest")[0, 0] > 0.5
    img = image.clamp(0, 1).cpu()
    out = torch.where(m.cpu()[None], img, img * 0.3)
    edge = m ^ (F.max_pool2d(m[None, None].float(), 3, 1, 1)[0, 0] > 0.5)
    out[:, edge.cpu()] = torch.tensor([1.0, 0.85, 0.0])[:, None]
    arr = (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, 0).repeat(scale, 1)
    return arr


def strip(images: torch.Tensor, masks: torch.Tensor, indices: list[int],
           maxes: list[float]) -> list[dict]:
    return [{"index": int(i), "png": png_b64(overlay(img, m)), "max": float(mx)}
            for img, m, i, mx in zip(images, masks, indices, maxes)]
