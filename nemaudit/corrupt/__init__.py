"""Corruptions of the probe set and of the model's inputs (one module per adversary).

- :mod:`~nemaudit.corrupt.base`: the :class:`Corruption` contract (fraction, selection,
  (seed, index) determinism) and label helpers;
- :mod:`~nemaudit.corrupt.noise`: Gaussian, uniform and Bernoulli noise (shared by all units);
- :mod:`~nemaudit.corrupt.pgd`: the ICCV'23 designed attack on a unit's concept (per unit);
- :mod:`~nemaudit.corrupt.fgsm`: FGSM / PGD on the classifier's cross-entropy;
- :mod:`~nemaudit.corrupt.spec`: ``parse_corruption("gaussian:std=0.02")`` and validation;
- :mod:`~nemaudit.corrupt.kinds`: the registry (kind → class, budget key), torch-free.

Every name below is imported on first use: the registry is read by torch-free reports.
"""

from typing import Any

#: name → module that defines it; everything is imported on first use, so the registry
#: (:mod:`.kinds`) stays readable without torch
_LAZY = {
    **dict.fromkeys(("Corruption", "UnitAttack", "UnitCorruption", "concept_maps",
                     "contains_concepts", "derive_seed", "resolve_concept", "runner_up_concepts",
                     "validate_units"), "base"),
    **dict.fromkeys(("BernoulliNoise", "GaussianNoise", "JPEGCompression", "NoiseCorruption",
                     "UniformNoise"), "noise"),
    **dict.fromkeys(("corruption_class", "parse_corruption"), "spec"),
    "KINDS": "kinds",
    **dict.fromkeys(("FGSMCorruption", "PGDCECorruption", "predicted_labels"), "fgsm"),
    **dict.fromkeys(("ConceptAttack", "ConceptPGD", "act_avg", "attack_units",
                     "untargeted_targets"), "pgd"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"nemaudit.corrupt.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nemaudit.corrupt' has no attribute {name!r}")


__all__ = sorted(_LAZY)
