"""MILAN pictures: a unit's exemplars with their masks, clean beside corrupted."""

from __future__ import annotations

from nemaudit.audit.pictures import strip


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
                 "clean": strip(clean_images[pos], clean.masks[i, :k],
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
            entry["corrupted"] = strip(bad_images[:n], bad.masks[i, :n],
                                        bad.indices[i, :n].tolist(), bad.maxes[i, :n].tolist())
        out.append(entry)
    doc["exemplars"] = out
    return doc
