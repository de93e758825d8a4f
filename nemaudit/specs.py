"""The one tokenizer for ``kind:key=value,...`` spec strings, and their typed values.

Corruption, probe and report code each parsed these strings by hand and disagreed (key case,
``-`` in keys, which words are booleans, fractions). The rules now live here, stdlib only, so
torch-free code (reports, the CLI) reads a spec exactly as the torch-side builders do:

- the kind is the text before the first ``:``, stripped and lowercased;
- fields are separated by ``,``; blank fields (a trailing comma) are ignored;
- with ``takes_path`` the first field is a path (kept as written); the others are ``key=value``;
- a key is stripped, lowercased, ``-`` becomes ``_``, and must then match
  ``[a-z_][a-z0-9_]*``; a value is stripped and may not be empty; a key may appear once;
- numbers are decimals, ``1e-3`` or fractions ``4/255``, finite; integers are exact and at
  most 2**53 in size (larger ones do not survive a JSON report); booleans are
  ``true/yes/on/1`` and ``false/no/off/0``.

Every error is a :class:`~nemaudit.errors.SpecError` that quotes the spec and the bad field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nemaudit.errors import SpecError

__all__ = ["FALSE_WORDS", "MAX_INT", "TRUE_WORDS", "SpecTokens", "convert", "format_spec",
           "format_value", "guess", "kind_of", "normalize_key", "tokenize", "with_field"]

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
#: integers beyond this lose digits as floats, hence in JSON reports and browsers
MAX_INT = 2**53

_KEY_RE = re.compile(r"[a-z_][a-z0-9_]*")
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUM_RE = re.compile(_NUM)
_FRACTION_RE = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_INT_RE = re.compile(r"[+-]?\d+")
_EXPONENT_RE = re.compile(r"[eE]([+-]?\d+)$")
#: 10**400 already overflows a float; larger exponents would only cost time to evaluate
_MAX_EXPONENT = 400
_NOT_FINITE = frozenset({"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity",
                         "+infinity", "-infinity"})


@dataclass(frozen=True)
class SpecTokens:
    """A tokenized spec: ``kind``, the ``path`` (specs that take one, else ``None``), the
    ``key -> value`` text of every field in order, and the stripped spec ``text``."""

    kind: str
    path: str | None
    fields: dict[str, str]
    text: str


def _fail(spec: Any, what: str, problem: str, usage: str) -> SpecError:
    msg = f"{what} spec {spec!r}: {problem}"
    return SpecError(f"{msg}; expected {usage}" if usage else msg)


def _quote(value: str) -> str:
    """``repr(value)``, shortened when long (a 5000-digit number should not fill the screen)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(value)} characters)"


def normalize_key(key: str) -> str:
    """A key as specs compare it: stripped, lowercased, ``-`` → ``_``."""
    return key.strip().lower().replace("-", "_")


def kind_of(spec: str, what: str, *, usage: str = "") -> str:
    """The kind of ``spec`` (text before the first ``:``, stripped, lowercased), so a caller
    can pick the rules (does it take a path? which keys?) before :func:`tokenize`."""
    if not isinstance(spec, str) or not spec.strip():
        problem = ("empty spec" if isinstance(spec, str) or spec is None
                   else f"expected a string, got {type(spec).__name__}")
        raise _fail(spec, what, problem, usage)
    return spec.strip().partition(":")[0].strip().lower()


def tokenize(spec: str, what: str, *, takes_path: bool = False, usage: str = "",
             strict: bool = True) -> SpecTokens:
    """Split ``spec`` into kind, path and fields by the rules of the module docstring.

    ``what`` ("probe", "corruption", …) and ``usage`` (the accepted form) go into every error.
    ``strict=False`` never raises: it is for reports, which show whatever they are given, and
    skips a malformed field (a repeated key keeps its last value; an empty spec has kind "").
    """
    if not isinstance(spec, str) or not spec.strip():
        if not strict:
            return SpecTokens("", None, {}, spec.strip() if isinstance(spec, str) else "")
        kind_of(spec, what, usage=usage)  # raises
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    parts = rest.split(",")
    path = None
    if takes_path:
        path = parts.pop(0).strip()
        if not path:
            if strict:
                raise _fail(spec, what, f"{kind} needs a PATH as its first field"
                            + ("" if usage else f" ({kind}:PATH,...)"), usage)
            path = None
    fields: dict[str, str] = {}
    for part in parts:
        if not part.strip():
            continue
        raw_key, eq, value = part.partition("=")
        key, value = normalize_key(raw_key), value.strip()
        if not eq:
            problem = f"field {part.strip()!r} is not key=value"
            if takes_path:
                problem += " (a path may not contain ',')"
        elif not _KEY_RE.fullmatch(key):
            problem = (f"bad key {raw_key.strip()!r} in field {part.strip()!r} (keys are "
                       "letters, digits, '_' and '-')")
        elif not value:
            problem = f"key {key!r} has an empty value (field {part.strip()!r})"
        elif key in fields and strict:
            problem = f"key {key!r} is given twice"
        else:
            fields[key] = value
            continue
        if strict:
            raise _fail(spec, what, problem, usage)
    return SpecTokens(kind, path, fields, text)


def _exact(value: str, key: str) -> Fraction | None:
    """The exact value of a decimal or ``a/b`` literal; ``None`` if it is not written as one,
    a SpecError if it is but has no usable value (``1/0``, ``1e99999``)."""
    t = value.strip()
    m = _FRACTION_RE.fullmatch(t)
    parts = m.groups() if m else (t,) if _NUM_RE.fullmatch(t) else None
    if parts is None:
        return None
    for p in parts:
        e = _EXPONENT_RE.search(p)
        if e and (len(e.group(1)) > 5 or abs(int(e.group(1))) > _MAX_EXPONENT):
            raise SpecError(f"{key}={_quote(value)} is out of range")
    try:
        exact = Fraction(parts[0])
        return exact / Fraction(parts[1]) if len(parts) == 2 else exact
    except ZeroDivisionError:
        raise SpecError(f"{key}={_quote(value)} is not a number (division by zero)") from None
    except ValueError:  # more digits than int() reads
        raise SpecError(f"{key}={_quote(value)} has too many digits") from None


def _float(value: str, key: str) -> float:
    exact = _exact(value, key)
    if exact is None:
        if value.strip().lower() in _NOT_FINITE:
            raise SpecError(f"{key}={_quote(value)} must be finite")
        raise SpecError(f"{key}={_quote(value)} is not a number (decimals, 1e-3 and fractions like "
                        "4/255 are allowed)")
    try:
        return float(exact)
    except OverflowError:
        raise SpecError(f"{key}={_quote(value)} is too large (must be finite)") from None


def _int(value: str, key: str) -> int:
    exact = _exact(value, key)
    if exact is None or exact.denominator != 1:
        raise SpecError(f"{key}={_quote(value)} must be an integer")
    if abs(exact.numerator) > MAX_INT:
        raise SpecError(f"{key}={_quote(value)} is too large (an integer must lie within ±2**53)")
    return exact.numerator


def convert(value: str, typ: type, key: str) -> Any:
    """``value`` (spec text) as ``typ``: float, int, bool or str (stripped); a SpecError names
    ``key`` and ``value`` when it is not one."""
    if typ is bool:
        low = value.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        raise SpecError(f"{key}={_quote(value)} must be true or false (or yes/no, on/off, 1/0)")
    if typ is float:
        return _float(value, key)
    if typ is int:
        return _int(value, key)
    if typ is str:
        return value.strip()
    raise TypeError(f"convert() handles float, int, bool and str, not {typ!r}")


def guess(value: str) -> Any:
    """``value``'s type guessed without knowing the key (reports, torch-free): ``true/yes/on``
    and ``false/no/off`` are booleans, integer literals ints (``1`` and ``0`` too), numbers that
    :func:`convert` reads as floats floats, anything else the stripped text."""
    t = value.strip()
    low = t.lower()
    if low in TRUE_WORDS - {"1"}:
        return True
    if low in FALSE_WORDS - {"0"}:
        return False
    if _INT_RE.fullmatch(t):
        try:
            return int(t)
        except ValueError:  # more digits than int() reads
            return t
    try:
        return _float(t, "value")
    except SpecError:
        return t


def format_value(value: Any) -> str:
    """Spec text for a value: booleans as ``true``/``false``, everything else ``str()``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_spec(kind: str, fields: Mapping[str, Any], path: str | None = None) -> str:
    """``kind:[path,]key=value,...``, the text :func:`tokenize` reads back."""
    parts = ([] if path is None else [path]) + [f"{k}={format_value(v)}"
                                                for k, v in fields.items()]
    return f"{kind}:" + ",".join(parts)


def with_field(spec: str, key: str, value: Any) -> str:
    """``spec`` with ``key=value`` appended, unless the spec already gives ``key`` (compared as
    :func:`tokenize` compares keys); e.g. the session's seed: ``with_field(spec, "seed", 0)``.
    The spec is not validated here: its parser reports its errors."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty spec {spec!r}: cannot add {key}={format_value(value)}")
    key = normalize_key(key)
    kind, _, rest = spec.strip().partition(":")
    if key in {normalize_key(f.partition("=")[0]) for f in rest.split(",") if f.strip()}:
        return spec.strip()
    head = rest.strip().rstrip(",") + "," if rest.strip() else ""
    return f"{kind}:{head}{key}={format_value(value)}"
