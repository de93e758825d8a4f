"""The corruption registry: spec kind → implementing class and the budget key. Torch-free.

Reports read the budget here (which spec key sizes a corruption, and whether it bounds each
pixel's change in L∞) instead of keeping their own lists of kinds; the classes (which need
torch) are imported on use (:func:`nemaudit.corrupt.spec.corruption_class`). A new adversary
is a class and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """``target``: "module:Class"; ``budget``: the spec key of the corruption's size (an
    attack's ``eps``, noise's ``std``, JPEG's ``quality``); ``linf``: the budget bounds each
    pixel's change (±std noise, ε attacks), so budgets of different kinds share an axis."""

    target: str
    budget: str | None = None
    linf: bool = False


KINDS: dict[str, Kind] = {
    "gaussian": Kind("nemaudit.corrupt.noise:GaussianNoise", "std"),
    "uniform": Kind("nemaudit.corrupt.noise:UniformNoise", "std", linf=True),
    "bernoulli": Kind("nemaudit.corrupt.noise:BernoulliNoise", "std", linf=True),
    "jpeg": Kind("nemaudit.corrupt.noise:JPEGCompression", "quality"),
    "pgd": Kind("nemaudit.corrupt.pgd:ConceptAttack", "eps", linf=True),
    "fgsm": Kind("nemaudit.corrupt.fgsm:FGSMCorruption", "eps", linf=True),
    "pgd-ce": Kind("nemaudit.corrupt.fgsm:PGDCECorruption", "eps", linf=True),
}


def linf_key(kind: str) -> str | None:
    """The spec key bounding ``kind``'s per-pixel change (None: not an L∞ budget)."""
    k = KINDS.get(kind)
    return k.budget if k is not None and k.linf else None
