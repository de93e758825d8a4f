"""Rates with exact binomial intervals over units, and expectations judged at a confidence
bound (``flip_rate <= 0.05 @ 95%``): pass, warn (the point estimate holds, the bound does
not) or fail."""

from __future__ import annotations

import math

import pytest

from nemaudit.audit.confidence import binomial_interval
from nemaudit.audit.milan.run import MilanAuditResult
from nemaudit.audit.netdissect.result import AuditResult, metrics_from_rows
from nemaudit.expectations import ExpectationError, parse_expectation
from nemaudit.harness.properties import PropertyError, build_property


def test_clopper_pearson_hand_cases():
    # k = 0: [0, 1 − (α/2)^(1/n)]; k = n: [(α/2)^(1/n), 1]; the classic 1 − (0.025)^(1/10)
    iv = binomial_interval(0, 10, 0.95)
    assert iv.lo == 0.0 and iv.hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    iv = binomial_interval(10, 10, 0.95)
    assert iv.hi == 1.0 and iv.lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    # k = 1, n = 32: P(X >= 1 | p=lo) = 0.025 → lo = 1 − 0.975^(1/32); hi from P(X <= 1) = .025
    iv = binomial_interval(1, 32, 0.95)
    assert iv.lo == pytest.approx(1 - 0.975 ** (1 / 32), rel=1e-9)
    hi = iv.hi
    assert (1 - hi) ** 32 + 32 * hi * (1 - hi) ** 31 == pytest.approx(0.025, rel=1e-7)
    wider = binomial_interval(1, 32, 0.99)
    assert wider.lo < iv.lo and wider.hi > iv.hi  # more confidence, a wider interval
    with pytest.raises(ValueError):
        binomial_interval(3, 2)


def _row(unit, changed, det, cat="object", target=None, hit=False, kcat="object"):
    return {"unit": unit, "changed": changed, "clean_detector": det, "clean_category": cat,
            "corrupted_detector": det and not changed, "corrupted_category": kcat,
            "clean_label": "a", "corrupted_label": "b" if changed else "a", "clean_iou": 0.1,
            "corrupted_iou": 0.05, "source_iou_drop": 0.05, "target": target,
            "target_hit": hit}


ROWS = [_row(0, True, True), _row(1, False, True, "part"), _row(2, True, False, "part"),
        _row(3, False, False), _row(4, True, True, target="car", hit=True),
        _row(5, False, True, target="car")]


def test_counts_reproduce_every_rate_metric():
    """k/n behind each rate equals the metric the audit reports (an independent tally)."""
    m = metrics_from_rows(ROWS, ["object", "part"], targeted=True)
    r = AuditResult("l", {}, ROWS, m)
    assert r.counts("flip_rate") == (3, 6) and r.counts("flip_rate_detectors") == (2, 4)
    assert r.counts("targeted_success_rate") == (1, 2)
    assert r.counts("per_category_flip_rate", ("part",)) == (1, 2)
    for side in ("clean", "corrupted"):
        for cat in ("object", "part", "all"):
            k, n = r.counts("detector_share", (side, cat))
            assert k / n == m["detector_share"][side][cat]
        k, n = r.counts(f"detector_share_{side}")
        assert k / n == m[f"detector_share_{side}"]
    k, n = r.counts("xie_table", ("clean", "O"))
    assert k / n == m["xie_table"]["clean"]["O"]
    assert r.counts("mean_source_iou_drop") is None and r.interval("units") is None
    milan = MilanAuditResult("l", {}, [{"manipulated": True, "clean": "a", "corrupted": "b"},
                                       {"manipulated": False, "clean": "a", "corrupted": "a"}],
                             {})
    assert milan.counts("manipulated_rate") == (1, 2)
    assert milan.counts("description_change_rate") == (1, 2)


@pytest.mark.parametrize("text, status", [
    ("flip_rate <= 0.9 @ 95%", "passed"),     # 3/6 = 0.5, upper bound 0.88
    ("flip_rate <= 0.6 @ 95%", "warned"),     # the point holds, the bound does not
    ("flip_rate <= 0.6", "passed"),           # no @: the point decides
    ("flip_rate <= 0.4 @ 95%", "failed"),     # the point fails: no interval can save it
    ("flip_rate >= 0.05 @ 95%", "passed"),    # lower bound 0.118
    ("flip_rate >= 0.2 @ 95%", "warned"),
    ("flip_rate >= 0.2 @ 50%", "passed"),     # less confidence, a narrower interval
    ("flip_rate_detectors < 0.99 @ 0.9", "passed"),
])
def test_verdicts_at_the_bound(text, status):
    r = AuditResult("l", {}, ROWS, metrics_from_rows(ROWS, ["object", "part"], targeted=True))
    v = parse_expectation(text).judge(r.metrics, r)
    assert v.status == status
    if "@" in text and status != "failed":
        iv = binomial_interval(3, 6, v.interval.level) if text.startswith("flip_rate ") \
            else binomial_interval(2, 4, 0.9)
        assert (v.interval.lo, v.interval.hi) == (iv.lo, iv.hi)


@pytest.mark.parametrize("text, message", [
    ("flip_rate == 0.5 @ 95%", "one-sided"), ("flip_rate <= 0.5 @ 100%", "confidence level"),
    ("flip_rate <= 0.5 @", "confidence level"), ("units <= 5 @ 95%", "not a share of units"),
    ("milan.f1_mean >= 0.5 @ 95%", "not a share of units"),
])
def test_grammar_rejects_confidence_where_it_means_nothing(text, message):
    with pytest.raises(ExpectationError, match=message):
        parse_expectation(text)


def test_spec_files_take_confidence_expectations():
    p = build_property({"name": "n", "model": "m", "probe": "p", "layers": ["l"],
                        "corruption": "gaussian:std=0.1",
                        "expect": "milan.manipulated_rate <= 0.2 @ 90%"}, {}, 0,
                       __import__("pathlib").Path("nemaudit_x.toml"))
    assert p.expect[0].confidence == pytest.approx(0.9) and p.methods == ["milan"]
    with pytest.raises(PropertyError, match="field 'expect'"):
        build_property({"name": "n", "model": "m", "probe": "p", "layers": ["l"],
                        "corruption": "gaussian:std=0.1", "expect": "flip_rate < 1 @ 2"}, {}, 0,
                       __import__("pathlib").Path("nemaudit_x.toml"))
    assert math.isclose(parse_expectation("flip_rate < 1 @ 99.5 %").confidence, 0.995)


def test_repeated_interval_over_units_and_draws():
    from nemaudit.audit.confidence import repeated_interval

    all_hit = [[(True, True)] * 5 for _ in range(3)]
    iv = repeated_interval(all_hit)
    assert (iv.lo, iv.hi, iv.k, iv.n, iv.covers) == (1.0, 1.0, 15, 15, "units+draws")
    # unit u flips in draw r when (u + r) % 3 == 0; unit 4 is not in the pool
    draws = [[((u + r) % 3 == 0, u != 4) for u in range(5)] for r in range(6)]
    iv = repeated_interval(draws, 0.9)
    freq = [sum((u + r) % 3 == 0 for r in range(6)) / 6 for u in range(4)]
    assert iv.lo <= sum(freq) / 4 <= iv.hi and iv.n == 24
    assert repeated_interval(draws, 0.9) == iv  # seeded: the same bounds every time
    assert repeated_interval(draws, 0.99).hi >= iv.hi


def test_repeats_draw_the_corruption_with_derived_seeds():
    from pathlib import Path

    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor, RequestError

    toys = str(Path(__file__).with_name("toys.py"))
    a = Auditor("cpu", batch_size=32)
    kw = {"model": f"{toys}:ToyNet", "probe": f"python:{toys}:ToyProbe(n=32)",
          "layer": "layer2", "normalize": "none", "corruption": "gaussian:std=0.1"}
    one = a.run(AuditRequest.build("netdissect", **kw))
    rep = a.run(AuditRequest.build("netdissect", repeats=4, **kw))
    per_draw = [d["flip_rate"] for d in rep.meta["repeats"]["per_draw"]]
    assert per_draw[0] == one.metrics["flip_rate"] and len(set(rep.meta["repeats"]["seeds"])) == 4
    assert rep.metrics["flip_rate"] == pytest.approx(sum(per_draw) / 4)
    assert rep.metrics["units"] == one.metrics["units"] and rep.rows == one.rows
    iv = rep.interval("flip_rate", level=0.95)
    assert iv.covers == "units+draws" and iv.n == 4 * one.metrics["units"]
    assert parse_expectation("flip_rate <= 1 @ 95%").judge(rep.metrics, rep).status == "passed"
    with pytest.raises(RequestError, match="repeats=2"):
        a.run(AuditRequest.build("radius", repeats=2, **kw))
