"""Pictures of units: exemplar images with mask overlays, clean beside corrupted.

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

from nemaudit.audit.result import AuditResult
from nemaudit.explain.masks import upsample
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import collate


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


def _top_images(result: AuditResult, unit: int, k: int) -> list[int]:
    st = result.clean.state
    if st is not None and st.units is not None and st.units.numel():
        sel = st.units == unit
        order = torch.argsort(st.maxes[sel], descending=True, stable=True)
        return st.images[sel][order][:k].tolist()
    return []


def unit_exemplars(result: AuditResult, unit: int, k: int = 4, scale: int = 1) -> dict:
    """The unit's k top-activating clean images, each clean and corrupted, with masks."""
    ctx = result.context or {}
    model, probe, corruption = ctx.get("model"), ctx.get("probe"), ctx.get("corruption")
    if model is None or probe is None:
        return {"unit": unit, "images": []}
    images = _top_images(result, unit, k)
    if not images:
        return {"unit": unit, "images": []}
    device = ctx.get("device", torch.device("cpu"))
    batch = collate([probe[i] for i in images]).to(device)
    if getattr(corruption, "shared", True):
        with torch.enable_grad():
            bad = corruption(batch, model)
    else:
        row = next(r for r in result.rows if r["unit"] == unit)
        src = probe.concept_id(row["clean_label"])
        tgt = probe.concept_id(row["target"]) if row.get("target") else None
        res = corruption.attack_units(model, result.layer, batch, [unit], [src],
                                      None if corruption.targeted else {unit: tgt})
        bad = res.images[0]
    seg = tuple(probe.seg_size)
    out = []
    with torch.no_grad(), LayerRecorder(model, [result.layer], stop_at_layer=True) as rec:
        rec.run(batch.images)
        clean_maps = rec[result.layer][:, unit].float()
        rec.run(bad)
        bad_maps = rec[result.layer][:, unit].float()
    t_clean = float(result.clean.thresholds[unit])
    t_bad = float(result.corrupted.thresholds[unit])
    cm = upsample(clean_maps, seg) > t_clean
    bm = upsample(bad_maps, seg) > t_bad
    for j, idx in enumerate(images):
        out.append({
            "index": int(idx),
            "clean": png_b64(overlay(batch.images[j], cm[j], scale)),
            "corrupted": png_b64(overlay(bad[j], bm[j], scale)),
            "clean_max": float(clean_maps[j].max()), "corrupted_max": float(bad_maps[j].max()),
            "linf": float((bad[j] - batch.images[j]).abs().max()),
        })
    return {"unit": unit, "threshold_clean": t_clean, "threshold_corrupted": t_bad, "images": out}


def report_payload(result: AuditResult, max_units: int = 6, k: int = 4) -> dict:
    """JSON-ready audit with pictures of the most interesting units (changed detectors first)."""
    doc = result.to_json()
    ranked = sorted(result.rows, key=lambda r: (not r["changed"], not r["clean_detector"],
                                                -r["clean_iou"]))
    doc["exemplars"] = [unit_exemplars(result, r["unit"], k) for r in ranked[:max_units]]
    return doc


def _strip(images: torch.Tensor, masks: torch.Tensor, indices: list[int],
           maxes: list[float]) -> list[dict]:
    return [{"index": int(i), "png": png_b64(overlay(img, m)), "max": float(mx)}
            for img, m, i, mx in zip(images, masks, indices, maxes)]


def milan_payload(result, max_units: int = 4, k: int = 3) -> dict:
    """JSON-ready MILAN audit with pictures: for the most changed units (manipulated first,
    lowest F1-BERT first), their exemplars with masks, clean beside corrupted.

    Shared corruptions re-read the corrupted images through the corruption (deterministic
    per seed and image); per-unit attacks use the poisoned pixels the audit kept
    (``context["corrupted_pixels"]``), since each unit had its own poisoned copy."""
    doc = result.to_json()
    rows = result.rows
    clean, bad = result.clean, result.corrupted
    if clean is None or bad is None or not rows:
        return doc
    shown = sorted(range(len(rows)), key=lambda i: (not rows[i]["manipulated"],
                                                    rows[i]["f1"]))[:max_units]
    kept = (result.context or {}).get("corrupted_pixels")
    k = min(k, clean.k)
    clean_images = clean.images(shown, first=k)
    # shared corruption: the corrupted exemplars are re-read through it, in one batch
    shared_images = bad.images(shown, first=k) if kept is None else None
    out = []
    for pos, i in enumerate(shown):
        entry = {"unit": int(rows[i]["unit"]),
                 "clean": _strip(clean_images[pos], clean.masks[i, :k],
                                 clean.indices[i, :k].tolist(), clean.maxes[i, :k].tolist())}
        if shared_images is not None:
            bad_images = shared_images[pos]
        else:
            pix = kept.get(int(rows[i]["unit"]))
            bad_images = None if pix is None else pix[:k].float() / 255
        if bad_images is None:
            entry["corrupted"] = []
            entry["note"] = "the poisoned pixels of this unit were not kept for pictures"
        else:
            n = min(k, len(bad_images))
            entry["corrupted"] = _strip(bad_images[:n], bad.masks[i, :n],
                                        bad.indices[i, :n].tolist(), bad.maxes[i, :n].tolist())
        out.append(entry)
    doc["exemplars"] = out
    return doc
