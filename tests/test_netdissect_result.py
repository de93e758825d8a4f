"""Network Dissection's audit result, function by function, on hand cases: the per-unit flags
at their boundaries, the metrics of tiny row sets, the indicators behind each keyed rate, the
diff line's wording and which interval a rate gets (probe bootstrap or binomial)."""

from __future__ import annotations

import pytest
import torch

from nemaudit.audit.confidence import binomial_interval, repeated_interval
from nemaudit.audit.netdissect import bootstrap
from nemaudit.audit.netdissect.result import AuditResult, metrics_from_rows, unit_flags
from tests.test_confidence import ROWS

CATS = ["object", "part"]


def _flags(**kw):
    # 4 units; threshold 0.25 (exact in float32), so IoU == threshold is on the boundary
    c_lab = torch.tensor([0, 1, 2, 3])
    c_iou = torch.tensor([0.5, 0.125, 0.25, 0.5])
    k_lab = torch.tensor([0, 2, 1, 3])
    k_iou = torch.tensor([0.5, 0.25, 0.125, 0.375])
    return unit_flags(c_lab, c_iou, k_lab, k_iou, 0.25, **kw)


def test_unit_flags_boundaries_and_unlabelled_units():
    f = {k: v.tolist() for k, v in _flags().items()}
    assert set(f) == {"changed", "clean_detector", "corrupted_detector"}
    assert f["changed"] == [False, True, True, False]
    # label 0 (no concept) is never a detector, whatever its IoU; IoU == threshold is one
    assert f["clean_detector"] == [False, False, True, True]
    assert f["corrupted_detector"] == [False, True, False, True]


def test_unit_flags_targets():
    # unit 0: no target (0), and its corrupted label is 0 too: neither target nor hit
    f = {k: v.tolist() for k, v in _flags(targets=torch.tensor([0, 2, 2, 1])).items()}
    assert f["target"] == [False, True, True, True]  # target id 1 counts: only 0 means none
    assert f["target_hit"] == [False, True, False, False]


def test_unit_flags_of_resampled_probes_broadcast_the_targets():
    c_lab = torch.tensor([[1, 2], [1, 1]])
    iou = torch.full((2, 2), 0.5)
    f = unit_flags(c_lab, iou, torch.tensor([[2, 2], [1, 2]]), iou, 0.25,
                   targets=torch.tensor([2, 0]))
    assert f["target"].tolist() == [[True, False], [True, False]]
    assert f["target_hit"].tolist() == [[True, False], [False, False]]


def _one(det: bool, cat: str = "part") -> dict:
    return {"unit": 0, "changed": False, "clean_detector": det, "clean_category": cat,
            "corrupted_detector": det, "corrupted_category": cat, "target": None,
            "target_hit": False, "source_iou_drop": None}


def test_metrics_of_no_rows_and_of_one_row():
    m = metrics_from_rows([], CATS, targeted=False)
    assert m["units"] == 0 and m["flip_rate"] == 0.0 and m["changed"] == 0
    assert m["flip_rate_detectors"] is None and m["mean_source_iou_drop"] is None
    assert m["per_category_flip_rate"] == {"object": None, "part": None}
    assert m["detector_share"]["clean"] == {"object": 0.0, "part": 0.0, "all": 0.0}
    m = metrics_from_rows([_one(True)], CATS, targeted=False)
    # one unit, a part detector on both sides: every share is out of 1 unit
    assert m["detector_share"]["clean"] == {"object": 0.0, "part": 1.0, "all": 1.0}
    assert m["detector_share"]["corrupted"] == {"object": 0.0, "part": 1.0, "all": 1.0}
    assert m["detector_share_clean"] == 1.0 and m["xie_table"]["clean"]["P"] == 1.0


def _result(**kw) -> AuditResult:
    return AuditResult("l", {"kind": "pgd"}, ROWS,
                       metrics_from_rows(ROWS, CATS, targeted=True), **kw)


def test_indicators_of_keyed_detector_shares():
    r = _result()
    # clean part detectors: row 1 only, out of all 6 units (not the 2 clean "part" units)
    assert r.indicators("detector_share_clean", ("part",)) == [
        (False, True), (True, True), (False, True), (False, True), (False, True), (False, True)]
    # corrupted side: corrupted detectors whose *corrupted* category is object: rows 1 and 5
    assert r.counts("detector_share_corrupted", ("object",)) == (2, 6)
    # the Xie table: by initial, by full name, and All
    assert r.counts("xie_table", ("clean", "O")) == (3, 6)
    assert r.counts("xie_table", ("clean", "object")) == (3, 6)
    assert r.counts("xie_table", ("corrupted", "All")) == (2, 6)
    assert r.counts("detector_share", ("clean", "part")) == (1, 6)
    # no rate: wrong key counts for a metric, or a side that is none
    assert r.indicators("flip_rate", ("clean", "all")) is None
    assert r.indicators("detector_share", ("clean",)) is None
    assert r.indicators("detector_share", ("both", "all")) is None
    assert r.indicators("mean_source_iou_drop") is None


def _row(target=None, hit=False, corrupted="wheel"):
    return {"unit": 12, "clean_label": "car", "clean_iou": 0.081, "corrupted_label": corrupted,
            "corrupted_iou": 0.052, "target": target, "target_hit": hit}


def test_diff_line_wording():
    plain = AuditResult("l", {"kind": "gaussian"}, [], {})
    assert plain.diff_line(_row()) == "unit   12: car (0.081) → wheel (0.052)"
    assert plain.diff_line(_row(corrupted=None)) == "unit   12: car (0.081) → — (0.052)"
    assert plain.diff_line({**_row(), "clean_label": None}) == \
        "unit   12: — (0.081) → wheel (0.052)"
    # no "targeted" key: a target; targeted=False: the runner-up
    assert plain.diff_line(_row("bus")) == "unit   12: car (0.081) → wheel (0.052) [target bus]"
    runner = AuditResult("l", {"kind": "pgd", "targeted": False}, [], {})
    assert runner.diff_line(_row("bus")).endswith(" [runner-up bus]")
    assert runner.diff_line(_row("wheel", True)).endswith(" [runner-up wheel reached]")


def test_intervals_without_a_probe_bootstrap_are_binomial(monkeypatch):
    monkeypatch.setattr(bootstrap, "probe_interval", _never)
    r = _result()
    assert r.interval("flip_rate") == binomial_interval(3, 6, 0.95)  # default level 95%
    assert r.interval("flip_rate", level=0.9) == binomial_interval(3, 6, 0.9)
    assert r.interval("detector_share", ("clean", "part"), 0.8) == binomial_interval(1, 6, 0.8)
    assert r.interval("mean_source_iou_drop") is None


def _never(*a, **k):
    raise AssertionError(f"probe_interval called: {a}")


def test_intervals_with_a_probe_bootstrap(monkeypatch):
    calls = []

    def fake(boots, metric, level, k, n, **kw):
        calls.append((boots, metric, level, k, n))
        return None if metric == "flip_rate_detectors" else ("probe", metric)

    monkeypatch.setattr(bootstrap, "probe_interval", fake)
    b = object()
    r = _result(probe_bootstrap=b)
    assert r.interval("flip_rate", level=0.9) == ("probe", "flip_rate")
    assert calls == [([b], "flip_rate", 0.9, 3, 6)]
    calls.clear()
    assert r.interval("targeted_success_rate") == ("probe", "targeted_success_rate")
    assert calls == [([b], "targeted_success_rate", 0.95, 1, 2)]
    calls.clear()
    # keyed rates and metrics that are no rate never use it
    assert r.interval("per_category_flip_rate", ("part",), 0.9) == binomial_interval(1, 2, 0.9)
    assert r.interval("detector_share", ("clean", "part")) == binomial_interval(1, 6, 0.95)
    assert r.interval("mean_source_iou_drop") is None
    assert calls == []
    # the bootstrap has no interval for it: the binomial one
    assert r.interval("flip_rate_detectors", level=0.9) == binomial_interval(2, 4, 0.9)
    assert calls == [([b], "flip_rate_detectors", 0.9, 2, 4)]


def test_intervals_of_repeated_audits_with_and_without_every_draws_bootstrap(monkeypatch):
    calls = []

    def fake(boots, metric, level, k, n, **kw):
        calls.append((boots, metric, level, k, n))
        return ("probe", metric)

    monkeypatch.setattr(bootstrap, "probe_interval", fake)
    b1, b2 = object(), object()
    half = [dict(r, changed=r["unit"] < 1) for r in ROWS]  # 1 of 6 changed
    d1 = _result(probe_bootstrap=b1)
    d2 = AuditResult("l", {}, half, metrics_from_rows(half, CATS, True), probe_bootstrap=b2)
    r = _result(probe_bootstrap=b1, draws=[d1, d2])
    assert r.interval("flip_rate", level=0.9) == ("probe", "flip_rate")
    assert calls == [([b1, b2], "flip_rate", 0.9, 3 + 1, 6 + 6)]  # counts summed over draws
    calls.clear()
    d2.probe_bootstrap = None  # one draw without: units and draws only
    got = r.interval("flip_rate", level=0.9)
    assert calls == []
    want = repeated_interval([d1.indicators("flip_rate"), d2.indicators("flip_rate")], 0.9)
    assert got == want and got.covers == "units+draws"


@pytest.mark.parametrize("metric", ["flip_rate", "detector_share_clean"])
def test_interval_keys_may_be_a_list(metric):
    r = _result()
    assert r.interval(metric, []) == r.interval(metric, ())
