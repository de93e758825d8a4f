"""One audit's settings as a frozen, validated value: what every front door builds.

The fixture (keywords and ``@pytest.mark.nemaudit`` defaults), spec-file properties and the
CLI's flags all become an :class:`AuditRequest`, validated here once with the same rules
(:mod:`nemaudit.audit.fields` for the shared settings, :attr:`Method.fields` for a method's
own), so a value one door rejects no other door accepts. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from nemaudit.audit.fields import COMMON
from nemaudit.audit.methods import DEFAULT_METHOD, Method, get_method
from nemaudit.errors import SpecError

_COMMON_NAMES = tuple(COMMON)


@dataclass(frozen=True)
class AuditRequest:
    """The settings of one audit of one layer by one method (``None``: the default)."""

    method: str = DEFAULT_METHOD
    model: Any = None
    probe: Any = None
    layer: str | None = None
    corruption: Any = None
    weights: str | None = None
    normalize: Any = None
    units: tuple[int, ...] | None = None
    max_units: int | None = None
    repeats: int | None = None
    #: the method's own settings (:attr:`Method.fields`), as sorted (name, value) pairs
    settings: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def build(cls, method: str = DEFAULT_METHOD, *,
              name: Callable[[str], str] = lambda f: f"{f}=", **values: Any) -> AuditRequest:
        """Validate ``values`` (``None`` = unset) for ``method``. ``name(field)`` says how the
        caller spells a field in errors (``--iou-threshold``, ``field 'eta'``, ``eta=``)."""
        m = get_method(method)
        common: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            spec = COMMON.get(key) or m.fields.get(key)
            if spec is None:
                valid = ", ".join([*_COMMON_NAMES, *m.fields])
                raise SpecError(f"{name(key)} is not a setting of a {m.name} audit; valid: "
                                f"{valid}")
            try:
                checked = spec.check(value)
            except TypeError as e:
                raise SpecError(f"{name(key)} expected {e}, got {value!r}") from None
            (common if key in COMMON else own)[key] = checked
        return cls(method=m.name, settings=tuple(sorted(own.items())), **common)

    @property
    def declaration(self) -> Method:
        return get_method(self.method)

    def get(self, key: str, default: Any = None) -> Any:
        """A shared setting or one of the method's own, or ``default`` when unset."""
        if key in COMMON:
            v = getattr(self, key)
            return default if v is None else v
        return dict(self.settings).get(key, default)

    def values(self) -> dict[str, Any]:
        """Every set value, shared and own (the keywords :meth:`build` takes back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("method", "settings") and getattr(self, f.name) is not None}
        return {**out, **dict(self.settings)}

    def with_defaults(self, defaults: Mapping[str, Any]) -> AuditRequest:
        """Unset values filled from ``defaults`` (a marker's keywords); unknown keys ignored."""
        m = self.declaration
        fill = {k: v for k, v in defaults.items()
                if v is not None and (k in COMMON or k in m.fields) and self.get(k) is None}
        return self if not fill else AuditRequest.build(self.method, **self.values(), **fill)

    def but(self, **changes: Any) -> AuditRequest:
        """A copy with some values changed (validated again)."""
        return AuditRequest.build(self.method, **{**self.values(), **changes})

    def cache_key(self) -> tuple | None:
        """A hashable key for in-memory reuse, or None when an object (not a spec string)
        stands for the model, probe or a setting: objects can change. A corruption object
        counts by its spec (it is rebuilt from it)."""
        parts = []
        for key, value in (*((k, getattr(self, k)) for k in _COMMON_NAMES), *self.settings):
            if value is None or isinstance(value, (str, int, float, bool, tuple)):
                parts.append((key, value))
            elif key == "corruption" and callable(getattr(value, "spec", None)):
                parts.append((key, ("obj", type(value).__name__, value.spec())))
            else:
                return None
        return (self.method, tuple(parts))


@dataclass
class Resolved:
    """What the Auditor hands a method's runner: live objects and run settings."""

    model: Any
    probe: Any
    layer: str
    corruption: Any
    device: Any
    cache_dir: str | None = None
    batch_size: int = 64
    #: DataLoader worker processes decoding the probe (``--workers``)
    workers: int = 0
    #: cap on attacked units when the request sets none (``--nemaudit-max-units``)
    max_units: int | None = None
    progress: bool = False
    #: ``resolve(kind, spec, **options)`` → the Auditor's cached resolver (e.g. describers)
    resolve: Callable[..., Any] = field(default=lambda kind, spec, **kw: spec, repr=False)


