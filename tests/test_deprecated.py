"""Old spellings users already wrote keep working, with a deprecation message."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_old_spec_module_names_still_resolve():
    import nemaudit.spec as old
    from nemaudit.expectations import parse_expectation
    from nemaudit.harness.properties import PropertyError

    with pytest.warns(DeprecationWarning, match="moved to nemaudit.expectations"):
        assert old.parse_expectation is parse_expectation
    with pytest.warns(DeprecationWarning):
        assert old.PropertyError is PropertyError
    with pytest.warns(DeprecationWarning):
        assert "flip_rate" in old.METRICS and "f1_mean" in old.MILAN_METRICS
    with pytest.warns(DeprecationWarning):
        assert old.milan_form("f1_mean >= 0.5") == "milan.f1_mean >= 0.5"
    with pytest.raises(AttributeError):
        old.nothing_here  # noqa: B018


@pytest.mark.parametrize("module", ["nemaudit.model.train", "nemaudit.explain.milan.train"])
def test_old_training_commands_run_the_new_trainers(module):
    out = subprocess.run([sys.executable, "-W", "always", "-m", module, "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout
    assert "deprecated" in out.stderr and "nemaudit.training." in out.stderr
