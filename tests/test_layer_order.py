"""The overview's layer plots are ordered by network depth, not by the order tests ran in:
by the depth index recorded at audit time (the layer's place in ``named_modules()``), and
without one by a natural sort of the names (stem first, head last, numbers as numbers)."""

from __future__ import annotations

import random

import pytest

from nemaudit.report.plots import natural_layer_key, order_layers, session_sweeps

MODEL, PROBE = "nemaudit:conceptnet", "synthetic:n=40,seed=0"
GAUSS = {"kind": "gaussian", "std": 0.02, "fraction": 1.0, "seed": 0}


def _rec(layer: str, flip: float, depth: int | None = None) -> dict:
    r = {"nodeid": f"t::{layer}", "name": layer, "outcome": "passed", "layer": layer,
         "model": MODEL, "probe": PROBE, "corruption": GAUSS, "duration": 0.1,
         "audit": {"layer": layer, "corruption": GAUSS, "units": [],
                   "metrics": {"flip_rate": flip, "flip_rate_detectors": flip, "changed": 1,
                               "units": 10}}}
    if depth is not None:
        r["layer_depth"] = depth
    return r


@pytest.mark.parametrize("expected", [
    ["conv1", "layer1", "layer2", "layer10", "fc"],
    ["features.3", "features.10", "features.28", "classifier.0"],
    ["stem", "layer2", "layer2.0", "layer2.1", "layer2.10", "layer3", "avgpool"],
    ["bn1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer4"],
])
def test_natural_sort_puts_names_in_depth_order(expected):
    shuffled = expected[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(shuffled, key=natural_layer_key) == expected
    assert order_layers(shuffled + shuffled[:1]) == expected  # distinct, in order


def test_recorded_depth_wins_over_the_names_and_a_gap_falls_back_to_them():
    # depth says what names cannot: a DenseNet-like "features.norm5" after its blocks
    names = ["features.norm5", "features.denseblock1", "features.conv0"]
    depth = {"features.conv0": 0, "features.denseblock1": 4, "features.norm5": 60}
    assert order_layers(names, depth) == ["features.conv0", "features.denseblock1",
                                          "features.norm5"]
    # one layer without a depth: never compare an index with a name, use names for all
    assert order_layers(["layer10", "layer2"], {"layer10": 0}) == ["layer2", "layer10"]


def test_session_overview_orders_layers_by_depth_not_test_order():
    # tests ran layer4, layer10, layer2, conv1; depth: conv1 < layer2 < layer4 < layer10
    recs = [_rec("layer4", 0.3), _rec("layer10", 0.5), _rec("layer2", 0.1), _rec("conv1", 0.0)]
    (sweep,) = session_sweeps(recs)
    assert [p["x"] for p in sweep["points"]] == ["conv1", "layer2", "layer4", "layer10"]
    # recorded depths (from the model) decide, here against the natural order of the names
    deep = [_rec("b", 0.1, depth=7), _rec("a", 0.2, depth=9), _rec("c", 0.3, depth=1)]
    (sweep,) = session_sweeps(deep)
    assert [p["x"] for p in sweep["points"]] == ["c", "b", "a"]
    assert [p["layer_depth"] for p in sweep["points"]] == [1, 7, 9]


def test_the_plot_axis_follows_depth_too():
    pytest.importorskip("matplotlib")
    from nemaudit.report.plots import sweep_figure

    points = [{"x": n, "layer": n, "flip_rate": 0.1, "series": "s", "layer_depth": d}
              for n, d in (("layer4", 3), ("conv1", 0), ("layer2", 1))]
    ax = sweep_figure({"x": "layer", "points": points}).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "layer2", "layer4"]


def test_audits_record_the_layer_depth_of_the_model(tmp_path):
    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor
    from nemaudit.model import layer_names

    auditor = Auditor("cpu", cache_dir=str(tmp_path))
    names = layer_names(auditor.model(MODEL))
    depths = {}
    for layer in ("layer4", "layer2"):
        r = auditor.run(AuditRequest.build("netdissect", model=MODEL, probe=PROBE, layer=layer,
                                           corruption="gaussian:std=0.02"))
        depths[layer] = r.meta["specs"]["layer_depth"]
        assert depths[layer] == names.index(layer)
    assert depths["layer2"] < depths["layer4"]
