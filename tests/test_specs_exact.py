"""The spec tokenizer's messages and edges in full: how long values are quoted, exponents at
their limit, the usage line, path specs, bad keys, the lenient reader of reports, and
adding a field to a spec."""

from __future__ import annotations

import pytest

from nemaudit import specs
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly


def test_long_values_are_quoted_short():
    sixty = "x" * 58  # repr adds 2 quotes: 60 characters, shown whole
    assert specs._quote(sixty) == repr(sixty)
    long = "a" * 39 + "b" + "c" * 9 + "d" * 10  # repr: 61 characters
    text = repr(long)
    assert specs._quote(long) == f"{text[:40]}...{text[-10:]} (59 characters)"
    assert specs._quote(long) == "'" + "a" * 39 + "...ddddddddd' (59 characters)"


@pytest.mark.parametrize("value, message", [
    ("1e400", None), ("1e401", "eps='1e401' is out of range"),
    ("1e-400", None), ("1e00001", None), ("1e000001", "eps='1e000001' is out of range"),
    ("1e0001", None), ("1/0", "eps='1/0' is not a number (division by zero)"),
])
def test_exponents_at_their_limit(value, message):
    if message is None:
        assert specs._exact(value, "eps") is not None
    else:
        with raises_exactly(SpecError, message):
            specs._exact(value, "eps")


def test_too_many_digits_names_the_value():
    digits = "1" * 5000  # more than int() reads (4300 by default)
    with raises_exactly(SpecError, f"n={specs._quote(digits)} has too many digits"):
        specs._exact(digits, "n")
    assert specs._int("12", "n") == 12
    with raises_exactly(SpecError, "n='1.5' must be an integer"):
        specs._int("1.5", "n")


def test_the_usage_line_and_where_it_goes():
    with raises_exactly(SpecError, "probe spec '': empty spec"):
        specs.kind_of("", "probe")
    with raises_exactly(SpecError, "probe spec '': empty spec; expected broden:PATH"):
        specs.kind_of("", "probe", usage="broden:PATH")
    with raises_exactly(SpecError, "probe spec 3: expected a string, got int"):
        specs.kind_of(3, "probe")
    with raises_exactly(SpecError, "probe spec 'broden:': broden needs a PATH as its first "
                                   "field (broden:PATH,...)"):
        specs.tokenize("broden:", "probe", takes_path=True)
    with raises_exactly(SpecError, "probe spec 'broden:': broden needs a PATH as its first "
                                   "field; expected broden:PATH[,max=N]"):
        specs.tokenize("broden:", "probe", takes_path=True, usage="broden:PATH[,max=N]")
    with raises_exactly(SpecError, "probe spec 'folder:a,b': field 'b' is not key=value (a "
                                   "path may not contain ',')"):
        specs.tokenize("folder:a,b", "probe", takes_path=True)
    with raises_exactly(SpecError, "corruption spec 'noise:x': field 'x' is not key=value"):
        specs.tokenize("noise:x", "corruption")
    with raises_exactly(SpecError, "corruption spec 'noise:a b=1': bad key 'a b' in field "
                                   "'a b=1' (keys are letters, digits, '_' and '-')"):
        specs.tokenize("noise:a b=1", "corruption")


def test_the_lenient_reader_never_raises():
    assert specs.tokenize("", "corruption", strict=False) == specs.SpecTokens("", None, {}, "")
    assert specs.tokenize("  ", "corruption", strict=False).text == ""
    assert specs.tokenize(None, "corruption", strict=False) == specs.SpecTokens("", None, {},
                                                                               "")
    assert specs.tokenize("broden:", "probe", takes_path=True, strict=False).path is None
    t = specs.tokenize("noise:x,std=1,std=2,a b=3", "corruption", strict=False)
    assert t.fields == {"std": "2"}


def test_values_as_spec_text_and_guesses():
    assert specs.format_value(True) == "true" and specs.format_value(False) == "false"
    assert specs.format_value(0.5) == "0.5"
    assert specs.guess("4/255") == pytest.approx(4 / 255) and specs.guess("x/y") == "x/y"
    assert specs.guess("1e99999") == "1e99999"
    with raises_exactly(TypeError, "convert() handles float, int, bool and str, not <class "
                                   "'list'>"):
        specs.convert("1", list, "k")


def test_adding_a_field():
    assert specs.with_field("gaussian:std=0.1", "seed", 3) == "gaussian:std=0.1,seed=3"
    assert specs.with_field("gaussian:std=0.1,", "seed", 3) == "gaussian:std=0.1,seed=3"
    assert specs.with_field("gaussian:", "seed", 3) == "gaussian:seed=3"
    assert specs.with_field("gaussian:Seed=1,std=0.1", "seed", 3) == "gaussian:Seed=1,std=0.1"
    assert specs.with_field("gaussian:a=b=seed", "seed", 3) == "gaussian:a=b=seed,seed=3"
    assert specs.with_field("gaussian:seed=x=1", "seed", 3) == "gaussian:seed=x=1"  # named
    assert specs.with_field("probe:name=BOX", "seed", 1) == "probe:name=BOX,seed=1"
    assert specs.with_field("pgd:eps=1", "targeted", True) == "pgd:eps=1,targeted=true"
    with raises_exactly(SpecError, "empty spec '': cannot add targeted=true"):
        specs.with_field("", "targeted", True)
