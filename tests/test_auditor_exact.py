"""The Auditor value by value, with a stand-in method registered for the test (it records
what it was handed): the in-memory result cache and its eviction, the seed set before each
audit, repeated draws (derived seeds, mean metrics, every draw kept), which setting each
resolution failure names, the resolvers' caches, provenance and labels."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from nemaudit import auditor as auditor_mod
from nemaudit.audit import methods
from nemaudit.audit.methods import Method, MetricShape
from nemaudit.audit.request import AuditRequest
from nemaudit.auditor import Auditor, RequestError, _mean_metrics, label, layer_depth
from nemaudit.corrupt.base import derive_seed
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly
from tests.toys import ToyNet

MODEL, PROBE = "tests.toys:ToyNet", "python:tests.toys:ToyProbe(n=4)"


class Echo(Method):
    """Runs nothing: returns what it was given, and counts its runs."""

    name = "echo"
    prefix = "echo."
    title = "Echo"
    record_key = "echo"
    metrics = {"units": MetricShape(), "rate": MetricShape(rate=True)}
    runs: list = []

    def run(self, request, resolved):
        assert isinstance(request, AuditRequest)
        Echo.runs.append(resolved.corruption)
        seed = hash(resolved.corruption) % 7 if resolved.corruption else 0
        return SimpleNamespace(metrics={"units": 4, "rate": seed / 10, "label": "x"},
                               meta={}, rows=[resolved.corruption], resolved=resolved,
                               noise=float(torch.rand(())), request=request)


class Fixed(Echo):
    name = "fixed"
    repeatable = False


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "echo", "tests.test_auditor_exact:Echo")
    monkeypatch.setitem(methods.METHODS, "fixed", "tests.test_auditor_exact:Fixed")
    monkeypatch.setattr(methods, "_LOADED", dict(methods._LOADED))
    Echo.runs = []
    return Echo


def _req(method="echo", **kw):
    return AuditRequest.build(method, **{"model": MODEL, "probe": PROBE, "layer": "layer2",
                                         "corruption": "gaussian:std=0.1", **kw})


# --------------------------------------------------------------------------- mean metrics

def test_mean_metrics_by_hand():
    draws = [{"units": 4, "rate": 0.25, "name": "a", "flag": True, "none": None,
              "part": None, "table": {"x": 1.0, "y": {"z": 2}}, "mixed": {"x": 1.0}},
             {"units": 4, "rate": 0.5, "name": "b", "flag": False, "none": None,
              "part": 0.5, "table": {"x": 3.0, "y": {"z": 4}}, "mixed": 0.5},
             {"units": 4, "rate": 0.0, "name": "c", "flag": True, "none": None,
              "part": 0.25, "table": {"x": 2.0, "y": {"z": 6}}, "mixed": {"x": 2.0}}]
    out = _mean_metrics(draws)
    assert out == {"units": 4, "rate": 0.25, "name": "a", "flag": True, "none": None,
                   "part": None, "table": {"x": 2.0, "y": {"z": 4.0}}, "mixed": {"x": 1.0}}
    assert isinstance(out["units"], int)  # the same in every draw: kept as it is
    assert _mean_metrics([{"a": 0.5, "b": 1}, {"a": None, "b": 1}]) == {"a": None, "b": 1}
    assert _mean_metrics([{"a": 1}, {"a": 2}]) == {"a": 1.5}
    assert _mean_metrics([{"a": 1}]) == {"a": 1}


# --------------------------------------------------------------------------- running

def test_the_same_request_runs_once_and_the_cache_keeps_the_latest(echo, monkeypatch):
    monkeypatch.setattr(auditor_mod, "RESULT_CACHE", 2)
    a = Auditor("cpu")
    r1, r2, r3 = (_req(corruption=f"gaussian:std=0.{i}") for i in (1, 2, 3))
    first = a.run(r1)
    assert a.run(r1) is first and len(echo.runs) == 1
    a.run(r2)
    a.run(r1)  # a hit moves r1 to the end
    a.run(r3)  # evicts r2, the oldest
    assert len(echo.runs) == 3
    assert a.run(r1) is first and len(echo.runs) == 3
    a.run(r2)
    assert len(echo.runs) == 4
    # a request with an object in it has no key: it runs every time
    obj = _req(model=ToyNet())
    a.run(obj)
    a.run(obj)
    assert len(echo.runs) == 6


def test_each_audit_starts_from_the_auditors_seed(echo):
    torch.manual_seed(123)
    want = float(torch.manual_seed(5) and torch.rand(()))
    torch.rand(10)
    got = Auditor("cpu", seed=5).run(_req())
    assert got.noise == want


def test_the_corruption_gets_the_auditors_seed_unless_it_names_one(echo):
    a = Auditor("cpu", seed=7)
    assert a.run(_req()).rows == ["gaussian:std=0.1,seed=7"]
    assert a.run(_req(corruption="gaussian:seed=2,std=0.1")).rows == ["gaussian:seed=2,std=0.1"]
    assert a.seeded("uniform:std=0.1") == "uniform:std=0.1,seed=7"
    c = object()
    assert a.seeded(c) is c


def test_the_result_says_what_it_audited(echo):
    a = Auditor("cpu")
    r = a.run(_req(weights=None))
    assert r.meta["specs"] == {"model": MODEL, "probe": PROBE, "layer": "layer2",
                               "weights": None,
                               "layer_depth": layer_depth(a.model(MODEL), "layer2")}
    # conv1, conv1.0, conv1.1, layer1, layer1.0, layer1.1, layer2: definition order
    assert r.meta["specs"]["layer_depth"] == 6


def test_repeats_draw_the_corruption_with_derived_seeds(echo):
    a = Auditor("cpu", seed=3)
    r = a.run(_req(repeats=3))
    seeds = [3, derive_seed(3, "repeat", 1) % 2**31, derive_seed(3, "repeat", 2) % 2**31]
    specs = [f"gaussian:std=0.1,seed={s}" for s in seeds]
    assert echo.runs == specs
    assert r.meta["repeats"]["draws"] == 3 and r.meta["repeats"]["seeds"] == seeds
    per = [{"units": 4, "rate": hash(s) % 7 / 10} for s in specs]
    assert r.meta["repeats"]["per_draw"] == per
    assert r.metrics == {"units": 4, "rate": pytest.approx(sum(p["rate"] for p in per) / 3),
                         "label": "x"}
    assert r.rows == [specs[0]] and [d.rows for d in r.draws] == [[s] for s in specs]
    assert r.draws[0] is r
    # a seed in the spec is where the draws start
    echo.runs.clear()
    a.run(_req(corruption="gaussian:std=0.2,seed=11", repeats=2))
    assert echo.runs == ["gaussian:std=0.2,seed=11",
                         f"gaussian:std=0.2,seed={derive_seed(11, 'repeat', 1) % 2**31}"]


def test_repeats_need_a_method_that_draws_and_a_spec_string(echo):
    a = Auditor("cpu")
    with raises_exactly(RequestError, "repeats=2: needs a corruption spec string and a method "
                                      "that draws it (fixed does not)"):
        a.run(_req("fixed", repeats=2))
    from nemaudit.corrupt.spec import parse_corruption

    with pytest.raises(RequestError) as e:
        a.run(_req(corruption=parse_corruption("gaussian:std=0.1"), repeats=2))
    assert str(e.value) == "repeats=2 needs the corruption as a spec string"
    assert e.value.field == "repeats"
    assert len(a.run(_req("fixed")).rows) == 1  # one draw is fine


# --------------------------------------------------------------------------- resolving

@pytest.mark.parametrize("kw, field, text", [
    ({"model": None}, "model", "no model given: pass model='torchvision:resnet18', "
                               "'package.module:function', 'nemaudit:conceptnet', or a module"),
    ({"probe": None}, "probe", "no probe given: pass probe='synthetic:n=300,seed=0', "
                               "'broden:PATH', 'folder:PATH', 'python:module:callable' or a "
                               "probe"),
    ({"corruption": None}, "corruption", "no corruption given, e.g. 'gaussian:std=0.02'"),
    ({"model": "tests.toys:NoSuchNet"}, "model", None),
    ({"probe": "python:tests.toys:NoSuchProbe"}, "probe", None),
    ({"layer": "layer9"}, "layer", None),
    ({"corruption": "gaussian:std=-1"}, "corruption", None),
    ({"corruption": "pgd:eps=0.01,target=nonsense,targeted=true"}, "corruption", None),
    ({"normalize": "1,2/3"}, "normalize", None),
    ({"weights": "/nonexistent/w.pt"}, "weights", None),
])
def test_each_failure_names_its_setting(echo, kw, field, text):
    with pytest.raises(RequestError) as e:
        Auditor("cpu").resolve(_req(**kw))
    assert e.value.field == field and isinstance(e.value, SpecError)
    if text is not None:
        assert str(e.value) == text
    assert "Traceback" not in str(e.value)


def test_a_corruption_error_quotes_the_users_spec_not_the_seeded_one(echo):
    with pytest.raises(RequestError) as e:
        Auditor("cpu", seed=9).resolve(_req(corruption="gaussian:std=-1"))
    assert "seed=9" not in str(e.value)


def test_resolved_carries_the_auditors_settings(echo, tmp_path):
    a = Auditor("cpu", cache_dir=tmp_path, batch_size=7, max_units=3, progress=True,
                workers=-2)
    assert a.workers == 0 and a.cache_dir == str(tmp_path)
    r = a.resolve(_req())
    assert (r.layer, r.corruption, r.cache_dir, r.batch_size, r.workers, r.max_units,
            r.progress) == ("layer2", "gaussian:std=0.1,seed=0", str(tmp_path), 7, 0, 3, True)
    assert r.device == torch.device("cpu") and r.model is a.model(MODEL) and \
        r.probe is a.probe(PROBE)
    assert a.resolve(_req(), corruption=False).corruption is None
    assert a.resolve(_req(layer=None)).layer == "layer2"  # the model's default layer
    assert Auditor("cpu", workers=2).workers == 2


def test_resolvers_cache_by_spec_and_pass_objects_through(echo):
    a = Auditor("cpu")
    assert a.model(MODEL) is a.model(MODEL)
    assert a.model(MODEL) is not a.model(MODEL, normalize="none")
    net = ToyNet()
    assert a.model(net) is net
    assert a.probe(PROBE) is a.probe(PROBE) and a.probe(f" {PROBE} ") is not a.probe(PROBE)
    probe = object()
    assert a.probe(probe) is probe
    assert a._resolve("model", MODEL) is a.model(MODEL)
    assert a._resolve("model", MODEL, normalize="none") is a.model(MODEL, normalize="none")
    assert a._resolve("probe", PROBE) is a.probe(PROBE)
    with raises_exactly(SpecError, "nothing resolves 'layer' specs"):
        a._resolve("layer", "x")
    d = a.describer("python:tests.toys:BrightnessDescriber()")
    assert a.describer("python:tests.toys:BrightnessDescriber()") is d
    assert a._resolve("describer", "python:tests.toys:BrightnessDescriber()") is d
    with pytest.raises(RequestError) as e:
        a.describer("python:tests.toys:NoSuchDescriber")
    assert e.value.field == "describer"


def test_device_name_before_and_after_it_is_resolved():
    a = Auditor("cpu")
    assert a.device_name == "cpu" and not a.device_resolved
    assert a.device == torch.device("cpu") and a.device_resolved
    assert a.device_name == "cpu"


# --------------------------------------------------------------------------- labels

def test_labels_and_layer_depth():
    assert label(None) is None and label("spec") == "spec"
    assert label(SimpleNamespace(source="src", name="n")) == "src"
    assert label(SimpleNamespace(source=None, name="n")) == "n"
    assert label(SimpleNamespace(source="", name="")) == "SimpleNamespace"
    net = ToyNet()
    names = [n for n, _ in net.named_modules() if n]
    assert layer_depth(net, "layer2") == names.index("layer2")
    assert layer_depth(net, "conv1") == 0
    assert layer_depth(net, "nope") is None


@pytest.mark.parametrize("name", ["w.pt", "weights.pt"])
def test_a_bad_checkpoint_is_the_weights_fault_whatever_its_name(tmp_path, name):
    """Which setting a weights failure names does not hang on the file's name."""
    a = Auditor("cpu")
    for path, make in ((tmp_path / name, None), (tmp_path / f"junk-{name}", b"not torch"),
                       (tmp_path / f"other-{name}", "mismatch")):
        if make == "mismatch":
            torch.save({"fc.weight": torch.zeros(1)}, path)
        elif make is not None:
            path.write_bytes(make)
        with pytest.raises(RequestError) as e:
            a.model(MODEL, weights=str(path))
        assert e.value.field == "weights", str(e.value)
    with pytest.raises(RequestError) as e:
        a.model("tests.toys:NoSuchNet", weights=str(tmp_path / name))
    assert e.value.field == "model"  # the model fails first


# --------------------------------------------------------------------------- more of the door

def test_a_loaders_key_error_reads_as_its_key(monkeypatch):
    import nemaudit.model as model_pkg

    def load(*a, **k):
        raise KeyError("no such entry")

    monkeypatch.setattr(model_pkg, "load_model", load)
    with pytest.raises(RequestError) as e:
        Auditor("cpu").model("tests.toys:ToyNet")
    assert str(e.value) == "no such entry" and e.value.field == "model"


def test_the_model_cache_tells_weights_apart(tmp_path):
    a = Auditor("cpu")
    path = tmp_path / "w.pt"
    torch.save(ToyNet(seed=3).state_dict(), path)
    plain, loaded = a.model(MODEL), a.model(MODEL, weights=str(path))
    assert plain is not loaded and a.model(MODEL, weights=str(path)) is loaded
    assert not torch.equal(plain.model.conv1[0].weight, loaded.model.conv1[0].weight)


def test_a_describer_object_is_used_as_it_is():
    from tests.toys import BrightnessDescriber

    d = BrightnessDescriber()
    assert Auditor("cpu").describer(d) is d


class Quiet(Echo):
    """Compares models, not probes: no corruption needed; records what it preloaded."""

    name = "quiet"
    needs_corruption = False
    preloaded: list = []

    def preload(self, request, resolve):
        Quiet.preloaded.append(resolve("probe", request.probe))


def test_a_method_without_corruption_and_what_it_preloads(echo, monkeypatch):
    monkeypatch.setitem(methods.METHODS, "quiet", "tests.test_auditor_exact:Quiet")
    Quiet.preloaded = []
    a = Auditor("cpu", seed=4)
    r = a.run(_req("quiet", corruption=None))
    assert r.rows == [None] and r.resolved.corruption is None
    assert Quiet.preloaded == [a.probe(PROBE)]
    # a corruption it is given is still resolved (seeded)
    assert a.run(_req("quiet")).rows == ["gaussian:std=0.1,seed=4"]
    # a method that needs one refuses a request without it
    with pytest.raises(RequestError) as e:
        a.run(_req("echo", corruption=None))
    assert e.value.field == "corruption"
    # prepare resolves what is there and preloads
    Quiet.preloaded = []
    got = a.prepare(_req("quiet", corruption=None))
    assert got.corruption is None and Quiet.preloaded == [a.probe(PROBE)]
    assert a.prepare(_req("quiet")).corruption == "gaussian:std=0.1,seed=4"


def test_the_cache_key_uses_the_resolved_layer(echo):
    a = Auditor("cpu")
    first = a.run(_req(layer=None))
    assert a.run(_req(layer="layer2")) is first and len(echo.runs) == 1


def test_resolved_hands_the_methods_the_auditors_resolver():
    a = Auditor("cpu", workers=3)
    r = a.resolve(AuditRequest.build("netdissect", model=MODEL, probe=PROBE,
                                     corruption="gaussian:std=0.1"))
    assert r.resolve("probe", PROBE) is a.probe(PROBE) and r.workers == 3


def test_resolution_errors_quote_the_underlying_message():
    from nemaudit.corrupt.spec import parse_corruption
    from nemaudit.errors import NemauditError
    from nemaudit.model import resolve_layer

    a = Auditor("cpu")
    with pytest.raises(NemauditError) as want:
        resolve_layer(a.model(MODEL), "layer9")
    with pytest.raises(RequestError) as got:
        a.resolve(_req("netdissect", layer="layer9"))
    assert str(got.value) == str(want.value)
    with pytest.raises(NemauditError) as want:
        parse_corruption("gaussian:std=-1")
    with pytest.raises(RequestError) as got:
        a.resolve(_req("netdissect", corruption="gaussian:std=-1"))
    assert str(got.value) == str(want.value)
    with pytest.raises(RequestError) as got:
        a.probe("python:tests.toys:NoSuchProbe")
    assert "NoSuchProbe" in str(got.value)
    with pytest.raises(RequestError) as got:
        a.describer("python:tests.toys:NoSuchDescriber")
    assert "NoSuchDescriber" in str(got.value)


def test_the_clean_dissection_and_the_baseline_of_a_request(tmp_path):
    from nemaudit.audit.netdissect.run import clean_dissection
    from nemaudit.baseline import baseline_document, baseline_path

    a = Auditor("cpu")
    req = AuditRequest.build("netdissect", model=MODEL, probe=PROBE, layer="layer2",
                             normalize="none", eta=0.02)
    d = a.clean_dissection(req)
    want = clean_dissection(req, a.resolve(req, corruption=False))
    assert d.rows() == want.rows()
    anchor = tmp_path / "test_props.py"
    written = a.check_baseline("base", req, anchor=anchor, update=True, tolerance=0.02)
    assert written.status == "written" and written.layer == "layer2"
    assert written.path == baseline_path(anchor, "base", "layer2")
    doc = json.loads(written.path.read_text())
    expect = baseline_document("base", "layer2", d.rows(), model=MODEL, probe=PROBE,
                               method="netdissect", settings=d.config.as_dict())
    assert {k: v for k, v in doc.items() if k != "schema"} == json.loads(json.dumps(expect))
    again = a.check_baseline("base", req, anchor=anchor, update=False, tolerance=0.02)
    assert again.status == "unchanged"
    assert a.check_baseline("base", req, anchor=anchor, update=False,
                            tolerance=0.02).tolerance == 0.02
    assert again.units == len(d.rows())


def test_an_auditors_defaults():
    a = Auditor()
    assert (a.device_spec, a.cache_dir, a.batch_size, a.seed, a.max_units, a.progress,
            a.workers) == ("auto", None, 64, 0, None, False, 0)
    assert Auditor(cache_dir="c").cache_dir == "c"


def test_other_loading_errors_read_as_themselves(monkeypatch):
    import nemaudit.model as model_pkg

    def load(*a, **k):
        raise OSError(2, "No such file")

    monkeypatch.setattr(model_pkg, "load_model", load)
    with pytest.raises(RequestError) as e:
        Auditor("cpu").model("tests.toys:ToyNet")
    assert str(e.value) == "[Errno 2] No such file"


def test_a_second_model_and_a_describer_through_the_resolver(tmp_path):
    a = Auditor("cpu")
    path = tmp_path / "w.pt"
    torch.save(ToyNet(seed=3).state_dict(), path)
    assert a._resolve("model", MODEL, weights=str(path)) is a.model(MODEL, str(path))
    assert a.describer() is a.describer()  # the bundled one, cached
    d = a._resolve("describer", None, beam_size=2)
    assert d is a.describer(None, beam_size=2) and d.settings.beam_size == 2


def test_the_cache_tells_layers_apart_and_seeds_alike(echo):
    a = Auditor("cpu", seed=0)
    one, two = a.run(_req(layer="layer1")), a.run(_req(layer="layer2"))
    assert one is not two and len(echo.runs) == 2
    assert a.run(_req(layer="layer2", corruption="gaussian:std=0.1,seed=0")) is two
    assert len(echo.runs) == 2
    assert one.request.layer == "layer1"
    drawn = a.run(_req(repeats=2))
    assert all(d.request.repeats == 2 for d in drawn.draws)
