"""Every numeric setting's stated range, edge by edge, through the one validation all front
doors share (:meth:`AuditRequest.build`): the ends that are allowed pass, one step past each
end fails with the range in the message. The table is the contract the docs state."""

from __future__ import annotations

import math

import pytest

from nemaudit.audit.fields import MAX_UNITS
from nemaudit.audit.methods import all_methods
from nemaudit.audit.request import AuditRequest
from nemaudit.errors import SpecError

#: (method, field, lo, hi, lo_open, hi_open) of every float setting
FLOATS = [
    ("netdissect", "eta", 0.0, 1.0, True, True),
    ("netdissect", "iou_threshold", 0.0, 1.0, False, False),
    ("milan", "f1_threshold", 0.0, 1.0, False, False),
    ("milan", "exemplar_eta", 0.0, 1.0, True, True),
    ("milan", "lam", 0.0, 100.0, False, False),
    ("radius", "radius_tolerance", 0.0, 1.0, True, False),
    ("saliency", "spearman_threshold", -1.0, 1.0, False, False),
    ("fooling", "fool_lr", 0.0, 1.0, True, False),
    ("fooling", "fool_lambda", 0.0, 1e4, True, False),
    ("fooling", "max_top1_drop", 0.0, 1.0, False, False),
    ("fooling", "fsr_low", -1e9, 1e9, False, False),
    ("fooling", "fsr_high", -1e9, 1e9, False, False),
]

#: (method, field, lo, hi) of every integer setting
INTS = [
    ("netdissect", "max_units", 1, MAX_UNITS),
    ("netdissect", "repeats", 1, 1000),
    ("netdissect", "bootstrap", 0, 100_000),
    ("milan", "exemplars", 1, 100),
    ("milan", "attack_images", 1, 100),
    ("milan", "beam_size", 1, 500),
    ("saliency", "images", 1, 100_000),
    ("saliency", "aopc_steps", 1, 64),
    ("fooling", "images", 1, 100_000),
    ("fooling", "aopc_steps", 1, 64),
    ("fooling", "fool_epochs", 1, 1000),
    ("fooling", "fool_batch_size", 1, 4096),
    ("fooling", "train_images", 2, 1_000_000),
    ("fooling", "fool_seed", 0, 2**31 - 1),
]


def _refused(method, field, value) -> str:
    with pytest.raises(SpecError) as e:
        AuditRequest.build(method, **{field: value})
    return str(e.value)


def test_the_tables_are_every_numeric_setting_as_declared():
    """A new numeric setting, or a changed range, must be stated here too."""
    from nemaudit.audit.fields import COMMON, FloatRange, IntRange

    floats, ints = {}, {}
    for m in all_methods():
        for name, fld in {**m.fields, **(COMMON if m.name == "netdissect" else {})}.items():
            if isinstance(fld.check, FloatRange):
                c = fld.check
                floats[(m.name, name)] = (c.lo, c.hi, c.lo_open, c.hi_open)
            elif isinstance(fld.check, IntRange):
                ints[(m.name, name)] = (fld.check.lo, fld.check.hi)
    assert floats == {(m, f): tuple(r) for m, f, *r in FLOATS}
    assert ints == {(m, f): tuple(r) for m, f, *r in INTS}


def test_range_texts():
    from nemaudit.audit.fields import FloatRange

    assert FloatRange(0.0, None).text() == "[0.0, ∞)"
    assert FloatRange(0.0, 1.0, lo_open=True, hi_open=True).text() == "(0.0, 1.0)"
    assert FloatRange(-1.0, 2.0).text() == "[-1.0, 2.0]"
    assert FloatRange(0.0, None)(1e300) == 1e300


@pytest.mark.parametrize("method, field, lo, hi, lo_open, hi_open", FLOATS)
def test_float_settings_accept_exactly_their_range(method, field, lo, hi, lo_open, hi_open):
    rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    step = (hi - lo) * 1e-6
    inside = [(lo + hi) / 2, *([] if lo_open else [lo]), *([] if hi_open else [hi])]
    for v in inside:
        got = AuditRequest.build(method, **{field: v}).get(field)
        assert got == v and isinstance(got, float), v
    if not lo_open:  # an int at the closed end comes back as a float
        assert isinstance(AuditRequest.build(method, **{field: int(lo)}).get(field), float)
    outside = [lo - step, hi + step, *([lo] if lo_open else []), *([hi] if hi_open else []),
               math.nan, math.inf, -math.inf, True, "0.5"]
    for v in outside:
        msg = _refused(method, field, v)
        assert f"{field}= expected a number in {rng}, got {v!r}" in msg, (v, msg)


@pytest.mark.parametrize("method, field, lo, hi", INTS)
def test_int_settings_accept_exactly_their_range(method, field, lo, hi):
    for v in (lo, hi, (lo + hi) // 2):
        got = AuditRequest.build(method, **{field: v}).get(field)
        assert got == v and type(got) is int, v
    assert f"{field}= expected an integer >= {lo}, got {lo - 1!r}" in _refused(method, field,
                                                                               lo - 1)
    assert (f"{field}= expected an integer <= {hi} (the stated maximum), got {hi + 1!r}"
            in _refused(method, field, hi + 1))
    for bad in (float(lo), True, str(lo), 1.5):
        assert f"{field}= expected an integer >= {lo}" in _refused(method, field, bad), bad


def test_unit_lists_stop_below_the_stated_maximum():
    assert AuditRequest.build("netdissect", units=[0, MAX_UNITS - 1]).units == (0, MAX_UNITS - 1)
    for bad in ([MAX_UNITS], [-1], [], [True], "0,1", [0.0], 3):
        assert "units= expected a non-empty list of unit indices (integers >= 0)" in \
            _refused("netdissect", "units", bad), bad
    assert AuditRequest.build("netdissect", units=(3, 1)).units == (3, 1)
    assert AuditRequest.build("netdissect", units=range(2)).units == (0, 1)


# --------------------------------------------------------------------------- the other kinds

@pytest.mark.parametrize("value, want", [
    ("gradcam", ("gradcam",)), ("lrp, gradcam,lrp", ("lrp", "gradcam")),
    (["simplegrad_t", "lrp_t"], ("simplegrad_t", "lrp_t")), (("lrp",), ("lrp",)),
])
def test_interpreter_lists(value, want):
    assert AuditRequest.build("saliency", interpreters=value).get("interpreters") == want


@pytest.mark.parametrize("bad", ["", " , ", [], "gradcam,occlusion", ["GradCAM"], 3])
def test_bad_interpreter_lists(bad):
    assert ("interpreters= expected a list of interpreters from gradcam, simplegrad, "
            "simplegrad_t, lrp, lrp_t, got") in _refused("saliency", "interpreters", bad)


@pytest.mark.parametrize("field, names", [
    ("fooling", ("location", "topk", "center", "active")),
    ("interpreter", ("gradcam", "simplegrad", "simplegrad_t", "lrp", "lrp_t")),
])
def test_one_of_settings(field, names):
    for n in names:
        assert AuditRequest.build("fooling", **{field: n}).get(field) == n
    want = " or ".join(f'"{n}"' for n in names)
    assert f"{field}= expected {want}, got 'frame'" in _refused("fooling", field, "frame")


def test_radius_unit_sets():
    for n in ("detectors", "labelled", "all"):
        assert AuditRequest.build("radius", radius_units=n).get("radius_units") == n
    assert ('radius_units= expected "detectors" or "labelled" or "all", got \'some\''
            in _refused("radius", "radius_units", "some"))


@pytest.mark.parametrize("value, want", [
    ("beach,forest", ("beach", "forest")), (" beach , forest ", ("beach", "forest")),
    ([3, "forest"], ("3", "forest")), ((0, 1), ("0", "1")),
])
def test_active_classes(value, want):
    assert AuditRequest.build("fooling", active_classes=value).get("active_classes") == want


@pytest.mark.parametrize("bad", ["beach", "a,b,c", "beach,", [True, 1], ["a", " "], [1.5, 2],
                                 {"a": 1, "b": 2}])
def test_bad_active_classes(bad):
    assert ('active_classes= expected two class names or indices, e.g. "beach,forest"'
            in _refused("fooling", "active_classes", bad))


def test_dissect_flag_is_a_real_boolean():
    assert AuditRequest.build("fooling", dissect=False).get("dissect") is False
    assert AuditRequest.build("fooling", dissect=True).get("dissect") is True
    for bad in (0, 1, "false", "no"):
        assert "dissect= expected true or false" in _refused("fooling", "dissect", bad)


# --------------------------------------------------------------------------- strings and specs

def test_string_validators():
    from nemaudit.audit import fields as f

    assert f.check_str("  a b ") == "a b" and f.is_str("x") and not f.is_str(" ")
    assert not f.is_str(3) and not f.is_str(None)
    for bad in ("", "  ", 3, None):
        with pytest.raises(TypeError, match="^a non-empty string$"):
            f.check_str(bad)
    assert f.check_layer(" layer4 ") == "layer4"
    for bad in ("", 4, None):
        with pytest.raises(TypeError, match='^a layer name, e.g. "layer4"$'):
            f.check_layer(bad)
    assert f.check_layers("layer4") == ["layer4"]
    assert f.check_layers([" a", "b "]) == ["a", "b"] and f.check_layers(("a",)) == ["a"]
    for bad in ([], ["a", ""], ["a", 3], 3, None, {"a": 1}):
        with pytest.raises(TypeError, match=r'^a non-empty list of layer names, e.g. \["layer4"\]$'):
            f.check_layers(bad)


def test_spec_validators():
    from nemaudit.audit import fields as f

    obj = object()
    assert f.check_spec(" synthetic:n=8 ") == "synthetic:n=8" and f.check_spec(obj) is obj
    for bad in ("", None, True, 3, 2.5, [], (), {}):
        with pytest.raises(TypeError, match="^a non-empty string$"):
            f.check_spec(bad)
    assert f.check_normalize(" imagenet ") == "imagenet"
    assert f.check_normalize([[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]) == (
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert f.check_normalize((0.5, 0.25)) == (0.5, 0.25)
    for bad in ([1, 2, 3], 3, None):
        with pytest.raises(TypeError, match=r"^imagenet \| none \| netdissect \| m,m,m/s,s,s$"):
            f.check_normalize(bad)
    with pytest.raises(TypeError, match="^a non-empty string$"):
        f.check_normalize(" ")
