"""Deprecated: the expectation grammar is :mod:`nemaudit.expectations`, spec files are
:mod:`nemaudit.harness.properties`, and metric tables are each method's registry entry
(:mod:`nemaudit.audit.methods`). Old imports keep working, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    **dict.fromkeys(("BASELINE", "OPS", "Expectation", "ExpectationError",
                     "parse_expectation"), "nemaudit.expectations"),
    **dict.fromkeys(("Property", "PropertyError", "PropertyFailed", "PropertyItem", "SpecFile",
                     "load_spec_file", "parse_document", "build_property", "is_spec_file",
                     "pyproject_table"), "nemaudit.harness.properties"),
}


def __getattr__(name: str) -> Any:
    if name in ("METRICS", "MILAN_METRICS", "MILAN_PREFIX", "milan_form"):
        from nemaudit.audit.methods import get_method
        from nemaudit.expectations import in_method

        nd, milan = get_method("netdissect"), get_method("milan")
        value: Any = {"METRICS": {k: v.help for k, v in nd.metrics.items()},
                      "MILAN_METRICS": {k: v.help for k, v in milan.metrics.items()},
                      "MILAN_PREFIX": milan.prefix,
                      "milan_form": lambda text: in_method(text, "milan")}[name]
        where = "nemaudit.audit.methods.get_method(...).metrics"
    elif name in _MOVED:
        value, where = getattr(importlib.import_module(_MOVED[name]), name), _MOVED[name]
    else:
        raise AttributeError(f"module 'nemaudit.spec' has no attribute {name!r}")
    warnings.warn(f"nemaudit.spec.{name} moved to {where}", DeprecationWarning, stacklevel=2)
    return value
