"""What every ``nemaudit`` command shares (``nemaudit.cli.common``), function by function: the
shared flags (names, defaults, help), ``--units`` and ``--set`` parsing, the Auditor the
flags build, the request validation naming the flag, and writing ``--out`` (or keeping the
result elsewhere when that fails)."""

from __future__ import annotations

import argparse
import json

import pytest

import nemaudit.auditor
import nemaudit.files
from nemaudit.auditor import RequestError
from nemaudit.cli import common
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    common.add_model_args(p)
    common.add_cache_args(p)
    return p


def test_shared_flags_defaults():
    assert vars(_parser().parse_args([])) == {
        "model": "nemaudit:conceptnet", "weights": None, "normalize": None, "device": "auto",
        "probe": "synthetic:n=2000,seed=0", "batch_size": 64, "workers": 0, "quiet": False,
        "cache_dir": ".nemaudit-cache", "no_cache": False}
    a = _parser().parse_args(["--weights", "w.pt", "--cache-dir", "c", "--no-cache",
                              "--batch-size", "3", "--quiet", "--device", "cpu"])
    assert (a.weights, a.cache_dir, a.no_cache, a.batch_size, a.quiet, a.device) == (
        "w.pt", "c", True, 3, True, "cpu")


def test_shared_flags_help():
    helps = {a.option_strings[0]: a.help for a in _parser()._actions[1:]}
    assert helps == {
        "--model": "torchvision:NAME, package.module:function, path/file.py:function or "
                   "nemaudit:NAME (default: the bundled nemaudit:conceptnet)",
        "--weights": "local checkpoint (loaded with weights_only=True)",
        "--normalize": "imagenet | none | netdissect (the reference's (255x - mean)/(255*0.224)) "
                       "| MEAN,MEAN,MEAN/STD,STD,STD (default: the model's own; imagenet for "
                       "torchvision models)",
        "--device": "auto | cpu | cuda[:N]",
        "--probe": "synthetic:n=2000,seed=0 | broden:PATH[,split=val][,max=N] | folder:PATH | "
                   "python:module:callable(...)",
        "--batch-size": None,
        "--workers": "DataLoader worker processes decoding the probe ahead of the forward pass "
                     "(default 0: in this process)",
        "--quiet": "no progress bar",
        "--cache-dir": "clean-run cache, shared with pytest --nemaudit (default .nemaudit-cache)",
        "--no-cache": None,
    }


def test_units_arg():
    assert common.units_arg(None) is None and common.units_arg("") is None
    assert common.units_arg("0,3, 7,") == [0, 3, 7]
    with raises_exactly(SpecError,
            "--units '0,x': expected comma-separated unit indices, e.g. 0,3,7"):
        common.units_arg("0,x")


def test_settings_arg():
    assert common.settings_arg([]) == {}
    # the first = splits; keys are normalised, values typed
    assert common.settings_arg(["a=b=c", "Beam-Size=3", "x=true", "eps=0.5"]) == {
        "a": "b=c", "beam_size": 3, "x": True, "eps": 0.5}
    for bad in ("k", "k=", "=v", " = ", "k= "):
        with raises_exactly(SpecError,
                f"--set {bad!r}: expected KEY=VALUE"):
            common.settings_arg(["a=1", bad])


class _Recorder:
    def __init__(self, device, **kw):
        self.device, self.kw = device, kw


def _args(**kw):
    base = {"device": "cpu", "batch_size": 1, "quiet": False, "cache_dir": "cdir",
            "no_cache": False}
    return argparse.Namespace(**{**base, **kw})


def test_auditor_from_the_flags(monkeypatch):
    monkeypatch.setattr(nemaudit.auditor, "Auditor", _Recorder)
    a = common.auditor(_args())  # cache on by default; batch size 1 is allowed
    assert (a.device, a.kw) == ("cpu", {"cache_dir": "cdir", "batch_size": 1, "workers": 0,
                                        "progress": True})
    a = common.auditor(_args(quiet=True, batch_size=7, device="cuda:1", workers=3))
    assert (a.device, a.kw) == ("cuda:1", {"cache_dir": "cdir", "batch_size": 7,
                                           "workers": 3, "progress": False})
    assert common.auditor(_args(no_cache=True)).kw["cache_dir"] is None
    assert common.auditor(_args(), cache=False).kw["cache_dir"] is None
    # a command without the cache flags: no --no-cache means the cache is on
    ns = argparse.Namespace(device="cpu", batch_size=2, quiet=True, cache_dir="d")
    assert common.auditor(ns).kw["cache_dir"] == "d"
    ns = argparse.Namespace(device="cpu", batch_size=2, quiet=True)
    assert common.auditor(ns).kw["cache_dir"] is None
    with pytest.raises(SpecError, match=r"^--batch-size 0: expected an integer >= 1$"):
        common.auditor(_args(batch_size=0))


def test_request_passes_the_shared_flags_and_names_flags_in_errors():
    ns = argparse.Namespace(model="m.py:f", weights="w.pt", normalize="none",
                            probe="synthetic:n=8,seed=0")
    r = common.request(ns, "netdissect", layer="l")
    assert (r.method, r.model, r.weights, r.normalize, r.probe, r.layer) == (
        "netdissect", "m.py:f", "w.pt", "none", "synthetic:n=8,seed=0", "l")
    assert common.request(ns, "milan", layer="l").method == "milan"
    with pytest.raises(SpecError, match=r"^--eta expected a number in \(0\.0, 1\.0\), got -1$"):
        common.request(ns, "netdissect", eta=-1)
    with pytest.raises(SpecError, match=r"^--set bogus= is not a setting of a netdissect audit"):
        common.request(ns, "netdissect", bogus=1)


def test_check_out_and_prepare(monkeypatch):
    seen = []
    monkeypatch.setattr(nemaudit.files, "check_output", lambda *a: seen.append(a))
    common.check_out(argparse.Namespace())
    common.check_out(argparse.Namespace(out=None))
    assert seen == []
    common.check_out(argparse.Namespace(out="r.json"))
    assert seen == [("r.json", "--out")]

    class Fails:
        def __init__(self, field):
            self.field, self.prepared = field, []

        def prepare(self, r):
            self.prepared.append(r)
            if r == "bad":
                raise RequestError(self.field, "no such thing")

    seen.clear()
    ok = Fails("model")
    common.prepare(argparse.Namespace(out="o.json"), ok, ["a", "b"])
    assert ok.prepared == ["a", "b"] and seen == [("o.json", "--out")]
    with pytest.raises(SpecError, match=r"^--model: no such thing$"):
        common.prepare(argparse.Namespace(), Fails("model"), ["a", "bad"])
    with pytest.raises(SpecError, match=r"^--k: no such thing$"):
        common.prepare(argparse.Namespace(), Fails("exemplars"), ["bad"])
    with pytest.raises(SpecError, match=r"^lam2: no such thing$"):  # no flag: the field
        common.prepare(argparse.Namespace(), Fails("lam2"), ["bad"])


class _Console:
    def __init__(self):
        self.printed = []

    def print(self, *a, **kw):
        self.printed.append((a, kw))


def test_write_json(tmp_path, monkeypatch, capsys):
    doc = {"b": [1, 2], "a": "x"}
    out = tmp_path / "r.json"
    console = _Console()
    ns = argparse.Namespace(out=str(out), command="audit", cache_dir=str(tmp_path / "c"))
    assert common.write_json(ns, doc, console) == 0
    assert out.read_text() == json.dumps(doc, indent=1)
    assert console.printed == [((f"wrote {out}",), {"markup": False})]

    def fail(path, text):
        raise OSError("disk full")

    calls = []

    def keep(data, name, folders):
        calls.append((data, name, folders))
        return "/kept/audit.json"

    monkeypatch.setattr(nemaudit.files, "atomic_write_text", fail)
    monkeypatch.setattr(nemaudit.files, "save_elsewhere", keep)
    console = _Console()
    capsys.readouterr()
    assert common.write_json(ns, doc, console) == 1
    assert calls == [(json.dumps(doc, indent=1).encode(), "audit.json",
                      [str(tmp_path / "c"), ".nemaudit-cache"])]
    err = capsys.readouterr()
    assert err.out == "" and err.err == (f"nemaudit: could not write {out} (disk full); the "
                                         "result is saved in /kept/audit.json\n")
    assert console.printed == []
    calls.clear()
    ns = argparse.Namespace(out=str(out), command="dissect")  # no --cache-dir flag
    assert common.write_json(ns, doc, console) == 1
    assert calls[0][1:] == ("dissect.json", [None, ".nemaudit-cache"])
