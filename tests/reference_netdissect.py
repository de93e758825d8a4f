"""A line-by-line NumPy port of NetDissect-Lite's ``tally_job`` (with DESIGN.md's fixes),
used only as an oracle in tests. Deliberately loops over images and units like the
reference, and upsamples with PIL's bilinear resize as ``imresize(mode='F')`` does."""

from __future__ import annotations

import numpy as np
from PIL import Image


def imresize_f(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), resample=Image.BILINEAR))


def reference_tally(features, pixels, scalars, threshold, labelcat, zero_cats=None):
    """features [N,U,h,w]; pixels [N,L,H,W] ints; scalars [N,S] ints (0 = none);
    threshold [U]; labelcat [C, K] one-hot of primary categories (row 0 zero).
    ``zero_cats[i]``: categories whose image-level cell of image i held a 0 — the reference
    scores no label for it but adds ``labelcat`` of its category to ``tally_cat``, as the
    nameless label 0 of a scene cell does in NetDissect-Lite."""
    n, units = features.shape[:2]
    sh, sw = pixels.shape[-2:]
    C = labelcat.shape[0]
    tally_both = np.zeros((units, C), np.int64)
    tally_units_cat = np.zeros((units, labelcat.shape[1]), np.int64)
    tally_labels = np.zeros(C, np.int64)
    for i in range(n):
        scal = [int(s) for s in scalars[i] if s != 0]  # fix: never score label 0
        pix = pixels[i]
        for s in scal:
            tally_labels[s] += sh * sw
        if pix.size:
            tl = np.bincount(pix.ravel(), minlength=C)
            tl[0] = 0
            tally_labels += tl
        for u in range(units):
            fm = features[i, u]
            if fm.max() > threshold[u]:
                mask = imresize_f(fm, (sh, sw))
                idx = np.argwhere(mask > threshold[u])
                tally_cat = np.zeros(labelcat.shape[1])  # fix: no stale flag
                if len(pix) > 0 and len(idx):
                    bt = np.bincount(pix[:, idx[:, 0], idx[:, 1]].ravel(), minlength=C)
                    bt[0] = 0
                    tally_cat = bt @ labelcat
                    tally_both[u] += bt
                for s in scal:
                    tally_cat = tally_cat + labelcat[s]
                    tally_both[u, s] += len(idx)
                for k in (zero_cats[i] if zero_cats is not None else ()):
                    tally_cat = tally_cat + np.eye(labelcat.shape[1], dtype=np.int64)[k]
                tally_units_cat[u] += len(idx) * (tally_cat > 0)
    return tally_both, tally_units_cat, tally_labels


def reference_iou(both, units_cat, labels, labelcat):
    cat = labelcat.argmax(axis=1)
    union = units_cat[:, cat] + labels[None, :] - both
    iou = both / (union + 1e-10)
    iou[:, 0] = 0
    return iou
