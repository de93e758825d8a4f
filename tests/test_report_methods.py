"""The report skeleton is method-agnostic: a method registered in
:data:`nemaudit.audit.methods.METHODS` gets its facts, HTML section and headline into the
reports with no change to :mod:`nemaudit.report` (here: a fake saliency-map method)."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

import pytest

from nemaudit.audit import methods
from nemaudit.audit.methods import Method, MetricShape
from nemaudit.report import html as html_report
from nemaudit.report.html_parts import esc
from nemaudit.report.terminal import result_text


class FakeSaliency(Method):
    name = "saliency"
    prefix = "saliency."
    title = "Saliency maps"
    record_key = "saliency_maps"
    headline = "moved_rate"
    headline_label = "moved"
    metrics = {"moved_rate": MetricShape(), "units": MetricShape()}

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [("saliency pixels", payload["meta"]["pixels"])]

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        return (f'<div class="saliency" data-index="{index}" data-interactive="{interactive}" '
                f'data-limit="{diff_limit}">{esc(payload["note"])}</div>')


@pytest.fixture
def saliency(monkeypatch):
    """FakeSaliency registered after the two real methods, as a third method would be."""
    module = types.ModuleType("nemaudit_fake_saliency")
    module.FakeSaliency = FakeSaliency
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(methods, "METHODS",
                        {**methods.METHODS, "saliency": f"{module.__name__}:FakeSaliency"})
    monkeypatch.setattr(methods, "_LOADED", {})
    return methods.get_method("saliency")


def _record(**extra) -> dict:
    return {"nodeid": "tests/x.py::test_maps", "name": "test_maps", "outcome": "passed",
            "expectation": None, "measured": None, "bound": None, "duration": 0.25,
            "layer": "layer4", "model": "m", "probe": "p", "corruption": None,
            "saliency_maps": {"metrics": {"moved_rate": 0.42, "units": 8},
                              "meta": {"pixels": 0.125}, "note": "<maps & masks>"}, **extra}


def test_a_registered_method_gets_its_section_facts_and_headline(saliency):
    record = _record()
    assert [m.name for m, _ in methods.record_payloads(record)] == ["saliency"]
    frag = html_report.property_fragment(record, 7, interactive=False, diff_limit=3)
    assert ('<div class="saliency" data-index="7" data-interactive="False" data-limit="3">'
            '&lt;maps &amp; masks&gt;</div>') in frag
    assert "<dt>saliency pixels</dt><dd>0.125</dd>" in frag
    # no expectation recorded: the method's own headline, in both summaries
    assert result_text(record) == "moved 42.0%"
    cell = html_report.summary_table([record])
    assert ">moved 42.0%</span>" in cell and 'title="moved rate over all units' in cell
    page = html_report.render_html([record], {"environment": {"python": "3"}})
    assert 'data-index="1" data-interactive="True" data-limit="None"' in page


def test_sections_and_headline_follow_registry_order(saliency):
    audit = {"metrics": {"flip_rate": 0.0625, "units": 16}, "units": [], "meta": {"images": 9}}
    record = _record(audit=audit)
    frag = html_report.property_fragment(record, 2)
    assert frag.index("flip rate (all units)") < frag.index('class="saliency"')
    assert "<dt>images</dt><dd>9</dd>" in frag and "<dt>saliency pixels</dt>" in frag
    assert result_text(record) == "flip 6.2%"  # the first registered method's headline
    # without the registry line the payload is just an unknown key: nothing rendered
    del methods._LOADED["saliency"]
    methods.METHODS.pop("saliency")
    assert 'class="saliency"' not in html_report.property_fragment(record, 2)
    assert result_text(_record()) == "—"
