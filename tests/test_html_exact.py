"""Exact, fast checks of the report's HTML helpers (:mod:`nemaudit.report.html_parts`) and of
the fragments :mod:`nemaudit.report.html` renders from small hand-built records: every string
field escaped, numbers formatted as documented, pictures embedded only when there are any.
Expected values are worked out by hand (or, for pictures, with Pillow directly)."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import sys
import types
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import pytest
from markupsafe import Markup

from nemaudit.audit.methods import Method
from nemaudit.report import html as H
from nemaudit.report import html_parts
from nemaudit.report.html_parts import asset, esc, jinja_env, mime_of, photo, picture, render, wbr

EVIL = "<b class=\"x\" title='y'>&amp;</b>"
EVIL_ESC = "&lt;b class=&#34;x&#34; title=&#39;y&#39;&gt;&amp;amp;&lt;/b&gt;"

# --------------------------------------------------------------------------- html_parts


def test_public_names():
    assert sorted(html_parts.__all__) == ["asset", "esc", "jinja_env", "mime_of", "photo",
                                          "picture", "render", "wbr"]
    assert all(callable(getattr(html_parts, n)) for n in html_parts.__all__)


def test_environment_escapes_every_value_and_prints_none_as_nothing():
    env = jinja_env()
    assert env is jinja_env()  # one per process
    assert env.from_string("[{{ v }}]").render(v=EVIL) == f"[{EVIL_ESC}]"
    assert env.from_string("[{{ v }}]").render(v=Markup("<i>")) == "[<i>]"
    assert env.from_string("[{{ v }}]").render(v=None) == "[]"
    assert env.from_string("[{{ v }}|{{ w }}]").render(v=0, w=False) == "[0|False]"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ v.missing }}").render(v={})
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    assert env.auto_reload is False


def test_environment_trims_block_lines():
    env = jinja_env()
    assert env.from_string("{% if 1 %}\na{% endif %}\nb").render() == "ab"
    assert env.from_string("x\n   {% if 1 %}a{% endif %}").render() == "x\na"


def test_environment_filters_and_globals():
    env = jinja_env()
    assert env.from_string("{{ v|wbr }}").render(v="a_b") == "a_<wbr>b"
    assert env.from_string("{{ v|photo }}").render(v="<x>") == "&lt;x&gt;"
    assert env.from_string("{{ mime_of(v) }}").render(v="/9j/abc") == "jpeg"
    assert env.from_string("{{ OUTCOMES|join(',') }}").render() == \
        "passed,warned,failed,error,skipped"


def test_render_reads_the_package_templates_and_escapes_its_context():
    assert render("extras.html.j2", style="a{b:c}", body="<p>") == \
        '<div class="nemaudit"><style>a{b:c}</style>&lt;p&gt;</div>'
    assert render("extras.html.j2", style=Markup("</x>"), body=Markup("<p>")) == \
        '<div class="nemaudit"><style></x></style><p></div>'
    with pytest.raises(jinja2.TemplateNotFound):
        render("no-such.html.j2")


def test_esc():
    assert esc(EVIL) == EVIL_ESC
    assert esc(None) == "" and esc(0) == "0" and esc(1.5) == "1.5" and esc(False) == "False"
    assert type(esc("<")) is str


def test_asset_is_the_file_text():
    root = Path(html_parts.__file__).parent / "templates"
    for name in ("report.css", "report.js", "property.html.j2"):
        assert asset(name) == (root / name).read_text(encoding="utf-8")
    assert asset("report.css").startswith("/* nemaudit report")


@pytest.mark.parametrize(("text", "out"), [
    ("flip_rate_detectors", "flip_<wbr>rate_<wbr>detectors"),
    ("test_noise[0.01]", "test_<wbr>noise<wbr>[0.01]"),
    ("a/b.c", "a/<wbr>b.<wbr>c"),
    ("v1.5", "v1.5"),
    ("a.", "a.<wbr>"),
    ("<a_b>", "&lt;a_<wbr>b&gt;"),
    ("&", "&amp;"),
    ('"[', "&#34;<wbr>["),
    (None, ""),
    (3, "3"),
    ("plain", "plain"),
])
def test_wbr(text, out):
    got = wbr(text)
    assert isinstance(got, Markup) and str(got) == out


def test_mime_of():
    assert mime_of("UklGRabc") == "webp"
    assert mime_of("/9j/abc") == "jpeg"
    assert mime_of("iVBORw0KGgoabc") == "png"
    assert mime_of("other") == "png" and mime_of(None) == "png" and mime_of("") == "png"
    assert mime_of("xUklGR") == "png" and mime_of("x/9j/") == "png"


def test_picture():
    assert picture(lambda a, b: a + b, "x", "y") == "xy"
    assert picture(lambda: "z") == "z"

    def missing(*_):
        raise ImportError("no matplotlib")

    assert picture(missing, 1) is None

    def broken(*_):
        raise ValueError("bad")

    with pytest.raises(ValueError):
        picture(broken)


# pictures: built with Pillow here, the expected WebP made with Pillow directly

def _png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _webp(img, px: int = 112) -> str:
    from PIL import Image

    img = img.convert("RGB")
    if max(img.size) > px:
        img.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=85, method=6, use_sharp_yuv=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _size(b64: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return im.size


def _noise(mode: str, size: tuple[int, int], seed: int):
    from PIL import Image

    rng = random.Random(seed)
    if mode == "1":  # black/white noise: its PNG is smaller than any lossy WebP of it
        data = bytes(rng.choice((0, 255)) for _ in range(size[0] * size[1]))
        return Image.frombytes("L", size, data).convert("1")
    return Image.frombytes(mode, size, bytes(rng.randrange(256) for _ in
                                             range(size[0] * size[1] * len(mode))))


def test_photo_shrinks_a_large_png_to_webp():
    pytest.importorskip("PIL")
    assert html_parts.PHOTO_PX == 112 and html_parts.PHOTO_QUALITY == 85
    img = _noise("RGB", (200, 100), 1)
    out = photo(_png(img))
    assert out.startswith("UklGR") and _size(out) == (112, 56)
    assert out == _webp(img)
    # a smaller size asked for (the filter's argument may come as text)
    assert _size(photo(_png(img), 50)) == (50, 25)
    assert _size(photo(_png(img), "56")) == (56, 28)
    # with an alpha channel: still RGB WebP (no alpha kept)
    rgba = _noise("RGBA", (120, 60), 2)
    out = photo(_png(rgba))
    assert out == _webp(rgba) and _size(out) == (112, 56)


def test_photo_resized_is_kept_even_when_larger():
    pytest.importorskip("PIL")
    img = _noise("1", (200, 100), 3)
    png = _png(img)
    out = photo(png)
    assert out.startswith("UklGR") and len(out) > len(png) and _size(out) == (112, 56)
    assert out == _webp(img)


def test_photo_small_png_kept_unless_webp_is_smaller():
    pytest.importorskip("PIL")
    # not larger than the size shown, WebP larger: the PNG as it came
    for size in ((112, 112), (16, 16), (112, 3)):
        png = _png(_noise("1", size, 4))
        assert photo(png) == png
    # not larger, WebP smaller: the WebP, same size
    img = _noise("RGB", (112, 40), 5)
    out = photo(_png(img))
    assert out == _webp(img) and _size(out) == (112, 40) and len(out) < len(_png(img))
    # one pixel larger than shown: resized
    out = photo(_png(_noise("1", (113, 20), 6)))
    assert out.startswith("UklGR") and _size(out) == (112, 20)


def test_photo_leaves_what_is_no_decodable_png(monkeypatch):
    pytest.importorskip("PIL")
    png = _png(_noise("RGB", (200, 100), 7))
    # base64 that is not strictly base64 (a line break): shown as it came
    broken = png[:40] + "\n" + png[40:]
    assert photo(broken) == broken
    assert photo("iVBORw0KGgoAAAA") == "iVBORw0KGgoAAAA"  # the signature, then garbage
    assert photo("<script>") == "<script>"
    assert photo(None) is None and photo(3) == 3 and photo(["x"]) == ["x"]
    webp = _webp(_noise("RGB", (20, 20), 8))
    assert photo(webp) == webp  # already a WebP: left as it is
    # no Pillow: the picture as it came
    png2 = _png(_noise("RGB", (150, 20), 9))
    monkeypatch.setitem(sys.modules, "PIL", types.ModuleType("PIL"))  # without Image
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert photo(png2) == png2


# --------------------------------------------------------------------------- html

FAKE_PNG = "iVBORw0KGgoFAKE"


class Plain(Method):
    """A method with no headline metric (its section: fixed markup)."""
    name = "plain"
    title = "Plain"
    record_key = "plain"
    metrics: dict = {}

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [("plain n", payload.get("n"))]

    def section(self, payload, index, interactive, diff_limit=None) -> str:
        return "<p>plain</p>"


class Maps(Method):
    name = "maps"
    title = "Maps"
    record_key = "maps"
    headline = "moved_rate"
    headline_label = "moved"
    metrics: dict = {}

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [("pixels", payload.get("pixels")), ("on", True), ("none", None)]

    def section(self, payload, index, interactive, diff_limit=None) -> str:
        return (f'<div class="maps" data-i="{index}" data-int="{interactive}" '
                f'data-lim="{diff_limit}">{esc(payload.get("note"))}</div>')


@pytest.fixture
def fake(monkeypatch):
    """The report sees only the two fake methods (Plain first); no plots drawn."""
    ms = [Plain(), Maps()]
    monkeypatch.setattr(H, "record_payloads", lambda r: [
        (m, r[m.record_key]) for m in ms if isinstance(r.get(m.record_key), Mapping)])
    monkeypatch.setattr(H, "sweep_png", lambda sweep, title: FAKE_PNG)
    monkeypatch.setattr(H, "environment", lambda: {"python": "9.9"})
    return ms


def test_payloads_scalar_outcome(fake):
    r = {"plain": {}, "maps": {"x": 1}, "other": {"y": 2}}
    assert [(m.name, p) for m, p in H._payloads(r)] == [("maps", {"x": 1})]
    assert H._payloads({}) == []
    assert H._scalar("k", {"a": [1, "<"]}) == ("k", '{"a": [1, "<"]}', True)
    assert H._scalar("k", [1, 2]) == ("k", "[1, 2]", True)
    assert H._scalar("k", (1,)) == ("k", "[1]", True)
    assert H._scalar("k", {"p": Path("/x")}) == ("k", '{"p": "/x"}', True)
    assert H._scalar("k", 0.123456) == ("k", "0.1235", False)
    assert H._scalar("k", None) == ("k", "—", False)
    assert H._scalar("k", "<s>") == ("k", "<s>", False)
    assert [H._outcome({"outcome": o}) for o in ("passed", "warned", "failed", "error",
                                                  "skipped")] == \
        ["passed", "warned", "failed", "error", "skipped"]
    assert H._outcome({"outcome": "bogus"}) == "error" and H._outcome({}) == "error"


def test_env_line():
    env = {"python": "3.11", "torch": "2.1", "cuda": True, "cuda_device": "H100",
           "nemaudit": "0.3", "git": {"commit": "0123456789abcdef", "dirty": True},
           "hostname": "box", "timestamp": "2026-01-01T00:00"}
    assert H._env_line(env) == ("Python 3.11 · torch 2.1 · CUDA: H100 · nemaudit 0.3 · "
                                "git 0123456789 (dirty) · host box · 2026-01-01T00:00")
    assert H._env_line({}) == "Python ? · CPU (no CUDA) · nemaudit ?"
    assert H._env_line({"cuda": True, "git": {"commit": "abc", "dirty": False}}) == \
        "Python ? · CUDA: yes · nemaudit ? · git abc"
    assert H._env_line({"cuda": False, "cuda_device": "X", "git": None, "torch": ""}) == \
        "Python ? · CPU (no CUDA) · nemaudit ?"


def _outcomes(*pairs):
    return [{"outcome": o, "duration": d} for o, d in pairs]


def test_header_view():
    records = _outcomes(("passed", 1.0), ("warned", 0.25), ("failed", 0.5), ("error", None),
                        ("skipped", 0.0))
    env = {"python": "3", "list": [1, 2], "git": {"commit": "abc", "dirty": False},
           "argv": ["run", 1]}
    h = H._header(records, {"title": "T", "seed": 3, "cfg": {"a": 1}}, env)
    assert h == {"title": "T", "env_line": "Python 3 · CPU (no CUDA) · nemaudit ? · git abc",
                 "ok": False, "passed": 2, "warned": 1, "bad": 2, "decided": 4,
                 "counts": [("passed", 1), ("warned", 1), ("failed", 1), ("error", 1),
                            ("skipped", 1)],
                 "duration": "1.8 s",
                 "env_items": [("python", "3", False), ("list", "[1, 2]", True),
                               ("git commit", "abc", False), ("git dirty", "no", False),
                               ("argv", "run 1", True)],
                 "session_items": [("seed", "3", False), ("cfg", '{"a": 1}', True)]}
    h = H._header(_outcomes(("passed", 2.0)), {}, {})
    assert h["title"] == "nemaudit report" and h["ok"] is True and h["env_items"] == []
    assert h["session_items"] == [] and h["duration"] == "2.0 s" and h["bad"] == 0
    assert h["passed"] == 1 and h["decided"] == 1
    assert H._header([], {"title": ""}, {"argv": []})["title"] == "nemaudit report"
    assert H._header([], {}, {"argv": []})["env_items"] == []


def test_measured_cell_and_headline(fake):
    maps = {"metrics": {"moved_rate": 0.42}}
    r = {"measured": None, "expectation": None, "plain": {"n": 1}, "maps": maps}
    method, v = H._headline(r)
    assert method.name == "maps" and v == 0.42
    assert H._measured_cell(r) == {
        "text": "moved 42.0%", "title": "moved rate over all units (no expectation was recorded)"}
    assert H._measured_cell(dict(r, measured=0.5)) == {"text": "0.5", "title": ""}
    assert H._measured_cell(dict(r, expectation="x <= 1")) == {"text": "—", "title": ""}
    assert H._measured_cell(dict(r, maps={"metrics": {}})) == {"text": "—", "title": ""}
    assert H._measured_cell(dict(r, maps={"note": 1})) == {"text": "—", "title": ""}
    assert H._headline({"plain": {"n": 1}}) is None
    assert H._measured_cell({"plain": {"n": 1}}) == {"text": "—", "title": ""}
    assert H._measured_cell(dict(r, maps={"metrics": {"moved_rate": 0.0}}))["text"] == \
        "moved 0.0%"
    assert H._measured({"measured": 0.25, "bound": 1}) == ("0.25", "1")
    assert H._measured({}) == ("—", "—")


ROW = ('<tr class="{cls}"><td><span class="badge {cls}">{outcome}</span></td><td class="name">'
       '<a href="#p{i}">{name}</a></td><td><code>{exp}</code></td>\n<td class="num">{measured}'
       '</td><td class="num">{bound}</td><td>{layer}</td><td class="mono">{corr}</td>{model}'
       '<td class="num">{dur}</td></tr>')
HEAD = ('<div class="scroll-x"><table class="summary">\n{caption}<thead><tr><th>outcome</th>'
        '<th>property</th><th>expectation</th><th class="num">measured</th><th class="num">bound'
        '</th><th>layer</th><th>corruption</th>{model}<th class="num">time</th></tr></thead>\n'
        '<tbody>\n{rows}</tbody></table></div>')


def test_summary_table_exact(fake):
    r1 = {"nodeid": "t.py::a", "name": "a_b", "outcome": "passed", "model": "M<1>",
          "expectation": "flip_rate <= 0.5", "measured": 0.25, "bound": 0.5, "layer": "l<4>",
          "corruption": {"kind": "noise", "std": 0.1}, "duration": 2.5}
    row1 = ROW.format(cls="passed", outcome="passed", i=1, name="a_<wbr>b",
                      exp="flip_<wbr>rate &lt;= 0.5", measured="0.25", bound="0.5",
                      layer="l&lt;4&gt;", corr="noise std=0.1", model="{m1}", dur="2.50 s")
    assert H.summary_table([r1]) == HEAD.format(
        caption="<caption>model M&lt;1&gt;</caption>", model="",
        rows=row1.format(m1="") + "\n")
    r2 = {"nodeid": "t.py::<b>", "outcome": "bogus", "duration": None}
    row2 = ROW.format(cls="error", outcome="bogus", i=2, name="t.<wbr>py::&lt;b&gt;", exp="—",
                      measured="—", bound="—", layer="—", corr="—", model="<td>—</td>",
                      dur="0.00 s")
    assert H.summary_table([r1, r2]) == HEAD.format(
        caption="", model="<th>model</th>",
        rows=row1.format(m1="<td>M&lt;1&gt;</td>") + "\n" + row2 + "\n")
    # no model anywhere: no caption; the same model twice: one caption
    assert "<caption>" not in H.summary_table([r2])
    assert H.summary_table([r1, dict(r1, name="c")]).count("<caption>model M&lt;1&gt;") == 1
    assert H.summary_table([]) == HEAD.format(caption="", model="", rows="")
    # an outcome-less record: the error badge, and a headline when nothing was expected
    r3 = {"name": "n", "maps": {"metrics": {"moved_rate": 0.5}}}
    assert ('<td class="num"><span class="muted" title="moved rate over all units (no '
            'expectation was recorded)">moved 50.0%</span></td>') in H.summary_table([r3])
    assert '<span class="badge error">error</span>' in H.summary_table([r3])


def test_interval_text():
    iv = {"level": 0.95, "lo": 0.01234, "hi": 0.16249, "k": 1, "n": 32}
    assert H._interval_text(iv) == "95% interval over units: [0.0123, 0.162] (1 of 32)"
    assert H._interval_text({"lo": 0, "hi": 1}) == \
        "0% interval over units: [0, 1] (None of None)"
    assert H._interval_text({"lo": None, "hi": 1}) == ""
    assert H._interval_text({"lo": 0.1, "hi": None}) == ""
    assert H._interval_text(None) == "" and H._interval_text([0, 1]) == ""


SWEEP = {"x": "sigma", "points": [
    {"x": 0.1, "flip_rate": 0.25, "flip_rate_detectors": 0.125, "layer": "l<4>",
     "series": "g<1>", "corruption": "noise:std=0.1"},
    {"x": 0.2, "flip_rate": 0.5, "flip_rate_detectors": None, "label": "L",
     "corruption": {"kind": "pgd", "eps": 4 / 255}},
    {"x": 0.3, "flip_rate": 0.0, "corruption": "plain<"},
    {"x": 0.4, "corruption": None}]}
SWEEP_ROWS = [
    {"label": "g<1>", "layer": "l<4>", "x": "0.1", "flip": "25.0%", "detectors": "12.5%",
     "corruption": "noise std=0.1", "refs": []},
    {"label": "L", "layer": "", "x": "0.2", "flip": "50.0%", "detectors": "—",
     "corruption": "pgd eps=4/255", "refs": []},
    {"label": "", "layer": "", "x": "0.3", "flip": "0.0%", "detectors": "—",
     "corruption": "plain<", "refs": []},
    {"label": "", "layer": "", "x": "0.4", "flip": "—", "detectors": "—", "corruption": "",
     "refs": []}]


def test_sweep_table_view():
    assert H._sweep_table(SWEEP) == {"links": False, "n": 4, "rows": SWEEP_ROWS,
                                     "has_x": True, "x_label": "noise σ"}
    linked = {"x": "eps", "points": [
        {"x": 4 / 255, "series": "s", "records": [[1, "a"], ["2", "b"]], "record": 9},
        {"x": 8 / 255, "series": "s", "record": 3, "name": "c"},
        {"x": 0.5, "series": "s", "name": "d"}]}
    t = H._sweep_table(linked, links=True)
    assert [r["refs"] for r in t["rows"]] == [[(1, "a"), (2, "b")], [(3, "c")], []]
    assert [r["x"] for r in t["rows"]] == ["4/255", "8/255", "0.5"]
    assert t["links"] is True and t["x_label"] == "ε (L∞ budget)" and t["n"] == 3
    assert [r["refs"] for r in H._sweep_table(linked)["rows"]] == [[], [], []]
    one = H._sweep_table({"x": "foo", "points": [{"x": 1}]})
    assert one["has_x"] is False and one["x_label"] == "foo" and one["n"] == 1
    assert H._sweep_table({"points": []}) == {"links": False, "n": 0, "rows": [],
                                              "has_x": False, "x_label": "x"}


def test_fmt_x_and_heading():
    assert H._fmt_x("eps", 4 / 255) == "4/255" and H._fmt_x("linf", 4 / 255) == "4/255"
    assert H._fmt_x("std", 4 / 255) == "0.01569" and H._fmt_x("layer", "l4") == "l4"
    assert H._fmt_x("eps", None) == "—"
    assert H.sweep_heading(SWEEP) == "flip rate against noise σ"
    assert H.sweep_heading({"x": "foo", "points": [{"x": 1}, {"x": 2}]}) == \
        "flip rate against foo"
    assert H.sweep_heading({"points": [{"x": 1}, {"x": 2}]}) == "flip rate against x"
    assert H.sweep_heading({"x": "std", "points": [{"x": 1}, {"x": 1}]}) == \
        "flip rate by corruption"


SWEEP_HTML = """<h3>flip rate against noise σ</h3>
<div class="chart"><img class="plot" alt="flip rate against noise σ for n&lt;m&gt;" \
src="data:image/png;base64,iVBORw0KGgoFAKE"></div>
<details><summary>data (4 points)</summary><div class="scroll-x"><table class="compact">
<thead><tr><th>series</th><th>layer</th><th class="num">noise σ</th><th class="num">flip rate\
</th><th class="num">detectors</th><th>corruption</th></tr></thead>
<tbody>
<tr><td>g&lt;1&gt;</td><td>l&lt;4&gt;</td><td class="num">0.1</td><td class="num">25.0%</td>\
<td class="num">12.5%</td><td class="mono">noise std=0.1</td></tr>
<tr><td>L</td><td></td><td class="num">0.2</td><td class="num">50.0%</td><td class="num">—\
</td><td class="mono">pgd eps=4/255</td></tr>
<tr><td></td><td></td><td class="num">0.3</td><td class="num">0.0%</td><td class="num">—</td>\
<td class="mono">plain&lt;</td></tr>
<tr><td></td><td></td><td class="num">0.4</td><td class="num">—</td><td class="num">—</td>\
<td class="mono"></td></tr>
</tbody></table></div></details>"""


def test_sweep_html_exact(fake, monkeypatch):
    seen = []
    monkeypatch.setattr(H, "sweep_png", lambda sweep, title: seen.append(title) or FAKE_PNG)
    assert H._sweep_html(SWEEP, "n<m>") == SWEEP_HTML
    assert seen == [None]
    assert H._sweep_html({"x": "std", "points": []}, "n") == ""
    assert H._sweep_html({"x": "std"}, "n") == ""


def test_sweep_html_notes_what_the_bars_share(fake, monkeypatch):
    refined = {"x": "layer", "points": [{"x": None, "label": "a"}, {"x": None, "label": "b"}],
               "same": {"layer": "l<4>", "linf": 4 / 255, "std": 0.1, "fraction": 0.5,
                        "seed": 3}}
    monkeypatch.setattr(H, "refine_sweep", lambda sweep: refined)
    out = H._sweep_html({"x": "whatever", "points": [{}]}, "n")
    assert out.startswith(
        "<h3>flip rate by corruption</h3>\n<p class=\"muted\">every audit here: l&lt;4&gt; · "
        "L∞ budget ε = 4/255 · noise σ = 0.1 · 50% of the probe poisoned · seed 3</p>"
        '<div class="chart"><img class="plot" alt="flip rate by corruption for n" ')
    assert '<th class="num">layer</th>' not in out  # no x column for bars
    refined["same"] = {"fraction": 0.125}
    assert "every audit here: 12% of the probe poisoned</p>" in \
        H._sweep_html({"points": [{}]}, "n")
    refined["same"] = {}
    assert "every audit here" not in H._sweep_html({"points": [{}]}, "n")


def test_sweep_html_without_matplotlib(fake, monkeypatch):
    def missing(*_):
        raise ImportError

    monkeypatch.setattr(H, "sweep_png", missing)
    out = H._sweep_html(SWEEP, "n")
    assert '<div class="chart"><p class="muted">plots need matplotlib: pip install '\
        '"nemaudit[report]"</p></div>' in out.replace("&#34;", '"')
    assert "<img" not in out


OVERVIEW = """<h3>overview <span class="muted">flip rate across test items; solid: all units, \
dashed: clean detectors</span></h3>
<div class="overview">
<div class="ov"><div class="ov-title"><b>flip rate against layer</b> <span class="muted">M&lt; \
on P · 3 test items</span></div>
<img class="plot" alt="flip rate against layer, M&lt; on P" \
src="data:image/png;base64,iVBORw0KGgoFAKE">
<details><summary>data (2 points)</summary><div class="scroll-x"><table class="compact">
<thead><tr><th>series</th><th class="num">layer</th><th class="num">flip rate</th>\
<th class="num">detectors</th><th>test items</th></tr></thead>
<tbody>
<tr><td>s</td><td class="num">l1</td><td class="num">50.0%</td><td class="num">25.0%</td><td>\
<a href="#p1">a</a><br><a href="#p2">&lt;b&gt;</a></td></tr>
<tr><td>s</td><td class="num">l2</td><td class="num">25.0%</td><td class="num">—</td><td>\
<a href="#p3">c</a></td></tr>
</tbody></table></div></details></div>
<div class="ov"><div class="ov-title"><b>flip rate against noise σ</b> <span class="muted">M on \
P (milan) · 1 test items</span></div>
<img class="plot" alt="flip rate against noise σ, M on P (milan)" \
src="data:image/png;base64,iVBORw0KGgoFAKE">
<details><summary>data (2 points)</summary><div class="scroll-x"><table class="compact">
<thead><tr><th>series</th><th class="num">noise σ</th><th class="num">flip rate</th>\
<th class="num">detectors</th><th>test items</th></tr></thead>
<tbody>
<tr><td>t</td><td class="num">0.1</td><td class="num">10.0%</td><td class="num">—</td><td>\
<a href="#p1">a</a></td></tr>
<tr><td>t</td><td class="num">0.2</td><td class="num">20.0%</td><td class="num">—</td><td>\
<a href="#p1">a</a></td></tr>
</tbody></table></div></details></div>
</div>"""


def _sweeps():
    return [{"x": "layer", "model": "M<", "probe": "P", "method": "netdissect", "points": [
                {"x": "l1", "flip_rate": 0.5, "flip_rate_detectors": 0.25, "series": "s",
                 "records": [[1, "a"], [2, "<b>"]]},
                {"x": "l2", "flip_rate": 0.25, "flip_rate_detectors": None, "series": "s",
                 "record": 3, "name": "c"}]},
            {"x": "std", "model": "M", "probe": "P", "method": "milan", "points": [
                {"x": 0.1, "flip_rate": 0.1, "series": "t", "record": 1, "name": "a"},
                {"x": 0.2, "flip_rate": 0.2, "series": "t", "record": 1, "name": "a"}]}]


def test_overview_exact(fake, monkeypatch):
    given = []
    monkeypatch.setattr(H, "session_sweeps", lambda records: given.append(records) or _sweeps())
    assert H.overview_html(["r"]) == OVERVIEW
    assert given == [["r"]]
    one = _sweeps()[1]
    one["method"] = None
    one["points"][1].pop("record")
    monkeypatch.setattr(H, "session_sweeps", lambda records: [one])
    out = H.overview_html([])
    # a point without records counts once (as "no record")
    assert '<span class="muted">M on P · 2 test items</span>' in out
    assert 'alt="flip rate against noise σ, M on P"' in out
    monkeypatch.setattr(H, "session_sweeps", lambda records: [])
    assert H.overview_html([]) == ""


RICH = {"nodeid": "t.py::a<1>", "name": "a<1>", "outcome": "warned",
        "expectation": "x <= 0.5 & y", "measured": 0.125, "bound": 0.5, "duration": 2.5,
        "layer": "l<4>", "model": 'm"', "probe": "p'",
        "corruption": {"kind": "noise", "std": 0.1}, "message": "boom <x>",
        "interval": {"level": 0.95, "lo": 0.1, "hi": 0.2, "k": 3, "n": 8},
        "expectations": [{"expectation": "a<1", "measured": 0.25, "bound": 1, "ok": True},
                         {"expectation": "b", "measured": None, "bound": 2.0, "ok": False,
                          "interval": {"level": 0.9, "lo": 0, "hi": 1, "k": 0, "n": 4}},
                         {"expectation": "c", "status": "warned"}],
        "plain": {"n": 2}, "maps": {"pixels": 0.125, "note": "<n&>"}}
RICH_HTML = """<section class="prop warned" id="p7"><div class="head">
<h2><span class="badge warned">warned</span> a&lt;1&gt;</h2>
<div class="nodeid mono">t.py::a&lt;1&gt;</div>
<div class="expect warned"><code>x &lt;= 0.5 &amp; y</code> — measured <span class="measured">\
0.125</span> vs bound 0.5 <span class="muted">· 95% interval over units: [0.1, 0.2] (3 of 8)\
</span></div>
<table class="compact expectations"><thead><tr><th>expectation</th><th class="num">measured</th>\
<th class="num">bound</th><th>verdict</th></tr></thead><tbody>
<tr class="passed"><td><code>a&lt;1</code></td><td class="num">0.25</td><td class="num">1</td>\
<td><span class="badge passed">passed</span></td></tr>
<tr class="failed"><td><code>b</code> <span class="muted">· 90% interval over units: [0, 1] \
(0 of 4)</span></td><td class="num">—</td><td class="num">2</td><td><span class="badge failed">\
failed</span></td></tr>
<tr class="warned"><td><code>c</code></td><td class="num">—</td><td class="num">—</td><td>\
<span class="badge warned">warned</span></td></tr>
</tbody></table>
<pre class="message">boom &lt;x&gt;</pre>
</div><div class="body">
<dl class="kv facts"><dt>model</dt><dd>m&#34;</dd><dt>probe</dt><dd>p&#39;</dd><dt>layer</dt>\
<dd>l&lt;4&gt;</dd><dt>corruption</dt><dd><code>noise std=0.1</code></dd><dt>time</dt>\
<dd>2.50 s</dd><dt>plain n</dt><dd>2</dd><dt>pixels</dt><dd>0.125</dd><dt>on</dt><dd>yes</dd>\
<dt>none</dt><dd>—</dd></dl>

<p>plain</p>
<div class="maps" data-i="7" data-int="False" data-lim="3">&lt;n&amp;&gt;</div>
</div></section>"""
EMPTY_HTML = """<section class="prop error" id="p2"><div class="head">
<h2><span class="badge error">error</span> property 2</h2>
<div class="nodeid mono"></div>
</div><div class="body">
<dl class="kv facts"><dt>model</dt><dd>—</dd><dt>probe</dt><dd>—</dd><dt>layer</dt><dd>—</dd>\
<dt>corruption</dt><dd><code>—</code></dd><dt>time</dt><dd>0.00 s</dd></dl>

</div></section>"""


def test_property_fragment_exact(fake):
    assert H.property_fragment(RICH, 7, interactive=False, diff_limit=3) == RICH_HTML
    assert H.property_fragment({}, 2) == EMPTY_HTML
    # defaults: index 1, interactive, no cap
    assert '<div class="maps" data-i="1" data-int="True" data-lim="None">' in \
        H.property_fragment(RICH)
    # name falls back to the node id; one expectation: no table of them
    one = dict(RICH, name=None, expectations=RICH["expectations"][:1], message=None,
               interval=None, plain={}, maps=None, duration=None)
    out = H.property_fragment(one, 3)
    assert '<h2><span class="badge warned">warned</span> t.py::a&lt;1&gt;</h2>' in out
    assert "expectations" not in out and "<pre" not in out and "interval" not in out
    assert "<dt>plain n</dt>" not in out and "<p>plain</p>" not in out
    assert "vs bound 0.5</div>" in out and "<dd>0.00 s</dd>" in out
    assert "<dd>0.00 s</dd>" in H.property_fragment({"duration": 0}, 1)


def test_property_fragment_with_its_sweep(fake):
    out = H.property_fragment(dict(RICH, sweep=SWEEP), 7, interactive=False, diff_limit=3)
    assert out == RICH_HTML.replace(
        "</dl>\n\n", "</dl>\n" + SWEEP_HTML.replace("n&lt;m&gt;", "a&lt;1&gt;") + "\n")
    named = H.property_fragment(dict(RICH, sweep=SWEEP, name=None), 1)
    assert 'alt="flip rate against noise σ for t.py::a&lt;1&gt;"' in named
    assert "<details>" not in H.property_fragment(dict(RICH, sweep={}), 1)
    assert "<details>" not in H.property_fragment(dict(RICH, sweep={"points": []}), 1)


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_csp():
    assert H.csp("a{}", "x()") == (
        f"default-src 'none'; img-src data:; style-src {_sha('a{}')}; "
        f"style-src-attr 'unsafe-inline'; script-src {_sha('x()')}; base-uri 'none'; "
        "form-action 'none'")
    assert "script-src 'none';" in H.csp("a{}", None)
    assert H.csp("a{}", "") != H.csp("a{}", None)


def _between(page: str, tag: str) -> str:
    start = page.index(f"<{tag}>") + len(tag) + 2
    return page[start:page.index(f"</{tag}>", start)]


def test_render_html_page(fake):
    records = [{"name": "a", "outcome": "passed", "duration": 1.0}, dict(RICH, outcome="failed")]
    session = {"title": "T<", "seed": 1, "environment": {"python": "3<"}}
    page = H.render_html(iter(records), session)
    assert "environment" in session  # the caller's session is left as it was
    assert page.startswith('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
                           '<meta http-equiv="Content-Security-Policy" content="')
    assert page.endswith("<script>" + _between(page, "script") + "</script></body></html>\n")
    style, script = _between(page, "style"), _between(page, "script")
    assert style == "body{margin:0;background:#fff}\n" + asset("report.css")
    assert script == "\n" + asset("report.js") + "\n"
    csp = (f"default-src 'none'; img-src data:; style-src {_sha(style)}; style-src-attr "
           f"'unsafe-inline'; script-src {_sha(script)}; base-uri 'none'; form-action 'none'")
    assert f'content="{csp}"'.replace("'", "&#39;") in page
    assert "<title>T&lt; — FAILED</title>" in page and "<h1>T&lt;</h1>" in page
    assert '<div class="muted">Python 3&lt; · CPU (no CUDA) · nemaudit ?</div>' in page
    assert ('<span class="verdict bad">FAILED</span>1 of 2 properties did not hold</p>'
            in page)
    assert "<dt>seed</dt><dd>1</dd>" in page and "<dt>environment</dt>" not in page
    assert "<dt>title</dt>" not in page
    # the summary, then every property's section, numbered from 1
    assert page.index('<table class="summary">') < page.index('id="p1"') < \
        page.index('id="p2"')
    assert '<a href="#p2">a&lt;1&gt;</a>' in page
    assert '<div class="maps" data-i="2" data-int="True" data-lim="None">' in page
    assert page.count("<section ") == 2
    assert "schema nemaudit.report/2</p>" in page
    assert 'class="overview"' not in page and "overview failed" not in page


def test_render_html_defaults_and_overview(fake, monkeypatch):
    page = H.render_html([{"name": "a", "outcome": "passed", "duration": 1.0}])
    assert "<title>nemaudit report — passed</title>" in page
    assert '<div class="muted">Python 9.9 · CPU (no CUDA) · nemaudit ?</div>' in page
    assert "<h3>session</h3>" not in page and "<dt>python</dt><dd>9.9</dd>" in page
    assert '<span class="verdict ok">PASSED</span>all 1 property held</p>' in page
    monkeypatch.setattr(H, "session_sweeps", lambda records: _sweeps())
    assert OVERVIEW in H.render_html([], {"environment": {"python": "3"}})

    def broken(records):
        raise RuntimeError("<x> & y")

    monkeypatch.setattr(H, "overview_html", broken)
    page = H.render_html([], {"environment": {"python": "3"}})
    assert '<p class="muted">overview failed: RuntimeError: &lt;x&gt; &amp; y</p>' in page
    assert '<div class="overview">' not in page


def test_write_html(fake, tmp_path):
    out = H.write_html(tmp_path / "r.html", [{"name": "a<", "outcome": "passed"}],
                       {"environment": {"python": "3"}})
    assert out == tmp_path / "r.html" and isinstance(out, Path)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.endswith("</html>\n")
    assert '<a href="#p1">a&lt;</a>' in text
    assert '<div class="muted">Python 3 · CPU' in text  # the session's environment


def test_pytest_html_extras(fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytest_html", None)
    assert H.pytest_html_extras(RICH) == []
    module = types.ModuleType("pytest_html")
    module.extras = types.SimpleNamespace(html=lambda content: ("html", content))
    monkeypatch.setitem(sys.modules, "pytest_html", module)
    index = zlib.crc32(b"t.py::a<1>")
    body = RICH_HTML.replace('id="p7"', f'id="p{index}"').replace(
        'data-i="7" data-int="False" data-lim="3"', f'data-i="{index}" data-int="False" '
        'data-lim="50"')
    assert H.pytest_html_extras(RICH) == [
        ("html", f'<div class="nemaudit"><style>{asset("report.css")}</style>{body}</div>')]
    (kind, content), = H.pytest_html_extras(dict(RICH, nodeid=None), diff_limit=3)
    index = zlib.crc32(b"a<1>")
    assert f'id="p{index}"' in content and 'data-lim="3"' in content
    assert "<script" not in content
    # a node id whose CRC-32 is 0 (its last 4 characters forged for that): index 1, not 0
    zero = "t.py::test_69_??zU"
    assert zlib.crc32(zero.encode()) == 0
    (kind, content), = H.pytest_html_extras(dict(RICH, nodeid=zero))
    assert 'id="p1"' in content and 'data-i="1"' in content
