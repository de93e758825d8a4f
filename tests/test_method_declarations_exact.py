"""The torch-free declarations, value by value: the method registry (lookups by name, metric
and prefix, a record's payloads, the base Method's defaults), Network Dissection's
declaration (key checks, lookups, probe checks, facts, the failure summary), the corruption
kinds' L∞ budgets, FoolingConfig's refusals and JSON, and the fooled model's saved files."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nemaudit.audit.methods import (
    DEFAULT_METHOD,
    METHODS,
    Method,
    MetricShape,
    all_methods,
    get_method,
    method_of_metric,
    method_of_prefix,
    record_payloads,
)
from nemaudit.corrupt.kinds import KINDS, linf_key
from nemaudit.corrupt.manipulate import FOOLINGS, FoolingConfig, check_fooling
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly

# --------------------------------------------------------------------------- the registry


def test_the_registry_in_order_and_by_name():
    assert list(METHODS) == ["netdissect", "milan", "radius", "saliency", "fooling"]
    assert DEFAULT_METHOD == "netdissect"
    assert [m.name for m in all_methods()] == list(METHODS)
    assert get_method("milan") is get_method("milan")  # loaded once
    assert repr(get_method("milan")) == "<method milan>"
    assert type(get_method("fooling")).__name__ == "Fooling"
    with raises_exactly(SpecError, "unknown explanation method 'lime'; valid methods: "
                                   "netdissect, milan, radius, saliency, fooling"):
        get_method("lime")


def test_a_metric_belongs_to_the_method_of_its_prefix_or_to_the_default():
    nd, milan = get_method("netdissect"), get_method("milan")
    assert method_of_metric("flip_rate") is nd
    assert method_of_metric("milan.manipulated_rate") is milan
    assert method_of_metric("milan.flip_rate") is None  # the prefix decides: not MILAN's
    assert method_of_metric("manipulated_rate") is None  # MILAN's, but without its prefix
    assert method_of_metric("nonsense") is None
    assert method_of_metric("other.flip_rate") is None  # a dot, no known prefix
    assert method_of_prefix("milan.nonsense") is milan
    assert method_of_prefix("fooling.x") is get_method("fooling")
    assert method_of_prefix("nonsense") is nd
    assert method_of_prefix("other.flip_rate") is None


def test_a_records_payloads_in_registry_order_mappings_only():
    rec = {"milan": {"m": 1}, "audit": {"a": 1}, "radius": "not a mapping", "fooling": None,
           "saliency": {}}
    got = record_payloads(rec)
    assert [(m.name, p) for m, p in got] == [("netdissect", {"a": 1}), ("milan", {"m": 1}),
                                             ("saliency", {})]
    assert record_payloads({}) == []


class _Bare(Method):
    name = "bare"
    prefix = "bare."
    title = "Bare"
    record_key = "bare"
    metrics = {"a": MetricShape(), "b": MetricShape(rate=True)}


def test_the_base_methods_defaults():
    m = _Bare()
    assert m.metric_names() == ["bare.a", "bare.b"]
    assert m.check_keys("a", ("x",)) is None
    assert m.lookup("a", ("x",), {"a": 3}) == 3
    assert m.check_expectation("a", (), None) is None
    assert m.preload(None, None) is None
    with pytest.raises(NotImplementedError):
        m.run(None, None)
    assert m.payload(SimpleNamespace(to_json=lambda: {"j": 1}), max_units=1, k=1) == {"j": 1}
    assert m.facts({"meta": {"mode": "x"}}) == []
    assert m.section({}, 0, True) == "" and m.section({}, 0, False, 3) == ""
    assert m.change_summary({"changed": 2, "units": 5}) == "2/5 units changed"
    assert m.change_summary({}) == "0/0 units changed"
    assert (m.verb, m.headline_label, m.headline, m.fields) == ("", "", None, {})
    assert m.repeatable is True and m.needs_corruption is True
    assert MetricShape() == MetricShape("number", (0,), False)


# --------------------------------------------------------------------------- Network Dissection

@pytest.fixture
def nd():
    return get_method("netdissect")


def test_network_dissections_declaration(nd):
    assert (nd.name, nd.prefix, nd.title, nd.verb, nd.record_key, nd.headline,
            nd.headline_label) == ("netdissect", "", "Network Dissection", "audit", "audit",
                                   "flip_rate", "flip")
    assert nd.metric_names() == list(nd.metrics)
    rates = {k for k, v in nd.metrics.items() if v.rate}
    assert rates == {"flip_rate", "flip_rate_detectors", "targeted_success_rate",
                     "detector_share_clean", "detector_share_corrupted",
                     "per_category_flip_rate", "detector_share", "xie_table"}
    assert nd.metrics["detector_share"].arity == (2,)
    assert nd.metrics["per_category_flip_rate"].arity == (1,)
    assert nd.metrics["detector_share_clean"].arity == (0, 1)
    assert nd.metrics["flip_rate"] == MetricShape(rate=True)
    assert nd.metrics["units"] == MetricShape()
    assert list(nd.fields) == ["eta", "iou_threshold", "bootstrap"]


def test_the_side_key_is_checked_at_grammar_time(nd):
    for metric in ("detector_share", "xie_table"):
        assert nd.check_keys(metric, ("clean", "all")) is None
        assert nd.check_keys(metric, ("corrupted", "C")) is None
        assert nd.check_keys(metric, ()) is None
        assert nd.check_keys(metric, ("dirty", "all")) == (
            f"{metric}['dirty']: the first key is the side, one of clean, corrupted")
    assert nd.check_keys("per_category_flip_rate", ("dirty",)) is None


def test_a_share_of_one_side_reads_the_table_only_with_a_key(nd):
    metrics = {"detector_share": {"clean": {"all": 0.5}, "corrupted": {"all": 0.25}},
               "detector_share_clean": 0.5, "detector_share_corrupted": 0.25, "units": 4}
    assert nd.lookup("detector_share_clean", ("all",), metrics) == {"all": 0.5}
    assert nd.lookup("detector_share_corrupted", ("all",), metrics) == {"all": 0.25}
    assert nd.lookup("detector_share_clean", (), metrics) == 0.5
    assert nd.lookup("units", (), metrics) == 4
    assert nd.lookup("detector_share_clean", ("all",), {"units": 1}) == {}
    assert nd.lookup("detector_share_clean", ("all",), {"detector_share": {}}) == {}


def test_categories_are_checked_against_the_probe(nd):
    probe = SimpleNamespace(categories=["color", "object"])
    msg = "unknown category {!r}; this probe's categories: color, object, all"
    assert nd.check_expectation("per_category_flip_rate", ("color",), probe) is None
    assert nd.check_expectation("per_category_flip_rate", ("all",), probe) == msg.format("all")
    assert nd.check_expectation("per_category_flip_rate", ("part",), probe) == msg.format("part")
    assert nd.check_expectation("detector_share", ("clean", "all"), probe) is None
    assert nd.check_expectation("detector_share", ("clean", "object"), probe) is None
    assert nd.check_expectation("detector_share", ("clean", "part"), probe) == msg.format("part")
    for side in ("detector_share_clean", "detector_share_corrupted"):
        assert nd.check_expectation(side, (), probe) is None
        assert nd.check_expectation(side, ("all",), probe) is None
        assert nd.check_expectation(side, ("color",), probe) is None
        assert nd.check_expectation(side, ("part",), probe) == msg.format("part")
    assert nd.check_expectation("flip_rate", (), probe) is None
    assert nd.check_expectation("xie_table", ("clean", "part"), probe) is None


def test_facts_are_the_audits_meta_in_a_fixed_order(nd):
    meta = {"objective_mean_after": 0.5, "mode": "per-unit", "images": 40,
            "poisoned_images": None, "attacked_units": 3, "other": 1,
            "poisoned_share_per_unit_mean": 0.25, "objective_mean_before": 0.75}
    assert nd.facts({"meta": meta}) == [
        ("mode", "per-unit"), ("images", 40), ("attacked units", 3),
        ("poisoned share per unit mean", 0.25), ("objective mean before", 0.75),
        ("objective mean after", 0.5)]
    assert nd.facts({}) == [] and nd.facts({"meta": None}) == []
    assert nd.facts({"meta": {"images": 0}}) == [("images", 0)]  # zero is a fact


def test_the_failure_summary_counts_changed_units_and_clean_detectors(nd):
    assert nd.change_summary({"changed": 3, "units": 10, "detectors": 4,
                              "flip_rate_detectors": 0.25}) == (
        "3/10 units changed concept (1/4 clean detectors)")
    assert nd.change_summary({"changed": 2, "units": 9, "detectors": 3,
                              "flip_rate_detectors": 2 / 3}) == (
        "2/9 units changed concept (2/3 clean detectors)")
    assert nd.change_summary({}) == "0/0 units changed concept (0/0 clean detectors)"
    assert nd.change_summary({"changed": 1, "units": 2, "detectors": None,
                              "flip_rate_detectors": None}) == (
        "1/2 units changed concept (0/0 clean detectors)")
    assert nd.change_summary({"changed": 1, "units": 2, "detectors": 5,
                              "flip_rate_detectors": 0.0}) == (
        "1/2 units changed concept (0/5 clean detectors)")


# --------------------------------------------------------------------------- corruption kinds

def test_the_linf_budget_of_each_kind():
    assert {k: linf_key(k) for k in KINDS} == {
        "gaussian": None, "uniform": "std", "bernoulli": "std", "jpeg": None, "pgd": "eps",
        "fgsm": "eps", "pgd-ce": "eps"}
    assert {k: v.budget for k, v in KINDS.items()} == {
        "gaussian": "std", "uniform": "std", "bernoulli": "std", "jpeg": "quality",
        "pgd": "eps", "fgsm": "eps", "pgd-ce": "eps"}
    assert linf_key("nonsense") is None
    assert KINDS["pgd"].target == "nemaudit.corrupt.pgd:ConceptAttack"


# --------------------------------------------------------------------------- fooling settings

def test_fooling_names():
    assert list(FOOLINGS) == ["location", "topk", "center", "active"]
    assert check_fooling("topk") == "topk"
    with raises_exactly(SpecError, "unknown fooling 'frame'; valid foolings: location, topk, "
                                   "center, active"):
        check_fooling("frame")


@pytest.mark.parametrize("kw, message", [
    ({"lr": 0.0}, "fooling setting lr=0.0: expected a number > 0.0"),
    ({"lr": -1}, "fooling setting lr=-1: expected a number > 0.0"),
    ({"lr": math.nan}, "fooling setting lr=nan: expected a number > 0.0"),
    ({"lr": "1e-3"}, "fooling setting lr='1e-3': expected a number > 0.0"),
    ({"lam": 0}, "fooling setting lam=0: expected a number > 0.0"),
    ({"lam": None}, "fooling setting lam=None: expected a number > 0.0"),
    ({"epochs": 0}, "fooling setting epochs=0: expected an integer >= 1"),
    ({"epochs": True}, "fooling setting epochs=True: expected an integer >= 1"),
    ({"batch_size": 2.0}, "fooling setting batch_size=2.0: expected an integer >= 1"),
    ({"eval_images": -3}, "fooling setting eval_images=-3: expected an integer >= 1"),
    ({"fooling": "frame"}, "unknown fooling 'frame'; valid foolings: location, topk, center, "
                           "active"),
])
def test_fooling_settings_are_refused_in_full(kw, message):
    with raises_exactly(SpecError, message):
        FoolingConfig(**kw)


def test_fooling_settings_at_their_edges_are_taken():
    c = FoolingConfig(lr=1e-12, lam=1, epochs=1, batch_size=1, eval_images=1)
    assert (c.lr, c.lam, c.epochs, c.batch_size, c.eval_images) == (1e-12, 1, 1, 1, 1)
    with pytest.raises(SpecError, match="unknown interpreter|interpreter"):
        FoolingConfig(interpreter="lime")


def test_fooling_settings_as_json():
    c = FoolingConfig(fooling="active", classes=("box", 2), interval=(0.25, 0.5), seed=4)
    d = c.to_json()
    assert d["classes"] == ["box", 2] and d["interval"] == [0.25, 0.5]
    assert d == {"fooling": "active", "interpreter": "gradcam", "layer": None, "lr": 1e-3,
                 "lam": 5.0, "epochs": 5, "batch_size": 32, "seed": 4, "max_top1_drop": 0.02,
                 "patience": 2, "stop_fsr": 1.0, "classes": ["box", 2], "eval_images": 128,
                 "interval": [0.25, 0.5], "extra": {}}
    plain = FoolingConfig().to_json()
    assert plain["classes"] is None and plain["interval"] is None
    json.dumps(d)  # JSON as it is


# --------------------------------------------------------------------------- saved weights

def test_a_fooled_model_is_saved_with_its_sidecar(tmp_path, monkeypatch):
    from nemaudit import __version__
    from nemaudit.corrupt.manipulate.save import save_fooled
    from nemaudit.model.load import NormalizedModel

    torch.manual_seed(0)
    inner = nn.Linear(3, 2)
    run = SimpleNamespace(model=NormalizedModel(inner, "none"),
                          config=FoolingConfig(seed=7, classes=(1, 0)),
                          history=[{"epoch": 0, "fsr": 0.1}, {"epoch": 1, "fsr": 0.5}],
                          best_epoch=1, best={"epoch": 1, "fsr": 0.5}, classes=(1, 0))
    pt, side = save_fooled(run, tmp_path / "sub" / "fooled.pt", {"model": "m"})
    assert (pt, side) == (tmp_path / "sub" / "fooled.pt", tmp_path / "sub" / "fooled.json")
    state = torch.load(pt, weights_only=True)
    assert list(state) == ["weight", "bias"]  # the inner model's keys, no wrapper prefix
    assert all(torch.equal(state[k], v) for k, v in inner.state_dict().items())
    doc = json.loads(side.read_text())
    env = doc.pop("environment")
    assert env == {"nemaudit": __version__, "torch": torch.__version__,
                   "python": env["python"]} and env["python"].count(".") == 2
    assert doc == {"schema": "nemaudit.fooled/1", "weights": "fooled.pt",
                   "settings": run.config.to_json(), "seed": 7, "best_epoch": 1,
                   "metrics": {"epoch": 1, "fsr": 0.5}, "history": run.history,
                   "classes": [1, 0], "provenance": {"model": "m"}}
    assert side.read_text().endswith("}\n") and side.read_text().startswith('{\n  "schema"')
    # what JSON cannot hold (a path in the provenance) is written as its text
    from pathlib import Path

    _, side3 = save_fooled(run, tmp_path / "c.pt", {"weights": Path("w.pt")})
    assert json.loads(side3.read_text())["provenance"] == {"weights": "w.pt"}
    run.classes = None
    _, side2 = save_fooled(run, tmp_path / "b.pt")
    doc2 = json.loads(side2.read_text())
    assert doc2["classes"] is None and doc2["provenance"] == {}


def test_a_bad_weights_path_is_refused_before_writing(tmp_path):
    from nemaudit.corrupt.manipulate.save import save_fooled

    run = SimpleNamespace(model=nn.Linear(1, 1))
    with raises_exactly(SpecError, f"fooled weights {str(tmp_path)!r}: is a directory; "
                                   "expected a file path"):
        save_fooled(run, tmp_path)
    assert list(tmp_path.iterdir()) == []



def test_network_dissection_hands_its_work_to_its_modules(nd, monkeypatch):
    from nemaudit.audit.netdissect import pictures
    from nemaudit.audit.netdissect import run as nd_run
    from nemaudit.report import netdissect_html

    monkeypatch.setattr(nd_run, "run_request", lambda req, res: ("ran", req, res))
    monkeypatch.setattr(pictures, "report_payload",
                        lambda result, max_units, k: ("payload", result, max_units, k))
    monkeypatch.setattr(netdissect_html, "netdissect_section",
                        lambda p, i, interactive, limit: ("html", p, i, interactive, limit))
    assert nd.run("q", "r") == ("ran", "q", "r")
    assert nd.payload("res", max_units=5, k=2) == ("payload", "res", 5, 2)
    assert nd.section({"a": 1}, 3, False, 9) == ("html", {"a": 1}, 3, False, 9)
    assert nd.section({}, 0, True) == ("html", {}, 0, True, None)
