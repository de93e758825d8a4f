"""The probe bootstrap: per-image tallies that add up to the dissection's, re-weighted probes
that equal re-dissecting the resampled probe at fixed thresholds, a paired and seeded
resampling, and intervals over units and probe images through every front door."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect.bootstrap import (
    CHUNK,
    bootstrap,
    multinomial_weights,
    probe_interval,
    resample_flags,
)
from nemaudit.audit.netdissect.result import RATE_FLAGS, compare
from nemaudit.explain.netdissect import DissectConfig, dissect_tensors, label_category
from nemaudit.explain.netdissect.images import ImageTallies, image_tallies_tensors
from tests.test_netdissect import CATS, CONCEPTS, tiny_case

LAB_CAT = label_category(CONCEPTS, CATS)


def _random_case(seed: int, n: int = 6, units: int = 3, size: int = 8):
    """Random maps at half the label resolution (so masks are upsampled), pixel labels on two
    stacked maps, image-level labels including a nameless-category flag (−k−1)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, units, size // 2, size // 2, generator=g)
    pix = torch.randint(0, 5, (n, 2, size, size), generator=g)
    pix[n // 2] = 0  # an image without pixel labels
    img = torch.tensor([[3], [0], [-4], [3], [0], [-1]] * (n // 6 + 1))[:n]
    return acts, pix, img


def _tally_fields(t):
    return [t.both, t.unit_cat, t.unit_pixels, t.label]


def _column(tallies: ImageTallies, x: int):
    w = torch.zeros(1, tallies.images, dtype=torch.float64)
    w[0, x] = 1
    return tallies.weighted(w)


@pytest.mark.parametrize("case", ["tiny", 0, 1, 2])
def test_per_image_tallies_are_each_images_own_tally_and_add_up_exactly(case):
    acts, pix, img = tiny_case() if case == "tiny" else _random_case(case)
    thr = torch.tensor([0.5, 0.5]) if case == "tiny" else torch.tensor([0.6, 0.8, 0.95])
    full = dissect_tensors(acts, pix, img, CONCEPTS, CATS, thresholds=thr)
    per = image_tallies_tensors(acts, pix, img, thr, LAB_CAT, len(CATS))
    total = per.total()
    for a, b in zip(_tally_fields(total), _tally_fields(full.tally)):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    assert total.images == per.images == acts.shape[0] == _column(per, 0).images
    for x in range(acts.shape[0]):  # brute force: image x dissected alone
        alone = dissect_tensors(acts[x:x + 1], pix[x:x + 1], img[x:x + 1], CONCEPTS, CATS,
                                thresholds=thr).tally
        for a, b in zip(_tally_fields(_column(per, x)), _tally_fields(alone)):
            assert torch.equal(a[0], b.double())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 50), weights=st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_reweighting_equals_redissecting_the_resampled_probe_at_fixed_thresholds(seed, weights):
    """The conditional bootstrap's invariant: a probe where image x counts w_x times has the
    tally (and so the IoUs and concepts) of the probe with image x repeated w_x times, at
    the measured thresholds."""
    acts, pix, img = _random_case(seed)
    thr = torch.tensor([0.55, 0.7, 0.9])
    per = image_tallies_tensors(acts, pix, img, thr, LAB_CAT, len(CATS))
    w = torch.tensor(weights)
    got = per.weighted(w[None].double())
    if int(w.sum()) == 0:
        assert all(float(f.abs().sum()) == 0 for f in _tally_fields(got))
        return
    idx = torch.arange(6).repeat_interleave(w)
    ref = dissect_tensors(acts[idx], pix[idx], img[idx], CONCEPTS, CATS, thresholds=thr)
    for a, b in zip(_tally_fields(got), _tally_fields(ref.tally)):
        assert torch.equal(a[0], b.double())
    assert torch.equal(got.iou(LAB_CAT)[0], ref.iou())


def test_resampled_concepts_follow_the_dissections_tie_rule():
    """best_concepts (used for every resample) is Dissection.ranking's first column: ties to
    the lower id, id 0 when nothing scores."""
    from nemaudit.explain.netdissect.dissect import best_concepts

    iou = torch.tensor([[[0.0, 0.2, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.0, 0.3, 0.1, 0.3]]],
                       dtype=torch.float64)
    lab, best = best_concepts(iou)
    assert lab.tolist() == [[2, 0, 1]] and best.tolist() == [[0.5, 0.0, 0.3]]
    vals, idx = iou[0].sort(dim=1, descending=True, stable=True)
    assert torch.equal(torch.where(vals[:, 0] > 0, idx[:, 0], 0), lab[0])


def _two_sides(seed: int = 0):
    """A clean and a noisy dissection of the same random case, with their per-image
    tallies."""
    acts, pix, img = _random_case(seed, n=12, units=5)
    noisy = acts + 0.15 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(9))
    cfg = DissectConfig(eta=0.05, iou_threshold=0.01)
    sides = []
    for a in (acts, noisy):
        d = dissect_tensors(a, pix, img, CONCEPTS, CATS, config=cfg)
        sides.append((d, image_tallies_tensors(a, pix, img, d.thresholds, LAB_CAT, len(CATS))))
    return sides


def test_all_ones_weights_reproduce_the_measured_rows_and_rates():
    (clean, tc), (noisy, tk) = _two_sides()
    rows, metrics = compare(clean, noisy)
    units = torch.arange(clean.units)
    flags = resample_flags(tc, tk, LAB_CAT, clean.config.iou_threshold,
                           torch.ones(2, tc.images), units)
    for key in ("changed", "clean_detector", "corrupted_detector"):
        assert flags[key].tolist() == [[r[key] for r in rows]] * 2
    assert flags["changed"].any()  # the case is not trivial
    boot = bootstrap(tc, tk, LAB_CAT, clean.config.iou_threshold, range(clean.units), 3)
    boot.flags = {k: v.cpu().numpy() for k, v in flags.items()}  # the all-ones "resamples"
    for metric in ("flip_rate", "flip_rate_detectors", "detector_share_clean"):
        iv = probe_interval([boot], metric, 0.9, units=False)
        assert iv.lo == iv.hi == pytest.approx(metrics[metric]) and iv.covers == "probe"


def test_resampling_is_paired_and_seeded():
    (clean, tc), (noisy, tk) = _two_sides(1)
    thr = clean.config.iou_threshold
    # the same tallies on both sides: no resample may flip a unit (unpaired weights would)
    same = bootstrap(tc, tc, LAB_CAT, thr, range(clean.units), 40)
    assert not same.flags["changed"].any()
    a = bootstrap(tc, tk, LAB_CAT, thr, range(clean.units), 70, seed=5)
    b = bootstrap(tc, tk, LAB_CAT, thr, range(clean.units), 70, seed=5)
    assert all(np.array_equal(a.flags[k], b.flags[k]) for k in a.flags)
    assert probe_interval([a], "flip_rate", 0.9) == probe_interval([b], "flip_rate", 0.9)
    c = bootstrap(tc, tk, LAB_CAT, thr, range(clean.units), 70, seed=6)
    assert any(not np.array_equal(a.flags[k], c.flags[k]) for k in a.flags)
    # resample b's weights depend on (seed, b) only, not on how resamples are batched
    whole = multinomial_weights(12, 0, 2 * CHUNK + 5, seed=3)
    parts = np.concatenate([multinomial_weights(12, s, min(s + 7, 2 * CHUNK + 5), seed=3)
                            for s in range(0, 2 * CHUNK + 5, 7)])
    assert np.array_equal(whole, parts) and (whole.sum(axis=1) == 12).all()


def test_the_interval_widens_with_the_level_and_reports_what_it_covers():
    (clean, tc), (noisy, tk) = _two_sides(2)
    boot = bootstrap(tc, tk, LAB_CAT, clean.config.iou_threshold, range(clean.units), 300)
    narrow, wide = (probe_interval([boot], "flip_rate", lv, 1, 5) for lv in (0.5, 0.95))
    assert wide.lo <= narrow.lo <= narrow.hi <= wide.hi
    assert (wide.k, wide.n, wide.covers) == (1, 5, "units+probe")
    two = probe_interval([boot, boot], "flip_rate", 0.95)
    assert two.covers == "units+draws+probe" and (two.lo, two.hi) == (wide.lo, wide.hi)
    assert probe_interval([boot], "targeted_success_rate") is None  # no targets: no flags


def test_units_are_resampled_too_unless_asked_not_to():
    """Resamples that agree on every unit leave no probe uncertainty: the probe-only interval
    is the point, and the units+probe one still has the units' spread."""
    from nemaudit.audit.netdissect.bootstrap import ProbeBootstrap

    changed = np.tile([True, False, False, False, True, False, False, False], (400, 1))
    boot = ProbeBootstrap({"changed": changed, "clean_detector": changed | True}, seed=0)
    only_probe = probe_interval([boot], "flip_rate", 0.9, 2, 8, units=False)
    assert (only_probe.lo, only_probe.hi, only_probe.covers) == (0.25, 0.25, "probe")
    both = probe_interval([boot], "flip_rate", 0.9, 2, 8)
    assert both.lo < 0.25 < both.hi and both.covers == "units+probe"
    assert probe_interval([boot], "flip_rate_detectors", 0.9, 2, 8) == both


# -- through the audit runners (toy model) and the Auditor (embedded default) -----------

@pytest.fixture(scope="module")
def toy():
    from nemaudit.model.load import NormalizedModel
    from tests.toys import ToyNet, ToyProbe

    return NormalizedModel(ToyNet(), "none"), ToyProbe(40)


CFG = DissectConfig(eta=0.02, batch_size=8)


@pytest.mark.parametrize("spec, kw, mode", [
    ("gaussian:std=0.2,fraction=1.0", {}, "full"),
    ("gaussian:std=0.2,fraction=0.3", {}, "incremental"),
    ("pgd:eps=16/255,steps=5", {"slack": 2.0}, "per-unit incremental"),
    ("pgd:eps=16/255,steps=5", {"slack": 1.0}, "per-unit incremental"),  # recomputed in full
])
def test_every_audit_path_bootstraps_from_pairs_that_add_up(toy, spec, kw, mode):
    """Each runner's corrupted pairs (full, incremental, per unit, recomputed in full) give
    per-image tallies whose sum is the measured tally (checked inside the runner, which
    raises otherwise); the bootstrap changes no row or metric."""
    model, probe = toy
    units = [0, 1, 12] if spec.startswith("pgd") else None
    plain = audit(model, "layer2", probe, spec, AuditConfig(dissect=CFG, **kw), units=units)
    r = audit(model, "layer2", probe, spec, AuditConfig(dissect=CFG, bootstrap=60, **kw),
              units=units)
    assert r.meta["mode"] == mode and "skipped" not in r.meta["bootstrap"]
    summary = r.meta["bootstrap"]
    assert set(summary) == {"resamples", "seed", "covers", "conditional_on", "tally_mib",
                            "seconds"}
    assert (summary["resamples"], summary["seed"], summary["covers"],
            summary["conditional_on"]) == (60, 0, "units+probe", "thresholds")
    assert 0 < summary["tally_mib"] < 1 and round(summary["tally_mib"], 3) == \
        summary["tally_mib"]
    assert 0 <= summary["seconds"] < 600
    assert r.probe_bootstrap.resamples == 60  # every chunk of resamples computed
    assert all(v.shape[0] == 60 for v in r.probe_bootstrap.flags.values())
    assert r.rows == plain.rows and r.metrics == plain.metrics
    if kw.get("slack") == 1.0:
        assert r.corrupted.meta.get("recomputed_in_full")
    assert r.corrupted.state is None  # the pairs kept for the bootstrap are not carried
    iv = r.interval("flip_rate", level=0.9)
    assert iv.covers == "units+probe" and (iv.k, iv.n) == r.counts("flip_rate")
    if spec.startswith("pgd"):
        assert r.interval("targeted_success_rate").covers == "units+probe"
    assert r.interval("detector_share", ("clean", "all")).covers == "units"  # keyed


def test_an_audit_where_nothing_changed_resamples_the_clean_pairs_on_both_sides(toy):
    """No image poisoned: the corrupted side is the clean dissection itself, its pairs are
    resampled on both sides (not skipped, and the clean state is not dropped on the way), so
    every resample has the same detectors on both sides and no unit changes."""
    model, probe = toy
    r = audit(model, "layer2", probe, "gaussian:std=0.2,fraction=0.0",
              AuditConfig(dissect=CFG, bootstrap=30))
    assert r.meta["mode"] == "unchanged" and r.corrupted is r.clean
    assert "skipped" not in r.meta["bootstrap"] and r.probe_bootstrap.resamples == 30
    flags = r.probe_bootstrap.flags
    assert flags["clean_detector"].any() and not flags["changed"].any()
    assert np.array_equal(flags["clean_detector"], flags["corrupted_detector"])
    iv = r.interval("flip_rate")
    assert (iv.lo, iv.hi, iv.covers) == (0.0, 0.0, "units+probe")


def test_a_tally_over_budget_skips_the_bootstrap_with_a_warning(toy):
    from nemaudit.errors import NemauditWarning

    model, probe = toy
    with pytest.warns(NemauditWarning, match="no probe bootstrap"):
        r = audit(model, "layer2", probe, "gaussian:std=0.2,fraction=1.0",
                  AuditConfig(dissect=CFG, bootstrap=20, bootstrap_budget_mb=1e-4))
    assert "MiB" in r.meta["bootstrap"]["skipped"] and r.probe_bootstrap is None
    assert set(r.meta["bootstrap"]) == {"resamples", "seed", "skipped"}
    assert r.meta["bootstrap"]["resamples"] == 20
    assert r.interval("flip_rate").covers == "units"


@pytest.mark.parametrize("spec, kw, mode", [
    ("gaussian:std=0.2,fraction=1.0", {}, "full"),
    ("gaussian:std=0.2,fraction=0.3", {}, "full"),  # incremental needs the cache
    ("pgd:eps=16/255,steps=5", {"slack": 2.0}, "per-unit incremental"),
])
def test_an_overflowing_candidate_cache_skips_the_bootstrap_and_says_which_budget(
        toy, spec, kw, mode):
    """Without the clean candidate cache every path still gives the exact rows (a per-unit
    attack recomputes each attacked unit in full instead of failing after the attack), and
    the bootstrap is skipped with one warning naming the budget."""
    from nemaudit.errors import NemauditWarning

    model, probe = toy
    units = [0, 1, 12] if spec.startswith("pgd") else None
    cfg = DissectConfig(eta=CFG.eta, batch_size=CFG.batch_size, cache_budget_mb=1e-6)
    within = audit(model, "layer2", probe, spec, AuditConfig(dissect=CFG, **kw), units=units)
    with pytest.warns(NemauditWarning) as warned:
        r = audit(model, "layer2", probe, spec, AuditConfig(dissect=cfg, bootstrap=20, **kw),
                  units=units)
    why = ("no per-image pairs to resample: a candidate cache exceeded its budget "
           "(cache_budget_mb=1e-06); raise it for a probe bootstrap")
    assert r.meta["bootstrap"] == {"resamples": 20, "seed": 0, "skipped": why}
    assert [str(w.message) for w in warned] == [
        f"nemaudit: no probe bootstrap ({why}); rate intervals cover units only"]
    assert r.meta["mode"] == mode and r.probe_bootstrap is None
    assert r.rows == within.rows and r.metrics == within.metrics
    if units is not None:
        assert r.meta["units_recomputed_in_full"] == len(units)
        assert r.corrupted.meta["recomputed_in_full"] == units
        assert r.clean.state is None or r.clean.state.maps is None


def test_auditor_bootstrap_on_the_embedded_default():
    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor
    from nemaudit.errors import SpecError
    from nemaudit.expectations import parse_expectation

    kw = {"model": "nemaudit:conceptnet", "probe": "synthetic:n=40,seed=0", "layer": "layer1",
          "corruption": "gaussian:std=0.05"}
    a = Auditor("cpu")
    r = a.run(AuditRequest.build("netdissect", bootstrap=200, **kw))
    point = r.metrics["flip_rate"]
    iv = r.interval("flip_rate", level=0.95)
    assert iv.covers == "units+probe" and math.isfinite(iv.lo) and math.isfinite(iv.hi)
    assert iv.lo <= point <= iv.hi and iv.hi > iv.lo
    assert r.meta["bootstrap"]["resamples"] == 200
    v = parse_expectation(f"flip_rate <= {min(1.0, iv.hi + 0.01):.4f} @ 95%").judge(r.metrics, r)
    assert v.status == "passed" and v.interval.covers == "units+probe"
    v = parse_expectation(f"flip_rate <= {max(point, iv.hi - 0.01):.4f} @ 95%").judge(r.metrics, r)
    assert v.status == "warned"  # the point holds, the probe-wide bound does not
    again = Auditor("cpu").run(AuditRequest.build("netdissect", bootstrap=200, **kw))
    assert again.interval("flip_rate", level=0.95) == iv  # seeded
    with pytest.raises(SpecError, match="bootstrap="):
        AuditRequest.build("netdissect", bootstrap=-1, **kw)
    assert set(RATE_FLAGS) >= {"flip_rate", "flip_rate_detectors"}


def test_repeated_audits_with_a_bootstrap_cover_units_draws_and_probe():
    from pathlib import Path

    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor

    toys = str(Path(__file__).with_name("toys.py"))
    kw = {"model": f"{toys}:ToyNet", "probe": f"python:{toys}:ToyProbe(n=32)",
          "layer": "layer2", "normalize": "none", "corruption": "gaussian:std=0.1"}
    r = Auditor("cpu", batch_size=32).run(AuditRequest.build("netdissect", repeats=3,
                                                             bootstrap=40, **kw))
    assert all(d.probe_bootstrap is not None for d in r.draws)
    iv = r.interval("flip_rate", level=0.9)
    assert iv.covers == "units+draws+probe" and iv.n == 3 * r.metrics["units"]
    assert 0 <= iv.lo <= iv.hi <= 1


def test_spec_files_take_the_bootstrap_field():
    from pathlib import Path

    from nemaudit.harness.properties import PropertyError, build_property

    table = {"name": "n", "model": "m", "probe": "p", "layers": ["layer2"],
             "corruption": "gaussian:std=0.1", "expect": "flip_rate <= 0.2 @ 95%"}
    p = build_property({**table, "bootstrap": 500}, {}, 0, Path("nemaudit_x.toml"))
    assert p.request("netdissect", "layer2").get("bootstrap") == 500
    with pytest.raises(PropertyError, match="field 'bootstrap'"):
        build_property({**table, "bootstrap": -1}, {}, 0, Path("nemaudit_x.toml"))


def test_per_image_tallies_in_chunks_with_several_image_labels(monkeypatch):
    """Pairs tallied a few at a time (a tiny scratch budget) and images with two image-level
    labels, concept 1 among them, give the same tallies as the dissection; the sparse fields
    hold no explicit zero (their size is what the budget counts)."""
    from nemaudit.explain.netdissect import images as images_mod

    acts, pix, _ = _random_case(4)
    img = torch.tensor([[1, 3], [0, 0], [2, 1], [3, 0], [1, 1], [0, 2]])
    thr = torch.tensor([0.6, 0.8, 0.95])
    full = dissect_tensors(acts, pix, img, CONCEPTS, CATS, thresholds=thr)
    whole = image_tallies_tensors(acts, pix, img, thr, LAB_CAT, len(CATS))
    monkeypatch.setattr(images_mod, "_SCRATCH_BYTES", 8 * (len(CONCEPTS) + len(CATS) + 1) * 2)
    chunked = image_tallies_tensors(acts, pix, img, thr, LAB_CAT, len(CATS))
    for per in (whole, chunked):
        for a, b in zip(_tally_fields(per.total()), _tally_fields(full.tally)):
            assert torch.equal(a, b)
        for field in (per.both, per.unit_cat, per.unit_pixels, per.label):
            assert field._nnz() == int((field.to_dense() != 0).sum())
    assert chunked.nbytes == whole.nbytes > 0


def test_the_tally_budget_counts_every_entry_up_to_its_limit():
    from nemaudit.explain.netdissect.images import TallyBudgetError, _Budget

    b = _Budget(3 * 2**20)
    b.spend(3 * 2**20 // 24 - 1)
    b.spend(1)  # exactly at the limit: allowed
    with pytest.raises(TallyBudgetError, match="^per-image tallies need more than 3 MiB of "
                       r"sparse entries \(24 bytes each: one per label inside each fired mask "
                       r"of each image\); raise the budget or use fewer images or units$"):
        b.spend(1)


def test_per_image_tallies_where_no_unit_fires():
    acts, pix, img = _random_case(5)
    thr = torch.full((3,), 2.0)  # above every activation: no mask, no pair
    full = dissect_tensors(acts, pix, img, CONCEPTS, CATS, thresholds=thr)
    per = image_tallies_tensors(acts, pix, img, thr, LAB_CAT, len(CATS))
    for a, b in zip(_tally_fields(per.total()), _tally_fields(full.tally)):
        assert torch.equal(a, b)
    assert per.both._nnz() == per.unit_cat._nnz() == per.unit_pixels._nnz() == 0
    assert per.label._nnz() > 0 and per.both.dtype == torch.float64
