"""The corruption budget both radius searches bisect: which key of a spec it is, the largest
value searched, and the spec at another value. One place, so a unit's radius and a property's
breaking budget accept and refuse the same corruptions."""

from __future__ import annotations

import math

from nemaudit.errors import SpecError

#: budget keys a search bisects: a larger value is a stronger corruption (JPEG's ``quality``
#: is the other way round)
GROWING = ("std", "eps")


def budget_key(spec: str, search: str) -> tuple[str, str, float]:
    """(kind, budget key, largest budget) of a corruption spec; ``search`` names the caller
    in errors ("radius search")."""
    from nemaudit.corrupt.kinds import KINDS
    from nemaudit.specs import convert, tokenize

    tokens = tokenize(spec, "corruption")
    kind = KINDS.get(tokens.kind)
    key = kind.budget if kind is not None else None
    if key is not None and key not in GROWING:
        raise SpecError(f"corruption {spec!r}: its budget {key} is not one that grows with "
                        f"the corruption's strength ({', '.join(GROWING)}); a {search} "
                        "bisects such a budget")
    if key is None or key not in tokens.fields:
        raise SpecError(f"corruption {spec!r}: a {search} needs the largest budget to search "
                        f"in the spec ({key or 'std/eps'}=...), e.g. gaussian:std=0.2")
    top = convert(tokens.fields[key], float, key)
    if not (isinstance(top, float) and math.isfinite(top) and top > 0):
        raise SpecError(f"corruption {spec!r}: the budget {key}={top} must be > 0")
    return tokens.kind, key, top


def spec_at(spec: str, key: str, value: float) -> str:
    """``spec`` with its budget ``key`` set to ``value`` (every other field kept)."""
    from nemaudit.specs import format_spec, tokenize

    tokens = tokenize(spec, "corruption")
    return format_spec(tokens.kind, {**tokens.fields, key: repr(float(value))})
