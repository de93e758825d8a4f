"""Corruptions of the probe set and of the model's inputs (one module per adversary).

- :mod:`~nemaudit.corrupt.base`: the :class:`Corruption` contract (fraction, selection,
  (seed, index) determinism) and label helpers;
- :mod:`~nemaudit.corrupt.noise`: Gaussian, uniform and Bernoulli noise (shared by all units);
- :mod:`~nemaudit.corrupt.pgd`: the ICCV'23 designed attack on a unit's concept (per unit);
- :mod:`~nemaudit.corrupt.fgsm`: FGSM / PGD on the classifier's cross-entropy;
- :mod:`~nemaudit.corrupt.spec`: ``parse_corruption("gaussian:std=0.02")`` and validation.

Importing this package imports torch; the torchattacks-based attacks (pgd, fgsm) are imported
on first use, since torchattacks is an optional dependency.
"""

from nemaudit.corrupt.base import (
    Corruption,
    concept_maps,
    contains_concepts,
    derive_seed,
    resolve_concept,
    validate_units,
)
from nemaudit.corrupt.noise import (
    BernoulliNoise,
    GaussianNoise,
    JPEGCompression,
    NoiseCorruption,
    UniformNoise,
)
from nemaudit.corrupt.spec import KINDS, corruption_class, parse_corruption

#: names imported on first use: they need the optional torchattacks
_LAZY = {
    "FGSMCorruption": "fgsm", "PGDCECorruption": "fgsm", "predicted_labels": "fgsm",
    "ConceptAttack": "pgd", "ConceptPGD": "pgd", "UnitAttack": "pgd", "act_avg": "pgd",
    "attack_units": "pgd", "untargeted_targets": "pgd",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"nemaudit.corrupt.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nemaudit.corrupt' has no attribute {name!r}")

__all__ = [
    "KINDS",
    "BernoulliNoise",
    "ConceptAttack",
    "ConceptPGD",
    "Corruption",
    "FGSMCorruption",
    "GaussianNoise",
    "JPEGCompression",
    "NoiseCorruption",
    "PGDCECorruption",
    "UniformNoise",
    "UnitAttack",
    "act_avg",
    "attack_units",
    "concept_maps",
    "corruption_class",
    "contains_concepts",
    "derive_seed",
    "parse_corruption",
    "predicted_labels",
    "resolve_concept",
    "untargeted_targets",
    "validate_units",
]
