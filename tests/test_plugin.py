"""The pytest plugin end to end, with pytester on the toy model (each run takes seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import torch  # noqa: F401

# In-process pytester runs drop the modules a run imported; torch's C extension cannot be
# imported twice in one process, so import it (and what audits use) here, once.
import nemaudit.audit.netdissect.pictures  # noqa: F401
import nemaudit.corrupt.noise  # noqa: F401
import nemaudit.report.html  # noqa: F401
import nemaudit.report.json_report  # noqa: F401
import nemaudit.report.terminal  # noqa: F401

pytest_plugins = ["pytester"]

TOYS = (Path(__file__).parent / "toys.py").read_text()
DEFAULTS = """
[defaults]
model = "toys.py:ToyNet"
normalize = "none"
probe = "python:toys.py:ToyProbe(n=32)"
"""
SPEC = DEFAULTS + """
[[property]]
name = "small noise"
layers = ["layer1", "layer2"]
corruption = "gaussian:std=0.001"
expect = "flip_rate <= 0.5"

[[property]]
name = "big noise"
description = "std 0.3 is far beyond what the toy survives"
layers = ["layer2"]
corruption = "gaussian:std=0.3"
expect = "flip_rate <= 0.05"
"""
PY_TESTS = """
import pytest

TOY = dict(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)", normalize="none")

def test_py_fails(nemaudit):
    r = nemaudit.audit(layer="layer2", corruption="gaussian:std=0.3", **TOY)
    assert r.flip_rate <= 0.05

def test_py_fails_reversed(nemaudit):
    r = nemaudit.audit(layer="layer2", corruption="gaussian:std=0.3", **TOY)
    assert 0.05 >= r.flip_rate

@pytest.mark.nemaudit(layer="layer2", **TOY)
def test_marker_defaults(nemaudit):
    r = nemaudit.audit(corruption="gaussian:std=0.001")
    nemaudit.expect(r, "flip_rate <= 0.5")

def test_sweep(nemaudit):
    for std in (0.001, 0.01, 0.1):
        nemaudit.audit(layer="layer2", corruption=f"gaussian:std={std}", **TOY)

def test_plain():
    pass
"""
RECORD_KEYS = {"nodeid", "name", "outcome", "expectation", "measured", "bound", "message",
               "duration", "layer", "model", "probe", "corruption", "audit"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Audits here are tiny: with other jobs on the cores, a multi-threaded torch spends its
    time waiting for its own threads (10x slower). Restored afterwards."""

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # subprocesses: don't fight over 2 cores
    for var in ("CI", "BUILD_NUMBER"):  # pytest shows untruncated asserts on CI
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(toys=TOYS)
    return pytester


def _records(path: Path) -> dict[str, dict]:
    doc = json.loads(path.read_text())
    assert doc["schema"].startswith("nemaudit.report/")
    return {r["nodeid"]: r for r in doc["records"]}


def test_without_nemaudit_audits_skip_and_torch_stays_unimported(project):
    project.makefile(".toml", nemaudit_props=SPEC)
    project.makepyfile(test_props=PY_TESTS)
    project.makefile(".toml", nemaudit_broken='[[property]]\nname = "x"\nlayrs = ["a"]\n')
    project.makeconftest("""
        import sys
        def pytest_sessionfinish(session):
            open("torch_state.txt", "w").write(str("torch" in sys.modules))
        """)
    result = project.runpytest_subprocess("-rs")
    # 3 spec items + 4 fixture/marker tests skipped; the malformed file is still an error
    result.assert_outcomes(passed=1, skipped=7, errors=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]*] *: nemaudit audits are off; run pytest --nemaudit"])
    result.stdout.fnmatch_lines(["*nemaudit_broken.toml: property 'x': field 'layrs': unknown "
                                 "field (did you mean 'layers'?)*"])
    assert (project.path / "torch_state.txt").read_text() == "False"


def test_properties_pass_fail_with_per_unit_diff_and_reports(project):
    project.makefile(".toml", nemaudit_props=SPEC)
    project.makepyfile(test_props=PY_TESTS)
    result = project.runpytest_inprocess("--nemaudit", "--nemaudit-json", "out/report.json",
                                         "--nemaudit-html", "out/report.html")
    result.assert_outcomes(passed=5, failed=3)
    out = result.stdout.str()
    # the spec item: verdict, context and the per-unit diff, without a traceback
    result.stdout.fnmatch_lines([
        "*_ nemaudit property big noise[[]layer2[]] _*",
        "flip_rate <= 0.05 does not hold: measured 0.*, bound 0.05",
        "  layer layer2 · model toys.py:ToyNet · probe python:toys.py:ToyProbe(n=32) · "
        "corruption gaussian:std=0.3,fraction=1.0,select=random,seed=0",
        "  */16 units changed concept (*clean detectors):",
        "    unit * → *",
    ])
    # plain asserts on a Metric get the same explanation, capped to pytest's 8 lines
    result.stdout.fnmatch_lines([
        ">       assert r.flip_rate <= 0.05",
        "E       assert flip_rate <= 0.05 does not hold: measured 0.*, bound 0.05",
        "E         layer layer2 · model toys.py:ToyNet*",
        "E         */16 units changed concept*",
        "E         unit * → *",
        "E         … * more changed unit(s); -vv shows up to 15",
    ])
    result.stdout.fnmatch_lines([">       assert 0.05 >= r.flip_rate",
                                 "E       assert flip_rate <= 0.05 does not hold*"])
    assert "truncated" not in out and "Traceback" not in out
    result.stdout.fnmatch_lines(["*= nemaudit =*", "*wrote JSON report out/report.json",
                                 "*wrote HTML report out/report.html"])

    records = _records(project.path / "out" / "report.json")
    assert set(records) == {
        "nemaudit_props.toml::small noise[layer1]", "nemaudit_props.toml::small noise[layer2]",
        "nemaudit_props.toml::big noise[layer2]", "test_props.py::test_py_fails",
        "test_props.py::test_py_fails_reversed", "test_props.py::test_marker_defaults",
        "test_props.py::test_sweep"}
    for r in records.values():
        assert RECORD_KEYS <= set(r)
    big = records["nemaudit_props.toml::big noise[layer2]"]
    assert (big["outcome"], big["expectation"], big["bound"], big["layer"]) == (
        "failed", "flip_rate <= 0.05", 0.05, "layer2")
    assert big["measured"] == big["audit"]["metrics"]["flip_rate"] > 0.05
    assert big["corruption"]["kind"] == "gaussian" and big["corruption"]["std"] == 0.3
    assert "units changed concept" in big["message"]
    shot = big["audit"]["exemplars"][0]["images"][0]  # the JSON keeps numbers, not pictures
    assert "clean" not in shot and shot["linf"] > 0 and isinstance(shot["index"], int)
    py = records["test_props.py::test_py_fails"]
    assert (py["expectation"], py["measured"]) == ("flip_rate <= 0.05", big["measured"])
    assert records["test_props.py::test_py_fails_reversed"]["measured"] == big["measured"]
    marked = records["test_props.py::test_marker_defaults"]
    assert (marked["outcome"], marked["expectation"], marked["model"]) == (
        "passed", "flip_rate <= 0.5", "toys.py:ToyNet")
    sweep = records["test_props.py::test_sweep"]["sweep"]
    assert sweep["x"] == "std" and [p["x"] for p in sweep["points"]] == [0.001, 0.01, 0.1]
    assert sweep["points"][0]["corruption"] == "gaussian:std=0.001,fraction=1.0,select=random,seed=0"
    html = (project.path / "out" / "report.html").read_text()
    assert "big noise" in html and "<html" in html.lower()
    assert html.count('src="data:image/png;base64,iVBOR') >= 4  # exemplars, clean | corrupted


def test_malformed_properties_are_errors_naming_file_and_field(project):
    bad = DEFAULTS + """
[[property]]
name = "unknown field"
layers = ["layer2"]
corruption = "gaussian:std=0.1"
expect = "flip_rate <= 0.5"
sigma = 0.1

[[property]]
name = "wrong type"
layers = 4
corruption = "gaussian:std=0.1"
expect = "flip_rate <= 0.5"

[[property]]
name = "unknown metric"
layers = ["layer2"]
corruption = "gaussian:std=0.1"
expect = "flips <= 0.5"

[[property]]
name = "unknown op"
layers = ["layer2"]
corruption = "gaussian:std=0.1"
expect = "flip_rate =< 0.5"

[[property]]
name = "no corruption"
layers = ["layer2"]
expect = "flip_rate <= 0.5"

[[property]]
name = "bad corruption"
layers = ["layer2"]
corruption = "gaussian:sigma=0.1"
expect = "flip_rate <= 0.5"

[[property]]
name = "bad layer"
layers = ["layer9"]
corruption = "gaussian:std=0.1"
expect = "flip_rate <= 0.5"

[[property]]
name = "bad category"
layers = ["layer2"]
corruption = "gaussian:std=0.1"
expect = "per_category_flip_rate['animal'] <= 0.5"
"""
    project.makefile(".toml", nemaudit_bad=bad)
    project.makefile(".toml", nemaudit_syntax="[[property]\n")
    result = project.runpytest_inprocess("--nemaudit", "--nemaudit-cache-dir", "none")
    result.assert_outcomes(errors=9)
    f = "nemaudit_bad.toml: property"
    result.stdout.fnmatch_lines_random([
        f"{f} 'unknown field': field 'sigma': unknown field; allowed fields in [[]*property]]: *",
        f"{f} 'wrong type': field 'layers': expected a non-empty list of layer names, e.g. "
        '["layer4"], got 4',
        f"{f} 'unknown metric': field 'expect': 'flips <= 0.5': unknown metric 'flips'*; "
        "known metrics: units, flip_rate, *",
        f"{f} 'unknown op': field 'expect': *unknown operator '=<'; allowed operators: "
        "<=, <, >=, >, ==",
        f"{f} 'no corruption': field 'corruption': is required for a robustness property*",
        f"{f} 'bad corruption': field 'corruption': unknown key 'sigma' for corruption kind "
        "'gaussian' in 'gaussian:sigma=0.1'; valid keys: std, jpeg, fraction, select, seed",
        f"{f} 'bad layer': field 'layers': no layer named 'layer9' in ToyNet.*Valid layer "
        "names: conv1, *",
        f"{f} 'bad category': field 'expect': *unknown category 'animal'; this probe's "
        "categories: color, *",
        "nemaudit_syntax.toml: invalid TOML: *",
    ])
    out = result.stdout.str()
    assert "Traceback" not in out and "During handling" not in out and "raise " not in out


BASELINE_SPEC = DEFAULTS + """
[[property]]
name = "units stay put"
layers = ["layer2"]
expect = "unchanged_since_baseline"
"""
BASELINE_PY = """
def test_units(nemaudit):
    nemaudit.baseline("toy units", model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)",
                      layer="layer2", normalize="none")
"""


def test_baselines_written_with_update_then_changes_detected(project):
    project.makefile(".toml", nemaudit_base=BASELINE_SPEC)
    project.makepyfile(test_base=BASELINE_PY)
    missing = project.runpytest_inprocess("--nemaudit")
    missing.assert_outcomes(failed=2)
    missing.stdout.fnmatch_lines_random([
        "no committed baseline 'units stay put' for layer layer2 at "
        "__nemaudit_baselines__/nemaudit_base/units-stay-put__layer2.json; run pytest "
        "--nemaudit --nemaudit-update to record it, then commit it",
        "E       AssertionError: no committed baseline 'toy units'*--nemaudit-update*"])

    written = project.runpytest_inprocess("--nemaudit", "--nemaudit-update")
    written.assert_outcomes(passed=2)
    written.stdout.fnmatch_lines_random([
        "*wrote baseline __nemaudit_baselines__/nemaudit_base/units-stay-put__layer2.json",
        "*wrote baseline __nemaudit_baselines__/test_base/toy-units__layer2.json"])
    files = sorted(p.relative_to(project.path).as_posix()
                   for p in project.path.glob("__nemaudit_baselines__/*/*.json"))
    assert files == ["__nemaudit_baselines__/nemaudit_base/units-stay-put__layer2.json",
                     "__nemaudit_baselines__/test_base/toy-units__layer2.json"]
    assert len(json.loads((project.path / files[0]).read_text())["units"]) == 16

    project.runpytest_inprocess("--nemaudit").assert_outcomes(passed=2)

    # "retrain": other weights, same architecture, same specs otherwise
    project.makefile(".toml", nemaudit_base=BASELINE_SPEC.replace("ToyNet", "ToyNet(seed=1)"))
    project.makepyfile(test_base=BASELINE_PY.replace("ToyNet", "ToyNet(seed=1)"))
    changed = project.runpytest_inprocess("--nemaudit")
    changed.assert_outcomes(failed=2)
    changed.stdout.fnmatch_lines([
        "explanations of layer2 changed since baseline 'units stay put' (*): */16 unit "
        "label(s) changed, * IoU change(s) beyond ±0.01",
        "note: recorded with model 'toys.py:ToyNet', now 'toys.py:ToyNet(seed=1)'",
        "unit * → *",
    ])
    changed.stdout.fnmatch_lines(["*if the change is intended, rerun with --nemaudit-update*"])


@pytest.mark.parametrize("args, ini, message", [
    (["--nemaudit-batch-size", "0"], "",
     "--nemaudit-batch-size: expected an integer >= 1, got '0'"),
    (["--nemaudit-seed", "abc"], "", "--nemaudit-seed: expected an integer >= 0, got 'abc'"),
    (["--nemaudit-workers", "-1"], "", "--nemaudit-workers: expected an integer >= 0, got '-1'"),
    (["--nemaudit-device", "gpu"], "",
     "--nemaudit-device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ([], "nemaudit_max_units = -3",
     "ini option nemaudit_max_units: expected an integer >= 1 or 'none', got '-3'"),
    (["--nemaudit", "--nemaudit-device", "cuda:99"], "", "--nemaudit-device: *cuda:99*"),
])
def test_bad_option_values_are_usage_errors(project, args, ini, message):
    project.makeini(f"[pytest]\n{ini}\n")
    result = project.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_cli_wins_over_ini(project):
    project.makeini("[pytest]\nnemaudit_batch_size = nope\nnemaudit_seed = 5\n"
                    "nemaudit_max_units = none\nnemaudit_cache_dir = cache\n"
                    "nemaudit_workers = 3\n")
    project.makepyfile(test_opts="""
        def test_options(nemaudit, pytestconfig):
            o = nemaudit.options
            assert (o.batch_size, o.seed, o.max_units, o.update) == (7, 5, None, False)
            assert o.workers == 3 and nemaudit._state.auditor.workers == 3
            assert o.cache_dir == pytestconfig.rootpath / "cache"
        """)
    project.runpytest_inprocess("--nemaudit", "--nemaudit-batch-size=7").assert_outcomes(passed=1)


def test_pyproject_tool_table_is_collected(project):
    project.makepyprojecttoml("""
        [tool.nemaudit.defaults]
        model = "toys.py:ToyNet"
        normalize = "none"
        probe = "python:toys.py:ToyProbe(n=32)"

        [[tool.nemaudit.property]]
        name = "tiny noise"
        layers = ["layer2"]
        corruption = "gaussian:std=0.001"
        expect = ["flip_rate <= 0.5", "detector_share['corrupted']['all'] == 0.0625"]
        """)
    result = project.runpytest_inprocess("--nemaudit", "-v", "pyproject.toml",
                                         "--nemaudit-json", "r.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pyproject.toml::tiny noise[[]layer2[]] PASSED*"])
    rec = _records(project.path / "r.json")["pyproject.toml::tiny noise[layer2]"]
    # both expectations judged, on their real values: no flip under std 0.001, and one of
    # layer2's 16 units a (color) detector after it
    assert [(e["expectation"], e["measured"], e["status"]) for e in rec["expectations"]] == [
        ("flip_rate <= 0.5", 0.0, "passed"),
        ("detector_share['corrupted']['all'] == 0.0625", 0.0625, "passed")]


def test_xdist_same_verdicts_and_one_report(project):
    project.makefile(".toml", nemaudit_props=SPEC)
    project.makepyfile(test_props=PY_TESTS)
    serial = project.runpytest_inprocess("--nemaudit", "--nemaudit-json", "serial.json")
    parallel = project.runpytest_subprocess("--nemaudit", "-n", "2", "--nemaudit-json",
                                            "parallel.json")
    parallel.assert_outcomes(passed=5, failed=3)
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    assert parallel.stdout.str().count("wrote JSON report") == 1
    parallel.stdout.fnmatch_lines(["*flip_rate <= 0.05 does not hold: measured 0.*",
                                   "*unit * → *"])
    a, b = _records(project.path / "serial.json"), _records(project.path / "parallel.json")
    assert list(a) == list(b)  # same records, in collection order
    for node in a:
        assert (a[node]["outcome"], a[node]["measured"]) == (b[node]["outcome"],
                                                             b[node]["measured"])
        assert a[node]["audit"]["units"] == b[node]["audit"]["units"]
    assert sorted(p.name for p in project.path.glob("*.json")) == ["parallel.json",
                                                                   "serial.json"]


MILAN_SPEC = DEFAULTS + """
[[property]]
name = "words under noise"
layers = ["layer2"]
units = [0, 1, 2, 3]
exemplars = 4
describer = "python:toys.py:BrightnessDescriber()"
f1_threshold = 0.999
corruption = "gaussian:std=0.3"
expect = ["milan.manipulated_rate <= 0.25", "flip_rate == 0.75"]

[[property]]
name = "bundled milan"
method = "milan"
layers = ["layer2"]
units = [0, 1]
exemplars = 4
corruption = "gaussian:std=0.001"
expect = "f1_mean >= 0.999"

[[property]]
name = "bad describer"
method = "milan"
layers = ["layer2"]
describer = "toys.py:BrightnessDescriber"
corruption = "gaussian:std=0.001"
expect = "f1_mean >= 0.999"
"""
MILAN_PY = """
TOY = dict(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)", normalize="none")

def test_describe_fails(nemaudit):
    r = nemaudit.describe(layer="layer2", corruption="gaussian:std=0.3", units=[0, 1, 2, 3],
                          exemplars=4, describer="python:toys.py:BrightnessDescriber()",
                          f1_threshold=0.999, **TOY)
    assert r.manipulated_rate <= 0.25

def test_expect_on_a_milan_result(nemaudit):
    r = nemaudit.describe(layer="layer2", corruption="gaussian:std=0.3", units=[0, 1, 2, 3],
                          exemplars=4, describer="python:toys.py:BrightnessDescriber()",
                          f1_threshold=0.999, **TOY)
    assert nemaudit.expect(r, "manipulated_rate <= 0.5") == 0.5  # bare: MILAN's
    assert nemaudit.expect(r, "milan.changed == 2") == 2
"""


def test_milan_properties_describe_clean_and_corrupted(project):
    """MILAN properties: the spec and the fixture form, a failing one with both descriptions
    of each manipulated unit, the bundled MILAN end to end, a bad describer spec, reports."""
    project.makefile(".toml", nemaudit_milan=MILAN_SPEC)
    project.makepyfile(test_milan=MILAN_PY)
    result = project.runpytest_inprocess("--nemaudit", "--nemaudit-json", "out/r.json",
                                         "--nemaudit-html", "out/r.html")
    result.assert_outcomes(passed=2, failed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*_ nemaudit property words under noise[[]layer2[]] _*",
        "milan.manipulated_rate <= 0.25 does not hold: measured 0.5, bound 0.25",
        "  layer layer2 · model toys.py:ToyNet *",
        "  2/4 unit descriptions manipulated (F1-BERT ≤ 0.999; *",
        "    unit    *: “dark regions” → “dim regions” (F1 0.*; exemplars [[]*] → [[]*], "
        "*/4 kept)",
    ])
    result.stdout.fnmatch_lines([">       assert r.manipulated_rate <= 0.25",
                                 "E       assert manipulated_rate <= 0.25 does not hold: "
                                 "measured 0.5, bound 0.25",
                                 "E         *",
                                 "E         2/4 unit descriptions manipulated*"])
    result.stdout.fnmatch_lines(["*bad describer*field 'describer': describer spec "
                                 "'toys.py:BrightnessDescriber': expected milan:PATH*"])
    records = _records(project.path / "out" / "r.json")
    words = records["nemaudit_milan.toml::words under noise[layer2]"]
    assert words["expectation"] == "milan.manipulated_rate <= 0.25"
    assert words["measured"] == 0.5
    assert words["audit"]["metrics"]["units"] == 4  # the Network Dissection side ran too
    # and was judged: 3 of the 4 units change concept under std 0.3
    assert [(e["measured"], e["status"]) for e in words["expectations"]] == [
        (0.5, "failed"), (0.75, "passed")]
    milan = words["milan"]
    assert milan["metrics"]["changed"] == 2 and len(milan["units"]) == 4
    pairs = sorted((u["clean"], u["corrupted"], u["manipulated"]) for u in milan["units"])
    assert pairs == [("dark regions", "dim regions", True)] * 2 + [
        ("dim regions", "dim regions", False)] * 2
    ex = milan["exemplars"][0]
    assert len(ex["clean"]) == len(ex["corrupted"]) == 3
    bundled = records["nemaudit_milan.toml::bundled milan[layer2]"]
    assert bundled["outcome"] == "passed" and bundled["audit"] is None
    # std 0.001 changes no description: F1-BERT of each unchanged description is 1
    assert bundled["expectation"] == "milan.f1_mean >= 0.999"
    assert bundled["measured"] == pytest.approx(1.0, abs=1e-6)
    assert bundled["milan"]["metrics"]["changed"] == 0
    assert [u["unit"] for u in bundled["milan"]["units"]] == [0, 1]
    assert all(u["clean"] for u in bundled["milan"]["units"])  # the bundled MILAN wrote words
    html = (project.path / "out" / "r.html").read_text()
    assert "MILAN descriptions, clean vs corrupted" in html and "dim regions" in html


def test_passing_plain_asserts_report_measured_and_bound(project):
    project.makepyfile(test_ok="""
        TOY = dict(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)",
                   normalize="none", layer="layer2")

        def test_ok(nemaudit):
            r = nemaudit.audit(corruption="gaussian:std=0.001", **TOY)
            assert r.flip_rate <= 0.5

        def test_reversed(nemaudit):
            r = nemaudit.audit(corruption="gaussian:std=0.001", **TOY)
            assert 0.75 >= r.flip_rate_detectors

        def test_two_audits(nemaudit):
            strong = nemaudit.audit(corruption="gaussian:std=0.3", **TOY)
            weak = nemaudit.audit(corruption="gaussian:std=0.001", **TOY)
            assert strong.flip_rate >= weak.flip_rate
        """)
    result = project.runpytest_inprocess("--nemaudit", "--nemaudit-json", "r.json")
    result.assert_outcomes(passed=3)
    records = _records(project.path / "r.json")
    ok, rev = records["test_ok.py::test_ok"], records["test_ok.py::test_reversed"]
    assert (ok["expectation"], ok["bound"]) == ("flip_rate <= 0.5", 0.5)
    assert ok["measured"] == ok["audit"]["metrics"]["flip_rate"]
    assert (rev["expectation"], rev["bound"]) == ("flip_rate_detectors <= 0.75", 0.75)
    two = records["test_ok.py::test_two_audits"]  # the record shows the audit it measured
    assert two["expectation"].startswith("flip_rate >= ") and two["corruption"]["std"] == 0.3
    assert two["measured"] == two["audit"]["metrics"]["flip_rate"] > two["bound"]
    assert [p["x"] for p in two["sweep"]["points"]] == [0.3, 0.001]


def test_broken_spec_files_fail_their_own_items_only(project):
    """A non-UTF-8 spec file and a bad normalize are errors on their own items (naming the
    file and field, in a few lines); the other properties of the session still run."""
    project.makefile(".toml", nemaudit_good=SPEC)
    (project.path / "nemaudit_latin1.toml").write_bytes(
        '[[property]]\nname = "café"\n'.encode("latin-1"))
    project.makefile(".toml", nemaudit_norm=DEFAULTS.replace('normalize = "none"',
                                                             'normalize = "1,2/3"') + """
[[property]]
name = "bad normalize"
layers = ["layer2"]
corruption = "gaussian:std=0.1"
expect = "flip_rate <= 0.5"
""")
    result = project.runpytest("--nemaudit", "--nemaudit-cache-dir", "none", "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2 and outcomes.get("errors") == 2
    text = result.stdout.str()
    assert "nemaudit_latin1.toml: not UTF-8 text" in text
    assert "property 'bad normalize': field 'normalize'" in text
    assert text.count("Traceback") == 0 and len(text.splitlines()) < 200


def test_report_paths_that_cannot_be_written_are_usage_errors(project):
    (project.path / "afile").write_text("x")
    for bad in ("afile/r.json", "sub/"):
        result = project.runpytest("--nemaudit", f"--nemaudit-json={bad}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--nemaudit-json*"])


def test_junit_xml_carries_measured_value_and_bound(project):
    import xml.etree.ElementTree as ET

    project.makefile(".toml", nemaudit_props=SPEC)
    project.runpytest("--nemaudit", "--nemaudit-cache-dir", "none", "--junitxml=j.xml",
                      "-p", "no:randomly")
    cases = {c.get("name"): c for c in ET.parse(project.path / "j.xml").iter("testcase")}
    props = {p.get("name"): p.get("value")
             for p in cases["big noise[layer2]"].iter("property")}
    assert props["nemaudit_expectation"] == "flip_rate <= 0.05"
    # the property fails: its measured flip rate is beyond the bound it carries
    assert float(props["nemaudit_bound"]) == 0.05 and float(props["nemaudit_measured"]) > 0.05


WARN_TESTS = """
def test_warned(nemaudit):
    r = nemaudit.audit(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)",
                       layer="layer2", normalize="none", corruption="gaussian:std=0.3")
    p, iv = float(r.flip_rate), r.interval("flip_rate", level=0.95)
    assert iv.lo <= p < iv.hi  # (the toy flips some, not all, of its 16 units)
    nemaudit.expect(r, f"flip_rate <= {(p + iv.hi) / 2} @ 95%")

def test_held(nemaudit):
    r = nemaudit.audit(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=32)",
                       layer="layer2", normalize="none", corruption="gaussian:std=0.3")
    nemaudit.expect(r, "flip_rate <= 1 @ 95%")
"""


def test_confidence_bounds_warn_and_fail_on_warn(project):
    project.makepyfile(test_warn=WARN_TESTS)
    result = project.runpytest("--nemaudit", "--nemaudit-cache-dir", "none",
                               "--nemaudit-json", "r.json", "-p", "no:randomly")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*NemauditWarning: flip_rate <= * @ 95% holds at the point "
                                 "estimate but not at its 95% bound: * over 16 units*",
                                 "*WARN*test_warned*"])
    recs = {r["name"]: r for r in json.loads((project.path / "r.json").read_text())["records"]}
    assert recs["test_warned"]["outcome"] == "warned" and recs["test_held"]["outcome"] == "passed"
    iv = recs["test_warned"]["interval"]
    assert iv["n"] == 16 and iv["lo"] <= recs["test_warned"]["measured"] < iv["hi"]
    strict = project.runpytest("--nemaudit", "--nemaudit-cache-dir", "none",
                               "--nemaudit-fail-on-warn", "-p", "no:randomly")
    strict.assert_outcomes(passed=1, failed=1)
    strict.stdout.fnmatch_lines(["*a warning, failed by --nemaudit-fail-on-warn*"])
