"""The CLI and the pytest fixture are one door: the same specs, the same validation, the same
results, the same clean-run cache (both go through nemaudit.auditor.Auditor)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor
from nemaudit.cli import main
from nemaudit.errors import SpecError
from nemaudit.harness.properties import PropertyError, build_property
from nemaudit.probe import export_probe
from tests.toys import ToyProbe

TOYS = str(Path(__file__).with_name("toys.py"))
BASE = ["--layer", "layer2", "--normalize", "none", "--quiet", "--batch-size", "24"]
pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden")
    export_probe(ToyProbe(24), root)
    return root


def _out(tmp_path: Path, argv: list[str]) -> dict:
    out = tmp_path / "out.json"
    assert main([*argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", [f"{TOYS}:ToyNet", "tests.toys:ToyNet", "tests.toys:ToyNet(seed=0)"])
@pytest.mark.parametrize("probe", ["python:tests.toys:ToyProbe(n=24)", f"python:{TOYS}:ToyProbe(n=24)",
                                   "broden"])
def test_cli_accepts_every_model_and_probe_form_the_plugin_accepts(model, probe, broden,
                                                                   tmp_path):
    on_disk = probe == "broden"
    probe = f"broden:{broden}" if on_disk else probe
    doc = _out(tmp_path, ["dissect", "--model", model, "--probe", probe, "--no-cache", *BASE])
    layer = doc["layers"][0]
    assert layer["layer"] == "layer2" and len(layer["units"]) == 16
    if on_disk:  # the exported copy scores labels in their primary category: another probe
        return
    # the same dissection whatever the spec form: same seed-0 net, same 24 images
    ref = _out(tmp_path, ["dissect", "--model", "tests.toys:ToyNet", "--probe",
                          "python:tests.toys:ToyProbe(n=24)", "--no-cache", *BASE])
    assert [u["label"] for u in layer["units"]] == [u["label"] for u in ref["layers"][0]["units"]]
    assert layer["thresholds"] == ref["layers"][0]["thresholds"]


@pytest.mark.parametrize("describer", ["python:tests.toys:BrightnessDescriber()",
                                       f"python:{TOYS}:BrightnessDescriber(levels=2)"])
def test_cli_describe_takes_python_describers(describer, tmp_path):
    doc = _out(tmp_path, ["describe", "--model", "tests.toys:ToyNet", "--probe",
                          "python:tests.toys:ToyProbe(n=24)", "--describer", describer,
                          "--units", "0,1", "--k", "4", "--corruption", "gaussian:std=0.3",
                          *BASE])
    words = [u["description"] for u in doc["layers"][0]["units"]]
    assert len(words) == 2 and all(w.endswith(" regions") for w in words)
    audit = doc["audits"][0]
    assert audit["method"] == "milan" and [r["unit"] for r in audit["units"]] == [0, 1]


def test_cli_describe_takes_milan_weights_path(tmp_path):
    from nemaudit.explain.milan.describer import DEFAULT_WEIGHTS

    doc = _out(tmp_path, ["describe", "--model", "tests.toys:ToyNet", "--probe",
                          "python:tests.toys:ToyProbe(n=24)", "--describer",
                          f"milan:{DEFAULT_WEIGHTS}", "--units", "3", "--k", "3",
                          "--beam-size", "2", *BASE])
    assert doc["describer"]["settings"]["beam_size"] == 2
    assert doc["layers"][0]["units"][0]["description"]


@pytest.mark.parametrize("argv, flag", [
    (["describe", "--describer", "nonsense:x"], "--describer"),
    (["describe", "--describer", "python:tests.toys:NoSuchThing"], "--describer"),
    (["audit", "--corruption", "gaussian:std=1e999"], "--corruption"),
    (["audit", "--corruption", "salt:std=0.1"], "--corruption"),
    (["dissect", "--probe", "python:tests.toys:ToyNet"], "--probe"),
    (["dissect", "--model", "tests.toys:Nothing"], "--model"),
])
def test_bad_specs_fail_before_any_work_naming_the_flag(argv, flag, capsys):
    command, *rest = argv
    defaults = {"--model": "tests.toys:ToyNet", "--probe": "python:tests.toys:ToyProbe(n=8)"}
    for k, v in defaults.items():
        if k not in rest:
            rest += [k, v]
    rc = main([command, *rest, *BASE, *(["--no-cache"] if command != "describe" else [])])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and "Traceback" not in err


#: (request field, CLI command, its flag, values); each value is judged by both doors
LIMITS = [
    ("iou_threshold", "dissect", "--iou-threshold", [0.04, 0.0, 1.0, math.nan, -1.0, 2.0]),
    ("eta", "audit", "--eta", [0.005, 1.0, 0.0, math.nan, 1.5]),
    ("max_units", "audit", "--max-units", [1, 5, 0, -3]),
    ("exemplars", "describe", "--k", [1, 15, 0, -1, 10**6]),
    ("beam_size", "describe", "--beam-size", [1, 5, 0, -1]),
    ("lam", "describe", "--lam", [0.0, 0.2, math.nan, -1.0]),
]


@pytest.mark.parametrize("field, command, flag, values", LIMITS)
def test_cli_and_spec_files_reject_exactly_the_same_values(field, command, flag, values,
                                                           capsys, monkeypatch):
    """One validation for both front doors: a value a spec file rejects, the CLI rejects (with
    a one-line error naming the flag, before any work), and the other way round."""
    import nemaudit.auditor

    class Validated(BaseException):
        """Raised where work would start: every flag was accepted."""

    def stop(self, request):
        raise Validated

    monkeypatch.setattr(nemaudit.auditor.Auditor, "prepare", stop)
    method = "milan" if command == "describe" else "netdissect"
    prefix = "milan." if method == "milan" else ""
    for v in values:
        table = {"name": "p", "model": "m", "probe": "p", "layers": ["layer2"],
                 "corruption": "gaussian:std=0.1", "expect": f"{prefix}changed <= 1", field: v}
        try:
            build_property(table, {}, 0, Path("nemaudit_x.toml"))
            spec_ok = True
        except PropertyError as e:
            spec_ok = False
            assert f"field {field!r}" in str(e)
        extra = ["--corruption", "gaussian:std=0.1"] if command == "audit" else []
        try:
            rc = main([command, "--model", "tests.toys:ToyNet", f"{flag}={v}", *extra,
                       "--layer", "layer2", "--quiet"])
        except Validated:
            rc = 0
        err = capsys.readouterr().err
        assert (rc == 0) == spec_ok, (field, v, err)
        if rc:
            assert rc == 2 and flag in err and "Traceback" not in err


def test_request_is_validated_once_and_frozen():
    r = AuditRequest.build("netdissect", model="m", probe="p", eta=0.01, units=[3, 1])
    assert r.units == (3, 1) and r.get("eta") == 0.01 and r.get("iou_threshold") is None
    with pytest.raises(SpecError, match="exemplars= is not a setting of a netdissect audit"):
        AuditRequest.build("netdissect", exemplars=3)
    with pytest.raises(SpecError, match=r"eta= expected a number in \(0.0, 1.0\), got nan"):
        AuditRequest.build("netdissect", eta=math.nan)
    with pytest.raises(AttributeError):
        r.eta = 0.5  # type: ignore[misc]
    assert r.but(eta=0.02).get("eta") == 0.02 and r.get("eta") == 0.01
    assert r.cache_key() == AuditRequest.build("netdissect", model="m", probe="p", eta=0.01,
                                               units=(3, 1)).cache_key()
    assert AuditRequest.build("netdissect", model=object()).cache_key() is None


def test_cli_dissect_spares_a_later_audit_the_clean_pass(tmp_path, monkeypatch):
    """`nemaudit dissect --cache-dir D` writes the clean run the fixture's Auditor then reads
    (an incremental audit of 10% noise never dissects from scratch)."""
    import nemaudit.audit.netdissect.run as run

    cache = tmp_path / "cache"
    assert main(["dissect", "--model", "tests.toys:ToyNet", "--probe",
                 "python:tests.toys:ToyProbe(n=24)", "--cache-dir", str(cache), *BASE]) == 0
    assert len(list(cache.glob("clean-*.pt"))) == 1

    def no_dissect(*a, **k):
        raise AssertionError("the clean run was recomputed")

    monkeypatch.setattr(run, "dissect", no_dissect)
    auditor = Auditor("cpu", cache_dir=cache, batch_size=24)
    result = auditor.run(AuditRequest.build(
        "netdissect", model="tests.toys:ToyNet", probe="python:tests.toys:ToyProbe(n=24)",
        layer="layer2", normalize="none", corruption="gaussian:std=0.05,fraction=0.1"))
    assert result.meta["mode"] == "incremental" and len(list(cache.glob("clean-*.pt"))) == 1


def test_fixture_and_cli_give_the_same_result(pytester, tmp_path):
    """The same audit through `pytest --nemaudit` (fixture) and `nemaudit audit` (CLI)."""
    pytester.makepyfile(toys=Path(TOYS).read_text())
    out = tmp_path / "fixture.json"
    pytester.makepyfile(test_same=f"""
        import json
        def test_it(nemaudit):
            r = nemaudit.audit(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=24)",
                               layer="layer2", normalize="none",
                               corruption="pgd:eps=8/255,steps=2", max_units=3)
            json.dump(r.to_json(), open({str(out)!r}, "w"))
    """)
    result = pytester.runpytest_subprocess("--nemaudit", "--nemaudit-cache-dir", "none",
                                           "--nemaudit-batch-size", "24", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    fixture = json.loads(out.read_text())
    cli = _out(tmp_path, ["audit", "--model", str(pytester.path / "toys.py") + ":ToyNet",
                          "--probe", f"python:{pytester.path / 'toys.py'}:ToyProbe(n=24)",
                          "--corruption", "pgd:eps=8/255,steps=2", "--max-units", "3",
                          "--no-cache", *BASE])["audits"][0]
    assert cli["units"] == fixture["units"] and cli["metrics"] == fixture["metrics"]
    assert cli["corruption"] == fixture["corruption"]  # the same seed=0 filled in by both


SHIFT_METHOD = '''
"""A third explanation method, registered from outside the package: a unit's mean activation."""
from nemaudit.audit.fields import Field, FloatRange
from nemaudit.audit.methods import Method, MetricShape
from nemaudit.audit.result import MethodResult


class ShiftResult(MethodResult):
    method = "shift"
    schema = "toy.shift/1"

    def diff_line(self, r):
        return f"unit {r['unit']}: {r['clean']:.3f} -> {r['corrupted']:.3f}"


class Shift(Method):
    name, prefix, title, verb, record_key = "shift", "shift.", "Mean shift", "shift", "shift"
    headline, headline_label = "changed_rate", "shifted"
    metrics = {"units": MetricShape(), "changed_rate": MetricShape()}
    fields = {"min_shift": Field(FloatRange(0.0, None), "shift that counts as a change")}

    def run(self, request, resolved):
        import torch

        from nemaudit.corrupt.spec import bound_corruption
        from nemaudit.explain.common.activations import probe_loader, stream_activations

        corruption = bound_corruption(resolved.corruption, resolved.probe)
        sides = []
        for transform in (None, lambda b: corruption(b, resolved.model)):
            loader = probe_loader(resolved.probe, resolved.batch_size)
            acts = [a.mean(dim=(2, 3)) for _, a in stream_activations(
                resolved.model, resolved.layer, loader, resolved.device, transform)]
            sides.append(torch.cat(acts).mean(dim=0))
        tol = request.get("min_shift", 0.0)
        rows = [{"unit": u, "clean": float(c), "corrupted": float(k),
                 "changed": abs(float(c) - float(k)) > tol}
                for u, (c, k) in enumerate(zip(*sides))]
        metrics = {"units": len(rows), "changed_rate": sum(r["changed"] for r in rows) / len(rows)}
        return ShiftResult(resolved.layer, corruption.describe(), rows, metrics)

    def section(self, payload, index, interactive, diff_limit=None):
        return f'<div class="shift-section">{len(payload["units"])} units shifted</div>'
'''


def test_a_third_method_needs_only_its_own_files_and_a_registry_line(pytester, monkeypatch,
                                                                     tmp_path):
    """A method registered from a conftest (its files + one METHODS line, nothing in nemaudit
    edited) is reachable from spec files, the fixture and the CLI, and reported."""
    pytester.makepyfile(toys=Path(TOYS).read_text(), shift_method=SHIFT_METHOD)
    pytester.makeconftest("""
        from nemaudit.audit.methods import METHODS
        METHODS["shift"] = "shift_method:Shift"
    """)
    pytester.makefile(".toml", nemaudit_shift="""
        [defaults]
        model = "toys.py:ToyNet"
        normalize = "none"
        probe = "python:toys.py:ToyProbe(n=16)"

        [[property]]
        name = "shift under noise"
        layers = ["layer2"]
        corruption = "gaussian:std=0.3"
        min_shift = 0.0
        expect = "shift.changed_rate >= 0.25"

        [[property]]
        name = "strict shift"
        layers = ["layer2"]
        method = "shift"
        corruption = "gaussian:std=0.3"
        min_shift = 1000.0
        expect = "changed_rate >= 0.5"
    """)
    pytester.makepyfile(test_shift="""
        def test_verb(nemaudit):
            r = nemaudit.shift(model="toys.py:ToyNet", probe="python:toys.py:ToyProbe(n=16)",
                               layer="layer2", normalize="none", corruption="gaussian:std=0.3")
            assert r.changed_rate <= 1.0
            assert nemaudit.expect(r, "changed_rate <= 1").name == "shift.changed_rate"
    """)
    result = pytester.runpytest_subprocess("--nemaudit", "--nemaudit-cache-dir", "none",
                                           "--nemaudit-json", "r.json", "--nemaudit-html",
                                           "r.html", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*strict shift*",
                                 "shift.changed_rate >= 0.5 does not hold: measured 0, bound 0.5",
                                 "*0/16 units changed"])
    doc = json.loads((pytester.path / "r.json").read_text())
    recs = {r["name"]: r for r in doc["records"]}
    assert recs["shift under noise[layer2]"]["shift"]["method"] == "shift"
    assert recs["test_verb"]["measured"] == recs["test_verb"]["shift"]["metrics"]["changed_rate"]
    html = (pytester.path / "r.html").read_text()
    assert html.count('class="shift-section"') == 3
    # and the CLI, in this process: `nemaudit audit --method shift --set min_shift=...`
    from nemaudit.audit import methods

    monkeypatch.syspath_prepend(str(pytester.path))
    monkeypatch.setitem(methods.METHODS, "shift", "shift_method:Shift")
    monkeypatch.setattr(methods, "_LOADED", {})
    toys = str(pytester.path / "toys.py")
    doc = _out(tmp_path, ["audit", "--method", "shift", "--set", "min_shift=1000",
                          "--model", f"{toys}:ToyNet", "--probe", f"python:{toys}:ToyProbe(n=16)",
                          "--corruption", "gaussian:std=0.3", "--no-cache", *BASE])
    assert doc["audits"][0]["method"] == "shift" and doc["audits"][0]["metrics"] == {
        "units": 16, "changed_rate": 0.0}

