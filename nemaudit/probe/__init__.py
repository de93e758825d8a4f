"""Probing datasets: the shared contract, the loaders, and ``load_probe`` for string specs.

Specs are what the CLI, ini files and property files carry: :mod:`nemaudit.specs` splits
them by the rules every spec shares, and the keys and values are checked here, with errors
that name the bad key or value and list the valid ones. The synthetic probe is
imported only when asked for, so this package stays light (torch, numpy, PIL only).
"""

from __future__ import annotations

from typing import Any

from nemaudit.errors import SpecError
from nemaudit.imports import load_python_object
from nemaudit.probe.base import Concept, ProbeBatch, ProbeDataset, ProbeItem, collate
from nemaudit.probe.broden import BrodenProbe
from nemaudit.probe.broden_write import BrodenWriter, export_probe, write_broden
from nemaudit.probe.folder import FolderProbe
from nemaudit.specs import convert, kind_of, tokenize

__all__ = [
    "BrodenProbe",
    "BrodenWriter",
    "Concept",
    "FolderProbe",
    "ProbeBatch",
    "ProbeDataset",
    "ProbeItem",
    "collate",
    "export_probe",
    "load_probe",
    "write_broden",
]

#: the stated maxima of numbers whose cost grows with them (images, pixels per side)
MAX_IMAGES, MAX_SIDE = 10_000_000, 4096
#: kind -> (takes a PATH first?, {key: (converter name, minimum, maximum)})
_SPECS: dict[str, tuple[bool, dict[str, tuple[str, int | None, int | None]]]] = {
    "broden": (True, {"split": ("str", None, None), "max": ("int", 1, MAX_IMAGES),
                      "categories": ("list", None, None), "follow_links": ("bool", None, None),
                      "zero_labels": ("str", None, None)}),
    "folder": (True, {"image_size": ("int", 1, MAX_SIDE), "seg_size": ("int", 1, MAX_SIDE)}),
    "synthetic": (False, {"n": ("int", 1, MAX_IMAGES), "seed": ("int", None, None),
                          "image_size": ("int", 8, MAX_SIDE), "seg_size": ("int", 1, MAX_SIDE)}),
}
_USAGE = ("broden:PATH[,split=NAME][,max=N][,categories=object;part][,follow_links=true]"
          "[,zero_labels=ignore|reference], "
          "folder:PATH[,image_size=N][,seg_size=N], "
          "synthetic:[n=2000][,seed=0][,image_size=112][,seg_size=56], "
          "python:<module or path.py>:<callable>[(key=literal,...)]")


def _parse_spec(spec: str) -> tuple[str, str | None, dict[str, Any]]:
    """Split a probe spec into (kind, path, options), validating every key and value; a
    ``python:`` spec gives ("python", its target, {})."""
    kind = kind_of(spec, "probe", usage=_USAGE)
    if kind == "python":
        return kind, spec.strip().partition(":")[2].strip(), {}
    if kind not in _SPECS:
        raise SpecError(f"probe spec {spec!r}: unknown probe kind {kind!r}; valid: {_USAGE}")
    takes_path, keys = _SPECS[kind]
    valid = ", ".join(keys) or "none"
    tokens = tokenize(spec, "probe", takes_path=takes_path,
                      usage=f"{kind}:{'PATH,' if takes_path else ''}key=value,... "
                            f"(valid keys for {kind}: {valid})")
    options: dict[str, Any] = {}
    for key, value in tokens.fields.items():
        if key not in keys:
            raise SpecError(f"probe spec {spec!r}: unknown key {key!r} for {kind}; valid: {valid}")
        conv, minimum, maximum = keys[key]
        if conv in ("int", "bool"):
            try:
                num = convert(value, int if conv == "int" else bool, key)
            except SpecError as e:
                raise SpecError(f"probe spec {spec!r}: {e}") from None
            if minimum is not None and num < minimum:
                raise SpecError(f"probe spec {spec!r}: {key} must be >= {minimum}, got {num}")
            if maximum is not None and num > maximum:
                raise SpecError(f"probe spec {spec!r}: {key} must be <= {maximum} (the stated "
                                f"maximum), got {num}")
            options[key] = num
        elif conv == "list":
            options[key] = [v.strip() for v in value.split(";") if v.strip()]
        else:
            options[key] = value
    return kind, tokens.path, options


def load_probe(spec: str) -> ProbeDataset:
    """Build a probe from a spec string.

    - ``broden:PATH[,split=val][,max=N][,categories=object;part][,follow_links=true]``
      ``[,zero_labels=ignore|reference]`` (``reference``: cells of 0 count for the union as
      NetDissect-Lite counts them)
      (``follow_links``: allow image paths that resolve outside PATH; refused by default)
    - ``folder:PATH[,image_size=N][,seg_size=N]``
    - ``synthetic:n=2000,seed=0[,image_size=112,seg_size=56]`` (all keys optional)
    - ``python:<module or path.py>:<callable>[(key=literal, ...)]``: what the callable returns,
      which must be a :class:`ProbeDataset`

    Malformed specs raise ``SpecError``; a malformed dataset raises ``ProbeFormatError``.
    """
    kind, path, opts = _parse_spec(spec)
    if kind == "python":
        probe = load_python_object(spec.strip(), "probe")
        if not isinstance(probe, ProbeDataset):
            raise SpecError(f"probe spec {spec!r}: it returned {type(probe).__name__}, "
                            "expected a nemaudit.probe.ProbeDataset")
        return probe
    if kind == "broden":
        return BrodenProbe(path, split=opts.get("split"), max_images=opts.get("max"),  # type: ignore[arg-type]
                           categories=opts.get("categories"),
                           follow_links=bool(opts.get("follow_links", False)),
                           zero_labels=str(opts.get("zero_labels", "ignore")))
    if kind == "folder":
        return FolderProbe(path, image_size=opts.get("image_size"), seg_size=opts.get("seg_size"))  # type: ignore[arg-type]
    from nemaudit.probe.synthetic import SyntheticProbe  # lazy: optional, heavier module

    return SyntheticProbe(**opts)
