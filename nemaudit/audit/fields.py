"""Validators of audit settings, shared by every front door (fixture, spec files, CLI).

A validator takes the raw value and returns it normalised, or raises ``TypeError("<what is
allowed>")``; the caller turns that into a :class:`~nemaudit.errors.SpecError` that names
where the value came from (a spec file's field, a CLI flag, a fixture keyword). Torch-free:
spec files are validated at collection, with audits off.

Costs that grow with a user's number have a stated maximum (:data:`MAX_UNITS`, ...), so a
typo cannot make a CI job run for days.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: largest unit index / unit count a request may name (the widest layers have ~4k channels)
MAX_UNITS = 1_000_000


@dataclass(frozen=True)
class Field:
    """One setting: its validator and a line of help (quoted in errors and docs)."""

    check: Callable[[Any], Any]
    help: str


def is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def check_str(v: Any) -> str:
    if not is_str(v):
        raise TypeError("a non-empty string")
    return v.strip()


def check_spec(v: Any) -> Any:
    """A spec string, or an object that stands for one (a module, a probe, a corruption)."""
    if isinstance(v, str):
        return check_str(v)
    if v is None or isinstance(v, (bool, int, float, list, tuple, dict)):
        raise TypeError("a non-empty string")  # (from Python, an object also does)
    return v


def check_layers(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(is_str(x) for x in v):
        raise TypeError('a non-empty list of layer names, e.g. ["layer4"]')
    return [x.strip() for x in v]


def check_layer(v: Any) -> str:
    if not is_str(v):
        raise TypeError('a layer name, e.g. "layer4"')
    return v.strip()


def check_units(v: Any) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError("a non-empty list of unit indices (integers >= 0)")
    items = list(v)
    if not items or not all(isinstance(x, int) and not isinstance(x, bool)
                            and 0 <= x < MAX_UNITS for x in items):
        raise TypeError("a non-empty list of unit indices (integers >= 0)")
    return tuple(int(x) for x in items)


@dataclass(frozen=True)
class FloatRange:
    """A finite number in the range ``lo``..``hi`` (``None``: unbounded), each end closed
    unless ``*_open``. A class, not a closure, so the range can be read back (docs, tests)
    and the check runs as a method at each call."""

    lo: float
    hi: float | None
    lo_open: bool = False
    hi_open: bool = False

    def text(self) -> str:
        top = "∞)" if self.hi is None else f"{self.hi}{')' if self.hi_open else ']'}"
        return f"{'(' if self.lo_open else '['}{self.lo}, {top}"

    def __call__(self, v: Any) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = (v > self.lo if self.lo_open else v >= self.lo) and (
                self.hi is None or (v < self.hi if self.hi_open else v <= self.hi))
        if not ok:
            raise TypeError(f"a number in {self.text()}")
        return float(v)


@dataclass(frozen=True)
class IntRange:
    """An integer in [lo, hi]; ``hi`` is the stated maximum of a cost-driving count."""

    lo: int
    hi: int | None = None

    def __call__(self, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < self.lo:
            raise TypeError(f"an integer >= {self.lo}")
        if self.hi is not None and v > self.hi:
            raise TypeError(f"an integer <= {self.hi} (the stated maximum)")
        return int(v)


def check_normalize(v: Any) -> Any:
    """``imagenet | none | netdissect | m,m,m/s,s,s`` or a (mean, std) pair; the text form is
    parsed where models are loaded (:func:`nemaudit.model.parse_normalize`)."""
    if isinstance(v, str):
        return check_str(v)
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in v)
    raise TypeError("imagenet | none | netdissect | m,m,m/s,s,s")


#: settings every method's request carries (besides the method's own :attr:`Method.fields`)
COMMON: dict[str, Field] = {
    "model": Field(check_spec, "torchvision:NAME, package.module:function, path.py:function "
                               "or nemaudit:NAME"),
    "weights": Field(check_str, "a local checkpoint path"),
    "normalize": Field(check_normalize, "imagenet | none | netdissect | m,m,m/s,s,s"),
    "probe": Field(check_spec, "synthetic:..., broden:PATH, folder:PATH or "
                               "python:module:callable"),
    "layer": Field(check_layer, "one layer name"),
    "corruption": Field(check_spec, "a corruption spec such as gaussian:std=0.02"),
    "units": Field(check_units, "unit indices"),
    "max_units": Field(IntRange(1, MAX_UNITS), "per-unit attacks: attack at most this many "
                                                "units"),
    "repeats": Field(IntRange(1, 1000), "draws of the corruption's randomness (seeds derived "
                                         "from its seed): metrics are their means, rate "
                                         "intervals cover units and draws"),
}
