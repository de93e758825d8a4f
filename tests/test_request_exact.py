"""AuditRequest, value by value: what ``build`` keeps, refuses and how it says so; ``get``,
``values``, ``with_defaults``, ``but`` and ``cache_key`` on hand cases; Resolved's defaults."""

from __future__ import annotations

import dataclasses

import pytest

from nemaudit.audit.fields import COMMON
from nemaudit.audit.methods import DEFAULT_METHOD, get_method
from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.errors import SpecError
from tests.helpers import raises_exactly


def test_build_keeps_set_values_split_into_shared_and_own_sorted():
    r = AuditRequest.build("netdissect", model=" m ", layer=" layer4 ", units=[3, 1],
                           iou_threshold=0.5, eta=0.25, probe=None, bootstrap=None)
    assert r.method == "netdissect"
    assert (r.model, r.layer, r.units, r.probe) == ("m", "layer4", (3, 1), None)
    # own settings: validated, sorted by name, the unset one (None) left out
    assert r.settings == (("eta", 0.25), ("iou_threshold", 0.5))
    assert all(getattr(r, k) is None for k in ("corruption", "weights", "normalize",
                                               "max_units", "repeats"))
    assert AuditRequest.build().method == DEFAULT_METHOD == AuditRequest().method
    assert AuditRequest.build("netdissect", repeats=3, max_units=7).values() == {
        "repeats": 3, "max_units": 7}


def test_build_names_a_field_as_the_caller_spells_it():
    valid = ", ".join([*COMMON, *get_method("netdissect").fields])
    with raises_exactly(SpecError, f"exemplars= is not a setting of a netdissect audit; "
                                   f"valid: {valid}"):
        AuditRequest.build("netdissect", exemplars=3)
    with raises_exactly(SpecError, f"--exemplars is not a setting of a netdissect audit; "
                                   f"valid: {valid}"):
        AuditRequest.build("netdissect", name=lambda f: "--" + f, exemplars=3)
    with raises_exactly(SpecError, "field 'eta' expected a number in (0.0, 1.0), got 1.5"):
        AuditRequest.build("netdissect", name=lambda f: f"field {f!r}", eta=1.5)
    with raises_exactly(SpecError, "max_units= expected an integer >= 1, got 'x'"):
        AuditRequest.build("netdissect", max_units="x")


def test_a_refusal_hides_the_validators_own_error():
    with pytest.raises(SpecError) as e:
        AuditRequest.build("netdissect", eta=2.0)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_an_unknown_setting_is_refused_even_when_its_value_would_be_valid_elsewhere():
    # exemplars is MILAN's; it is no netdissect setting, and a MILAN request takes it
    assert AuditRequest.build("milan", exemplars=3).get("exemplars") == 3
    with pytest.raises(SpecError, match="exemplars= is not a setting of a netdissect audit"):
        AuditRequest.build("netdissect", exemplars=3)


def test_get_reads_shared_and_own_values_or_the_default():
    r = AuditRequest.build("netdissect", model="m", eta=0.25)
    assert r.get("model") == "m" and r.get("model", "d") == "m"
    assert r.get("probe") is None and r.get("probe", "d") == "d"
    assert r.get("eta") == 0.25 and r.get("eta", 0.5) == 0.25
    assert r.get("iou_threshold") is None and r.get("iou_threshold", 0.5) == 0.5
    assert r.get("nonsense", 7) == 7
    assert r.declaration is get_method("netdissect")


def test_values_gives_back_what_build_takes():
    r = AuditRequest.build("netdissect", model="m", layer="L", units=[2], eta=0.25)
    assert r.values() == {"model": "m", "layer": "L", "units": (2,), "eta": 0.25}
    assert AuditRequest.build("netdissect", **r.values()) == r
    assert AuditRequest.build("netdissect").values() == {}


def test_with_defaults_fills_only_what_is_unset_and_known():
    r = AuditRequest.build("netdissect", model="m", eta=0.25)
    assert r.with_defaults({}) is r
    assert r.with_defaults({"model": "other", "eta": 0.5, "exemplars": 3, "probe": None}) is r
    filled = r.with_defaults({"model": "other", "probe": "p", "iou_threshold": 0.5,
                              "exemplars": 3})
    assert filled.values() == {"model": "m", "probe": "p", "eta": 0.25, "iou_threshold": 0.5}
    assert filled.method == "netdissect"
    with pytest.raises(SpecError, match="iou_threshold= expected"):
        r.with_defaults({"iou_threshold": 5.0})  # filled values are validated too
    m = AuditRequest.build("milan").with_defaults({"exemplars": 4, "eta": 0.1})
    assert m.method == "milan" and m.get("exemplars") == 4 and m.get("eta") is None


def test_but_changes_and_validates_again():
    r = AuditRequest.build("netdissect", model="m", eta=0.25)
    b = r.but(eta=0.5, layer="L")
    assert b.values() == {"model": "m", "layer": "L", "eta": 0.5} and b.method == "netdissect"
    assert r.but(eta=None).values() == {"model": "m"}  # None unsets
    with pytest.raises(SpecError, match="eta= expected"):
        r.but(eta=0.0)


class _Corruption:
    def __init__(self, text: str) -> None:
        self.text = text

    def spec(self) -> str:
        return self.text


def test_cache_key_lists_every_shared_field_then_the_own_settings():
    r = AuditRequest.build("netdissect", model="m", probe="p", units=[1, 2], eta=0.25,
                           iou_threshold=0.5)
    want = [(k, None) for k in COMMON]
    want[list(COMMON).index("model")] = ("model", "m")
    want[list(COMMON).index("probe")] = ("probe", "p")
    want[list(COMMON).index("units")] = ("units", (1, 2))
    assert r.cache_key() == ("netdissect", (*want, ("eta", 0.25), ("iou_threshold", 0.5)))
    assert r.cache_key() != r.but(eta=0.125).cache_key()
    assert r.cache_key() != AuditRequest.build("milan", model="m", probe="p",
                                               units=[1, 2]).cache_key()


def test_cache_key_of_objects():
    c = _Corruption("gaussian:std=0.02")
    key = AuditRequest.build("netdissect", corruption=c).cache_key()
    assert key is not None
    parts = dict(key[1])
    assert parts["corruption"] == ("obj", "_Corruption", "gaussian:std=0.02")
    assert key == AuditRequest.build("netdissect",
                                     corruption=_Corruption("gaussian:std=0.02")).cache_key()
    assert key != AuditRequest.build("netdissect",
                                     corruption=_Corruption("gaussian:std=0.04")).cache_key()
    # objects standing for anything else may change in place: no key
    assert AuditRequest.build("netdissect", model=object()).cache_key() is None
    assert AuditRequest.build("netdissect", probe=c).cache_key() is None
    # a corruption object without a spec() cannot be keyed either
    plain = type("Plain", (), {"spec": "not callable"})()
    assert AuditRequest.build("netdissect", corruption=plain).cache_key() is None
    assert AuditRequest.build("netdissect", corruption=object()).cache_key() is None  # no spec
    # every scalar type and a tuple keep the key
    assert AuditRequest.build("netdissect", repeats=2, normalize="none",
                              bootstrap=0).cache_key() is not None


def test_resolved_defaults():
    r = Resolved(model="M", probe="P", layer="L", corruption=None, device="cpu")
    assert (r.cache_dir, r.batch_size, r.workers, r.max_units, r.progress) == (
        None, 64, 0, None, False)
    assert r.resolve("describer", "spec", beam_size=3) == "spec"
    assert "resolve" not in repr(r)
    assert [f.name for f in dataclasses.fields(Resolved)] == [
        "model", "probe", "layer", "corruption", "device", "cache_dir", "batch_size",
        "workers", "max_units", "progress", "resolve"]


def test_request_is_frozen():
    r = AuditRequest.build("netdissect")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.method = "milan"  # type: ignore[misc]
