"""Audits on a toy model: incremental == full, per-unit attacks, metrics, cache safety."""

from __future__ import annotations

import pytest
import torch

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect.cache import CleanRunCache
from nemaudit.audit.netdissect.result import compare
from nemaudit.errors import SpecError
from nemaudit.explain.netdissect import DissectConfig, dissect_tensors
from nemaudit.model.load import NormalizedModel
from tests.test_netdissect import CATS, CONCEPTS
from tests.toys import ToyNet, ToyProbe

CFG = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8))


@pytest.fixture(scope="module")
def toy():
    return NormalizedModel(ToyNet(), "none"), ToyProbe(40)


@pytest.mark.parametrize("spec", ["gaussian:std=0.2,fraction=0.3", "uniform:std=0.3,fraction=0.2",
                                  "fgsm:eps=8/255,fraction=0.25"])
def test_incremental_audit_equals_full_recompute(toy, spec):
    model, probe = toy
    inc = audit(model, "layer2", probe, spec, CFG)
    full = audit(model, "layer2", probe, spec, AuditConfig(dissect=CFG.dissect, incremental=False))
    assert inc.meta["mode"] == "incremental" and full.meta["mode"] == "full"
    assert inc.rows == full.rows
    assert inc.metrics == full.metrics


def test_noise_audit_reports_flips_and_accuracy(toy):
    model, probe = toy
    r = audit(model, "layer2", probe, "gaussian:std=0.3,fraction=1.0,seed=3", CFG)
    assert r.meta["poisoned_images"] == len(probe)
    assert 0 < r.flip_rate <= 1
    assert r.flip_rate == pytest.approx(sum(x["changed"] for x in r.rows) / len(r.rows))
    assert r.metrics["accuracy_clean"] is not None and r.metrics["accuracy_corrupted"] is not None
    again = audit(model, "layer2", probe, "gaussian:std=0.3,fraction=1.0,seed=3", CFG)
    assert again.rows == r.rows  # same seed, same result


def test_designed_attack_lowers_objective_and_beats_equal_budget_noise(toy):
    model, probe = toy
    pgd = audit(model, "layer2", probe, "pgd:eps=16/255,steps=10", CFG)
    assert pgd.meta["objective_mean_after"] < pgd.meta["objective_mean_before"]
    assert pgd.metrics["units"] == pgd.meta["attacked_units"] > 0
    assert all(r["target"] for r in pgd.rows)
    noise = audit(model, "layer2", probe, "bernoulli:std=16/255", CFG, units=[r["unit"] for r in pgd.rows])
    assert pgd.flip_rate > noise.flip_rate
    # the source concept's IoU falls on average
    assert pgd.metrics["mean_source_iou_drop"] > 0


def test_targeted_attack_reports_success_rate(toy):
    model, probe = toy
    r = audit(model, "layer2", probe, "pgd:eps=16/255,steps=10,targeted=true,target=disc", CFG)
    hits = [x["target_hit"] for x in r.rows]
    assert r.metrics["targeted_success_rate"] == pytest.approx(sum(hits) / len(hits))
    assert all(x["clean_label"] != "disc" for x in r.rows)


def test_bad_units_and_targets_are_named(toy):
    model, probe = toy
    with pytest.raises(SpecError, match="99"):
        audit(model, "layer2", probe, "gaussian:std=0.1", CFG, units=[99])
    with pytest.raises(SpecError, match="unicorn"):
        audit(model, "layer2", probe, "pgd:eps=4/255,targeted=true,target=unicorn", CFG)


def test_compare_metrics_by_hand():
    pix = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    pix[0, 0, 0] = 1  # red on the top row of image 0
    pix[1, 0, 1] = 2  # car on the bottom row of image 1
    img = torch.zeros(2, 0, dtype=torch.int64)
    acts = torch.zeros(2, 2, 2, 2)
    acts[0, 0, 0] = 1  # unit 0 fires on red
    acts[1, 1, 1] = 1  # unit 1 fires on car
    clean = dissect_tensors(acts, pix, img, CONCEPTS, CATS, thresholds=torch.tensor([0.5, 0.5]))
    moved = acts.clone()
    moved[:, 0] = acts[:, 1]  # unit 0 now fires on car as well
    corr = dissect_tensors(moved, pix, img, CONCEPTS, CATS, thresholds=torch.tensor([0.5, 0.5]))
    rows, m = compare(clean, corr, targets={0: 2, 1: 1})
    assert [r["changed"] for r in rows] == [True, False]
    assert m["flip_rate"] == 0.5 and m["flip_rate_detectors"] == 0.5
    assert m["targeted_success_rate"] == 0.5
    assert rows[0]["source_iou_after"] == 0.0 and rows[0]["source_iou_drop"] == 1.0
    assert m["per_category_flip_rate"] == {"color": 1.0, "object": 0.0, "part": None, "scene": None}
    assert m["detector_share"]["clean"] == {"color": 0.5, "object": 0.5, "part": 0.0, "scene": 0.0,
                                            "all": 1.0}
    assert m["xie_table"]["corrupted"] == {"C": 0.0, "S": 0.0, "P": 0.0, "O": 1.0, "All": 1.0}


def test_baseline_cache_is_reused_and_survives_corruption(toy, tmp_path):
    model, probe = toy
    a = audit(model, "layer2", probe, "gaussian:std=0.2,fraction=0.3", CFG, cache_dir=tmp_path)
    files = list(tmp_path.glob("clean-*.pt"))
    assert len(files) == 1
    b = audit(model, "layer2", probe, "gaussian:std=0.2,fraction=0.3", CFG, cache_dir=tmp_path)
    assert a.rows == b.rows
    files[0].write_bytes(files[0].read_bytes()[:100])  # a truncated entry
    with pytest.warns(UserWarning, match="unreadable clean-run cache"):
        c = audit(model, "layer2", probe, "gaussian:std=0.2,fraction=0.3", CFG, cache_dir=tmp_path)
    assert c.rows == a.rows
    assert len(list(tmp_path.glob("clean-*.pt"))) == 1


def test_interrupted_cache_write_leaves_nothing(toy, tmp_path, monkeypatch):
    model, probe = toy

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        audit(model, "layer2", probe, "gaussian:std=0.2", CFG, cache_dir=tmp_path)
    # no entry and no half-written file: only the folder's tag and the entry's lock
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[0] == "CACHEDIR.TAG" and all(n.endswith(".pt.lock") for n in left[1:])
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith(
        "Signature: 8a477f597d28d172789f06886806bc55")


def test_cache_key_changes_with_weights(toy, tmp_path):
    model, probe = toy
    audit(model, "layer2", probe, "gaussian:std=0.2", CFG, cache_dir=tmp_path)
    other = NormalizedModel(ToyNet(seed=1), "none")
    audit(other, "layer2", probe, "gaussian:std=0.2", CFG, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("clean-*.pt"))) == 2
    assert CleanRunCache(None).load("x") is None


def test_default_probe_fingerprint_sees_content():
    assert ToyProbe(20, seed=0).fingerprint() == ToyProbe(20, seed=0).fingerprint()
    assert ToyProbe(20, seed=0).fingerprint() != ToyProbe(20, seed=1).fingerprint()


@pytest.mark.parametrize("slack", [1.0, 2.0])
def test_per_unit_attack_rows_equal_each_units_own_full_dissection(toy, slack):
    """Each attacked unit's corrupted row equals a full dissection of a probe in which only
    that unit's poisoned images are replaced — via the incremental path or, when the attack
    moved too many top values (slack 1), the exact full recompute."""
    from nemaudit.corrupt.spec import parse_corruption
    from nemaudit.explain.netdissect import dissect

    model, probe = toy
    cfg = AuditConfig(dissect=CFG.dissect, slack=slack)
    r = audit(model, "layer2", probe, "pgd:eps=16/255,steps=5", cfg, units=[0, 1, 12])
    if slack == 1.0:
        assert r.corrupted.meta.get("recomputed_in_full")  # the fallback ran
    atk = parse_corruption("pgd:eps=16/255,steps=5").bind(probe)
    for row in r.rows:
        u = row["unit"]
        src = probe.concept_id(row["clean_label"])
        tgt = probe.concept_id(row["target"])

        def one_unit(batch, u=u, src=src, tgt=tgt):
            return atk.attack_units(model, "layer2", batch, [u], [src], {u: tgt}).images[0]

        full = dissect(model, "layer2", probe, CFG.dissect, transform=one_unit)
        assert full.thresholds[u] == r.corrupted.thresholds[u]
        assert torch.equal(full.tally.both[u], r.corrupted.tally.both[u])
        assert torch.equal(full.tally.unit_cat[u], r.corrupted.tally.unit_cat[u])
