"""The JSON report's helpers value by value: outcome counts and the verdict, number, rate and
budget formats, corruption lines, strict-JSON conversion, picture stripping, the document
and its schema checks, and provenance that never fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nemaudit.report import json_report as jr


def test_summarize_counts_outcomes_and_the_verdict():
    recs = [{"outcome": "passed", "duration": 1.5}, {"outcome": "warned", "duration": None},
            {"outcome": "skipped"}, {"duration": 2.0}, {"outcome": "odd", "duration": 0.5}]
    s = jr.summarize(recs)
    assert s == {"total": 5, "passed": 1, "warned": 1, "failed": 0, "error": 1, "skipped": 1,
                 "odd": 1, "duration": 4.0, "ok": False}
    assert jr.summarize([{"outcome": "passed"}, {"outcome": "warned"}])["ok"] is True
    assert jr.summarize([{"outcome": "failed"}])["ok"] is False
    assert jr.summarize([]) == {"total": 0, "passed": 0, "warned": 0, "failed": 0, "error": 0,
                                "skipped": 0, "duration": 0.0, "ok": True}
    assert jr.OUTCOMES == ("passed", "warned", "failed", "error", "skipped")


@pytest.mark.parametrize("v, digits, text", [
    (None, 4, "—"), (True, 4, "yes"), (False, 4, "no"), (12, 4, "12"), (0.0625, 4, "0.0625"),
    (1 / 3, 4, "0.3333"), (1 / 3, 2, "0.33"), (123456.0, 4, "1.235e+05"),
    (float("inf"), 4, "inf"), (float("nan"), 4, "nan"), ("x", 4, "x")])
def test_fmt_num(v, digits, text):
    assert jr.fmt_num(v, digits) == text


def test_fmt_pct_and_eps():
    assert jr.fmt_pct(None) == "—" and jr.fmt_pct(0.0625) == "6.2%"
    assert jr.fmt_pct(0.0625, 2) == "6.25%" and jr.fmt_pct(1) == "100.0%"
    assert jr.fmt_eps(4 / 255) == "4/255" and jr.fmt_eps(8 / 255) == "8/255"
    assert jr.fmt_eps(0.2) == "0.2" and jr.fmt_eps(0.123456) == "0.1235"
    assert jr.fmt_eps(1.0) == "1" and jr.fmt_eps(0) == "0" and jr.fmt_eps(None) == "—"
    assert jr.fmt_eps(1 / 255) == "1/255" and jr.fmt_eps(0.5) == "0.5"


def test_corruption_text():
    assert jr.corruption_text(None) == "—" and jr.corruption_text({}) == "—"
    c = {"kind": "pgd", "eps": 4 / 255, "steps": 10, "targeted": False, "fraction": 1.0,
         "seed": 3, "shared": False, "max_copies": 64, "alpha": None, "select": "random"}
    assert jr.corruption_text(c) == "pgd eps=4/255 steps=10"
    assert jr.corruption_text({"kind": "gaussian", "std": 0.02, "fraction": 0.5,
                               "select": "first"}) == "gaussian std=0.02 fraction=0.5 select=first"
    assert jr.corruption_text({"kind": "pgd", "targeted": True, "target": "sky"}) == \
        "pgd targeted=yes target=sky"
    assert jr.corruption_text({"std": 0.1}) == "? std=0.1"
    assert jr.parse_spec("pgd:eps=4/255,steps=10") == {"kind": "pgd", "eps": 4 / 255,
                                                       "steps": 10}
    assert jr.parse_spec("gaussian:std=0.02,bad") == {"kind": "gaussian", "std": 0.02}


def test_target_wording():
    assert jr.target_wording({"targeted": False})[0] == "reached the runner-up"
    assert jr.target_wording({"targeted": True}) == (
        "targeted success", "units whose new concept is the attack's target")
    assert jr.target_wording(None)[0] == jr.target_wording({})[0] == "targeted success"


class _HasJson:
    def to_json(self):
        return {"a": float("nan")}


def test_strict_json_conversion():
    out = jr._jsonable({1: float("inf"), "p": Path("x/y"), "s": {3}, "t": (1, 2),
                        "np": np.float32(0.5), "arr": np.array([1, 2]),
                        "tensor": torch.tensor([0.25, float("nan")]), "obj": _HasJson(),
                        "other": object, "ok": [None, True, "s", 2]})
    assert out == {"1": None, "p": "x/y", "s": [3], "t": [1, 2], "np": 0.5, "arr": [1, 2],
                   "tensor": [0.25, None], "obj": {"a": None}, "other": str(object),
                   "ok": [None, True, "s", 2]}
    json.dumps(out, allow_nan=False)


PNG = "iVBORw0KGgo" + "A" * 40


def test_pictures_are_recognised_and_stripped_without_touching_the_input():
    assert jr.is_png_b64(PNG) and jr.is_png_b64("UklGR" + "A" * 40)
    assert jr.is_png_b64("/9j/" + "A" * 40)
    assert not jr.is_png_b64("iVBORw0KGgo") and not jr.is_png_b64(3)
    assert not jr.is_png_b64("x" * 50)
    rec = {"png": PNG, "index": 3, "images": [PNG, {"clean": PNG, "linf": 0.1}, "text"],
           "t": (PNG, 1)}
    assert jr.strip_images(rec) == {"index": 3, "images": [{"linf": 0.1}, "text"], "t": [1]}
    assert rec["png"] == PNG and len(rec["images"]) == 3  # the input is kept


def test_the_document_and_its_schema(tmp_path):
    env = {"python": "3.x", "timestamp": "2026-01-01T00:00:00+00:00"}
    recs = [{"outcome": "passed", "duration": 1.0, "audit": {"exemplars": [{"png": PNG}]},
             "measured": float("nan")}]
    doc = jr.build_report(recs, {"environment": env, "title": "t"})
    assert doc == {"schema": "nemaudit.report/2", "created": "2026-01-01T00:00:00+00:00",
                   "environment": env, "session": {"title": "t"}, "images": False,
                   "summary": {**jr.summarize(recs)},
                   "records": [{"outcome": "passed", "duration": 1.0,
                                "audit": {"exemplars": [{}]}, "measured": None}]}
    with_images = jr.build_report(recs, {"environment": env}, include_images=True)
    assert with_images["images"] is True
    assert with_images["records"][0]["audit"]["exemplars"] == [{"png": PNG}]
    path = jr.write_json(tmp_path / "r.json", recs, {"environment": env})
    assert jr.load_json(path) == jr.build_report(recs, {"environment": env})
    assert path.read_text().endswith("}\n")
    fresh = jr.build_report([], {})
    assert fresh["environment"]["nemaudit"] and fresh["created"]


@pytest.mark.parametrize("doc, text", [
    ({"schema": "other/1"}, "not a nemaudit report (schema 'other/1', expected "
                            "'nemaudit.report/2')"),
    ([1, 2], "not a nemaudit report (schema None"),
    ({"schema": "nemaudit.report/9"}, "report schema 'nemaudit.report/9' is not supported "
                                      "(expected 'nemaudit.report/2')"),
])
def test_foreign_reports_are_refused(tmp_path, doc, text):
    p = tmp_path / "x.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        jr.load_json(p)
    assert str(e.value).startswith(f"{p}: {text}")


def test_an_old_report_is_read(tmp_path):
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"schema": "nemaudit.report/1", "records": []}))
    assert jr.load_json(p) == {"schema": "nemaudit.report/1", "records": []}


def test_provenance_never_fails(tmp_path, monkeypatch):
    assert jr.git_info(tmp_path) == {"commit": None, "branch": None, "dirty": None}
    repo = Path(__file__).resolve().parents[1]
    info = jr.git_info(repo)
    if info["commit"] is not None:  # a checkout (CI clones one)
        assert len(info["commit"]) == 40 and isinstance(info["dirty"], bool)
    import subprocess

    def broken(*a, **k):
        raise OSError("no git")

    monkeypatch.setattr(subprocess, "run", broken)
    assert jr.git_info(repo) == {"commit": None, "branch": None, "dirty": None}
    env = jr.environment(tmp_path)
    assert env["git"] == {"commit": None, "branch": None, "dirty": None}
    assert set(env) >= {"python", "platform", "cpus", "torch", "cuda", "nemaudit", "argv",
                        "timestamp", "hostname"}
    assert env["cuda"] is torch.cuda.is_available()
    assert math.isfinite(env["cpus"])
