"""The terminal session summary stays readable in an 80-column CI log and uses the room of a
wide terminal."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from nemaudit.report.terminal import WIDE, result_text, session_summary

OUTCOME_RE = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|PASS|FAIL|ERR|SKIP) ")


def _gauss(std: float) -> dict:
    return {"kind": "gaussian", "std": std, "fraction": 1.0, "select": "random", "seed": 0,
            "shared": True}


def _rec(name: str, outcome: str = "passed", expectation: str | None = None,
         measured: float | None = None, bound: float | None = None, layer: str = "layer4",
         corruption: dict | None = None, flip: float | None = None, **extra) -> dict:
    audit = {"metrics": {"flip_rate": flip}} if flip is not None else None
    return {"nodeid": f"examples/x::{name}", "name": name, "outcome": outcome,
            "expectation": expectation, "measured": measured, "bound": bound, "layer": layer,
            "model": "nemaudit:conceptnet", "probe": "synthetic:n=600,seed=0",
            "corruption": corruption, "audit": audit, "duration": 8.49, **extra}


#: the example run's records, as the plugin makes them
EXAMPLE = [
    _rec("small gaussian noise keeps detector concepts[layer3]", expectation=
         "flip_rate_detectors <= 0.25", measured=0.0, bound=0.25, layer="layer3",
         corruption=_gauss(0.02), flip=0.0),
    _rec("small gaussian noise keeps detector concepts[layer4]", expectation=
         "flip_rate_detectors <= 0.25", measured=0.03125, bound=0.25, corruption=_gauss(0.02),
         flip=0.03),
    _rec("poisoning 10% of the probe barely moves the labels[layer4]",
         expectation="flip_rate_detectors <= 0.1", measured=0.0, bound=0.1,
         corruption={"kind": "bernoulli", "std": 6 / 255, "fraction": 0.1, "seed": 0}, flip=0.0),
    _rec("FGSM keeps object detectors[layer4]", outcome="failed",
         expectation="detector_share_corrupted['all'] >= 0.4", measured=0.3, bound=0.4,
         corruption={"kind": "fgsm", "eps": 2 / 255, "fraction": 1.0}, flip=0.16),
    _rec("explanations unchanged since the committed baseline[layer3]",
         expectation="unchanged_since_baseline", measured=0.0, bound=0.0, layer="layer3",
         baseline={"status": "unchanged"}),
    _rec("explanations unchanged since the committed baseline[layer4]",
         expectation="unchanged_since_baseline", measured=3.0, bound=0.0, outcome="failed",
         baseline={"status": "changed"}),
    *(_rec(f"test_noise_sweep_layer4[{s}]", corruption=_gauss(s), flip=s * 2)
      for s in (0.01, 0.02, 0.05)),
    _rec("test_designed_attack_is_stronger_than_noise", corruption={
        "kind": "bernoulli", "std": 4 / 255, "fraction": 1.0}, flip=0.083, duration=166.8),
    _rec("test_targeted_attack_reaches_its_target", corruption={
        "kind": "pgd", "eps": 6 / 255, "steps": 10, "targeted": True, "target": "car",
        "fraction": 1.0, "shared": False}, flip=1.0),
    _rec("test_broken_model", outcome="error", layer=None, message="ImportError: no module x"),
    _rec("test_needs_gpu", outcome="skipped", layer=None),
]


def _render(records: list[dict], width: int) -> list[str]:
    console = Console(record=True, width=width, color_system=None)
    console.print(session_summary(records))
    return console.export_text().splitlines()


def _per_property(lines: list[str]) -> list[list[str]]:
    """Rows of the summary: each starts with its outcome in column 0."""
    body = lines[next(i for i, ln in enumerate(lines) if set(ln.strip()) == {"─"}) + 1:]
    rows: list[list[str]] = []
    for ln in body:
        if OUTCOME_RE.match(ln):
            rows.append([ln])
        elif ln.strip():
            assert rows, f"text before the first property: {ln!r}"
            rows[-1].append(ln)
    return rows


def test_80_columns_two_lines_per_property():
    lines = _render(EXAMPLE, 80)
    assert all(len(ln) <= 80 for ln in lines)
    assert lines[0].startswith("nemaudit — 13 properties: 9 passed, 2 failed, 1 error, 1 skipped")
    rows = _per_property(lines)
    assert len(rows) == len(EXAMPLE)
    assert all(len(r) <= 3 for r in rows), [r for r in rows if len(r) > 3]
    assert sum(len(r) <= 2 for r in rows) >= len(rows) - 2  # long names may take a third line
    for r, row in zip(EXAMPLE, rows):  # every name is there, whole (wrapped at most)
        words = " ".join(row).split()
        assert all(w in words for w in r["name"].split()), (r["name"], row)
    first = rows[0]
    assert re.search(r"small gaussian noise keeps detector concepts\[layer3\]\s+0 ≤ 0\.25\s+"
                     r"8\.5 s$", first[0])
    assert first[1].split() == ["flip_rate_detectors", "·", "gaussian", "std=0.02"]
    fgsm = next(r for r in rows if "FGSM" in r[0])
    assert fgsm[0].startswith("FAIL") and "0.3 < 0.4" in fgsm[0]  # what holds, not what was hoped
    assert "fgsm eps=2/255" in fgsm[1]
    designed = next(r for r in rows if "designed" in r[0])
    assert "layer4" in designed[0] and "flip 8.3%" in designed[0] and "167 s" in designed[0]
    changed = next(r for r in rows if "baseline[layer4]" in "".join(r))
    assert "3 units moved" in changed[0]
    broken = next(r for r in rows if "test_broken_model" in r[0])
    assert broken[0].startswith("ERR ") and "ImportError: no module x" in broken[1]


def test_width_argument_and_wide_terminals_get_columns():
    wide = _render(EXAMPLE, 200)
    assert wide[1].split()[:3] == ["outcome", "property", "expectation"]
    rows = _per_property(wide)
    assert len(rows) == len(EXAMPLE) and all(len(r) == 1 for r in rows)
    assert "flip_rate_detectors <= 0.25" in rows[0][0] and "gaussian std=0.02" in rows[0][0]
    # a wide table that would have to wrap reads worse than the narrow one
    assert _render(EXAMPLE, WIDE)[1].split()[0] == "property"
    # an explicit width overrides the console's
    console = Console(record=True, width=200, color_system=None)
    console.print(session_summary(EXAMPLE, width=80))
    assert console.export_text().splitlines()[1].split()[0] == "property"


@pytest.mark.parametrize(("record", "text"), [
    (_rec("a", expectation="flip_rate <= 0.05", measured=0.031, bound=0.05), "0.031 ≤ 0.05"),
    (_rec("b", expectation="flip_rate < 0.05", measured=0.05, bound=0.05), "0.05 ≥ 0.05"),
    (_rec("c", expectation="x >= 0.8", measured=0.79, bound=0.8), "0.79 < 0.8"),
    (_rec("d", expectation="flip_rate_detectors <= 0.1", measured=None, bound=0.1),
     "undefined ≤ 0.1"),
    (_rec("e", expectation="unchanged_since_baseline", measured=1.0, bound=0.0),
     "1 unit moved"),
    (_rec("f", expectation="unchanged_since_baseline", baseline={"status": "written"}),
     "baseline written"),
    (_rec("g", flip=0.25), "flip 25.0%"),
    (_rec("h"), "—"),
])
def test_result_text(record, text):
    assert result_text(record) == text


def test_untargeted_attacks_say_their_target_is_the_runner_up():
    from nemaudit.audit.netdissect.result import AuditResult
    from nemaudit.report.json_report import target_wording

    row = {"unit": 3, "clean_label": "car", "clean_iou": 0.1, "corrupted_label": "wheel",
           "corrupted_iou": 0.08, "target": "wheel", "target_hit": True, "changed": True}
    untargeted = AuditResult("l", {"kind": "pgd", "targeted": False}, [row], {})
    targeted = AuditResult("l", {"kind": "pgd", "targeted": True}, [row], {})
    assert untargeted.diff_line(row).endswith("[runner-up wheel reached]")
    assert targeted.diff_line(row).endswith("[target wheel reached]")
    assert target_wording({"targeted": False})[0] == "reached the runner-up"
    assert target_wording({"targeted": True})[0] == "targeted success"
