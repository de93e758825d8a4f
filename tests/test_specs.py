"""nemaudit.specs: the one tokenizer of ``kind:key=value,...`` specs, and the parsers built on it
(corruption, probe, report, normalisation) agreeing with it."""

from __future__ import annotations

import dataclasses
import string
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemaudit.errors import ModelSpecError, SpecError
from nemaudit.report.json_report import parse_spec
from nemaudit.specs import (
    MAX_INT,
    SpecTokens,
    convert,
    format_spec,
    guess,
    kind_of,
    normalize_key,
    tokenize,
    with_field,
)

TOYS = Path(__file__).with_name("toys.py")


# --------------------------------------------------------------------------- tokenize

def test_kind_is_stripped_and_lowercased():
    t = tokenize(" Gaussian : std=0.1 ", "corruption")
    assert t == SpecTokens("gaussian", None, {"std": "0.1"}, "Gaussian : std=0.1")
    assert tokenize("synthetic", "probe").kind == "synthetic"  # no ':' at all
    assert kind_of("  PGD-CE:eps=1", "corruption") == "pgd-ce"


def test_keys_are_stripped_lowercased_and_dashes_become_underscores():
    t = tokenize("pgd: EPS = 4/255 ,Random-Start=true,max_copies=3", "corruption")
    assert t.fields == {"eps": "4/255", "random_start": "true", "max_copies": "3"}
    assert normalize_key(" Random-Start ") == "random_start"


@pytest.mark.parametrize(("spec", "field"), [
    ("gaussian:1x=2", "'1x=2'"),
    ("gaussian:a b=2", "'a b=2'"),
    ("gaussian:=2", "'=2'"),
    ("gaussian:st.d=2", "'st.d=2'"),
])
def test_bad_keys_are_errors_naming_the_field(spec, field):
    with pytest.raises(SpecError, match="bad key") as e:
        tokenize(spec, "corruption")
    assert field in str(e.value) and repr(spec) in str(e.value) and "corruption" in str(e.value)


@pytest.mark.parametrize("spec", ["gaussian:std=", "gaussian:std=  ", "gaussian:seed=1,std="])
def test_an_empty_value_is_an_error(spec):
    with pytest.raises(SpecError, match="'std' has an empty value"):
        tokenize(spec, "corruption")


@pytest.mark.parametrize("spec", ["gaussian:std=1,std=2", "gaussian:std=1,STD=2",
                                  "pgd:random-start=1,random_start=0"])
def test_a_key_given_twice_is_an_error(spec):
    with pytest.raises(SpecError, match="given twice"):
        tokenize(spec, "corruption")


def test_a_field_without_equals_is_an_error_naming_it_what_and_usage():
    with pytest.raises(SpecError) as e:
        tokenize("gaussian:std=1,loud", "corruption", usage="gaussian:std=X")
    msg = str(e.value)
    assert "'loud' is not key=value" in msg and "corruption spec 'gaussian:std=1,loud'" in msg
    assert msg.endswith("expected gaussian:std=X")


@pytest.mark.parametrize(("spec", "problem"), [
    ("", "empty spec"), ("   ", "empty spec"), (None, "empty spec"),
    (3, "expected a string, got int"), (b"gaussian:std=1", "expected a string, got bytes"),
])
def test_an_empty_or_non_string_spec_is_an_error(spec, problem):
    with pytest.raises(SpecError, match=f"probe spec .*{problem}; expected X"):
        tokenize(spec, "probe", usage="X")
    with pytest.raises(SpecError, match=problem):
        kind_of(spec, "probe")


def test_values_keep_their_text_blank_fields_are_ignored():
    t = tokenize("gaussian:std=0.1,select=concept:dog|cat,,note=a=b, ,", "corruption")
    assert t.fields == {"std": "0.1", "select": "concept:dog|cat", "note": "a=b"}


def test_the_first_field_is_a_path_when_the_kind_takes_one():
    t = tokenize("broden:/data/broden1_224,split=val,MAX=5", "probe", takes_path=True)
    assert (t.kind, t.path, t.fields) == ("broden", "/data/broden1_224", {"split": "val",
                                                                          "max": "5"})
    assert tokenize(r"folder: C:\data\x ", "probe", takes_path=True).path == r"C:\data\x"
    assert tokenize("broden:split=val", "probe", takes_path=True).path == "split=val"
    for spec in ("broden:", "broden", "broden:,split=val", "broden: ,split=val"):
        with pytest.raises(SpecError, match="broden needs a PATH"):
            tokenize(spec, "probe", takes_path=True)
    with pytest.raises(SpecError, match="a path may not contain ','"):
        tokenize("folder:/a,b/c", "probe", takes_path=True)


def test_tokens_are_frozen():
    t = tokenize("gaussian:std=1", "corruption")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.kind = "pgd"  # type: ignore[misc]


def test_loose_tokenize_never_raises():
    t = tokenize("Gaussian:std=1,loud,1x=2,std=3,seed=", "corruption", strict=False)
    assert (t.kind, t.fields) == ("gaussian", {"std": "3"})
    assert tokenize("", "corruption", strict=False).kind == ""
    assert tokenize("broden:", "probe", takes_path=True, strict=False).path is None


# --------------------------------------------------------------------------- convert

@pytest.mark.parametrize(("text", "value"), [
    ("0.02", 0.02), ("2e-2", 0.02), ("1E-3", 1e-3), (" -0.5 ", -0.5), (".5", 0.5), ("5.", 5.0),
    ("4/255", 4 / 255), (" 4 / 255 ", 4 / 255), ("-4/255", -4 / 255), ("0.5/2", 0.25),
    ("3", 3.0), ("1e-400", 0.0),
])
def test_convert_float(text, value):
    out = convert(text, float, "eps")
    assert type(out) is float and out == value


@pytest.mark.parametrize(("text", "pattern"), [
    ("nan", "eps='nan' must be finite"), ("-inf", "eps='-inf' must be finite"),
    ("Infinity", "must be finite"), ("1e400", "eps='1e400' is too large"),
    ("1/0", r"eps='1/0' is not a number \(division by zero\)"), ("abc", "eps='abc' is not a"),
    ("1_000", "is not a number"), ("4//255", "is not a number"), ("0x10", "is not a number"),
    ("1" + "0" * 400 + "/1", "is too large"), ("1e999999999", "out of range"),
    ("1" * 5000, "too many digits"),
])
def test_convert_float_errors_name_key_and_value(text, pattern):
    with pytest.raises(SpecError, match=pattern):
        convert(text, float, "eps")


def test_huge_exponents_are_refused_without_evaluating_them():
    t0 = time.perf_counter()
    for text in ("1e999999999", "1e-999999999", "1/1e999999999", "1e" + "9" * 100):
        for typ in (float, int):
            with pytest.raises(SpecError, match="out of range"):
                convert(text, typ, "eps")
    assert time.perf_counter() - t0 < 5.0  # 10**999999999 would take minutes


@pytest.mark.parametrize(("text", "value"), [
    ("10", 10), ("+3", 3), ("-7", -7), ("1e3", 1000), ("4.0", 4), ("8/2", 4),
    (str(MAX_INT), MAX_INT), (str(-MAX_INT), -MAX_INT),
])
def test_convert_int(text, value):
    out = convert(text, int, "steps")
    assert type(out) is int and out == value


@pytest.mark.parametrize(("text", "pattern"), [
    ("2.5", "steps='2.5' must be an integer"), ("ten", "steps='ten' must be an integer"),
    ("nan", "must be an integer"), ("1/3", "must be an integer"),
    ("99999999999999999999", "steps='99999999999999999999' is too large"),
    (str(MAX_INT + 1), "too large"), ("1e20", "too large"), ("-1e300", "too large"),
    ("1e99999", "out of range"), ("9" * 5000, "too many digits"),
])
def test_convert_int_errors(text, pattern):
    with pytest.raises(SpecError, match=pattern) as e:
        convert(text, int, "steps")
    assert len(str(e.value)) < 200  # a long value is shortened in the message


@pytest.mark.parametrize("word", ["true", "True", "YES", "on", "1", " true "])
def test_convert_true(word):
    assert convert(word, bool, "targeted") is True


@pytest.mark.parametrize("word", ["false", "FALSE", "no", "Off", "0"])
def test_convert_false(word):
    assert convert(word, bool, "targeted") is False


def test_convert_bool_and_str_errors():
    with pytest.raises(SpecError, match="targeted='maybe' must be true or false"):
        convert("maybe", bool, "targeted")
    assert convert(" concept:dog|cat ", str, "select") == "concept:dog|cat"
    with pytest.raises(TypeError):
        convert("1", list, "x")


# --------------------------------------------------------------------------- guess

@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("Yes", True), ("ON", True), ("false", False), ("no", False),
    ("off", False), ("1", 1), ("0", 0), ("10", 10), ("-3", -3), ("4/255", 4 / 255),
    ("1e-3", 1e-3), ("0.5", 0.5), ("nan", "nan"), ("inf", "inf"), ("1/0", "1/0"),
    ("concept:dog|cat", "concept:dog|cat"), ("  random ", "random"), ("1e999", "1e999"),
    ("99999999999999999999", 99999999999999999999),
])
def test_guess(text, value):
    out = guess(text)
    assert out == value and type(out) is type(value)


# --------------------------------------------------------------------------- with_field

def _with_seed(spec: str, seed: int) -> str:
    """session.with_seed as it was, the reference with_field must match."""
    kind, sep, rest = spec.strip().partition(":")
    keys = {f.partition("=")[0].strip().lower() for f in rest.split(",") if f.strip()}
    if "seed" in keys:
        return spec.strip()
    return f"{kind}:{rest.strip().rstrip(',') + ',' if rest.strip() else ''}seed={seed}"


@pytest.mark.parametrize(("spec", "out"), [
    ("gaussian:std=0.1", "gaussian:std=0.1,seed=3"),
    (" gaussian:std=0.1, ", "gaussian:std=0.1,seed=3"),
    ("fgsm:", "fgsm:seed=3"),
    ("fgsm", "fgsm:seed=3"),
    ("gaussian:std=0.1,seed=7", "gaussian:std=0.1,seed=7"),
    ("gaussian:std=0.1, SEED = 7 ", "gaussian:std=0.1, SEED = 7"),
])
def test_with_field_is_with_seed(spec, out):
    assert with_field(spec, "seed", 3) == out == _with_seed(spec, 3)


def test_with_field_normalises_keys_and_formats_values():
    assert with_field("pgd:eps=1,random-start=true", "Random_Start", False) == \
        "pgd:eps=1,random-start=true"
    assert with_field("pgd:eps=1", "random-start", False) == "pgd:eps=1,random_start=false"
    with pytest.raises(SpecError, match="empty spec"):
        with_field(" ", "seed", 0)


_KEY = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_VALUE = st.text(string.ascii_letters + string.digits + ":=|/.+-_ ", min_size=1,
                 max_size=12).map(str.strip).filter(bool)
_KIND = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)


@settings(deadline=None)
@given(_KIND, st.dictionaries(_KEY, _VALUE, max_size=6), st.integers(0, 10**6))
def test_with_field_matches_with_seed_on_random_specs(kind, fields, seed):
    spec = format_spec(kind, fields)
    assert with_field(spec, "seed", seed) == _with_seed(spec, seed)


# --------------------------------------------------------------------------- round trips

@settings(deadline=None)
@given(_KIND, st.dictionaries(_KEY, _VALUE, max_size=6),
       st.none() | st.text(string.ascii_letters + string.digits + "/\\:._- ", min_size=1,
                           max_size=20).map(str.strip).filter(bool))
def test_tokenize_format_round_trip(kind, fields, path):
    t = tokenize(format_spec(kind, fields, path), "x", takes_path=path is not None)
    assert (t.kind, t.path, t.fields) == (kind, path, fields)
    assert list(t.fields) == list(fields)


_TYPED = st.one_of(
    st.tuples(st.just(float), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just(int), st.integers(-MAX_INT, MAX_INT)),
    st.tuples(st.just(bool), st.booleans()),
)


@settings(deadline=None)
@given(st.dictionaries(_KEY, _TYPED, min_size=1, max_size=6))
def test_typed_values_round_trip(fields):
    t = tokenize(format_spec("k", {k: v for k, (_, v) in fields.items()}), "x")
    for key, (typ, value) in fields.items():
        assert convert(t.fields[key], typ, key) == value
        got = guess(t.fields[key])
        assert got == value and (isinstance(got, bool) == isinstance(value, bool))


# --------------------------------------------------------------------------- corruption specs

def test_parse_corruption_reads_keys_and_bools_like_the_report():
    from nemaudit.corrupt import parse_corruption

    c = parse_corruption("Gaussian:STD=0.02,Fraction=1/2")
    assert (c.std, c.fraction) == (0.02, 0.5)
    assert parse_spec("Gaussian:STD=0.02,Fraction=1/2") == {"kind": "gaussian", "std": 0.02,
                                                            "fraction": 0.5}
    c = parse_corruption("pgd:eps=4/255,targeted=yes,target=cat,random-start=on")
    assert c.targeted is True and c.random_start is True
    assert parse_spec("pgd:eps=4/255,targeted=yes,target=cat,random-start=on") == {
        "kind": "pgd", "eps": 4 / 255, "targeted": True, "target": "cat", "random_start": True}


@pytest.mark.parametrize(("spec", "pattern"), [
    ("gaussian:std=0.1,seed=99999999999999999999", "seed=.* too large .*gaussian:std=0.1"),
    ("gaussian:std=1e400", "std='1e400' is too large"),
    ("gaussian:std=0.1,STD=0.2", "given twice"),
    ("gaussian:std=", "empty value"),
    ("pgd:eps=nan", "eps='nan' must be finite"),
])
def test_parse_corruption_errors(spec, pattern):
    from nemaudit.corrupt import parse_corruption

    with pytest.raises(SpecError, match=pattern):
        parse_corruption(spec)


def _case(draw, key: str) -> str:
    return draw(st.sampled_from([key, key.upper(), key.capitalize(), key.replace("_", "-")]))


def _num(draw, lo: float, hi: float) -> str:
    """A number spec text in [lo, hi]: a decimal, an exponent or a k/255 fraction."""
    form = draw(st.sampled_from(["dec", "exp", "frac"]))
    if form == "frac":
        return f"{draw(st.integers(round(lo * 255), round(hi * 255)))}/255"
    v = draw(st.floats(lo, hi, allow_nan=False))
    return repr(v) if form == "dec" else f"{v:e}"


@st.composite
def corruption_specs(draw) -> str:
    kind = draw(st.sampled_from(["gaussian", "pgd"]))
    fields: dict[str, str] = {}
    if kind == "gaussian":
        fields[_case(draw, "std")] = _num(draw, 0, 1)
    else:
        fields[_case(draw, "eps")] = _num(draw, 0, 1)
        if draw(st.booleans()):
            fields[_case(draw, "steps")] = str(draw(st.integers(1, 50)))
        if draw(st.booleans()):
            fields[_case(draw, "alpha")] = _num(draw, 0, 0.1)
        targeted = draw(st.booleans())
        if targeted or draw(st.booleans()):
            words = ["true", "yes", "on"] if targeted else ["false", "no", "off"]
            fields[_case(draw, "targeted")] = draw(st.sampled_from(words)).upper() \
                if draw(st.booleans()) else draw(st.sampled_from(words))
        if targeted:
            fields["target"] = draw(st.sampled_from(["cat", "dog", "red-color"]))
        if draw(st.booleans()):
            fields[_case(draw, "random_start")] = draw(st.sampled_from(["true", "no", "OFF"]))
        if draw(st.booleans()):
            fields[_case(draw, "max_copies")] = str(draw(st.integers(1, 99)))
    if draw(st.booleans()):
        fields[_case(draw, "fraction")] = _num(draw, 0, 1)
    if draw(st.booleans()):
        fields[_case(draw, "seed")] = str(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):
        fields[_case(draw, "select")] = draw(st.sampled_from(["random", "concept:dog|cat"]))
    items = list(fields.items())
    order = draw(st.permutations(range(len(items))))
    kind = draw(st.sampled_from([kind, kind.upper()]))
    return f"{kind}:" + ",".join(f"{items[i][0]}={items[i][1]}" for i in order)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption_specs())
def test_report_parse_spec_agrees_with_parse_corruption(spec):
    from nemaudit.corrupt import parse_corruption

    described = parse_corruption(spec).describe()
    parsed = parse_spec(spec)
    assert parsed["kind"] == described["kind"]
    for key, value in parsed.items():
        want = described[key]  # (a numeric target= would be an int here, text there)
        assert value == want, (key, spec)
        assert isinstance(value, bool) == isinstance(want, bool), (key, spec)


# --------------------------------------------------------------------------- probe specs

def test_probe_keys_follow_the_shared_rules(tmp_path: Path):
    from nemaudit.probe import _parse_spec

    assert _parse_spec("Broden:/x, Split = val ,MAX=3,Categories=object;part") == (
        "broden", "/x", {"split": "val", "max": 3, "categories": ["object", "part"]})
    assert _parse_spec("folder:/x,image-size=8")[2] == {"image_size": 8}
    assert _parse_spec("synthetic:n=1e3")[2] == {"n": 1000}
    with pytest.raises(SpecError, match="probe spec .*seed='99999999999999999999' is too "):
        _parse_spec("synthetic:seed=99999999999999999999")
    with pytest.raises(SpecError, match="'split' is given twice"):
        _parse_spec("broden:/x,split=a,SPLIT=b")


def test_load_probe_python(tmp_path: Path):
    from nemaudit.probe import ProbeDataset, load_probe

    probe = load_probe(f"python:{TOYS}:ToyProbe(n=5, seed=2)")
    assert isinstance(probe, ProbeDataset) and len(probe) == 5 and probe.seed == 2
    assert len(load_probe(f" Python:{TOYS}:ToyProbe")) == 24
    (tmp_path / "notprobe.py").write_text("def make(n=1):\n    return [n]\n")
    with pytest.raises(SpecError, match="returned list, expected a nemaudit.probe.ProbeDataset"):
        load_probe(f"python:{tmp_path / 'notprobe.py'}:make")
    with pytest.raises(SpecError, match="literal keywords"):
        load_probe(f"python:{TOYS}:ToyProbe(n=len('ab'))")
    with pytest.raises(SpecError, match="has no attribute 'NoProbe'"):
        load_probe(f"python:{TOYS}:NoProbe")
    with pytest.raises(SpecError, match="cannot import module 'no_such_mod_xyz'"):
        load_probe("python:no_such_mod_xyz:make")
    with pytest.raises(SpecError, match="expected python:<module or path.py>:<callable>"):
        load_probe("python:justaname")


def test_load_python_object_is_generic():
    from nemaudit.imports import load_python_object

    assert load_python_object("python:fractions:Fraction(numerator=3, denominator=6)",
                              "thing") == Fraction(1, 2)
    with pytest.raises(SpecError, match="describer spec"):
        load_python_object("python:fractions:Nope", "describer")


# --------------------------------------------------------------------------- normalisation

def _cli_parse_normalize(text):
    """nemaudit.cli._parse_normalize as it was: every string it accepted, parse_normalize must."""
    if text is None or text in ("imagenet", "none", "netdissect"):
        return text
    mean, std = text.split("/")
    return (tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(",")))


@pytest.mark.parametrize("text", ["imagenet", "none", "netdissect", "0.5,0.5,0.5/0.2,0.2,0.2",
                                  " 0.5 , 0.4,0.3 / 0.1 ,0.2, 0.3", "1e-1/2E-1", "0.5/0.25",
                                  "-1,0,1/1,2,3", "+0.5,.5,5./1,1,1"])
def test_parse_normalize_accepts_what_the_cli_accepted(text):
    from nemaudit.model.load import IMAGENET_MEAN, parse_normalize

    ref, got = _cli_parse_normalize(text), parse_normalize(text)
    if isinstance(ref, str):
        assert got.name == ref and (got.mean == IMAGENET_MEAN) == (ref == "imagenet")
    else:
        assert (got.mean, got.std) == ref
        again = parse_normalize(str(got))
        assert (again.mean, again.std) == (got.mean, got.std)


@pytest.mark.parametrize(("spec", "pattern"), [
    ("1,2/3", "mean has 2 value.* std has 1"),
    ("a,b,c/1,1,1", "mean='a' is not a number"),
    ("0.5,0.5,0.5/0,1,1", "std must be positive"),
    ("0.5/-0.2", "std must be positive"),
    ("nan/1", "mean='nan' must be finite"),
    ("0/inf", "std='inf' must be finite"),
    ("1/2/3", "unknown normalisation"),
    ("/", "mean='' is not a number"),
    ("imagnet", "did you mean 'imagenet'.*expected imagenet, none, netdissect"),
    (((0.5,), (0.2, 0.2, 0.2)), "mean has 1 value.* std has 3"),
    ((float("nan"), 1.0), "mean=nan must be finite"),
    ((True, 1.0), "mean value True is not a number"),
    (("x", 1), "mean='x' is not a number"),
    (([], []), "mean is empty"),
    ({"mean": 1}, "needs 'mean' and 'std'"),
    ((1, 2, 3), "cannot interpret"),
    (5, "cannot interpret"),
])
def test_parse_normalize_errors_are_spec_errors(spec, pattern):
    from nemaudit.model.load import parse_normalize

    for error in (SpecError, ModelSpecError):
        with pytest.raises(error, match=pattern):
            parse_normalize(spec)


def test_model_spec_kinds_are_case_insensitive():
    from nemaudit.model import load_model

    m = load_model(" TorchVision:resnet18(num_classes=3)", weights="random", normalize="none",
                   device="cpu")
    assert m.model.fc.out_features == 3
    with pytest.raises(ModelSpecError, match="never downloads"):
        load_model("HF:some/model", device="cpu")


# --------------------------------------------------------------------------- torch-free

def test_specs_and_report_parsing_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from nemaudit.specs import tokenize, convert\n"
            "from nemaudit.report.json_report import parse_spec\n"
            "assert parse_spec('pgd:EPS=4/255,targeted=yes')['targeted'] is True\n"
            "assert convert('4/255', float, 'eps') == 4 / 255\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", "import sys, nemaudit.specs; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"
