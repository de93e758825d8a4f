"""Fuzzing every front door with hypothesis: whatever a hostile or careless user types — CLI
arguments, spec files, corruption/probe/expectation strings, Broden CSVs — nemaudit answers
with its own error (a NemauditError, or argparse's usage error) and never a traceback from
deep inside, never a hang. No audit runs here: the Auditor is stopped where work would
begin, so each example costs milliseconds."""

from __future__ import annotations

import math
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nemaudit.errors import NemauditError, SpecError

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

#: pieces hostile input is made of: numbers at and past every edge, markup, paths, junk
NASTY = st.sampled_from([
    "0", "-1", "1", "1e20", "1e400", "99999999999999999999", "nan", "inf", "-inf", "4/255",
    "1/0", "0x10", "1_000", "", " ", ",", "=", ":", "[/]", "<script>", "../../etc/passwd",
    "/dev/full", "\x00", "é", "true", "yes", "none", "random", "a" * 300, "2.5", "-0",
])
TEXT = st.one_of(NASTY, st.text(string.printable, max_size=30),
                 st.text(max_size=12))  # any unicode too


def _field_values() -> st.SearchStrategy:
    return st.one_of(NASTY, st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.booleans(), st.text(max_size=10), st.lists(st.integers(-5, 5), max_size=3))


# --------------------------------------------------------------------------- strings

NUMBERS = st.one_of(NASTY, st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-10**30, 10**30).map(str),
                    st.fractions(max_denominator=300).map(str))


@FAST
@example(kind="gaussian", fields=[("std", "1e20")])
@example(kind="pgd", fields=[("eps", "2")])
@example(kind="pgd", fields=[("eps", "4/255"), ("steps", "1e20")])
@example(kind="pgd-ce", fields=[("eps", "4/255"), ("steps", "20000")])
@example(kind="fgsm", fields=[("eps", "99999999999999999999/1")])
@given(kind=st.sampled_from(["gaussian", "uniform", "bernoulli", "jpeg", "pgd", "fgsm", "pgd-ce",
                             "salt", ""]),
       fields=st.lists(st.tuples(st.sampled_from(["std", "eps", "steps", "alpha", "fraction",
                                                  "seed", "select", "targeted", "target",
                                                  "quality", "jpeg", "max_copies", "STD", "x"]),
                                 NUMBERS), max_size=4))
def test_corruption_specs_fail_only_with_spec_errors(kind, fields):
    from nemaudit.corrupt.spec import parse_corruption

    spec = f"{kind}:" + ",".join(f"{k}={v}" for k, v in fields)
    try:
        c = parse_corruption(spec)
    except SpecError:
        return
    for key in ("eps", "std", "alpha"):  # what parsed is in range
        v = getattr(c, key, None)
        if isinstance(v, float):
            assert math.isfinite(v) and 0 <= v <= 10
    for key in ("steps", "max_copies"):
        v = getattr(c, key, None)
        assert v is None or 1 <= v <= 10_000


@FAST
@given(text=TEXT)
def test_free_text_as_any_spec_fails_only_with_nemaudit_errors(text):
    from nemaudit.corrupt.spec import parse_corruption
    from nemaudit.expectations import parse_expectation
    from nemaudit.probe import _parse_spec as parse_probe
    from nemaudit.specs import tokenize

    for parse in (parse_corruption, parse_probe, parse_expectation,
                  lambda t: tokenize(t, "fuzz")):
        try:
            parse(text)
        except NemauditError:
            pass


@FAST
@example(kind="synthetic", fields=[("n", "99999999999999999999")])
@example(kind="synthetic", fields=[("n", "100000000")])
@given(kind=st.sampled_from(["synthetic", "broden", "folder", "python", "x"]),
       fields=st.lists(st.tuples(st.sampled_from(["n", "seed", "image_size", "seg_size", "max",
                                                  "split", "follow_links", "N"]), NUMBERS),
                       max_size=3))
def test_probe_specs_fail_only_with_spec_errors_and_respect_the_maxima(kind, fields):
    from nemaudit.probe import MAX_IMAGES, _parse_spec

    spec = f"{kind}:" + ",".join(f"{k}={v}" for k, v in fields)
    try:
        _, _, opts = _parse_spec(spec)
    except SpecError:
        return
    assert all(0 < opts[k] <= MAX_IMAGES for k in ("n", "max") if k in opts)


# --------------------------------------------------------------------------- spec files

@FAST
@given(table=st.dictionaries(
    st.sampled_from(["name", "model", "probe", "layers", "layer", "corruption", "expect",
                     "units", "eta", "iou_threshold", "max_units", "method", "tolerance",
                     "exemplars", "f1_threshold", "describer", "normalize", "weights",
                     "beam_size", "lam", "sigma"]),
    _field_values(), max_size=8))
def test_spec_file_properties_are_valid_or_a_property_error(table):
    from nemaudit.harness.properties import Property, PropertyError, parse_document

    base = {"model": "m", "probe": "p", "layers": ["layer2"], "expect": "flip_rate <= 1",
            "corruption": "gaussian:std=0.1"}
    try:
        doc = parse_document({"property": [{**base, **table}]}, Path("nemaudit_fuzz.toml"))
    except PropertyError:
        return
    (p,) = doc.properties
    if isinstance(p, Property):  # a valid property builds a valid request for each layer
        for method in p.methods or ["netdissect"]:
            for layer in p.layers:
                p.request(method, layer)
    else:
        assert "nemaudit_fuzz.toml" in str(p)


@FAST
@given(data=st.binary(max_size=200))
def test_spec_file_bytes_are_valid_or_a_property_error(tmp_path_factory, data):
    from nemaudit.harness.properties import PropertyError, load_spec_file

    path = tmp_path_factory.mktemp("spec") / "nemaudit_bytes.toml"
    path.write_bytes(b"[defaults]\nmodel = 'm'\n" + data)
    try:
        load_spec_file(path)
    except PropertyError as e:
        assert "nemaudit_bytes.toml" in str(e)


# --------------------------------------------------------------------------- the CLI

class _WorkWouldStart(BaseException):
    """Raised where the Auditor would start loading or running: every flag was accepted."""


@pytest.fixture()
def no_work(monkeypatch):
    import nemaudit.auditor

    def stop(*a, **k):
        raise _WorkWouldStart

    for name in ("prepare", "run", "clean_dissection", "model", "probe"):
        monkeypatch.setattr(nemaudit.auditor.Auditor, name, stop)


FLAGS = {
    "dissect": ["--eta", "--iou-threshold", "--batch-size", "--show", "--layer", "--probe",
                "--model", "--normalize", "--weights", "--cache-dir", "--out", "--device"],
    "audit": ["--eta", "--iou-threshold", "--max-units", "--units", "--corruption", "--set",
              "--method", "--layer", "--out", "--batch-size"],
    "describe": ["--k", "--eta", "--beam-size", "--lam", "--candidates", "--threshold",
                 "--attack-images", "--max-units", "--units", "--describer", "--layer"],
}


@FAST
@given(command=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_cli_arguments_give_a_clean_error_or_reach_the_work(command, data, no_work, capsys):
    from nemaudit.cli import main

    pairs = data.draw(st.lists(st.tuples(st.sampled_from(FLAGS[command]), NASTY), max_size=4))
    argv = [command, "--layer", "layer4", "--quiet"]
    if command == "audit":
        argv += ["--corruption", "gaussian:std=0.01"]
    for flag, value in pairs:
        argv.append(f"{flag}={value}")
    try:
        rc = main(argv)
    except _WorkWouldStart:
        return
    except SystemExit as e:  # argparse's own usage error (a bad int, a missing value)
        assert e.code == 2
        assert "usage:" in capsys.readouterr().err
        return
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nemaudit: error: ") and "Traceback" not in err


# --------------------------------------------------------------------------- Broden files

@pytest.fixture(scope="module")
def broden_template(tmp_path_factory):
    from nemaudit.probe import export_probe
    from tests.toys import ToyProbe

    root = tmp_path_factory.mktemp("broden-template")
    export_probe(ToyProbe(4), root)
    return root


@FAST
@given(file=st.sampled_from(["index.csv", "label.csv", "category.csv"]), row=st.integers(0, 6),
       col=st.integers(0, 12), value=NASTY)
def test_broden_csv_cells_fail_only_with_format_errors(broden_template, tmp_path_factory, file,
                                                       row, col, value):
    from nemaudit.probe import BrodenProbe

    root = tmp_path_factory.mktemp("broden") / "b"
    shutil.copytree(broden_template, root)
    lines = (root / file).read_text().splitlines()
    r = min(row, len(lines) - 1)
    cells = lines[r].split(",")
    cells[min(col, len(cells) - 1)] = value.replace(",", ";").replace("\n", " ")
    lines[r] = ",".join(cells)
    (root / file).write_text("\n".join(lines) + "\n")
    try:
        probe = BrodenProbe(root)
        for i in range(len(probe)):
            probe[i]
    except NemauditError:
        pass
