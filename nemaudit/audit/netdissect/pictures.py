"""Network Dissection pictures: a unit's top clean images, clean beside corrupted, with masks.

Computed on the worker that ran the audit (the per-unit attack is replayed on those few
images) and returned as base64 PNGs inside plain dicts, so they cross pytest-xdist.
"""

from __future__ import annotations

import torch

from nemaudit.audit.netdissect.result import AuditResult
from nemaudit.audit.pictures import overlay, png_b64
from nemaudit.explain.common.masks import upsample
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import collate


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
            bad = corruption(batch, model)  # type: ignore[misc]
    else:
        row = next(r for r in result.rows if r["unit"] == unit)
        src = probe.concept_id(row["clean_label"])
        # a row with no target recorded: 0 drops the target term (None would fail int())
        tgt = probe.concept_id(row["target"]) if row.get("target") else 0
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
