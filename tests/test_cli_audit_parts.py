"""``nemaudit audit`` without running an audit: its flags (names, defaults, help) and what
``run`` does with the results an Auditor returns (a stand-in here): the requests it builds,
the metadata it adds, what it prints per method and the JSON it writes."""

from __future__ import annotations

import argparse
import json

import pytest

import nemaudit.audit.methods
import nemaudit.report.terminal
from nemaudit.cli import audit, common
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.Action]:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    audit.add_parser(sub)
    return p, sub.choices["audit"], sub._choices_actions[0]


def test_audit_flags_defaults_and_help():
    p, sp, choice = _parser()
    assert choice.help == "dissect clean and corrupted, print metrics and the per-unit diff"
    a = vars(p.parse_args(["audit", "--layer", "l", "--corruption", "c"]))
    assert a.pop("func") is audit.run
    assert a == {"command": "audit", "model": "nemaudit:conceptnet", "weights": None,
                 "normalize": None, "device": "auto", "probe": "synthetic:n=2000,seed=0",
                 "batch_size": 64, "workers": 0, "quiet": False, "layer": ["l"], "corruption": ["c"],
                 "units": None, "max_units": None, "method": "netdissect", "settings": [],
                 "eta": None, "iou_threshold": None, "cache_dir": ".nemaudit-cache",
                 "no_cache": False, "out": None, "show": 15}
    helps = {x.option_strings[0]: x.help for x in sp._actions[9:]}  # after -h and the shared
    assert helps == {
        "--layer": "layer name (repeatable)",
        "--corruption": "e.g. gaussian:std=0.02,fraction=1.0 | bernoulli:std=6/255 | "
                        "pgd:eps=4/255,steps=10,targeted=false | fgsm:eps=2/255 (repeatable)",
        "--units": "comma-separated unit indices (default: all)",
        "--max-units": "per-unit attacks: attack at most this many units (evenly spaced)",
        "--method": "the explanation method audited (default netdissect; milan, or any "
                    "registered method)",
        "--set": "a setting of the method (repeatable), e.g. --set exemplars=5 with "
                 "--method milan; the spec-file fields of that method",
        "--eta": "Network Dissection: top-η quantile (default 0.005)",
        "--iou-threshold": "Network Dissection: IoU of a detector (default 0.04)",
        "--cache-dir": "clean-run cache, shared with pytest --nemaudit (default "
                       ".nemaudit-cache)",
        "--no-cache": None,
        "--out": "write per-unit rows and metrics as JSON here",
        "--show": "changed units shown",
    }
    s = next(x for x in sp._actions if x.dest == "settings")
    assert s.metavar == "KEY=VALUE" and s.option_strings == ["--set"]
    a = p.parse_args(["audit", "--layer", "a", "--layer", "b", "--corruption", "c", "--set",
                      "x=1", "--set", "y=2", "--eta", "0.01", "--max-units", "3"])
    assert (a.layer, a.settings, a.eta, a.max_units) == (["a", "b"], ["x=1", "y=2"], 0.01, 3)


@pytest.mark.parametrize("missing", ["--layer", "--corruption"])
def test_layer_and_corruption_are_required(missing, capsys):
    p, _, _ = _parser()
    flags = {"--layer": "l", "--corruption": "c"}
    del flags[missing]
    with pytest.raises(SystemExit):
        p.parse_args(["audit", *[t for kv in flags.items() for t in kv]])
    assert f"the following arguments are required: {missing}" in capsys.readouterr().err


class _Result:
    def __init__(self, req, method):
        self.req, self.method, self.layer, self.meta = req, method, req.layer, {}
        self.metrics = {"changed": 1, "units": 2, "threshold": 0.5, "f1_mean": 0.75}
        self.limits = []

    def diff_lines(self, limit):
        self.limits.append(limit)
        return ["unit 1: a → b", "unit 2: [bold]c[/bold] → d"][:limit]

    def to_json(self):
        return {"layer": self.layer, "meta": self.meta, "limits": self.limits}


class _Auditor:
    device = "cpu:7"

    def __init__(self):
        self.requests = []

    def run(self, req):
        self.requests.append(req)
        return _Result(req, req.method)


@pytest.fixture
def fakes(monkeypatch):
    aud, prepared = _Auditor(), []
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal's width
    monkeypatch.setattr(common, "auditor", lambda args: aud)
    monkeypatch.setattr(common, "prepare", lambda *a: prepared.append(a))
    monkeypatch.setattr(nemaudit.report.terminal, "audit_table",
                        lambda r, max_rows: f"TABLE {r.layer} {max_rows}")
    return aud, prepared


def _run(*flags):
    p, _, _ = _parser()
    args = p.parse_args(["audit", "--model", "m.py:f", "--probe", "p", *flags])
    return args, audit.run(args)


def test_run_another_method_prints_its_summary_and_diff(fakes, tmp_path, capsys):
    aud, prepared = fakes
    out = tmp_path / "r.json"
    args, rc = _run("--layer", "l1", "--layer", "l2", "--corruption", "gaussian:std=0.1",
                    "--method", "milan", "--set", "exemplars=5", "--show", "2", "--out",
                    str(out))
    assert rc == 0
    assert [(r.method, r.layer, r.corruption, r.get("exemplars")) for r in aud.requests] == [
        ("milan", "l1", "gaussian:std=0.1", 5), ("milan", "l2", "gaussian:std=0.1", 5)]
    assert prepared == [(args, aud, aud.requests)]
    assert capsys.readouterr().out.splitlines() == [
        "l1 · gaussian:std=0.1: 1/2 unit descriptions manipulated (F1-BERT ≤ 0.500; mean "
        "F1 0.750)",
        "  unit 1: a → b", "  unit 2: [bold]c[/bold] → d",  # as text, not rich markup
        "l2 · gaussian:std=0.1: 1/2 unit descriptions manipulated (F1-BERT ≤ 0.500; mean "
        "F1 0.750)",
        "  unit 1: a → b", "  unit 2: [bold]c[/bold] → d",
        f"wrote {out}"]
    meta = {"model": "m.py:f", "probe_spec": "p", "device": "cpu:7"}
    assert json.loads(out.read_text()) == {"schema": "nemaudit.audit-run/1", "audits": [
        {"layer": "l1", "meta": meta, "limits": [2]}, {"layer": "l2", "meta": meta,
                                                       "limits": [2]}]}


def test_run_network_dissection_prints_its_table_and_takes_eta(fakes, capsys):
    aud, _ = fakes
    _, rc = _run("--layer", "l", "--corruption", "gaussian:std=0.1", "--eta", "0.01",
                 "--iou-threshold", "0.05", "--show", "4", "--units", "1,2")
    assert rc == 0
    (req,) = aud.requests
    assert (req.method, req.get("eta"), req.get("iou_threshold"), req.units) == (
        "netdissect", 0.01, 0.05, (1, 2))
    assert capsys.readouterr().out.splitlines() == ["TABLE l 4"]


@pytest.mark.parametrize("flag", ["--eta", "--iou-threshold"])
def test_network_dissection_flags_with_another_method_are_an_error(fakes, flag):
    with raises_exactly(SpecError,
            "--eta and --iou-threshold are Network Dissection settings; with --method milan "
            "give its own with --set (valid: exemplars, f1_threshold, describer, "
            "exemplar_eta, attack_images, beam_size, lam)"):
        _run("--layer", "l", "--corruption", "c", "--method", "milan", flag, "0.1")
    assert fakes[0].requests == []


def test_a_method_without_settings_says_none(fakes, monkeypatch):
    class Bare:
        fields: dict = {}

    real = nemaudit.audit.methods.get_method
    monkeypatch.setattr(nemaudit.audit.methods, "get_method",
                        lambda name=None: Bare() if name == "bare" else real(name))
    with pytest.raises(SpecError, match=r"with --method bare give its own with --set "
                                        r"\(valid: none\)$"):
        _run("--layer", "l", "--corruption", "c", "--method", "bare", "--eta", "0.1")


def test_summary_lines_are_text_not_rich_markup(fakes, capsys):
    _run("--layer", "[bold]l[/bold]", "--corruption", "c", "--method", "milan", "--show", "0")
    assert capsys.readouterr().out.splitlines() == [
        "[bold]l[/bold] · c: 1/2 unit descriptions manipulated (F1-BERT ≤ 0.500; mean F1 "
        "0.750)"]
