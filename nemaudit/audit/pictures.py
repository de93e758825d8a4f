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


def webp_b64(rgb: np.ndarray, quality: int = 80) -> str:
    """uint8 ``[H, W, 3]`` → base64 lossy WebP: for heatmaps over photographs, where PNG
    costs ~5× the bytes and nothing is lost that the eye reads."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="WEBP", quality=quality, method=4)
    return base64.b64encode(buf.getvalue()).decode()


#: a perceptually ordered colour ramp (dark blue → teal → yellow, viridis-like) for heatmaps
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float32) / 255


def heat_overlay(image: torch.Tensor, heat: torch.Tensor, scale: int = 1,
                 alpha: float = 0.55) -> np.ndarray:
    """A heatmap (any size, scaled to [0, 1] by its max |value|) blended over ``image``
    [3, H, W]; negative relevance shows as the ramp's dark end."""
    h, w = image.shape[-2:]
    hm = heat.detach().float().cpu()
    hm = hm / (hm.abs().max() + 1e-12)
    ramp_at = F.interpolate(hm[None, None], size=(h, w), mode="bilinear",
                            align_corners=False)[0, 0].clamp(0, 1).numpy()
    pos = ramp_at * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    t = (pos - lo)[..., None]
    colour = _RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t
    img = image.clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    out = (1 - alpha) * img + alpha * colour
    arr = (out * 255).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, 0).repeat(scale, 1)
    return arr


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
