"""The Network Dissection audit runner, exactly: every AuditConfig field, the modes, the
provenance, predictions and accuracy, unit selection, the clean-run cache and the errors.

Expected values come from an independent computation: a full ``dissect()`` on the corrupted
probe, a one-image-at-a-time loop over the probe, or a hand count.
"""

from __future__ import annotations

import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect import run as ndrun
from nemaudit.audit.netdissect.cache import clean_run_key
from nemaudit.audit.netdissect.result import compare
from nemaudit.corrupt.base import Corruption, UnitCorruption
from nemaudit.corrupt.spec import bound_corruption
from nemaudit.errors import SpecError
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import ProbeBatch
from tests.test_metric_meanings import ColourNet, ColourProbe
from tests.toys import ToyNet, ToyProbe

DC = DissectConfig(eta=0.02, batch_size=8)
CFG = AuditConfig(dissect=DC)
LAYER = "layer2"
CPU = torch.device("cpu")


class CountingNet(ToyNet):
    """ToyNet that counts its forward calls (a LayerRecorder stopping early still calls it)."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.fixture(scope="module")
def toy():
    return NormalizedModel(ToyNet(), "none"), ToyProbe(40)


@pytest.fixture(scope="module")
def clean(toy):
    model, probe = toy
    return dissect(model, LAYER, probe, DC)


def _batch(probe, i):
    it = probe[i]
    return ProbeBatch(it.image[None], it.pixel_labels[None], it.image_labels[None],
                      torch.tensor([i]), torch.tensor([it.target]))


def _full_corrupted(model, probe, spec, cfg=DC):
    corr = bound_corruption(spec, probe)
    return dissect(model, LAYER, probe, cfg, transform=lambda b: corr(b, model))


def _same_rows(a, b):
    assert [r["unit"] for r in a] == [r["unit"] for r in b]
    for x, y in zip(a, b, strict=True):
        for k, v in x.items():
            if isinstance(v, float):
                assert y[k] == pytest.approx(v, abs=1e-6), (x["unit"], k)
            else:
                assert y[k] == v, (x["unit"], k)


# --------------------------------------------------------------------------- predictions

def test_predict_matches_one_image_at_a_time(toy):
    model, probe = toy
    want = [int(model(probe[i].image[None]).argmax(1)) for i in range(len(probe))]
    pred, tgt = ndrun.predict(model, probe, CPU, batch_size=3)
    assert pred.tolist() == want
    assert tgt.tolist() == [probe[i].target for i in range(len(probe))]
    pred, tgt = ndrun.predict(model, probe, CPU, batch_size=3, indices=[7, 2, 30, 5])
    assert pred.tolist() == [want[i] for i in (7, 2, 30, 5)]
    assert tgt.tolist() == [probe[i].target for i in (7, 2, 30, 5)]
    corr = bound_corruption("gaussian:std=0.8,seed=4", probe)
    pred, _ = ndrun.predict(model, probe, CPU, batch_size=4, indices=[1, 3, 6],
                            transform=lambda b: corr(b, model))
    assert pred.tolist() == [int(model(corr(_batch(probe, i), model)).argmax(1))
                             for i in (1, 3, 6)]
    pred, tgt = ndrun.predict(model, probe, CPU, indices=[])
    assert pred.dtype == tgt.dtype == torch.long and pred.numel() == tgt.numel() == 0


def test_classifies_probe_needs_names_a_target_and_matching_classes():
    probe = ToyProbe(4)  # image 0 is a box: target 0 (a real class)
    net = ToyNet()
    assert ndrun._classifies_probe(net, probe)
    net.meta = None
    assert ndrun._classifies_probe(net, probe)
    net.meta = {"class_names": ["a", "b"]}
    assert ndrun._classifies_probe(net, probe)
    net.meta = {"class_names": ["a", "b", "c"]}
    assert not ndrun._classifies_probe(net, probe)
    nameless = ToyProbe(4)
    nameless.class_names = []
    assert not ndrun._classifies_probe(ToyNet(), nameless)

    class Unlabelled(ToyProbe):
        def __getitem__(self, i):
            import dataclasses
            return dataclasses.replace(super().__getitem__(i), target=-1)

    assert not ndrun._classifies_probe(ToyNet(), Unlabelled(4))
    three = ToyNet()
    three.meta = {"class_names": ["a", "b", "c"]}  # not the probe's classes: no accuracy
    r = audit(three, LAYER, ToyProbe(8), "gaussian:std=0.3,fraction=0.5", CFG)
    assert r.metrics["accuracy_clean"] is None and r.metrics["accuracy_corrupted"] is None
    r = audit(ToyNet(), LAYER, Unlabelled(8), "gaussian:std=0.3,fraction=0.5", CFG)
    assert r.metrics["accuracy_clean"] is None and r.metrics["accuracy_corrupted"] is None


def _accuracies(model, probe, spec):
    corr = bound_corruption(spec, probe)
    clean = corrupted = 0
    with torch.no_grad():
        for i in range(len(probe)):
            b = _batch(probe, i)
            clean += int(model(b.images).argmax(1)) == b.targets.item()
            corrupted += int(model(corr(b, model)).argmax(1)) == b.targets.item()
    return clean / len(probe), corrupted / len(probe)


@pytest.mark.parametrize("incremental, spec", [
    (True, "gaussian:std=0.6,fraction=0.5,seed=1"),
    (False, "gaussian:std=0.6,fraction=0.5,seed=1"),
    (False, "fgsm:eps=0.5,fraction=0.5"),  # a gradient inside predict's transform
])
def test_accuracy_clean_and_corrupted_one_image_at_a_time(incremental, spec):
    probe, model = ColourProbe(20), ColourNet().eval()
    want_clean, want_corr = _accuracies(model, probe, spec)
    assert want_clean != want_corr
    cfg = AuditConfig(dissect=DC, incremental=incremental)
    r = audit(model, "net.layer2", probe, spec, cfg)
    assert r.meta["mode"] == ("incremental" if incremental else "full")
    assert r.metrics["accuracy_clean"] == pytest.approx(want_clean)
    assert r.metrics["accuracy_corrupted"] == pytest.approx(want_corr)
    assert "accuracy_clean" not in r.meta and "accuracy_corrupted" not in r.meta
    # nothing poisoned: the corrupted accuracy is the clean one
    r0 = audit(model, "net.layer2", probe, spec.split(",")[0] + ",fraction=0", cfg)
    assert r0.metrics["accuracy_corrupted"] == r0.metrics["accuracy_clean"] == want_clean


# --------------------------------------------------------------------------- shared side

@pytest.mark.parametrize("cfg, mode", [
    (AuditConfig(dissect=DC), "incremental"),  # share 0.5 == incremental_max_share
    (AuditConfig(dissect=DC, incremental_max_share=0.49), "full"),
    (AuditConfig(dissect=DC, incremental=False), "full"),
    (AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=3)), "incremental"),
])
def test_shared_audit_equals_a_full_dissection_of_the_corrupted_probe(toy, clean, cfg, mode):
    model, probe = toy
    spec = "gaussian:std=0.5,fraction=0.5,seed=2"
    r = audit(model, LAYER, probe, spec, cfg)
    assert r.meta["mode"] == mode
    assert r.meta["poisoned_images"] == 20
    assert r.meta["images"] == 40 and r.meta["probe"] == "toy"
    assert isinstance(r.meta["seconds"], float) and r.meta["seconds"] >= 0
    full = _full_corrupted(model, probe, spec)
    assert torch.equal(r.corrupted.thresholds, full.thresholds)
    assert torch.equal(r.corrupted.tally.both, full.tally.both)
    rows, metrics = compare(clean, full)
    assert r.rows == rows
    for k, v in metrics.items():
        assert r.metrics[k] == v, k
    assert r.clean.state is not None and r.clean.state.quant.slack == cfg.slack


def test_inexact_incremental_falls_back_to_a_full_dissection(toy, clean):
    model, probe = toy
    spec = "gaussian:std=0.05,fraction=0.1"
    r = audit(model, LAYER, probe, spec, AuditConfig(dissect=DC, slack=1.0))
    assert r.meta["mode"] == "full" and r.meta["poisoned_images"] == 4
    assert r.clean.state.quant.slack == 1.0
    assert r.rows == compare(clean, _full_corrupted(model, probe, spec))[0]
    r2 = audit(model, LAYER, probe, spec, AuditConfig(dissect=DC, slack=2.0))
    assert r2.meta["mode"] == "incremental"
    assert r2.rows == r.rows


def test_result_carries_its_context(toy):
    model, probe = toy
    spec = "gaussian:std=0.5,fraction=0.5,seed=2"
    r = audit(model, LAYER, probe, spec, CFG)
    assert r.layer == LAYER
    assert r.corruption == bound_corruption(spec, probe).describe()
    ctx = r.context
    assert ctx["model"] is model and ctx["probe"] is probe and ctx["config"] is CFG
    assert ctx["device"] == CPU and ctx["corruption"].describe() == r.corruption
    assert r.clean is not None and r.corrupted is not None and r.probe_bootstrap is None


def test_default_config_is_audit_config(toy):
    model, probe = toy
    spec = "gaussian:std=0.5,fraction=0.5,seed=2"
    a = audit(model, LAYER, probe, spec)
    b = audit(model, LAYER, probe, spec, AuditConfig())
    assert a.rows == b.rows and a.context["config"] == AuditConfig()
    assert a.meta["mode"] == "incremental"


def test_nothing_poisoned_is_unchanged(toy):
    model, probe = toy
    r = audit(model, LAYER, probe, "gaussian:std=0.5,fraction=0", CFG)
    assert r.meta["mode"] == "unchanged" and r.meta["poisoned_images"] == 0
    assert r.corrupted is r.clean
    assert r.flip_rate == 0 and not any(x["changed"] for x in r.rows)
    assert len(r.rows) == 16


def test_shared_units_subset(toy, clean):
    model, probe = toy
    spec = "gaussian:std=0.5,fraction=0.5,seed=2"
    r = audit(model, LAYER, probe, spec, CFG, units=[12, 3, 0])
    rows, metrics = compare(clean, _full_corrupted(model, probe, spec), [12, 3, 0])
    assert [x["unit"] for x in r.rows] == [12, 3, 0]
    assert r.rows == rows
    assert r.metrics["flip_rate"] == metrics["flip_rate"] and r.metrics["units"] == 3
    assert r.context["targets"] == {12: None, 3: None, 0: None}
    with pytest.raises(SpecError, match=re.escape(
            "unit 16 is out of range: this layer has 16 units (valid: 0..15)")):
        audit(model, LAYER, probe, spec, CFG, units=[16])


def test_not_a_unit_corruption_is_named(toy):
    model, probe = toy

    class Odd(Corruption):
        kind = "odd"
        shared = False

        def _corrupt(self, batch, model):
            return batch.images

    with pytest.raises(SpecError, match=re.escape(
            "corruption kind 'odd' is per unit (shared=False) but does not subclass "
            "nemaudit.corrupt.base.UnitCorruption, the interface per-unit audits call")):
        audit(model, LAYER, probe, Odd(), CFG)


# --------------------------------------------------------------------------- cache

def test_second_audit_reads_the_clean_run_from_the_cache(tmp_path):
    probe = ToyProbe(24)
    model = NormalizedModel(CountingNet(), "none")
    spec = "gaussian:std=0.2,fraction=0"
    CountingNet.calls = 0
    a = audit(model, LAYER, probe, spec, CFG, cache_dir=tmp_path)
    assert CountingNet.calls > 0
    key = clean_run_key(model.fingerprint(), LAYER, probe.fingerprint(), DC,
                        {"slack": 2.0, "device": "cpu"})
    assert sorted(p.name for p in tmp_path.glob("clean-*.pt")) == [f"clean-{key}.pt"]
    CountingNet.calls = 0
    b = audit(model, LAYER, probe, spec, CFG, cache_dir=tmp_path)
    assert CountingNet.calls == 0  # neither dissected nor classified again
    assert b.rows == a.rows
    acc = sum(int(model(probe[i].image[None]).argmax(1)) == probe[i].target
              for i in range(len(probe))) / len(probe)
    assert b.metrics["accuracy_clean"] == a.metrics["accuracy_clean"] == pytest.approx(acc)
    assert b.metrics["accuracy_corrupted"] == pytest.approx(acc)
    # another slack is another entry
    audit(model, LAYER, probe, spec, AuditConfig(dissect=DC, slack=1.5), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("clean-*.pt"))) == 2
    # a model without a fingerprint is never cached
    CountingNet.calls = 0
    audit(CountingNet(), LAYER, probe, spec, CFG, cache_dir=tmp_path / "none")
    assert CountingNet.calls > 0
    assert not list((tmp_path / "none").glob("clean-*.pt")) if (tmp_path / "none").exists() \
        else True


def test_clean_run_without_cache_keeps_state_and_predictions(toy, clean):
    model, probe = toy
    base = ndrun.clean_run(model, LAYER, probe, AuditConfig(dissect=DC, slack=3.0), CPU)
    assert torch.equal(base.dissection.thresholds, clean.thresholds)
    assert base.dissection.state is not None and base.dissection.state.quant.slack == 3.0
    want = [int(model(probe[i].image[None]).argmax(1)) for i in range(len(probe))]
    assert base.predictions.tolist() == want
    assert base.targets.tolist() == [probe[i].target for i in range(len(probe))]


def test_clean_run_takes_a_device_name(toy, clean):
    """``clean_run`` is public: a string device means the same device, cached under the same key."""
    model, probe = toy
    base = ndrun.clean_run(model, LAYER, probe, AuditConfig(dissect=DC, slack=3.0), "cpu")
    assert torch.equal(base.dissection.thresholds, clean.thresholds)


# --------------------------------------------------------------------------- units

def _fake_clean(labels):
    lab = torch.tensor(labels)
    return SimpleNamespace(units=len(labels), best=lambda: (lab, torch.zeros(len(labels))))


def test_pick_units_evenly_spaced_by_floor():
    labels = [0, 3, 1, 0, 2, 2, 0, 5, 1, 1, 4, 0, 2, 7]  # labelled: 1 2 4 5 7 8 9 10 12 13
    labelled = [i for i, v in enumerate(labels) if v > 0]
    clean = _fake_clean(labels)
    for cap in (1, 3, 4, 6, 9):
        step = len(labelled) / cap
        want = [labelled[int(i * step)] for i in range(cap)]
        assert ndrun._pick_units(clean, None, cap) == want, cap
    assert ndrun._pick_units(clean, None, 4) == [1, 4, 8, 10]  # positions 0, 2, 5, 7
    assert ndrun._pick_units(clean, None, 10) == labelled
    assert ndrun._pick_units(clean, None, 11) == labelled
    assert ndrun._pick_units(clean, None, None) == labelled
    assert ndrun._pick_units(clean, [3, 0], 1) == [3, 0]  # given units: no cap, no filter
    with pytest.raises(SpecError, match="unit 14 is out of range"):
        ndrun._pick_units(clean, [14], None)


def test_presence_matches_the_items(toy):
    _, probe = toy
    concepts = [6, 3, 5, 2, 7]
    got = ndrun._presence(probe, concepts, 3, CPU)
    assert got.dtype == torch.bool and got.shape == (40, 5)
    for i in range(40):
        it = probe[i]
        have = set(it.pixel_labels.flatten().tolist()) | set(it.image_labels.tolist())
        assert got[i].tolist() == [c in have for c in concepts], i


class TwoTagProbe(ToyProbe):
    """ToyProbe whose every third image carries two image-level labels."""

    def __getitem__(self, i):
        import dataclasses

        it = super().__getitem__(i)
        return dataclasses.replace(it, image_labels=torch.tensor([6, 7])) if i % 3 == 2 else it


def test_presence_reads_every_image_label():
    probe = TwoTagProbe(12)
    got = ndrun._presence(probe, [7, 6, 3], 4, CPU)
    for i in range(12):
        it = probe[i]
        have = set(it.pixel_labels.flatten().tolist()) | set(it.image_labels.tolist())
        assert got[i].tolist() == [c in have for c in (7, 6, 3)], i
    assert got[2].tolist()[:2] == [True, True]


# --------------------------------------------------------------------------- per unit

PGD = "pgd:eps=16/255,steps=3"


@pytest.fixture(scope="module")
def per_unit(toy):
    model, probe = toy
    return audit(model, LAYER, probe, PGD, CFG, units=[0, 12, 3])


def test_per_unit_max_units_attacks_evenly_spaced_labelled_units(toy, clean):
    model, probe = toy
    labels, _ = clean.best()
    labelled = (labels > 0).nonzero().flatten().tolist()
    cap = 4
    want = [labelled[math.floor(i * len(labelled) / cap)] for i in range(cap)]
    assert len(labelled) == 6 and want != labelled[:cap]
    r = audit(model, LAYER, probe, "pgd:eps=16/255,steps=1", AuditConfig(dissect=DC, max_units=cap))
    assert [x["unit"] for x in r.rows] == want
    assert r.meta["attacked_units"] == cap


@pytest.mark.parametrize("spec", [PGD, PGD + ",fraction=0.5,seed=3"])
def test_per_unit_info_counted_by_hand(toy, per_unit, spec):
    model, probe = toy
    r = per_unit if spec == PGD else audit(model, LAYER, probe, spec, CFG, units=[0, 12, 3])
    atk = bound_corruption(spec, probe)
    assert spec == PGD or len(atk.poisoned_indices(probe)) == 20
    selected = set(atk.poisoned_indices(probe))
    counts, before, after = [], [], []
    for row in r.rows:
        src, tgt = probe.concept_id(row["clean_label"]), probe.concept_id(row["target"])
        hits = []
        for i in range(len(probe)):
            it = probe[i]
            have = set(it.pixel_labels.flatten().tolist()) | set(it.image_labels.tolist())
            if i in selected and (src in have or tgt in have):
                hits.append(i)
        counts.append(len(hits))
        items = [probe[i] for i in hits]
        from nemaudit.probe.base import collate
        b = collate(items)
        res = atk.attack_units(model, LAYER, b, [row["unit"]], [src], {row["unit"]: tgt})
        assert bool(res.poisoned.all())
        before += res.objective_before[0].tolist()
        after += res.objective_after[0].tolist()
    assert r.meta["mode"] == "per-unit incremental"
    assert r.meta["attacked_units"] == 3
    assert r.meta["poisoned_images_per_unit_mean"] == pytest.approx(sum(counts) / 3)
    assert r.meta["poisoned_share_per_unit_mean"] == pytest.approx(sum(counts) / 3 / 40)
    assert r.meta["objective_mean_before"] == pytest.approx(sum(before) / len(before), rel=1e-5)
    assert r.meta["objective_mean_after"] == pytest.approx(sum(after) / len(after), rel=1e-5)
    assert r.meta["objective_mean_after"] < r.meta["objective_mean_before"]
    assert r.meta["units_recomputed_in_full"] == len(r.corrupted.meta.get(
        "recomputed_in_full", []))
    assert r.meta["images"] == 40 and r.meta["probe"] == "toy"
    assert r.context["targets"] == {x["unit"]: x["target"] for x in r.rows}


def _one_unit_full(model, probe, row, spec=PGD, cfg=DC):
    atk = bound_corruption(spec, probe)
    u = row["unit"]
    src, tgt = probe.concept_id(row["clean_label"]), probe.concept_id(row["target"])

    def one(batch):
        return atk.attack_units(model, LAYER, batch, [u], [src], {u: tgt}).images[0]

    return dissect(model, LAYER, probe, cfg, transform=one)


def test_per_unit_rows_equal_each_units_own_full_dissection(toy, per_unit):
    model, probe = toy
    for row in per_unit.rows:
        full = _one_unit_full(model, probe, row)
        u = row["unit"]
        assert full.thresholds[u] == per_unit.corrupted.thresholds[u]
        assert torch.equal(full.tally.both[u], per_unit.corrupted.tally.both[u])


@pytest.mark.parametrize("chunk, batch, bs", [(1, 5, 8), (2, 7, 3), (16, 40, 8)])
def test_chunks_and_batches_do_not_change_per_unit_results(toy, per_unit, chunk, batch, bs):
    model, probe = toy
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=bs), unit_chunk=chunk,
                      attack_batch=batch)
    r = audit(model, LAYER, probe, PGD, cfg, units=[0, 12, 3])
    _same_rows(per_unit.rows, r.rows)
    for k in ("poisoned_images_per_unit_mean", "attacked_units", "units_recomputed_in_full"):
        assert r.meta[k] == per_unit.meta[k]
    for k in ("objective_mean_before", "objective_mean_after"):
        assert r.meta[k] == pytest.approx(per_unit.meta[k], rel=1e-5)


class NoMaps(UnitCorruption):
    """The PGD attack without its final maps: the runner must run the layer itself."""

    kind = "nomaps"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.targeted = inner.targeted

    def poisoned_indices(self, probe):
        return self.inner.poisoned_indices(probe)

    def unit_targets_for(self, iou, labels, units):
        return self.inner.unit_targets_for(iou, labels, units)

    def attack_units(self, model, layer, batch, units, sources=None, targets=None, **kw):
        return self.inner.attack_units(model, layer, batch, units, sources, targets,
                                       **kw)._replace(maps=None)

    def describe(self):
        return {"kind": "nomaps"}


@pytest.mark.parametrize("bs", [3, 8])
def test_attack_without_maps_gives_the_same_rows(toy, per_unit, bs):
    model, probe = toy
    inner = bound_corruption(PGD, probe)
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=bs))
    r = audit(model, LAYER, probe, NoMaps(inner), cfg, units=[0, 12, 3])
    _same_rows(per_unit.rows, r.rows)
    assert r.meta["poisoned_images_per_unit_mean"] == per_unit.meta[
        "poisoned_images_per_unit_mean"]


def test_slack_one_recomputes_in_full_and_matches_each_units_own_dissection(toy):
    model, probe = toy
    r = audit(model, LAYER, probe, PGD, AuditConfig(dissect=DC, slack=1.0), units=[0, 12, 3])
    full_units = r.corrupted.meta["recomputed_in_full"]
    assert full_units and r.meta["units_recomputed_in_full"] == len(full_units)
    assert r.corrupted.meta["inexact_units"] == []
    for row in r.rows:
        full = _one_unit_full(model, probe, row)
        u = row["unit"]
        assert full.thresholds[u] == r.corrupted.thresholds[u]
        assert torch.equal(full.tally.both[u], r.corrupted.tally.both[u])
        assert torch.equal(full.tally.unit_cat[u], r.corrupted.tally.unit_cat[u])
        assert torch.equal(full.tally.unit_pixels[u], r.corrupted.tally.unit_pixels[u])


def test_recompute_units_in_chunks_of_a_small_budget(toy):
    """A budget for one unit at a time gives the same rows as one chunk for all."""
    model, probe = toy
    cfg = AuditConfig(dissect=DC, slack=1.0)
    base = ndrun.clean_run(model, LAYER, probe, cfg, CPU)
    atk = bound_corruption(PGD, probe)
    collect: dict = {}
    attacked = [0, 1, 3, 11, 12, 14]
    corr, rows, _, _ = ndrun._per_unit(model, LAYER, probe, atk, base, cfg, CPU, attacked,
                                       False, collect)
    assert collect["recomputed"]
    units = attacked  # an exact recompute of the others gives their incremental rows too
    again = copy.deepcopy(base.dissection)  # every row clean: all must be rewritten
    assert any(not torch.equal(again.tally.both[u], corr.tally.both[u]) for u in units)
    one_unit = 40 * 8 * 8 * 4  # bytes of one unit's 8×8 maps over the 40 images
    ndrun._recompute_units(model, LAYER, probe, base.dissection, again, units,
                           *collect["new"], cfg, CPU, budget_bytes=1.5 * one_unit)
    assert again.meta == base.dissection.meta  # the caller writes the meta, once per audit
    for u in units:
        assert again.thresholds[u] == corr.thresholds[u]
        assert torch.equal(again.tally.both[u], corr.tally.both[u])
        assert torch.equal(again.tally.unit_cat[u], corr.tally.unit_cat[u])
        assert torch.equal(again.tally.unit_pixels[u], corr.tally.unit_pixels[u])


def _dead(units):
    net = ToyNet()
    with torch.no_grad():
        for u in units:
            net.layer2[0].weight[u] = 0
            net.layer2[0].bias[u] = -1
    return net


def test_per_unit_errors_are_exact(toy, clean):
    model, probe = toy
    with pytest.raises(ValueError, match=re.escape(
            "layer 'layer2': no unit has a concept to attack")):
        audit(_dead(range(16)), LAYER, probe, PGD, CFG)
    with pytest.raises(ValueError, match=re.escape(
            "unit(s) [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] have no clean concept (IoU 0): "
            "nothing to attack")):
        audit(_dead(range(16)), LAYER, probe, PGD, CFG, units=list(range(12)))
    with pytest.raises(ValueError, match=re.escape(
            "unit(s) [2] have no clean concept (IoU 0): nothing to attack")):
        audit(model, LAYER, probe, PGD, CFG, units=[0, 2])
    labels, _ = clean.best()
    name = probe.concepts[int(labels[0])].name
    with pytest.raises(ValueError, match=re.escape(
            f"every selected unit already detects the target {name!r}")):
        audit(model, LAYER, probe, f"pgd:eps=4/255,steps=1,targeted=true,target={name}", CFG,
              units=[0])


def test_targeted_attack_leaves_out_units_on_the_target(toy, clean):
    model, probe = toy
    labels, _ = clean.best()
    name = probe.concepts[int(labels[0])].name
    others = [u for u in (0, 1, 3, 11) if int(labels[u]) != int(labels[0])]
    r = audit(model, LAYER, probe, f"pgd:eps=4/255,steps=1,targeted=true,target={name}", CFG,
              units=[0, 1, 3, 11])
    assert [x["unit"] for x in r.rows] == others
    assert r.meta["attacked_units"] == len(others)


def test_targeted_attack_unit_by_unit_gives_the_rows_of_all_units_together(toy):
    """A targeted attack unit by unit, one image per batch, gives the rows of all units
    together: unit 0 (red) comes first and unit 12 (blue) shares images only through the
    target (beach)."""
    model, probe = toy
    spec = "pgd:eps=16/255,steps=2,targeted=true,target=beach"
    one = audit(model, LAYER, probe, spec, AuditConfig(dissect=DC, unit_chunk=1,
                                                        attack_batch=1), units=[0, 12])
    together = audit(model, LAYER, probe, spec, CFG, units=[0, 12])
    _same_rows(together.rows, one.rows)
    assert one.meta["poisoned_images_per_unit_mean"] == together.meta[
        "poisoned_images_per_unit_mean"]
    assert one.meta["objective_mean_after"] == pytest.approx(
        together.meta["objective_mean_after"], rel=1e-5)


def test_per_unit_attack_that_poisons_nothing_changes_nothing(toy, clean):
    model, probe = toy
    r = audit(model, LAYER, probe, PGD + ",fraction=0", CFG, units=[0, 12, 3])
    assert r.meta["poisoned_images_per_unit_mean"] == 0.0
    assert r.meta["objective_mean_before"] == 0.0 and r.meta["objective_mean_after"] == 0.0
    assert r.meta["units_recomputed_in_full"] == 0
    assert not any(x["changed"] for x in r.rows)
    assert torch.equal(r.corrupted.thresholds, clean.thresholds)
    assert torch.equal(r.corrupted.tally.both, clean.tally.both)


def test_objective_means_of_a_single_poisoned_pair(toy):
    """One selected image (fraction 1/40) that holds unit 12's source or target: the means
    are that one pair's values."""
    from nemaudit.probe.base import collate

    model, probe = toy
    for seed in range(40):
        spec = f"{PGD},fraction=0.025,seed={seed}"
        r = audit(model, LAYER, probe, spec, CFG, units=[12])
        if r.meta["poisoned_images_per_unit_mean"] == 1.0:
            break
    else:
        raise AssertionError("no seed selects an image of unit 12's concepts")
    atk = bound_corruption(spec, probe)
    (i,) = atk.poisoned_indices(probe)
    row = r.rows[0]
    src, tgt = probe.concept_id(row["clean_label"]), probe.concept_id(row["target"])
    res = atk.attack_units(model, LAYER, collate([probe[i]]), [12], [src], {12: tgt})
    assert bool(res.poisoned.all())
    assert r.meta["objective_mean_before"] == pytest.approx(float(res.objective_before[0, 0]),
                                                            rel=1e-6)
    assert r.meta["objective_mean_after"] == pytest.approx(float(res.objective_after[0, 0]),
                                                           rel=1e-6)


def test_audit_meta_seconds_and_probe_name(toy):
    import time

    model, probe = toy
    t0 = time.perf_counter()
    r = audit(model, LAYER, probe, "gaussian:std=0.1,fraction=0.5", CFG)
    wall = time.perf_counter() - t0
    assert 0.0 < r.meta["seconds"] <= wall + 1e-3
    assert r.meta["seconds"] == round(r.meta["seconds"], 3)
    assert r.meta["probe"] == "toy"
    unnamed = ToyProbe(16)
    unnamed.name = "probe"  # ProbeDataset's default
    assert audit(model, LAYER, unnamed, "gaussian:std=0.1", CFG).meta["probe"] == "probe"


def test_clean_run_locks_its_cache_entry_while_it_computes(tmp_path, monkeypatch):
    """Two processes must not compute one entry twice: the lock on the entry's key is held
    around the load and the computation (and none is taken without a key)."""
    from nemaudit.audit.netdissect.cache import CleanRunCache

    probe = ToyProbe(16)
    model = NormalizedModel(ToyNet(), "none")
    held: list = []
    real_lock, real_clean = CleanRunCache.lock, ndrun._clean

    class Spy:
        def __init__(self, inner, key):
            self.inner, self.key = inner, key

        def __enter__(self):
            held.append(self.key)
            return self.inner.__enter__()

        def __exit__(self, *a):
            held.remove(self.key)
            return self.inner.__exit__(*a)

    monkeypatch.setattr(CleanRunCache, "lock", lambda self, key: Spy(real_lock(self, key), key))
    seen: list = []
    monkeypatch.setattr(ndrun, "_clean", lambda *a: seen.append(list(held)) or real_clean(*a))
    ndrun.clean_run(model, LAYER, probe, CFG, CPU, CleanRunCache(tmp_path))
    key = clean_run_key(model.fingerprint(), LAYER, probe.fingerprint(), DC,
                        {"slack": 2.0, "device": "cpu"})
    assert seen == [[key]] and held == []
    seen.clear()
    ndrun.clean_run(ToyNet(), LAYER, probe, CFG, CPU, CleanRunCache(tmp_path / "none"))
    assert seen == [[]]  # no fingerprint: no key, no lock
    assert not (tmp_path / "none").exists() or not list((tmp_path / "none").glob("clean-*"))


def test_a_group_reads_the_clean_run_from_the_cache_and_never_caches_a_nameless_model(
        tmp_path, monkeypatch, group_of_one):
    """Rank 0 writes the entry under its key's lock, every rank reads it back, and a model
    without a fingerprint (no key) is neither locked nor written."""
    from nemaudit.audit.netdissect.cache import CleanRunCache

    probe, model = ColourProbe(20), NormalizedModel(ColourNet().eval(), "none")
    cfg = AuditConfig(dissect=DC)
    locked: list = []
    real_lock = CleanRunCache.lock
    monkeypatch.setattr(CleanRunCache, "lock",
                        lambda self, key: locked.append(key) or real_lock(self, key))
    first = ndrun.clean_run(model, "model.net.layer2", probe, cfg, CPU, CleanRunCache(tmp_path))
    key = clean_run_key(model.fingerprint(), "model.net.layer2", probe.fingerprint(), DC,
                        {"slack": 2.0, "device": "cpu"})
    assert [p.name for p in tmp_path.glob("clean-*.pt")] == [f"clean-{key}.pt"]
    assert locked == [key]

    def boom(*a):
        raise AssertionError("computed again")

    with monkeypatch.context() as m:
        m.setattr(ndrun, "_clean", boom)
        again = ndrun.clean_run(model, "model.net.layer2", probe, cfg, CPU,
                                CleanRunCache(tmp_path))
    assert torch.equal(again.dissection.thresholds, first.dissection.thresholds)
    assert torch.equal(again.predictions, first.predictions)
    assert ndrun.dist.active() is not None  # still in the group
    ndrun.clean_run(ColourNet().eval(), "net.layer2", probe, cfg, CPU,
                    CleanRunCache(tmp_path / "none"))
    assert locked == [key]
    assert not (tmp_path / "none").exists() or not list((tmp_path / "none").glob("clean-*"))


# --------------------------------------------------------------------------- entry points

def test_audit_config_and_run_request(toy, clean, tmp_path):
    model, probe = toy
    req = SimpleNamespace(max_units=None, units=(12, 3),
                          get=lambda k, d=None: {"eta": 0.02, "bootstrap": 0}.get(k, d))
    res = SimpleNamespace(model=model, probe=probe, layer=LAYER, corruption="gaussian:std=0.5",
                          device=CPU, cache_dir=str(tmp_path), batch_size=8, workers=0,
                          max_units=5, progress=False)
    cfg = ndrun.audit_config(req, res)
    assert cfg.dissect == DissectConfig(eta=0.02, batch_size=8, num_workers=0)
    assert cfg.max_units == 5 and cfg.bootstrap == 0
    req2 = SimpleNamespace(max_units=2, units=None,
                           get=lambda k, d=None: {"iou_threshold": 0.1, "bootstrap": 7}.get(k, d))
    cfg2 = ndrun.audit_config(req2, SimpleNamespace(batch_size=4, workers=1, max_units=5))
    assert cfg2.dissect == DissectConfig(batch_size=4, num_workers=1, iou_threshold=0.1)
    assert cfg2.max_units == 2 and cfg2.bootstrap == 7
    req3 = SimpleNamespace(max_units=None, units=None, get=lambda k, d=None: d)
    cfg3 = ndrun.audit_config(req3, SimpleNamespace(batch_size=4, workers=0, max_units=None))
    assert cfg3 == AuditConfig(dissect=DissectConfig(batch_size=4, num_workers=0))
    r = ndrun.run_request(req, res)
    direct = audit(model, LAYER, probe, "gaussian:std=0.5", CFG, units=[12, 3])
    assert [x["unit"] for x in r.rows] == [12, 3] and r.rows == direct.rows
    assert list(tmp_path.glob("clean-*.pt"))
    d = ndrun.clean_dissection(req, res)
    assert torch.equal(d.thresholds, clean.thresholds)
    assert torch.equal(d.tally.both, clean.tally.both)
    # clean_dissection writes and reads the same cache
    counted = NormalizedModel(CountingNet(), "none")
    res2 = SimpleNamespace(**{**vars(res), "model": counted, "cache_dir": str(tmp_path / "c2")})
    CountingNet.calls = 0
    d2 = ndrun.clean_dissection(req, res2)
    assert CountingNet.calls > 0 and len(list((tmp_path / "c2").glob("clean-*.pt"))) == 1
    CountingNet.calls = 0
    d3 = ndrun.clean_dissection(req, res2)
    assert CountingNet.calls == 0 and torch.equal(d3.thresholds, d2.thresholds)


@pytest.mark.parametrize("incremental", [True, False])
def test_bootstrap_is_the_same_incremental_or_full(toy, incremental):
    model, probe = toy
    spec = "gaussian:std=0.5,fraction=0.25,seed=2"
    cfg = AuditConfig(dissect=DC, bootstrap=30, incremental=incremental)
    r = audit(model, LAYER, probe, spec, cfg)
    assert r.probe_bootstrap is not None
    assert r.meta["bootstrap"]["resamples"] == 30 and "skipped" not in r.meta["bootstrap"]
    ref = audit(model, LAYER, probe, spec, AuditConfig(dissect=DC, bootstrap=30, incremental=True))
    assert r.interval("flip_rate") == ref.interval("flip_rate")
    assert audit(model, LAYER, probe, spec, CFG).probe_bootstrap is None


def test_per_unit_bootstrap(toy):
    model, probe = toy
    r = audit(model, LAYER, probe, "pgd:eps=16/255,steps=1",
              AuditConfig(dissect=DC, bootstrap=20, slack=1.0), units=[0, 12, 3])
    assert r.probe_bootstrap is not None and "skipped" not in r.meta["bootstrap"]
    flags = r.probe_bootstrap.flags  # every attacked unit has a target: its hits resample
    assert flags["target"].all() and flags["target_hit"].shape == flags["changed"].shape


# --------------------------------------------------------------------------- process group

@pytest.fixture
def group_of_one(monkeypatch):
    """An 'active' process group of one rank: every collective is the identity, so each
    group branch of the runner must give the single-process result."""
    from nemaudit import dist

    gathered: list[str] = []

    def gather(obj, what="gathering results"):
        gathered.append(what)
        return [dist._to_cpu(obj)]

    monkeypatch.setattr(dist, "active", lambda: dist.Group(0, 1, "gloo", 60.0))
    monkeypatch.setattr(dist, "all_gather_objects", gather)
    monkeypatch.setattr(dist, "all_sum", lambda t, what="": gathered.append(what) or t)
    monkeypatch.setattr(dist, "all_max", lambda v, what="": gathered.append(what) or float(v))
    monkeypatch.setattr(dist, "all_gather_rows", lambda t, fill, what="": [t])
    monkeypatch.setattr(dist, "barrier", lambda what="": None)
    return gathered


@pytest.mark.parametrize("spec, kw, whats", [
    ("gaussian:std=0.6,fraction=0.5,seed=1", {},
     {"gathering predictions", "gathering changed maps"}),
    ("gaussian:std=0.6,fraction=0.5,seed=1", {"incremental": False}, {"gathering predictions"}),
    ("pgd:eps=16/255,steps=2", {"unit_chunk": 2, "attack_batch": 6},
     {"gathering the units' re-dissections", "gathering poisoned images"}),
])
def test_a_group_of_one_rank_gives_the_single_process_result(spec, kw, whats, tmp_path,
                                                              request):
    probe, model = ColourProbe(20), NormalizedModel(ColourNet().eval(), "none")
    cfg = AuditConfig(dissect=DC, **kw)
    units = [0, 12, 3] if spec.startswith("pgd") else None
    single = audit(model, "model.net.layer2", probe, spec, cfg, units=units)
    gathered = request.getfixturevalue("group_of_one")
    for _ in range(2):  # computed, then read from the cache by every rank
        r = audit(model, "model.net.layer2", probe, spec, cfg, units=units,
                  cache_dir=tmp_path)
        _same_rows(single.rows, r.rows)
        assert r.meta["mode"] == single.meta["mode"]
        for k in ("accuracy_clean", "accuracy_corrupted", "flip_rate"):
            assert r.metrics[k] == pytest.approx(single.metrics[k]), k
        if units:
            for k in ("poisoned_images_per_unit_mean", "attacked_units"):
                assert r.meta[k] == single.meta[k]
            for k in ("objective_mean_before", "objective_mean_after"):
                assert r.meta[k] == pytest.approx(single.meta[k], rel=1e-5)
    assert len(list(tmp_path.glob("clean-*.pt"))) == 1
    assert whats | {"agreeing on the clean-run cache"} <= set(gathered)


@pytest.mark.parametrize("slack", [1.0, 3.0])
def test_a_group_of_one_rank_gathers_a_per_unit_bootstrap(toy, request, slack):
    """The gathered pairs and full recomputations feed the probe bootstrap: in a group of one
    rank its intervals, flags and rows are the single process's (with units recomputed in
    full, and without)."""
    model, probe = toy
    spec, cfg = "pgd:eps=16/255,steps=1", AuditConfig(dissect=DC, bootstrap=20, slack=slack)
    single = audit(model, LAYER, probe, spec, cfg, units=[0, 12, 3])
    assert bool(single.corrupted.meta.get("recomputed_in_full")) == (slack == 1.0)
    gathered = request.getfixturevalue("group_of_one")
    r = audit(model, LAYER, probe, spec, cfg, units=[0, 12, 3])
    _same_rows(single.rows, r.rows)
    assert r.corrupted.meta.get("recomputed_in_full") == single.corrupted.meta.get(
        "recomputed_in_full")
    for k, v in single.probe_bootstrap.flags.items():
        assert (r.probe_bootstrap.flags[k] == v).all(), k
    assert r.interval("flip_rate") == single.interval("flip_rate")
    assert "gathering the units' re-dissections" in gathered


class CountingColourNet(ColourNet):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("incremental", [True, False])
def test_forward_passes_of_the_corrupted_side(tmp_path, incremental):
    probe, model = ColourProbe(20), NormalizedModel(CountingColourNet().eval(), "none")
    spec = "gaussian:std=0.6,fraction=0.5,seed=1"
    # incremental: one pass over the 10 poisoned images (2 batches of 8) that also classifies
    # them; full: a full dissection of the corrupted probe, then those 2 batches classified
    calls = 2
    if not incremental:
        CountingColourNet.calls = 0
        corr = bound_corruption(spec, probe)
        dissect(model, "model.net.layer2", probe, DC, transform=lambda b: corr(b, model))
        calls += CountingColourNet.calls
    cfg = AuditConfig(dissect=DC, incremental=incremental)
    want_clean, want_corr = _accuracies(model, probe, spec)
    audit(model, "model.net.layer2", probe, spec, cfg, cache_dir=tmp_path)
    CountingColourNet.calls = 0
    r = audit(model, "model.net.layer2", probe, spec, cfg, cache_dir=tmp_path)
    assert CountingColourNet.calls == calls
    assert r.metrics["accuracy_clean"] == pytest.approx(want_clean)
    assert r.metrics["accuracy_corrupted"] == pytest.approx(want_corr)
