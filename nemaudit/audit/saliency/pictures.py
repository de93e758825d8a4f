"""Report pictures of saliency and fooling audits: the worst images with the reference's and
the candidate's maps side by side, and the tables as charts."""

from __future__ import annotations

from typing import Any

#: interpreters pictured per image (the first ones the audit measured)
PICTURED = 3


def saliency_payload(result: Any, *, max_images: int = 8) -> dict:
    """``result.to_json()`` plus ``pictures``: for the most changed images, the image and each
    model's maps over it (WebP), and the charts (PNG) of the audit's tables."""
    from nemaudit.audit.pictures import heat_overlay, png_b64, webp_b64

    doc = result.to_json()
    doc["meta"] = {k: v for k, v in doc["meta"].items() if k != "nd_rows"}
    doc["nd_units"] = (result.meta.get("nd_rows") or [])
    ctx = result.context or {}
    images, maps = ctx.get("images"), ctx.get("maps") or {}
    if images is None or not maps:
        return doc
    interps = [i for i in result.meta["interpreters"] if i in maps][:PICTURED]
    position = {int(r["index"]): j for j, r in enumerate(result.rows)}
    worst = sorted(result.rows, key=result.diff_order)[:max_images]
    pics = []
    for r in worst:
        j = position[int(r["index"])]
        if j >= len(images):
            continue
        img = images[j]
        entry: dict[str, Any] = {"index": r["index"], "label": r["label"],
                                 "image": png_b64((img.clamp(0, 1).permute(1, 2, 0).numpy()
                                                   * 255).round().astype("uint8")),
                                 "maps": []}
        for i in interps:
            ref, cand = maps[i]
            if j >= len(ref):
                continue
            entry["maps"].append({"interpreter": i, "reference": webp_b64(heat_overlay(img, ref[j])),
                                  "candidate": webp_b64(heat_overlay(img, cand[j])),
                                  "spearman": r.get("spearman", {}).get(i)})
        pics.append(entry)
    doc["pictures"] = pics
    try:
        from nemaudit.report.saliency_html import charts

        doc["charts"] = charts(doc)
    except ImportError:  # matplotlib is optional
        doc["charts"] = {}
    return doc
