"""``nemaudit compare A.json B.json --html OUT``: two runs side by side, regressions first,
every value from the (hostile) JSON files escaped, no script, the report's CSP."""

from __future__ import annotations

import copy
import html
import re
from html.parser import HTMLParser
from pathlib import Path

from nemaudit.cli import main

H = "<script>alert(1)</script>"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _units(labels: list[str], flips: list[bool]) -> list[dict]:
    return [{"unit": u, "clean_label": lab, "changed": ch, "clean_iou": 0.1}
            for u, (lab, ch) in enumerate(zip(labels, flips))]


def _record(name: str, outcome: str, measured: float, labels: list[str], flips: list[bool],
            interval: tuple[float, float] | None = None) -> dict:
    r = {"nodeid": f"t.py::{name}", "name": name, "outcome": outcome, "measured": measured,
         "bound": 0.5, "expectation": f"flip_rate <= 0.5 {H}", "duration": 0.1,
         "audit": {"method": "netdissect",
                   "metrics": {"flip_rate": measured, "units": len(labels),
                               "changed": sum(flips)},
                   "units": _units(labels, flips)}}
    if interval:
        r["interval"] = {"lo": interval[0], "hi": interval[1], "level": 0.95,
                         "k": sum(flips), "n": len(labels)}
    return r


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    from nemaudit.report.json_report import write_json

    a = [_record(f"worse{H}", "passed", 0.25, [f"car{H}", "sky", "tree", "road"],
                 [False, True, False, False], (0.006, 0.81)),
         _record("same", "passed", 0.0, ["a", "b"], [False, False]),
         _record("better", "failed", 0.75, ["a", "b", "c", "d"], [True, True, True, False]),
         {"nodeid": f"t.py::gone{H}", "name": f"gone{H}", "outcome": "passed"}]
    b = copy.deepcopy(a[:3])
    w = b[0]
    w["outcome"], w["measured"] = "failed", 0.75
    w["interval"] = {"lo": 0.19, "hi": 0.99, "level": 0.95, "k": 3, "n": 4}
    w["message"] = f"flip_rate 0.75 > 0.5 {H}"
    w["audit"]["metrics"].update(flip_rate=0.75, changed=3)
    w["audit"]["units"][0]["clean_label"] = f"bus{H}"   # unit 0's concept changed
    w["audit"]["units"][2]["changed"] = True            # units 2 and 3 now flip
    w["audit"]["units"][3]["changed"] = True
    w["audit"]["units"][1]["changed"] = False           # unit 1 no longer flips
    bb = b[2]
    bb["outcome"], bb["measured"] = "passed", 0.25
    bb["audit"]["metrics"].update(flip_rate=0.25, changed=1)
    for u in bb["audit"]["units"][1:3]:
        u["changed"] = False
    b.append({"nodeid": "t.py::new", "name": "new", "outcome": "passed"})
    env = {"python": H, "nemaudit": H, "git": {"commit": H, "dirty": True}, "hostname": H}
    return (write_json(tmp_path / "a.json", a, {"title": H, "environment": env}),
            write_json(tmp_path / "b.json", b, {"title": "b", "environment": env}))


def test_compare_html_shows_both_runs_regressions_first(tmp_path, capsys):
    a, b = _runs(tmp_path)
    out = tmp_path / "cmp.html"
    rc = main(["compare", str(a), str(b), "--html", str(out), "--fail", "flip_rate:+5%"])
    assert rc == 1  # the gate broke: the page is written all the same
    # rich wraps long lines (a long path too): compare without the whitespace
    assert f"wrote{out}".replace(" ", "") in "".join(capsys.readouterr().out.split())
    page = out.read_text()
    # the summary table: the property that got worse first, the one that got better after it
    rows = re.findall(r'<tr class="(\w+) cmp-(\w+)">', page)
    assert [s for _, s in rows] == ["worse", "better", "same"]
    assert "REGRESSED" in page and "1 verdict(s) got worse" in page
    # A beside B with the intervals
    assert "[0.006, 0.81]" in page and "[0.19, 0.99]" in page
    assert "95% interval over units: [0.19, 0.99] (3 of 4)" in page
    # units: the two that now flip first, then the changed concept, then the one that recovered
    section = page[page.index('id="c1"'):]
    section = section[:section.index("</section>")]
    units = re.findall(r'<tr class="[^"]*"><td class="num">(\d+)</td>', section)
    assert units == ["2", "3", "0", "1"]
    assert section.count("now flips") == 2 and "no longer flips" in section
    assert "concept changed" in section and "metrics that moved" in section
    assert "only in A (1)" in page and "only in B (1)" in page


def test_compare_html_escapes_everything_and_runs_no_script(tmp_path):
    a, b = _runs(tmp_path)
    out = tmp_path / "cmp.html"
    main(["compare", str(a), str(b), "--html", str(out)])
    page = out.read_text()
    assert H not in page and "<script" not in page
    parser = _Tags()
    parser.feed(page)
    assert not [t for t, _ in parser.tags if t in ("script", "iframe", "object", "img")]
    assert not [a for _, attrs in parser.tags for a in attrs if a.startswith("on")]
    text = "".join(parser.text)
    # the hostile strings reached the page as text: names, labels, expectations, paths, env
    for shown in (f"worse{H}", f"bus{H}", f"flip_rate <= 0.5 {H}", f"gone{H}"):
        assert shown in text, shown
    assert f"Python {H}" in text
    (csp,) = [html.unescape(c) for c in re.findall(
        r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)]
    assert "script-src 'none'" in csp and "default-src 'none'" in csp
    assert "'unsafe-inline'" not in csp.replace("style-src-attr 'unsafe-inline'", "")
    main(["compare", str(a), str(b), "--html", str(out), "--units", "1"])
    assert "… 3 more" in out.read_text()  # --units caps each unit table


def test_compare_html_bad_path_fails_before_work(tmp_path, capsys):
    a, b = _runs(tmp_path)
    assert main(["compare", str(a), str(b), "--html", str(tmp_path)]) == 2
    assert "--html" in capsys.readouterr().err
    same = tmp_path / "same.html"
    assert main(["compare", str(a), str(a), "--html", str(same)]) == 0
    page = same.read_text()
    assert "NO REGRESSION" in page and 'id="c1"' not in page  # nothing changed: no sections
