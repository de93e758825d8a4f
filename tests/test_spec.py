"""Properties as data: the expectation grammar, spec-file validation, committed baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemaudit.audit.methods import get_method
from nemaudit.baseline import baseline_document, baseline_path, check_baseline
from nemaudit.errors import SpecError
from nemaudit.expectations import BASELINE, ExpectationError, parse_expectation
from nemaudit.harness.properties import Property, PropertyError, load_spec_file

METRICS = get_method("netdissect").metrics

METRICS_OUT = {
    "units": 4, "flip_rate": 0.25, "detectors": 2, "flip_rate_detectors": None, "changed": 1,
    "mean_source_iou_drop": 0.01, "accuracy_clean": 0.9, "accuracy_corrupted": 0.7,
    "per_category_flip_rate": {"color": 0.5, "object": 0.0},
    "detector_share": {"clean": {"color": 0.25, "object": 0.5, "all": 0.75},
                       "corrupted": {"color": 0.0, "object": 0.25, "all": 0.25}},
    "detector_share_clean": 0.75, "detector_share_corrupted": 0.25,
    "xie_table": {"clean": {"C": 0.25, "O": 0.5, "All": 0.75},
                  "corrupted": {"C": 0.0, "O": 0.25, "All": 0.25}},
}


# --------------------------------------------------------------------------- grammar

@pytest.mark.parametrize("text, metric, keys, op, bound", [
    ("flip_rate <= 0.05", "flip_rate", (), "<=", 0.05),
    ("  flip_rate<0.05 ", "flip_rate", (), "<", 0.05),
    ("detectors >= 3", "detectors", (), ">=", 3.0),
    ("accuracy_corrupted > 1e-1", "accuracy_corrupted", (), ">", 0.1),
    ("changed == 0", "changed", (), "==", 0.0),
    ("mean_source_iou_drop <= 4/255", "mean_source_iou_drop", (), "<=", 4 / 255),
    ("detector_share['corrupted']['object'] >= 0.2", "detector_share", ("corrupted", "object"),
     ">=", 0.2),
    ('detector_share["clean"][all] >= .5', "detector_share", ("clean", "all"), ">=", 0.5),
    ("detector_share_corrupted['object'] >= 0.2", "detector_share_corrupted", ("object",), ">=",
     0.2),
    ("per_category_flip_rate[ 'color' ] <= -0.5", "per_category_flip_rate", ("color",), "<=",
     -0.5),
    ("xie_table['clean']['O'] > 0", "xie_table", ("clean", "O"), ">", 0.0),
])
def test_expectation_grammar(text, metric, keys, op, bound):
    e = parse_expectation(text)
    assert (e.metric, e.keys, e.op) == (metric, keys, op)
    assert e.bound == pytest.approx(bound)
    assert not e.is_baseline


def test_baseline_word():
    assert parse_expectation(f" {BASELINE} ").is_baseline


@pytest.mark.parametrize("text, fragment", [
    ("flip_rat <= 0.05", "did you mean 'flip_rate'"),
    ("flip_rat <= 0.05", "known metrics: units, flip_rate"),
    ("flip_rate != 0.05", "unknown operator '!='; allowed operators: <=, <, >=, >, =="),
    ("flip_rate = 0.05", "unknown operator '='"),
    ("flip_rate 0.05", "expected a comparison"),
    ("flip_rate <= abc", "expected a number after '<=', got 'abc'"),
    ("flip_rate <= 0.05 or 1", "expected a number"),
    ("flip_rate <= nan", "expected a number"),
    ("flip_rate['x'] <= 1", "flip_rate takes number — 0 subscript(s), got 1"),
    ("detector_share['object'] >= 0.2", "takes [clean|corrupted][category|all]"),
    ("detector_share['dirty']['object'] >= 0.2", "one of clean, corrupted"),
    ("per_category_flip_rate <= 0.1", "got 0"),
    ("flip_rate[ <= 1", "bad subscript"),
    ("__import__('os') <= 1", "unknown metric '__import__'"),
    ("(flip_rate) <= 1", "expected a metric name first"),
    ("", "expected a string"),
    (0.05, "expected a string"),
])
def test_expectation_errors_say_what_is_allowed(text, fragment):
    with pytest.raises(ExpectationError) as e:
        parse_expectation(text)
    assert fragment in str(e.value)
    assert isinstance(e.value, SpecError)


@pytest.mark.parametrize("text, ok, measured", [
    ("flip_rate <= 0.25", True, 0.25),
    ("flip_rate < 0.25", False, 0.25),
    ("changed == 1", True, 1.0),
    ("detector_share['corrupted']['object'] >= 0.2", True, 0.25),
    ("detector_share_corrupted['object'] >= 0.3", False, 0.25),  # the alias of the above
    ("detector_share_corrupted >= 0.25", True, 0.25),  # no key: the share of all units
    ("xie_table['clean']['All'] > 0.7", True, 0.75),
    ("flip_rate_detectors <= 1", False, None),  # undefined (no detectors) never holds
])
def test_evaluate(text, ok, measured):
    assert parse_expectation(text).evaluate(METRICS_OUT) == (ok, measured)


def test_evaluate_names_valid_keys():
    with pytest.raises(ExpectationError, match="has no key 'part'; valid keys: color, object"):
        parse_expectation("per_category_flip_rate['part'] <= 0.1").evaluate(METRICS_OUT)
    with pytest.raises(ExpectationError, match="no metric 'targeted_success_rate'"):
        parse_expectation("targeted_success_rate >= 0.5").evaluate(METRICS_OUT)


def test_metric_table_matches_a_real_audit():
    """The registry's metric schema is written out so spec files validate without torch:
    keep it in sync."""
    import torch

    from nemaudit.audit import AuditConfig, audit
    from nemaudit.explain.netdissect import DissectConfig
    from nemaudit.model.load import NormalizedModel
    from tests.toys import ToyNet, ToyProbe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny attack: extra threads only wait on busy cores
    try:
        r = audit(NormalizedModel(ToyNet(), "none"), "layer2", ToyProbe(24),
                  "pgd:eps=8/255,steps=2", AuditConfig(dissect=DissectConfig(batch_size=24)))
    finally:
        torch.set_num_threads(threads)
    assert set(r.metrics) == set(METRICS)
    for name in METRICS:  # every metric parses, with the subscripts its shape needs
        keys = {"per_category_flip_rate": "['color']", "detector_share": "['clean']['all']",
                "xie_table": "['clean']['All']"}.get(name, "")
        e = parse_expectation(f"{name}{keys} >= 0")
        if r.metrics[name] is not None and e.lookup(r.metrics) is not None:
            e.evaluate(r.metrics)


# --------------------------------------------------------------------------- spec files

GOOD = """
[defaults]
model = "nemaudit:conceptnet"
probe = "synthetic:n=300,seed=0"
method = "netdissect"

[[property]]
name = "layer4 gaussian noise"
layers = ["layer4"]
corruption = "gaussian:std=0.02"
expect = "flip_rate <= 0.05"

[[property]]
name = "object detectors survive"
layers = ["layer3", "layer4"]
corruption = "gaussian:std=0.02"
expect = ["detector_share_corrupted['object'] >= 0.2", "flip_rate_detectors < 0.5"]
eta = 0.01

[[property]]
name = "baseline"
layer = "layer4"
expect = "unchanged_since_baseline"
tolerance = 0.02
"""


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nemaudit_props.toml"
    path.write_text(text)
    return path


def test_good_spec_file(tmp_path):
    doc = load_spec_file(_spec(tmp_path, GOOD))
    a, b, c = doc.properties
    assert all(isinstance(p, Property) for p in doc.properties)
    assert (a.name, a.model, a.probe, a.layers, a.corruption) == (
        "layer4 gaussian noise", "nemaudit:conceptnet", "synthetic:n=300,seed=0", ["layer4"],
        "gaussian:std=0.02")
    assert [e.metric for e in b.expect] == ["detector_share_corrupted", "flip_rate_detectors"]
    assert b.layers == ["layer3", "layer4"] and b.eta == 0.01
    assert c.is_baseline and c.corruption is None and c.layers == ["layer4"]
    assert c.tolerance == 0.02


PROP = '[defaults]\nmodel = "m:f"\nprobe = "synthetic:n=10"\n[[property]]\nname = "p"\n'


@pytest.mark.parametrize("body, field, fragment", [
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\nstd = 0.1\n',
     "std", "unknown field; allowed fields in [[property]]: name, description, model"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\nlayrs = 1\n',
     "layrs", "did you mean 'layers'"),
    ('layers = "l4"\ncorruption = 0.02\nexpect = "flip_rate <= 1"\n', "corruption",
     "expected a non-empty string, got 0.02"),
    ('layers = []\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n', "layers",
     "expected a non-empty list of layer names"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rat <= 1"\n', "expect",
     "unknown metric 'flip_rat'"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate ~ 1"\n', "expect",
     "allowed operators: <=, <, >=, >, =="),
    ('layers = ["l"]\nexpect = "flip_rate <= 0.05"\n', "corruption",
     "is required for a robustness property"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "unchanged_since_baseline"\n',
     "corruption", "takes no corruption"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\neta = 2\n',
     "eta", "expected a number in (0.0, 1.0), got 2"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n'
     'method = "lime"\n', "method", 'expected "netdissect" or "milan"'),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n'
     'method = "milan"\n', "expect", "'flip_rate' is not one; MILAN metrics: units, changed"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "milan.f1 <= 1"\n', "expect",
     "unknown metric 'milan.f1' (did you mean 'milan.f1_"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "lime.f1 <= 1"\n', "expect",
     "unknown metric namespace 'lime'"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n'
     'f1_threshold = 0.5\n', "f1_threshold", "only applies to MILAN expectations"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "milan.changed <= 1"\n'
     'exemplars = 0\n', "exemplars", "expected an integer >= 1, got 0"),
    ('layers = ["l"]\nexpect = "unchanged_since_baseline"\nmethod = "milan"\n', "method",
     "compares Network Dissection labels"),
    ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n'
     'units = [1, -2]\n', "units", "unit indices (integers >= 0)"),
    ('corruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n', "layers", "is required"),
    ('layers = ["l", "l"]\ncorruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n',
     "layers", "lists a layer twice"),
])
def test_property_errors_name_file_property_and_field(tmp_path, body, field, fragment):
    path = _spec(tmp_path, PROP + body)
    (err,) = load_spec_file(path).properties
    assert isinstance(err, PropertyError)
    assert (err.field, err.prop) == (field, "p")
    msg = str(err)
    assert "nemaudit_props.toml" in msg and "property 'p'" in msg and f"field {field!r}" in msg
    assert fragment in msg


def test_milan_expectations_pick_the_milan_audit(tmp_path):
    text = PROP + ('layers = ["l"]\ncorruption = "gaussian:std=0.1"\nexpect = '
                   '["milan.manipulated_rate <= 0.1", "flip_rate <= 0.2"]\nexemplars = 5\n'
                   '[[property]]\nname = "q"\nlayers = ["l"]\nmethod = "milan"\n'
                   'corruption = "pgd:eps=4/255"\nexpect = "f1_mean >= 0.5"\nmax_units = 3\n'
                   'f1_threshold = 0.6\n')
    p, q = load_spec_file(_spec(tmp_path, text)).properties
    assert set(p.methods) == {"milan", "netdissect"} and p.exemplars == 5
    assert [e.method for e in p.expect] == ["milan", "netdissect"]
    assert set(q.methods) == {"milan"} and q.expect[0].metric == "milan.f1_mean"
    assert (q.max_units, q.f1_threshold) == (3, 0.6)


def test_milan_metric_table_matches_the_audit():
    """MILAN's metric schema is written out (no torch at collection): keep it in sync."""
    from nemaudit.audit.milan import milan_metrics

    MILAN_METRICS = get_method("milan").metrics

    row = {"unit": 0, "clean": "a", "corrupted": "b", "f1": 0.3, "manipulated": True,
           "clean_exemplars": [1, 2], "corrupted_exemplars": [2, 3], "exemplars_kept": 1}
    metrics = milan_metrics([row], 0.5)
    assert set(metrics) == set(MILAN_METRICS)
    e = parse_expectation("milan.manipulated_rate <= 0.5")
    assert e.evaluate({"milan." + k: v for k, v in metrics.items()}) == (False, 1.0)


def test_one_bad_property_leaves_the_others_valid(tmp_path):
    text = GOOD + '\n[[property]]\nname = "layer4 gaussian noise"\nlayers = ["x"]\n' \
                  'corruption = "gaussian:std=0.1"\nexpect = "flip_rate <= 1"\n'
    props = load_spec_file(_spec(tmp_path, text)).properties
    assert [type(p).__name__ for p in props] == ["Property"] * 3 + ["PropertyError"]
    assert "names must be unique" in str(props[-1])


@pytest.mark.parametrize("text, fragment", [
    ("[[property]\nname = 1", "invalid TOML"),
    ('[default]\nmodel = "x"\n', "unknown top-level table or key 'default'; allowed: "
                                 "[defaults] and [[property]]"),
    ('[defaults]\nmodel = "x"\n', "no properties"),
    ('property = "x"\n', "write [[property]]"),
    ('[defaults]\nname = "x"\n[[property]]\n', "field 'name': unknown field"),
])
def test_file_level_errors(tmp_path, text, fragment):
    with pytest.raises(PropertyError) as e:
        load_spec_file(_spec(tmp_path, text))
    assert fragment in str(e.value) and "nemaudit_props.toml" in str(e.value)


# --------------------------------------------------------------------------- baselines

ROWS = [{"unit": 0, "label": "car", "category": "object", "iou": 0.081},
        {"unit": 1, "label": "red", "category": "color", "iou": 0.05},
        {"unit": 2, "label": None, "category": None, "iou": 0.0}]


def _doc(rows, probe="synthetic:n=10"):
    return baseline_document("units", "layer4", rows, model="m:f", probe=probe,
                             method="netdissect", settings={"eta": 0.005})


def test_baseline_missing_written_unchanged_changed(tmp_path):
    path = baseline_path(tmp_path / "test_model.py", "my units", "layer4")
    assert path == tmp_path / "__nemaudit_baselines__" / "test_model" / "my-units__layer4.json"
    missing = check_baseline(path, _doc(ROWS), update=False)
    assert missing.status == "missing" and not missing.ok
    assert "--nemaudit-update" in missing.message() and not path.exists()
    written = check_baseline(path, _doc(ROWS), update=True)
    assert written.status == "written" and written.ok and path.is_file()
    assert json.loads(path.read_text())["units"][0] == {"unit": 0, "label": "car",
                                                         "category": "object", "iou": 0.081,
                                                         "runners_up": []}
    assert path.read_text().count("\n") > len(ROWS) + 5  # one unit per line: git-diffable
    again = check_baseline(path, _doc(ROWS), update=True)
    assert again.status == "unchanged"  # nothing to rewrite
    nudged = [dict(r) for r in ROWS]
    nudged[1]["iou"] = 0.055  # within the default 0.01 tolerance
    assert check_baseline(path, _doc(nudged), update=False).status == "unchanged"
    moved = [dict(r) for r in ROWS]
    moved[0].update(label="wheel", category="part", iou=0.052)
    moved[1]["iou"] = 0.075
    changed = check_baseline(path, _doc(moved, probe="synthetic:n=20"), update=False)
    assert changed.status == "changed" and not changed.ok
    assert [c["unit"] for c in changed.changes] == [0, 1]
    msg = changed.message()
    assert "1/3 unit label(s) changed, 1 IoU change(s) beyond ±0.01" in msg
    assert "unit    0: car (0.081) → wheel (0.052)" in msg
    assert "unit    1: red (0.050) → red (0.075)  (IoU +0.025)" in msg
    assert "recorded with probe 'synthetic:n=10'" in msg and "--nemaudit-update" in msg
    loose = check_baseline(path, _doc(moved), update=False, tolerance=0.05)
    assert [c["unit"] for c in loose.changes] == [0]


def test_unreadable_baseline_says_how_to_fix(tmp_path):
    path = tmp_path / "b.json"
    path.write_text("{not json")
    check = check_baseline(path, _doc(ROWS), update=False)
    assert check.status == "invalid" and "--nemaudit-update" in check.message()


def test_baseline_near_tie_swap_is_not_a_change():
    from nemaudit.baseline import diff_units

    old = [{"unit": 0, "label": "car", "iou": 0.0300, "runners_up": [["wheel", 0.0299]]}]
    swapped = [{"unit": 0, "label": "wheel", "iou": 0.0301, "runners_up": [["car", 0.0300]]}]
    assert diff_units(old, swapped, tolerance=0.01) == []
    far = [{"unit": 0, "label": "wheel", "iou": 0.0301, "runners_up": [["car", 0.0100]]}]
    assert [c["label_changed"] for c in diff_units(old, far, tolerance=0.01)] == [True]


def test_a_property_can_unset_a_default_and_paths_are_relative_to_the_spec_file(tmp_path,
                                                                              monkeypatch):
    from nemaudit.harness.properties import parse_document

    spec_dir = tmp_path / "specs" / "deep"
    spec_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    doc = parse_document({
        "defaults": {"model": "nets.py:Net", "weights": "w.pt", "probe": "broden:data,max=5",
                     "layers": ["layer4"], "corruption": "gaussian:std=0.1"},
        "property": [
            {"name": "a", "expect": "flip_rate <= 1"},
            {"name": "b", "expect": "flip_rate <= 1", "model": "torchvision:resnet18",
             "weights": "", "probe": "python:gen.py:make(n=3)"},
            {"name": "c", "expect": "milan.changed <= 1", "describer": "milan:m/milan.pt",
             "weights": "/abs/w.pt", "probe": "synthetic:n=4"},
        ]}, spec_dir / "nemaudit_x.toml")
    a, b, c = doc.properties
    here = Path("specs") / "deep"
    assert a.settings["model"] == f"{here / 'nets.py'}:Net"
    assert a.settings["weights"] == str(here / "w.pt")
    assert a.settings["probe"] == f"broden:{here / 'data'},max=5"
    assert "weights" not in b.settings and b.request("netdissect", "layer4").weights is None
    assert b.settings["model"] == "torchvision:resnet18"
    assert b.settings["probe"] == f"python:{here / 'gen.py'}:make(n=3)"
    assert c.settings["describer"] == f"milan:{here / 'm' / 'milan.pt'}"
    assert c.settings["weights"] == "/abs/w.pt" and c.settings["probe"] == "synthetic:n=4"
    (bad,) = parse_document({"property": [{"name": "d", "model": "", "probe": "p",
                                           "layers": ["l"], "expect": "flip_rate <= 1",
                                           "corruption": "gaussian:std=0.1"}]},
                            spec_dir / "nemaudit_y.toml").properties
    assert isinstance(bad, PropertyError) and "field 'model'" in str(bad)  # required: no unset
