"""Reports: JSON round trip, self-contained escaped HTML, plots, terminal tables."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re
import sys
import types

import numpy as np
import pytest
from rich.console import Console

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect.pictures import report_payload
from nemaudit.explain.netdissect import DissectConfig
from nemaudit.model.load import NormalizedModel
from nemaudit.report import html as html_report
from nemaudit.report.html_parts import esc
from nemaudit.report.json_report import (
    SCHEMA,
    corruption_text,
    environment,
    git_info,
    load_json,
    write_json,
)
from nemaudit.report.terminal import audit_table, session_summary
from tests.toys import ToyNet, ToyProbe

CFG = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8))
EVIL = "<script>alert('pwned')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def noise_result():
    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(40)
    return audit(model, "layer2", probe, "gaussian:std=0.3,fraction=1.0,seed=3", CFG)


@pytest.fixture(scope="module")
def records(noise_result):
    payload = report_payload(noise_result, max_units=3, k=2)
    targeted = copy.deepcopy(payload)
    for i, row in enumerate(targeted["units"]):
        row["target"] = "disc"
        row["target_hit"] = i % 2 == 0
    targeted["metrics"]["targeted_success_rate"] = 0.5
    m = payload["metrics"]
    return [
        {"nodeid": "tests/test_p.py::test_noise", "name": "test_noise", "outcome": "passed",
         "expectation": "flip_rate <= 0.9", "measured": m["flip_rate"], "bound": 0.9,
         "message": None, "duration": 0.5, "layer": "layer2", "model": "ToyNet",
         "probe": "toy", "corruption": noise_result.corruption, "audit": payload},
        {"nodeid": "tests/test_p.py::test_attack", "name": "test_attack", "outcome": "failed",
         "expectation": "flip_rate <= 0.01", "measured": m["flip_rate"], "bound": 0.01,
         "message": "flip_rate = 0.3 > 0.01\nunit 3: red → <b>disc</b>", "duration": 1.25,
         "layer": "layer2", "model": "ToyNet", "probe": "toy",
         "corruption": {"kind": "pgd", "eps": 4 / 255, "steps": 10, "fraction": 1.0,
                        "shared": False},
         "audit": targeted,
         "sweep": {"x": "eps", "points": [
             {"x": k / 255, "flip_rate": k / 10, "flip_rate_detectors": None if k == 2 else k / 12,
              "layer": "layer2", "series": "pgd"} for k in (2, 4, 6)]}},
        {"nodeid": "tests/test_p.py::test_layers", "name": "test_layers", "outcome": "passed",
         "expectation": None, "measured": None, "bound": None, "message": None,
         "duration": 0.1, "layer": "layer1", "model": "ToyNet", "probe": "toy",
         "corruption": None, "audit": None,
         "sweep": {"x": "layer", "points": [
             {"x": layer, "flip_rate": f, "flip_rate_detectors": f / 2, "layer": layer,
              "series": s} for s in ("gaussian", "pgd")
             for layer, f in (("layer1", 0.1), ("layer2", 0.4))]}},
        {"nodeid": f"tests/test_p.py::test_evil[{EVIL}]", "name": EVIL, "outcome": "error",
         "expectation": "flip_rate <= 0.05", "measured": float("nan"), "bound": 0.05,
         "message": EVIL, "duration": 0.0, "layer": EVIL, "model": "m", "probe": "p",
         "corruption": {"kind": EVIL}, "audit": None},
    ]


SESSION = {"title": "test session", "command": "pytest --nemaudit",
           "environment": {"python": "3.x", "torch": "2.x", "cuda": False, "nemaudit": "0",
                           "git": {"commit": None, "dirty": None}, "timestamp": "now",
                           "hostname": "h"}}


def _png(b64: str) -> bytes:
    raw = base64.b64decode(b64, validate=True)
    assert raw.startswith(PNG_MAGIC)
    return raw


# --------------------------------------------------------------------------- JSON


def test_json_round_trip_schema_and_environment(tmp_path, records):
    extra = dict(records[0], measured=np.float32(0.25), duration=np.float64(0.5))
    path = write_json(tmp_path / "out" / "report.json", [*records, extra], {"command": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left
    doc = load_json(path)
    assert doc["schema"] == SCHEMA == "nemaudit.report/2"
    env = doc["environment"]
    for key in ("python", "platform", "machine", "torch", "cuda", "cuda_device", "nemaudit",
                "git", "timestamp", "hostname"):
        assert key in env
    assert set(env["git"]) >= {"commit", "dirty"}
    assert doc["session"] == {"command": "x"}
    assert doc["summary"]["passed"] == 3 and doc["summary"]["failed"] == 1
    assert doc["summary"]["error"] == 1 and doc["summary"]["ok"] is False
    got = doc["records"]
    assert doc["images"] is False
    assert got[0] == json.loads(json.dumps(_without_pictures(records[0])))
    assert got[1]["audit"]["units"] == records[1]["audit"]["units"]
    assert got[3]["measured"] is None  # NaN is not JSON
    assert got[4]["measured"] == 0.25 and isinstance(got[4]["duration"], float)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))


def _without_pictures(record: dict) -> dict:
    rec = copy.deepcopy(record)
    for ex in (rec.get("audit") or {}).get("exemplars") or []:
        for im in ex["images"]:
            im.pop("clean"), im.pop("corrupted")
    return rec


def test_json_leaves_pictures_out_unless_asked(tmp_path, records):
    shots = [im for ex in records[0]["audit"]["exemplars"] for im in ex["images"]]
    assert shots and all(im["clean"].startswith("iVBOR") for im in shots)
    before = copy.deepcopy(records)
    lean = load_json(write_json(tmp_path / "lean.json", records))
    full = load_json(write_json(tmp_path / "full.json", records, include_images=True))
    assert records == before  # the HTML report still gets its pictures from these
    assert (lean["images"], full["images"]) == (False, True)
    text = (tmp_path / "lean.json").read_text()
    assert "iVBOR" not in text and "base64" not in text
    pictures = sum(len(im[k]) for r in records
                   for ex in (r.get("audit") or {}).get("exemplars", [])
                   for im in ex["images"] for k in ("clean", "corrupted"))
    saved = (tmp_path / "full.json").stat().st_size - (tmp_path / "lean.json").stat().st_size
    assert saved >= pictures > 0
    for got, want in zip(lean["records"][0]["audit"]["exemplars"],
                         records[0]["audit"]["exemplars"]):
        assert set(got) == set(want) and got["unit"] == want["unit"]
        assert len(got["images"]) == len(want["images"])
        for g, w in zip(got["images"], want["images"]):
            assert set(g) == {"index", "clean_max", "corrupted_max", "linf"}
            assert g["index"] == w["index"] and g["linf"] == pytest.approx(w["linf"])
    assert full["records"][0]["audit"]["exemplars"] == json.loads(
        json.dumps(records[0]["audit"]["exemplars"]))
    # MILAN exemplars keep their pictures as {"index", "png", "max"} strips
    milan = {"name": "m", "outcome": "passed", "audit": {"method": "milan", "exemplars": [
        {"unit": 3, "clean": [{"index": 1, "png": shots[0]["clean"], "max": 2.0}],
         "corrupted": [{"index": 4, "png": shots[0]["corrupted"], "max": 1.5}]}]}}
    (ex,) = load_json(write_json(tmp_path / "m.json", [milan]))["records"][0]["audit"][
        "exemplars"]
    assert ex == {"unit": 3, "clean": [{"index": 1, "max": 2.0}],
                  "corrupted": [{"index": 4, "max": 1.5}]}
    # a lean report renders as HTML without broken pictures
    page = html_report.render_html(lean["records"], SESSION)
    assert "data:image/png;base64,\"" not in page and 'src="data:image/png;base64,"' not in page


def test_load_json_reads_version_1(tmp_path):
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"schema": "nemaudit.report/1", "records": []}))
    assert load_json(p)["schema"] == "nemaudit.report/1"


def test_load_json_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "nemaudit.audit/1"}))
    with pytest.raises(ValueError, match="not a nemaudit report"):
        load_json(p)
    p.write_text(json.dumps({"schema": "nemaudit.report/99"}))
    with pytest.raises(ValueError, match="not supported"):
        load_json(p)


def test_git_info_outside_a_repo_and_environment(tmp_path):
    assert git_info(tmp_path) == {"commit": None, "branch": None, "dirty": None}
    env = environment(tmp_path)
    assert env["git"]["commit"] is None and env["python"] and env["nemaudit"]


def test_corruption_text_reads_like_a_spec():
    assert corruption_text({"kind": "pgd", "eps": 4 / 255, "steps": 10, "alpha": None,
                            "targeted": False, "fraction": 1.0, "shared": False}) == \
        "pgd eps=4/255 steps=10"
    assert corruption_text({"kind": "gaussian", "std": 0.2, "fraction": 0.3}) == \
        "gaussian std=0.2 fraction=0.3"
    assert corruption_text(None) == "—"


# --------------------------------------------------------------------------- HTML


def test_html_is_one_self_contained_escaped_file(tmp_path, records):
    path = html_report.write_html(tmp_path / "report.html", records, SESSION)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # only inline resources: data: URIs and in-page anchors
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text, flags=re.I)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), \
        [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert not re.search(r"https?://|@import|url\(", text)
    assert text.count("<script") == 1 and "<link rel=\"stylesheet\"" not in text
    # every property is named, with its anchor
    for i in range(1, len(records) + 1):
        assert f'id="p{i}"' in text and f'href="#p{i}"' in text
    for name in ("test_noise", "test_attack", "test_layers"):
        assert name in text
    # the malicious name, layer, message and corruption are escaped everywhere
    assert EVIL not in text and "<b>disc</b>" not in text
    assert esc(EVIL) in text


def test_html_has_diff_rows_metrics_plots_and_exemplars(records):
    text = html_report.render_html(records, SESSION)
    payload = records[0]["audit"]
    units = payload["units"]
    body = text.split('id="diff-1"', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr") == len(units) + 1  # header + one row per unit
    assert body.count('<tr class="changed') == sum(r["changed"] for r in units)
    for r in units:
        assert f'<td class="num" data-v="{r["unit"]}">{r["unit"]}</td>' in body
    assert 'data-for="diff-1"' in text and "changed only" in text
    # detector-share table, accuracy, targeted success, sweep plots
    for col in ("C", "T", "S", "M", "P", "O", "All"):
        assert f">{col}</th>" in text
    assert "accuracy" in text and "targeted success" in text
    assert "flip rate against ε" in text and "flip rate against layer" in text
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) >= 4
    for b64 in imgs:
        _png(b64)
    # exemplar thumbnails come from the payload, clean beside corrupted (as shown: at most
    # 112 px, WebP when smaller than the payload's PNG)
    from nemaudit.report.html_parts import photo

    shown = [ex for ex in payload["exemplars"] if ex["images"]]
    if shown:
        assert photo(shown[0]["images"][0]["clean"]) in text
        assert photo(shown[0]["images"][0]["corrupted"]) in text


def test_pytest_html_extras(monkeypatch, records):
    monkeypatch.setitem(sys.modules, "pytest_html", None)  # not installed
    assert html_report.pytest_html_extras(records[1]) == []
    fake = types.ModuleType("pytest_html")
    fake.extras = types.SimpleNamespace(html=lambda content: {"format_type": "html",
                                                              "content": content})
    monkeypatch.setitem(sys.modules, "pytest_html", fake)
    (extra,) = html_report.pytest_html_extras(records[1])
    assert extra["format_type"] == "html"
    assert "test_attack" in extra["content"] and "<script" not in extra["content"]
    assert 'class="nemaudit"' in extra["content"] and "<style>" in extra["content"]
    (evil,) = html_report.pytest_html_extras(records[3])
    assert EVIL not in evil["content"]


# --------------------------------------------------------------------------- plots


def test_plots_are_png_base64(tmp_path, records):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nemaudit.report import plots

    for b64 in (plots.sweep_png(records[1]["sweep"], "eps sweep"),
                plots.sweep_png(records[2]["sweep"]),
                plots.sweep_png({"x": "sigma", "points": [
                    {"x": s, "flip_rate": s, "flip_rate_detectors": None, "series": "g"}
                    for s in (0.02, 0.05, 0.1)]}),
                plots.detector_share_png(records[0]["audit"]["metrics"])):
        img = Image.open(io.BytesIO(_png(b64)))
        assert img.format == "PNG" and img.width > 100 and img.height > 100
    out = plots.save_detector_share_png(tmp_path / "r" / "xie.png",
                                        records[0]["audit"]["metrics"])
    assert out.read_bytes().startswith(PNG_MAGIC)
    out = plots.save_sweep_png(tmp_path / "sweep.png", records[2]["sweep"])
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_xie_rows_fall_back_to_full_category_names():
    from nemaudit.report.plots import xie_rows

    rows = xie_rows({"detector_share": {"clean": {"color": 0.5, "all": 0.5},
                                        "corrupted": {"color": 0.25, "all": 0.25}}})
    assert rows["clean"]["C"] == 0.5 and rows["corrupted"]["All"] == 0.25
    assert rows["clean"]["M"] is None


# --------------------------------------------------------------------------- terminal


def _text(renderable, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_session_summary_renders_values(records):
    recs = [*records, dict(records[0], name="[bold]x[/bold]")]
    for width in (80, 200):
        text = _text(session_summary(recs), width)
        for name in ("test_noise", "test_attack", "test_layers", EVIL, "[bold]x[/bold]"):
            assert name in text
        assert ("PASSED" in text and "FAILED" in text and "ERROR" in text) or \
            ("PASS" in text and "FAIL" in text and "ERR " in text)
        assert "pgd eps=4/255 steps=10" in text
        assert "3 passed, 1 failed, 1 error" in text
    wide = _text(session_summary(recs), 200)
    assert f"{records[0]['measured']:.4g} ≤ 0.9" in wide and "1.25 s" in wide
    # the failed property shows the relation that holds, not the one that was expected
    assert f"{records[1]['measured']:.4g} > 0.01" in wide


def test_audit_table_from_result_and_payload(noise_result, records):
    for src in (noise_result, records[0]["audit"]):
        text = _text(audit_table(src, max_rows=50))
        assert "layer2" in text and "gaussian std=0.3" in text
        m = noise_result.metrics
        assert f"{100 * m['flip_rate']:.1f}%" in text
        changed = [r for r in noise_result.rows if r["changed"]]
        assert f"changed units ({len(changed)} of {len(noise_result.rows)})" in text
        for r in changed:
            assert re.search(rf"│\s+{r['unit']} │", text)
            if r["corrupted_label"]:
                assert r["corrupted_label"] in text
    text = _text(audit_table(records[1]["audit"], max_rows=1))
    assert "more changed unit(s)" in text or "changed units (1 of" in text
    assert "targeted success" in text and "50.0%" in text
    assert not math.isnan(noise_result.metrics["flip_rate"])


def test_summary_table_wraps_identifiers_at_joints_and_names_a_shared_model(records):
    one = dict(records[0], expectation="targeted_success_rate >= 0.1", name="test_a[layer4]")
    table = html_report.summary_table([one, dict(one, nodeid="x")])
    assert "targeted_<wbr>success_<wbr>rate &gt;= 0.1" in table  # never inside a number
    assert "test_<wbr>a<wbr>[layer4]" in table
    assert "<caption>model ToyNet</caption>" in table and "<th>model</th>" not in table
    both = html_report.summary_table(records)  # ToyNet and "m": a column again
    assert "<th>model</th>" in both and "<caption>" not in both
