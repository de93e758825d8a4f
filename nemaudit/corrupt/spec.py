"""Corruption specs as strings: ``"<kind>:key=value,key=value"``.

>>> parse_corruption("gaussian:std=0.02,fraction=1.0")
>>> parse_corruption("pgd:eps=4/255,steps=10,targeted=false,fraction=1.0")

Numbers may be written as fractions (``4/255``); booleans as ``true``/``false``; several
concepts in ``select`` are joined with ``|`` (``select=concept:bus|car``), since ``,``
separates fields. Every error is a :class:`~nemaudit.errors.SpecError` naming the bad value
and what is allowed: specs come from users' pytest ini files and CLIs.
"""

from __future__ import annotations

import importlib
import math
import re
from fractions import Fraction
from typing import Any

from nemaudit.corrupt.base import Corruption, resolve_concept, validate_units
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeDataset

__all__ = ["KINDS", "corruption_class", "parse_corruption", "resolve_concept", "valid_keys",
           "validate_units"]

#: spec kind → "module:Class" (imported on use: the attacks need the optional torchattacks)
KINDS: dict[str, str] = {
    "gaussian": "nemaudit.corrupt.noise:GaussianNoise",
    "uniform": "nemaudit.corrupt.noise:UniformNoise",
    "bernoulli": "nemaudit.corrupt.noise:BernoulliNoise",
    "jpeg": "nemaudit.corrupt.noise:JPEGCompression",
    "pgd": "nemaudit.corrupt.pgd:ConceptAttack",
    "fgsm": "nemaudit.corrupt.fgsm:FGSMCorruption",
    "pgd-ce": "nemaudit.corrupt.fgsm:PGDCECorruption",
}


def corruption_class(kind: str) -> type[Corruption]:
    """The class implementing ``kind``; a SpecError lists the valid kinds."""
    if kind not in KINDS:
        raise SpecError(f"unknown corruption kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module, name = KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != "torchattacks":
            raise
        raise SpecError(f"corruption kind {kind!r} needs torchattacks: "
                        "pip install 'nemaudit[attacks]'") from None


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*$")


def valid_keys(kind: str) -> list[str]:
    """Every key ``kind`` accepts (its own, then fraction, select, seed)."""
    cls = corruption_class(kind)
    return [*cls.params, *cls.common]


def parse_number(text: str, key: str) -> float:
    """``0.02``, ``2e-2``, ``4/255`` → float; anything else (or NaN/inf) is a SpecError."""
    t = text.strip()
    try:
        v = float(Fraction(t)) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"{key}={text!r} is not a number (fractions like 4/255 are allowed)"
                        ) from None
    if not math.isfinite(v):
        raise SpecError(f"{key}={text!r} must be finite")
    return v


def _convert(value: str, typ: type, key: str) -> Any:
    if typ is float:
        return parse_number(value, key)
    if typ is int:
        v = parse_number(value, key)
        if not v.is_integer():
            raise SpecError(f"{key}={value!r} must be an integer")
        return int(v)
    if typ is bool:
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SpecError(f"{key}={value!r} must be true or false")
    return value.strip()


def parse_corruption(spec: str) -> Corruption:
    """Build a corruption from its spec string (see the module docstring).

    Valid kinds: gaussian, uniform, bernoulli (``std``), pgd (the ICCV'23 concept attack:
    ``eps, steps, alpha, targeted, target, random_start, max_copies``), fgsm (``eps``), pgd-ce
    (``eps, steps, alpha``); every kind also takes ``fraction, select, seed``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty corruption spec {spec!r}; expected '<kind>:key=value,...'; "
                        f"valid kinds: {', '.join(KINDS)}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise SpecError(f"unknown corruption kind {kind!r} in {spec!r}; valid kinds: "
                        f"{', '.join(KINDS)}")
    cls = corruption_class(kind)
    types = {**cls.params, **cls.common}
    kwargs: dict[str, Any] = {}
    for field in (f for f in rest.split(",") if f.strip()):
        key, eq, value = field.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not eq or not _KEY_RE.match(key) or not value.strip():
            raise SpecError(f"bad field {field.strip()!r} in corruption spec {spec!r}; "
                            "expected key=value")
        if key not in types:
            raise SpecError(f"unknown key {key!r} for corruption kind {kind!r} in {spec!r}; "
                            f"valid keys: {', '.join(valid_keys(kind))}")
        if key in kwargs:
            raise SpecError(f"key {key!r} is given twice in {spec!r}")
        kwargs[key] = _convert(value, types[key], key)
    missing = [k for k in cls.required if k not in kwargs]
    if missing:
        raise SpecError(f"corruption kind {kind!r} needs {', '.join(f'{k}=...' for k in missing)}"
                        f" (spec {spec!r})")
    try:
        return cls(**kwargs)
    except SpecError as e:
        raise SpecError(f"{e} (in corruption spec {spec!r})") from None


def bound_corruption(corruption: Corruption | str, probe: ProbeDataset) -> Corruption:
    """A corruption (or its spec string) bound to ``probe``: what every audit starts from."""
    if isinstance(corruption, str):
        corruption = parse_corruption(corruption)
    corruption.bind(probe)
    return corruption
