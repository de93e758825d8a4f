"""Audits: each explanation method clean vs corrupted, per unit, with robustness metrics.

- :mod:`~nemaudit.audit.methods`: the method registry (``METHODS``) and the ``Method`` base;
- :mod:`~nemaudit.audit.request`: ``AuditRequest``, one audit's validated settings;
- :mod:`~nemaudit.audit.result`: ``MethodResult`` and ``Metric``, shared by every method;
- :mod:`~nemaudit.audit.netdissect` and :mod:`~nemaudit.audit.milan`: the two methods
  (declaration, runner, result, report pictures).

This package imports no torch until a runner is used: the registry and the request are read
when spec files are collected, with audits off. ``from nemaudit.audit import audit`` and the
other names below are served on first use.
"""

from __future__ import annotations

from typing import Any

#: name → module that defines it (imported on first use: it needs torch)
_LAZY = {
    "AuditConfig": "nemaudit.audit.netdissect.run",
    "audit": "nemaudit.audit.netdissect.run",
    "clean_run": "nemaudit.audit.netdissect.run",
    "AuditResult": "nemaudit.audit.netdissect.result",
    "MethodResult": "nemaudit.audit.result",
    "Metric": "nemaudit.audit.result",
    "AuditRequest": "nemaudit.audit.request",
    "METHODS": "nemaudit.audit.methods",
    "Method": "nemaudit.audit.methods",
    "get_method": "nemaudit.audit.methods",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nemaudit.audit' has no attribute {name!r}")


__all__ = sorted(_LAZY)
