"""MILAN audits on a toy model: shared noise and per-unit PGD, result shape and diffs."""

from __future__ import annotations

import json

import pytest
import torch

from nemaudit.audit.milan import MilanAuditConfig, MilanAuditResult, audit_milan
from nemaudit.audit.result import Metric
from nemaudit.explain.milan.describer import CaptionerDescriber, Describer
from nemaudit.explain.milan.exemplars import ExemplarConfig
from tests.toys import ToyNet, ToyProbe


class ParityDescriber:
    """Describes a unit by its exemplars: discs (odd indices) or boxes, bright or dark.
    Records every exemplar set it sees."""

    def __init__(self) -> None:
        self.seen = []

    def describe(self, exemplars):
        self.seen.append(exemplars)
        images = exemplars.images()
        out = []
        for r in range(len(exemplars)):
            odd = (exemplars.indices[r] % 2 == 1).float().mean() > 0.5
            bright = images[r].mean() > 0.2
            out.append(f"{'bright' if bright else 'dark'} {'discs' if odd else 'boxes'}")
        return out


def exact(cands, refs):
    return torch.tensor([1.0 if a == b else 0.0 for a, b in zip(cands, refs)])


CFG = MilanAuditConfig(exemplars=ExemplarConfig(k=4, batch_size=8), threshold=0.5)


def run(corruption, describer=None, **kw):
    return audit_milan(ToyNet(seed=1), "layer2", ToyProbe(n=24), corruption,
                       describer=describer or ParityDescriber(), scorer=exact, config=CFG, **kw)


def test_noise_audit_result():
    r = run("gaussian:std=0.3,seed=1")
    assert isinstance(r, MilanAuditResult)
    assert r.metrics["units"] == 16 and len(r.rows) == 16
    m = r.manipulated_rate
    assert isinstance(m, Metric) and m.result is r and m.name == "manipulated_rate"
    assert 0.0 <= m <= 1.0
    assert r.f1_mean == pytest.approx(1.0 - float(m))  # exact-match scorer
    assert isinstance(r.f1_std, Metric)
    for row in r.rows:
        assert set(row) >= {"unit", "clean", "corrupted", "f1", "manipulated",
                            "clean_exemplars", "corrupted_exemplars"}
        assert len(row["clean_exemplars"]) == 4
    json.dumps(r.to_json())
    lines = r.diff_lines(limit=3)
    assert len(r.changed_units) == r.metrics["changed"]
    if r.changed_units:
        first = min(r.changed_units, key=lambda x: x["f1"])
        assert f'“{first["clean"]}” → “{first["corrupted"]}”' in lines[0]
    with pytest.raises(AttributeError, match="manipulated_rate"):
        r.no_such_metric  # noqa: B018


def test_zero_noise_changes_nothing():
    r = run("gaussian:std=0.0")
    assert r.manipulated_rate == 0.0 and r.f1_mean == 1.0 and r.f1_std == 0.0
    assert all(row["clean_exemplars"] == row["corrupted_exemplars"] for row in r.rows)


def test_pgd_per_unit_audit_poisons_each_units_own_exemplars():
    d = ParityDescriber()
    eps = 8 / 255
    r = audit_milan(
        ToyNet(seed=1), "layer2", ToyProbe(n=24), f"pgd:eps={eps},steps=3", describer=d,
        scorer=exact, config=MilanAuditConfig(exemplars=ExemplarConfig(k=4, batch_size=8),
                                              threshold=0.5, attack_images=2, unit_chunk=2),
        units=[0, 3, 5, 9, 12])
    assert [row["unit"] for row in r.rows] == [0, 3, 5, 9, 12]
    assert all(row["poisoned_images"] <= 2 for row in r.rows)
    clean = d.seen[0]
    probe = ToyProbe(n=24)
    for part in d.seen[1:]:  # per-unit chunks, described from their own pixels
        assert part.pixels is not None
        for i in range(len(part)):
            u = int(part.units[i])
            row = clean.units.tolist().index(u)
            attacked = set(clean.indices[row, :2].tolist())
            for j, idx in enumerate(part.indices[i].tolist()):
                delta = (part.pixels[i, j] - probe[idx].image).abs().max()
                if idx in attacked:
                    assert delta <= eps + 1e-6
                else:
                    assert delta == 0
    assert 0.0 <= r.manipulated_rate <= 1.0
    json.dumps(r.to_json())


def test_per_unit_audit_is_exact_however_little_state_is_kept():
    """With no spare state (slack 1) the attacked units are recomputed in full; the rows
    equal those of an audit whose kept state covers the attack."""
    out = {}
    for slack in (1.0, 8.0):
        cfg = MilanAuditConfig(exemplars=ExemplarConfig(k=4, batch_size=8), threshold=0.5,
                               slack=slack)
        out[slack] = audit_milan(ToyNet(seed=1), "layer2", ToyProbe(n=24),
                                 "pgd:eps=16/255,steps=3", describer=ParityDescriber(),
                                 scorer=exact, config=cfg, units=[0, 3, 5])
    tight, roomy = out[1.0], out[8.0]
    assert tight.meta["units_recomputed_in_full"] > 0
    assert roomy.meta["units_recomputed_in_full"] == 0
    for a, b in zip(tight.rows, roomy.rows):
        assert a["corrupted_exemplars"] == b["corrupted_exemplars"]
        assert a["corrupted_threshold"] == pytest.approx(b["corrupted_threshold"], abs=1e-6)
        assert a["corrupted"] == b["corrupted"]


def test_pgd_with_zero_budget_changes_nothing():
    r = audit_milan(ToyNet(seed=1), "layer2", ToyProbe(n=24), "pgd:eps=0,steps=2",
                    describer=ParityDescriber(), scorer=exact, config=CFG, units=[1, 2])
    assert r.manipulated_rate == 0.0
    for row in r.rows:
        assert row["clean_exemplars"] == row["corrupted_exemplars"]
        assert row["clean_threshold"] == pytest.approx(row["corrupted_threshold"])


def test_describer_protocol_accepts_a_custom_captioner():
    calls = []

    def captioner(images, masks):
        calls.append((images.shape, masks.shape))
        return "bright things" if images.mean() > 0.25 else "dark things"

    d = CaptionerDescriber(captioner, rows_per_call=3)
    assert isinstance(d, Describer) and isinstance(ParityDescriber(), Describer)
    r = run("uniform:std=0.2", describer=d)
    assert {row["clean"] for row in r.rows} <= {"bright things", "dark things"}
    assert calls[0] == (torch.Size([4, 3, 32, 32]), torch.Size([4, 16, 16]))


def test_custom_scorer_needs_a_threshold():
    with pytest.raises(ValueError, match="threshold"):
        audit_milan(ToyNet(), "layer2", ToyProbe(n=8), "gaussian:std=0.1",
                    describer=ParityDescriber(), scorer=exact,
                    config=MilanAuditConfig(exemplars=ExemplarConfig(k=2)))


def test_pictures_are_kept_for_the_units_a_report_shows():
    """Per-unit attacks keep poisoned pixels only for pictures: exactly for the units
    milan_payload shows first (manipulated, lowest F1), wherever they are in the layer."""
    from nemaudit.audit.milan.pictures import milan_payload

    cfg = MilanAuditConfig(exemplars=ExemplarConfig(k=4, batch_size=8), threshold=0.5,
                           unit_chunk=2, picture_units=3)
    r = audit_milan(ToyNet(seed=1), "layer2", ToyProbe(n=24), "pgd:eps=32/255,steps=3",
                    describer=ParityDescriber(), scorer=exact, config=cfg,
                    units=list(range(16)))
    doc = milan_payload(r, max_units=3, k=2)
    shown = [e["unit"] for e in doc["exemplars"]]
    assert set(r.context["corrupted_pixels"]) == set(shown)
    assert all(len(e["corrupted"]) == 2 and "note" not in e for e in doc["exemplars"])
    first = sorted(r.rows, key=lambda row: (not row["manipulated"], row["f1"]))[:3]
    assert shown == [row["unit"] for row in first]
