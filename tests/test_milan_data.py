"""Offline annotations: evidence counts, phrasing, word → concept mapping, splits, BLEU."""

from __future__ import annotations

import random

import pytest
import torch

from nemaudit.explain.milan.exemplars import Exemplars
from nemaudit.probe.synthetic import _CONCEPTS
from nemaudit.training.annotations import (
    TEMPLATES,
    Evidence,
    concept_forms,
    describe_evidence,
    mentioned_categories,
    mentioned_concepts,
    split_units,
    template_words,
    unit_evidence,
)
from nemaudit.training.milan import bleu4
from tests.toys import ToyProbe

CONCEPTS = _CONCEPTS


def test_template_words_never_name_a_concept():
    words = set()
    for f in concept_forms(CONCEPTS).values():
        for s in (f.sg, f.pl, f.adj):
            words |= set(s.split())
    assert not (template_words() & words), template_words() & words


def test_every_concept_form_maps_back_to_its_concept():
    for cid, f in concept_forms(CONCEPTS).items():
        for s in {f.sg, f.pl, f.adj}:
            assert mentioned_concepts(s, CONCEPTS) == [cid], (s, cid)
    assert mentioned_concepts("the lamp post near a lamp", CONCEPTS) == [
        next(c.id for c in CONCEPTS if c.name == "lamp-post"),
        next(c.id for c in CONCEPTS if c.name == "lamp")]
    assert mentioned_categories("wheels of cars", CONCEPTS) == ["part", "object"]
    assert mentioned_categories("wooden things", CONCEPTS) == ["material"]


def toy_exemplars(probe, masks, indices) -> Exemplars:
    u, k = indices.shape
    return Exemplars("toy", torch.arange(u), indices, torch.zeros(u, k), masks,
                     torch.zeros(u), probe)


def test_evidence_matches_brute_force_counts():
    probe = ToyProbe(n=10)
    g = torch.Generator().manual_seed(3)
    indices = torch.tensor([[0, 1, 2, 3], [4, 6, 8, 9]])
    masks = torch.rand(2, 4, 16, 16, generator=g) > 0.6
    ev = unit_evidence(toy_exemplars(probe, masks, indices), probe)
    n_c = probe.num_concepts
    for r in range(2):
        inter = torch.zeros(n_c)
        area = torch.zeros(n_c)
        for j, i in enumerate(indices[r].tolist()):
            item = probe[i]
            m = masks[r, j]
            for c in range(1, n_c):
                lab = (item.pixel_labels == c).any(dim=0) if item.pixel_labels.shape[0] else \
                    torch.zeros(16, 16, dtype=torch.bool)
                if c in item.image_labels.tolist():
                    lab = torch.ones(16, 16, dtype=torch.bool)
                inter[c] += (lab & m).sum()
                area[c] += lab.sum()
        assert torch.equal(ev[r].inter, inter)
        assert torch.equal(ev[r].area, area)
        assert ev[r].total == float(masks[r].sum())


def _evidence(inter: dict[str, float], area: dict[str, float], total: float,
              joint: dict[tuple[str, str], float] = (), ymean: dict[str, float] = ()) -> Evidence:
    ids = {c.name: c.id for c in CONCEPTS}
    n = len(CONCEPTS)
    ev = Evidence(total, torch.zeros(n), torch.zeros(n), torch.full((n,), 0.5),
                  torch.zeros(n, n), torch.ones(4, n, dtype=torch.bool))
    for k, v in inter.items():
        ev.inter[ids[k]] = v
    for k, v in area.items():
        ev.area[ids[k]] = v
    for (a, b), v in dict(joint).items():
        ev.joint[ids[a], ids[b]] = ev.joint[ids[b], ids[a]] = v
    for k, v in dict(ymean).items():
        ev.ymean[ids[k]] = v
    return ev


def test_phrasings_follow_the_evidence():
    rng = random.Random(0)
    # a wheel unit: wheels covered, mostly of cars, and black
    ev = _evidence({"wheel": 90, "car": 80, "black": 50}, {"wheel": 100, "car": 400,
                   "black": 300}, 100, {("wheel", "car"): 80})
    cid, kind, texts = describe_evidence(ev, CONCEPTS, rng)
    assert CONCEPTS[cid].name == "wheel" and kind == "part_of" and len(set(texts)) == 3
    assert all("wheel" in t and ("car" in t) for t in texts)
    # the sky above grass
    ev = _evidence({"sky": 50, "grass": 45}, {"sky": 60, "grass": 55}, 100,
                   ymean={"sky": 0.2, "grass": 0.8})
    _, kind, texts = describe_evidence(ev, CONCEPTS, rng)
    assert kind == "region_pair" and all(t.index("sky") < t.index("grass") for t in texts)
    # a texture unit
    ev = _evidence({"striped": 100}, {"striped": 150}, 100)
    _, kind, texts = describe_evidence(ev, CONCEPTS, rng)
    assert kind == "texture" and all("striped" in t for t in texts)
    # dead unit
    assert describe_evidence(_evidence({}, {}, 0), CONCEPTS, rng) is None


def test_every_template_family_fills():
    words = dict(a="red", b="blue", x="car", X="cars", s="beach", S="beaches", u="sky",
                 l="sand", U="sky", L="sand", y="sea", Y="sea", m="wooden", mn="wood",
                 c="red", o="car", O="cars")
    for ts in TEMPLATES.values():
        for t in ts:
            assert "{" not in t.format(**words)


def test_split_is_by_unit_seeded_and_disjoint():
    keys = [f"m/layer{i % 4}/{i}" for i in range(100)]
    train, val = split_units(keys + keys[:10], 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    assert split_units(list(reversed(keys)), 0.2, seed=3) == (train, val)


def test_bleu4_is_sacrebleu_corpus_bleu_with_any_number_of_references():
    import sacrebleu

    assert abs(bleu4(["the red car on the road"], [["the red car on the road"]]) - 100) < 1e-9
    cands = ["the red car on the road", "a wooden house near the sea"]
    wrong = bleu4(cands, [["green trees in a dark forest"], ["striped surfaces of old walls"]])
    half = bleu4(cands, [["green trees in a dark forest"], ["a wooden house near the sea"]])
    assert wrong < 10 < half < 100
    best = bleu4(["the sky above the green grass"],
                 [["the sea", "the sky above the green grass"]])
    assert abs(best - 100) < 1e-9
    # one stream per reference slot; a shorter list repeats its last reference, which
    # changes nothing: the same as sacrebleu given the references spelled out
    refs = [["the red car on a road", "a car"], ["a wooden house by the sea"]]
    padded = [["the red car on a road", "a wooden house by the sea"],
              ["a car", "a wooden house by the sea"]]
    assert bleu4(cands, refs) == sacrebleu.corpus_bleu(cands, padded).score
    assert bleu4(cands, refs) == bleu4(cands, [refs[0], refs[1] * 3])
    # sacrebleu's corpus BLEU: a corpus with no 4-grams at all scores 0
    assert bleu4(["red cars", "the sky"], [["red cars"], ["the sky"]]) == 0.0
    with pytest.raises(ValueError, match="one non-empty list"):
        bleu4(["a b"], [[]])
