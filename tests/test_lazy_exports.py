"""The packages that import torch only on use (``nemaudit.audit``, ``nemaudit.corrupt``,
``nemaudit.audit.milan``): every advertised name resolves to the object its module defines,
``__all__`` lists exactly those names, and an unknown name is a plain AttributeError."""

from __future__ import annotations

import importlib

import pytest

import nemaudit.audit as audit_pkg
import nemaudit.audit.milan as milan_pkg
import nemaudit.corrupt as corrupt_pkg
from tests.helpers import raises_exactly

AUDIT = {
    "AuditConfig": "nemaudit.audit.netdissect.run", "audit": "nemaudit.audit.netdissect.run",
    "clean_run": "nemaudit.audit.netdissect.run",
    "AuditResult": "nemaudit.audit.netdissect.result", "MethodResult": "nemaudit.audit.result",
    "Metric": "nemaudit.audit.result", "AuditRequest": "nemaudit.audit.request",
    "METHODS": "nemaudit.audit.methods", "Method": "nemaudit.audit.methods",
    "get_method": "nemaudit.audit.methods",
}
CORRUPT = {
    **dict.fromkeys(("Corruption", "UnitAttack", "UnitCorruption", "concept_maps",
                     "contains_concepts", "derive_seed", "resolve_concept", "runner_up_concepts",
                     "validate_units"), "base"),
    **dict.fromkeys(("BernoulliNoise", "GaussianNoise", "JPEGCompression", "NoiseCorruption",
                     "UniformNoise"), "noise"),
    **dict.fromkeys(("corruption_class", "parse_corruption"), "spec"),
    "KINDS": "kinds",
    **dict.fromkeys(("FGSMCorruption", "PGDCECorruption", "predicted_labels"), "fgsm"),
    **dict.fromkeys(("ConceptAttack", "ConceptPGD", "act_avg", "attack_units",
                     "untargeted_targets"), "pgd"),
}
MILAN = ("MilanAuditConfig", "MilanAuditResult", "audit_milan", "milan_metrics")


@pytest.mark.parametrize("name, module", AUDIT.items())
def test_audit_names(name, module):
    assert getattr(audit_pkg, name) is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name, module", CORRUPT.items())
def test_corrupt_names(name, module):
    mod = importlib.import_module(f"nemaudit.corrupt.{module}")
    assert getattr(corrupt_pkg, name) is getattr(mod, name)


@pytest.mark.parametrize("name", MILAN)
def test_milan_names(name):
    from nemaudit.audit.milan import run

    assert getattr(milan_pkg, name) is getattr(run, name)


def test_all_lists_the_advertised_names_and_unknown_names_are_refused():
    assert audit_pkg.__all__ == sorted(AUDIT)
    assert corrupt_pkg.__all__ == sorted(CORRUPT)
    for pkg, label in ((audit_pkg, "nemaudit.audit"), (corrupt_pkg, "nemaudit.corrupt"),
                       (milan_pkg, "nemaudit.audit.milan")):
        with raises_exactly(AttributeError, f"module {label!r} has no attribute 'nope'"):
            pkg.nope  # noqa: B018
