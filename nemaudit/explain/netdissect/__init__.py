"""Network Dissection (Bau et al., CVPR 2017), matching NetDissect-Lite unit for unit.

- :mod:`.dissect`: the streamed, exact, vectorised pipeline (thresholds, masks, IoU);
- :mod:`.tally`: the vectorised IoU tally with the reference's per-category union rule;
- :mod:`.incremental`: exact re-dissection when only some images changed.

Steps 1–2 of the unified pipeline (activations, the top-η quantile, masks) are shared with
MILAN and live in :mod:`nemaudit.explain.common`.
"""

from nemaudit.explain.netdissect.dissect import (
    DissectConfig,
    Dissection,
    DissectState,
    dissect,
    dissect_tensors,
    label_category,
    tally_cached_pairs,
)

__all__ = ["DissectConfig", "DissectState", "Dissection", "dissect", "dissect_tensors",
           "label_category", "tally_cached_pairs"]
