"""Corruption specs: the exact messages a user reads (they name the field, the spec and every
valid kind), numbers with fractions, and binding a spec string to its probe."""

from __future__ import annotations

import pytest

from nemaudit.corrupt.noise import GaussianNoise
from nemaudit.corrupt.spec import bound_corruption, corruption_class, parse_corruption, parse_number
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly
from tests.toys import ToyProbe

KINDS = "gaussian, uniform, bernoulli, jpeg, pgd, fgsm, pgd-ce"


@pytest.mark.parametrize("call, message", [
    (lambda: corruption_class("blur"), f"unknown corruption kind 'blur'; valid kinds: {KINDS}"),
    (lambda: parse_corruption("blur:std=1"),
     f"unknown corruption kind 'blur' in 'blur:std=1'; valid kinds: {KINDS}"),
    (lambda: parse_corruption(""),
     f"corruption spec '': empty spec; expected '<kind>:key=value,...' (valid kinds: {KINDS})"),
    (lambda: parse_corruption("gaussian:"), "corruption kind 'gaussian' needs std=... (spec "
                                            "'gaussian:')"),
    (lambda: parse_corruption("pgd:steps=2"), "corruption kind 'pgd' needs eps=... (spec "
                                              "'pgd:steps=2')"),
    (lambda: parse_corruption("gaussian:std=x"),
     "std='x' is not a number (decimals, 1e-3 and fractions like 4/255 are allowed) (in "
     "corruption spec 'gaussian:std=x')"),
    (lambda: parse_corruption("gaussian:std"),
     f"corruption spec 'gaussian:std': field 'std' is not key=value; expected "
     f"'<kind>:key=value,...' (valid kinds: {KINDS})"),
    (lambda: parse_number("abc", "eps"),
     "eps='abc' is not a number (decimals, 1e-3 and fractions like 4/255 are allowed)"),
])
def test_spec_errors_read_exactly(call, message):
    with raises_exactly(SpecError, message):
        call()


def test_numbers_take_fractions_and_a_string_spec_is_bound_to_its_probe():
    assert parse_number("4/255", "eps") == 4 / 255 and parse_number("1e-3", "std") == 1e-3
    probe = ToyProbe(10)
    c = bound_corruption("gaussian:std=0.1,fraction=0.5,seed=2", probe)
    assert isinstance(c, GaussianNoise) and (c.std, c.fraction, c.seed) == (0.1, 0.5, 2)
    assert c.n == 10 and len(c.poisoned_indices(probe)) == 5
    same = GaussianNoise(0.1, fraction=0.5, seed=2)
    assert bound_corruption(same, probe) is same and same.n == 10
