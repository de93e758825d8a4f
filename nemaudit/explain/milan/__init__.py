"""MILAN natural-language neuron descriptions (Hernandez et al., ICLR 2022), offline.

Pipeline (DESIGN.md, step 3 for MILAN): for each unit, the k = 15 probe images with the
highest spatial max and their top-1% masks (:mod:`.exemplars`, steps 1–2 shared with Network
Dissection) are encoded by a frozen feature pyramid, and the description is
d* = argmax_d log p(d|E) − λ log p(d) over a beam of 50 (λ = 0.2, ≤ 15 tokens).

Modules:

- :mod:`.exemplars` — streamed, exact, vectorised exemplars and masks; incremental update
  after a per-unit attack.
- :mod:`.model` — vocabulary, :class:`PyramidEncoder` (frozen ConceptNet pyramid, masked
  average pooling), :class:`Captioner` (attention LSTM, p(d|E)), :class:`LanguageModel`
  (2-layer LSTM, p(d)); :class:`MilanSettings` holds MILAN's default sizes.
- :mod:`.decode` — beam search and reranking.
- Training (descriptions written from the concept world's ground truth, and the trainer
  that writes the bundled ``milan.pt``/``milan.json``) lives in :mod:`nemaudit.training`
  (``nemaudit train-milan``).
- :mod:`.bertscore` — F1-BERT with the packaged MiniLM and :func:`calibrate_threshold`.
- :mod:`.describer` — the :class:`Describer` interface and :class:`MilanDescriber`.
- Audits live in :mod:`nemaudit.audit.milan` (:func:`~nemaudit.audit.milan.audit_milan`).

Plugging in another captioner
-----------------------------
Audits only call ``describer.describe(exemplars) -> list[str]`` (one string per unit, in the
rows' order). Anything with that method is a :class:`Describer`. To use the *original* MILAN
checkpoint (or any model that captions one unit from its images and masks), wrap a function
``fn(images [k, 3, H, W] in [0, 1], masks [k, h, w] bool) -> str`` in
:class:`CaptionerDescriber` — the :mod:`.describer` docstring shows the few lines for the
authors' ``src.milan`` decoder — and pass it as ``audit_milan(..., describer=...)``. Keep
the F1-BERT threshold consistent with the scorer: the default threshold is calibrated for
the MiniLM scorer; a different scorer needs ``MilanAuditConfig(threshold=...)``, e.g. from
:func:`calibrate_threshold` on pairs of its own descriptions.
"""

from nemaudit.explain.milan.bertscore import (
    DEFAULT_THRESHOLD,
    Calibration,
    F1Bert,
    calibrate_threshold,
    f1_bert,
)
from nemaudit.explain.milan.describer import (
    CaptionerDescriber,
    Describer,
    MilanDescriber,
    default_describer,
)
from nemaudit.explain.milan.exemplars import (
    ExemplarConfig,
    Exemplars,
    compute_exemplars,
    compute_exemplars_layers,
    update_exemplars,
)
from nemaudit.explain.milan.model import (
    Captioner,
    LanguageModel,
    MilanSettings,
    PyramidEncoder,
    Vocabulary,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "Calibration",
    "Captioner",
    "CaptionerDescriber",
    "Describer",
    "ExemplarConfig",
    "Exemplars",
    "F1Bert",
    "LanguageModel",
    "MilanDescriber",
    "MilanSettings",
    "PyramidEncoder",
    "Vocabulary",
    "calibrate_threshold",
    "compute_exemplars",
    "compute_exemplars_layers",
    "default_describer",
    "f1_bert",
    "update_exemplars",
]
