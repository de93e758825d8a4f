"""Corruption specs as strings: ``"<kind>:key=value,key=value"``.

>>> parse_corruption("gaussian:std=0.02,fraction=1.0")
>>> parse_corruption("pgd:eps=4/255,steps=10,targeted=false,fraction=1.0")

The syntax (key case, ``-`` in keys, numbers such as ``4/255``, booleans ``true``/``yes``/…)
is :mod:`nemaudit.specs`'s, shared with probe specs and reports; several concepts in
``select`` are joined with ``|`` (``select=concept:bus|car``), since ``,`` separates fields.
Every error is a :class:`~nemaudit.errors.SpecError` naming the bad value and what is
allowed: specs come from users' pytest ini files and CLIs.
"""

from __future__ import annotations

import importlib
from typing import Any

from nemaudit.corrupt.base import Corruption, resolve_concept, validate_units
from nemaudit.corrupt.kinds import KINDS
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeDataset
from nemaudit.specs import convert, kind_of, tokenize

__all__ = ["KINDS", "corruption_class", "parse_corruption", "resolve_concept", "valid_keys",
           "validate_units"]



def corruption_class(kind: str) -> type[Corruption]:
    """The class implementing ``kind``; a SpecError lists the valid kinds."""
    if kind not in KINDS:
        raise SpecError(f"unknown corruption kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module, name = KINDS[kind].target.split(":")
    return getattr(importlib.import_module(module), name)


def valid_keys(kind: str) -> list[str]:
    """Every key ``kind`` accepts (its own, then fraction, select, seed)."""
    cls = corruption_class(kind)
    return [*cls.params, *cls.common]


def parse_number(text: str, key: str) -> float:
    """``0.02``, ``2e-2``, ``4/255`` → float; anything else (or NaN/inf) is a SpecError."""
    return convert(text, float, key)


def parse_corruption(spec: str) -> Corruption:
    """Build a corruption from its spec string (see the module docstring).

    Valid kinds: gaussian, uniform, bernoulli (``std``), pgd (the ICCV'23 concept attack:
    ``eps, steps, alpha, targeted, target, random_start, max_copies``), fgsm (``eps``), pgd-ce
    (``eps, steps, alpha``); every kind also takes ``fraction, select, seed``.
    """
    usage = f"'<kind>:key=value,...' (valid kinds: {', '.join(KINDS)})"
    kind = kind_of(spec, "corruption", usage=usage)
    if kind not in KINDS:
        raise SpecError(f"unknown corruption kind {kind!r} in {spec!r}; valid kinds: "
                        f"{', '.join(KINDS)}")
    cls = corruption_class(kind)
    types = {**cls.params, **cls.common}
    tokens = tokenize(spec, "corruption", usage=usage)
    kwargs: dict[str, Any] = {}
    for key, value in tokens.fields.items():
        if key not in types:
            raise SpecError(f"unknown key {key!r} for corruption kind {kind!r} in {spec!r}; "
                            f"valid keys: {', '.join(valid_keys(kind))}")
        try:
            kwargs[key] = convert(value, types[key], key)
        except SpecError as e:
            raise SpecError(f"{e} (in corruption spec {spec!r})") from None
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
