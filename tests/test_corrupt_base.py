"""The corruption contract (``nemaudit.corrupt.base``) on hand cases: validation messages and
their boundaries, seeds, label maps, the exact-count selection and its errors, and the
per-unit targets. ToyProbe(10) carries image label 6 (beach) on images 0, 3, 6, 9."""

from __future__ import annotations

import hashlib

import pytest
import torch

from nemaudit.corrupt import base
from nemaudit.corrupt.base import (
    Corruption,
    UnitCorruption,
    check_fraction,
    check_nonneg,
    check_steps,
    concept_maps,
    contains_concepts,
    derive_seed,
    image_generator,
    runner_up_concepts,
    subset_batch,
)
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeBatch
from tests.helpers import raises_exactly
from tests.toys import ToyProbe


def _raises(msg: str):
    return raises_exactly(SpecError, msg)


def test_number_checks_messages_and_boundaries():
    assert check_fraction(0) == 0.0 and check_fraction("1") == 1.0
    with _raises("fraction=1.5 is outside [0, 1]"):
        check_fraction(1.5)
    with _raises("fraction='x' must be a number"):
        check_fraction("x")
    with _raises("fraction=True must be a number"):
        check_fraction(True)
    with _raises("fraction=nan must be finite"):
        check_fraction(float("nan"))
    assert check_nonneg(1.0, "eps") == 1.0 and check_nonneg(0, "eps") == 0.0
    with _raises("std=1.5 must be <= 1 (pixels lie in [0, 1])"):
        check_nonneg(1.5, "std")  # the default maximum is 1
    with _raises("eps=-0.1 must be >= 0"):
        check_nonneg(-0.1, "eps")
    with _raises("eps=None must be a number"):
        check_nonneg(None, "eps")
    assert check_nonneg(9.5, "std", maximum=10.0) == 9.5


def test_step_counts():
    assert check_steps(1) == 1 and check_steps(3.0) == 3 and check_steps(10_000) == 10_000
    assert type(check_steps(3.0)) is int
    with _raises("steps=10001 must be <= 10000 (the stated maximum)"):
        check_steps(10_001)
    with _raises("steps=2.5 must be an integer >= 1"):
        check_steps(2.5)
    with _raises("steps='3' must be an integer >= 1"):
        check_steps("3")
    with _raises("steps=True must be an integer >= 1"):
        check_steps(True)
    with _raises("copies=0 must be >= 1"):
        check_steps(0, "copies")


def test_derive_seed_is_the_documented_63_bit_hash():
    for parts in [(0, "select"), (7, "gaussian", 3), (1,)]:
        digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
        assert derive_seed(*parts) == int.from_bytes(digest, "little") >> 1
    seeds = [derive_seed(s, "x", i) for s in range(4) for i in range(8)]
    assert max(seeds) < 2 ** 63 and max(seeds) >= 2 ** 62  # 63 bits, not fewer


def test_image_generator_reseeds_the_generator_it_is_given():
    g = torch.Generator()
    assert image_generator(3, "gaussian", 5, g) is g
    want = torch.Generator().manual_seed(derive_seed(3, "gaussian", 5))
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=want))
    a = torch.rand(4, generator=image_generator(3, "gaussian", 5))
    b = torch.rand(4, generator=image_generator(3, "gaussian", 6))
    assert not torch.equal(a, b)  # the index picks the stream


def test_concept_maps_shapes_and_sources():
    pix = torch.zeros(2, 1, 3, 4, dtype=torch.int64)  # B=2, one map, h=3, w=4
    pix[0, 0, 1, 2] = 5
    img = torch.tensor([[0], [5]])
    m = concept_maps(pix, img, 5)
    assert m.dtype == torch.bool and m.shape == (2, 3, 4)
    assert m[0].sum() == 1 and bool(m[0, 1, 2]) and bool(m[1].all())  # image label: all
    z = concept_maps(pix, img, 0)
    assert z.dtype == torch.bool and z.shape == (2, 3, 4) and not z.any()
    none = concept_maps(torch.zeros(2, 0, 3, 4, dtype=torch.int64), torch.zeros(2, 0), 5)
    assert none.dtype == torch.bool and none.shape == (2, 3, 4) and not none.any()
    only_img = concept_maps(torch.zeros(2, 0, 3, 4, dtype=torch.int64), img, 5)
    assert only_img.dtype == torch.bool
    assert only_img.tolist() == [[[False] * 4] * 3, [[True] * 4] * 3]


def test_concept_maps_and_selection_stay_on_the_labels_device():
    # the meta device: a tensor created without device= lands on the CPU instead
    pix = torch.zeros(2, 1, 3, 4, dtype=torch.int64, device="meta")
    img = torch.zeros(2, 1, dtype=torch.int64, device="meta")
    assert concept_maps(pix, img, 0).device.type == "meta"
    assert concept_maps(pix[:, :0], img[:, :0], 2).device.type == "meta"
    batch = ProbeBatch(torch.zeros(2, 3, 4, 4, device="meta"), pix, img,
                       torch.tensor([0, 1]), torch.tensor([-1, -1]))
    for fraction in (0.0, 1.0):
        assert Corruption(fraction=fraction).poisoned(batch).device.type == "meta"


def test_contains_concepts_of_any_iterable():
    pix = torch.zeros(3, 1, 2, 2, dtype=torch.int64)
    pix[0, 0, 0, 0] = 2
    img = torch.tensor([[0], [3], [0]])
    for ids in ([2, 3], {2, 3}, (i for i in (2, 3)), torch.tensor([2, 3])):
        assert contains_concepts(pix, img, ids).tolist() == [True, True, False]
    assert contains_concepts(pix, img, [0, 3]).tolist() == [False, True, False]  # 0: no label
    assert contains_concepts(pix, img, {0}).tolist() == [False, False, False]
    assert contains_concepts(pix, torch.zeros(3, 0, dtype=torch.int64), [2]).tolist() == [
        True, False, False]


def test_subset_batch_keeps_every_field():
    b = ProbeBatch(torch.arange(3.0)[:, None, None, None].expand(3, 3, 2, 2),
                   torch.arange(3)[:, None, None, None].expand(3, 1, 2, 2),
                   torch.tensor([[10], [11], [12]]), torch.tensor([4, 5, 6]),
                   torch.tensor([0, 1, -1]))
    s = subset_batch(b, torch.tensor([False, True, True]))
    assert s.images[:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert s.pixel_labels[:, 0, 0, 0].tolist() == [1, 2]
    assert s.image_labels.tolist() == [[11], [12]]
    assert s.indices.tolist() == [5, 6] and s.targets.tolist() == [1, -1]


def test_runner_up_concepts():
    iou = torch.tensor([[0.9, 0.1, 0.5], [0.9, 0.4, 0.3]])
    # three concepts (two besides 0) are enough; id 0 and the clean label never win
    assert runner_up_concepts(iou, [1, 1]).tolist() == [2, 2]
    assert runner_up_concepts(iou, torch.tensor([2, 2])).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"^iou must be \[U, C\] with U = len\(labels\); "
                                         r"got \(2, 3\) and 3 labels$"):
        runner_up_concepts(iou, [1, 1, 1])
    with pytest.raises(ValueError, match="^an untargeted attack needs at least two concepts "
                                         "besides id 0$"):
        runner_up_concepts(iou[:, :2], [1, 1])


def test_unit_targets_for():
    iou = torch.tensor([[0.0, 0.1, 0.5, 0.2], [0.0, 0.4, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3]])
    labels = torch.tensor([2, 1, 3])
    c = UnitCorruption()
    assert c.unit_targets_for(iou, labels, [0, 2]) == {0: 3, 2: 2}  # runner-ups
    c.targeted, c.target, c.target_id = True, "blue", None
    with _raises("target='blue' is not resolved yet: call .bind(probe) first"):
        c.unit_targets_for(iou, labels, [0])
    c.target_id = 1
    # unit 1 already detects the target: nothing to flip to
    assert c.unit_targets_for(iou, labels, [0, 1, 2]) == {0: 1, 2: 1}
    with _raises("the corruption corruption is per unit; use attack_units()"):
        c._corrupt(None, None)


def test_defaults_and_the_seed_check():
    c = Corruption()
    assert c.describe() == {"kind": "corruption", "fraction": 1.0, "select": "random",
                            "seed": 0, "shared": True}
    assert c.spec() == "corruption:fraction=1.0,select=random,seed=0"
    assert repr(c) == "Corruption('corruption:fraction=1.0,select=random,seed=0')"
    for bad in (True, "1", 1.0):
        with _raises(f"seed={bad!r} must be an integer"):
            Corruption(seed=bad)


def _batch(indices):
    probe = ToyProbe(10)
    items = [probe[i % 10] for i in indices]  # the indices may lie outside the probe
    L = max(it.pixel_labels.shape[0] for it in items)
    pix = torch.zeros(len(items), L, *items[0].pixel_labels.shape[-2:], dtype=torch.int64)
    for j, it in enumerate(items):
        pix[j, :it.pixel_labels.shape[0]] = it.pixel_labels
    img = torch.zeros(len(items), 1, dtype=torch.int64)
    for j, it in enumerate(items):
        img[j, :it.image_labels.numel()] = it.image_labels
    return ProbeBatch(torch.stack([it.image for it in items]), pix, img,
                      torch.tensor(indices), torch.full((len(items),), -1))


def test_random_selection_is_the_seeded_permutations_first_k():
    c = Corruption(fraction=0.25, seed=3).bind(10)
    g = torch.Generator().manual_seed(derive_seed(3, "select"))
    perm = torch.randperm(10, generator=g)
    want = sorted(perm[:3].tolist())  # round(0.25·10) = 2.5 → 3 (halves up)
    assert c.poisoned_indices(10) == want
    assert c.poisoned(_batch(list(range(10)))).nonzero().flatten().tolist() == want
    assert Corruption(fraction=0.5).bind(0).poisoned_indices(0) == []  # an empty probe
    with _raises("probe length -1 is negative"):
        Corruption().bind(-1)


def test_unbound_and_out_of_range_errors():
    with _raises("corruption: fraction=0.5 poisons exactly round(fraction·N) images, so the "
                 "probe length N must be known: call .bind(probe) or .bind(len(probe)) first"):
        Corruption(fraction=0.5).poisoned(_batch([0]))
    c = Corruption(fraction=0.5).bind(5)
    for idx in ([0, 5], [-1, 0]):
        bad = idx[1] if idx[1] == 5 else idx[0]
        with _raises(f"dataset index {bad} is outside the bound probe (N=5); bind the "
                     "corruption to the probe the batches come from"):
            c.poisoned(_batch(idx))
    assert c.poisoned(_batch([0, 4])).shape == (2,)  # N-1 is in range
    with _raises("select='concept:beach' names concepts; call .bind(probe) so they can be "
                 "looked up"):
        Corruption(select="concept:beach").poisoned(_batch([0]))


def test_concept_rule_fractions_and_eligible_indices():
    probe = ToyProbe(10)
    batch = _batch(list(range(10)))
    beach = [0, 3, 6, 9]
    assert Corruption(select="concept:beach").poisoned_indices(probe) == beach
    assert Corruption(select="concept:6", fraction=0.0).poisoned_indices(probe) == []
    assert not Corruption(select="concept:6", fraction=0.0).poisoned(batch).any()
    half = Corruption(select="concept:6", fraction=0.5, seed=1).bind(probe)
    chosen = half.poisoned_indices(probe)
    assert len(chosen) == 2 and set(chosen) <= set(beach)
    assert half.poisoned(batch).nonzero().flatten().tolist() == chosen
    with _raises("corruption: select='concept:6' with fraction=0.5 poisons an exact share of "
                 "the images carrying the concept(s); call .bind(probe) (or .bind(n, "
                 "eligible=indices)) first"):
        Corruption(select="concept:6", fraction=0.5).poisoned(batch)
    # eligible indices given: no labels read, duplicates dropped, range checked
    full = Corruption(select="concept:6").bind(10, eligible=[9, 3, 3])
    assert full.poisoned_indices(10) == [3, 9]
    assert Corruption(select="concept:6", fraction=0.5).bind(
        10, eligible=[]).poisoned_indices(10) == []
    for bad in ([10], [-1, 3]):
        with _raises("eligible indices must lie in 0..9"):
            Corruption(select="concept:6", fraction=0.5).bind(10, eligible=bad)
    for fraction in (1.0, 0.5):
        with _raises("select='concept:6': the poisoned images depend on the labels; pass "
                     "the probe itself, not its length"):
            Corruption(select="concept:6", fraction=fraction).poisoned_indices(10)
    # names bound to a length first are resolved once the probe comes
    named = Corruption(select="concept:beach").bind(10)
    assert named.poisoned_indices(probe) == beach


def test_exact_count_rounds_halves_up():
    assert [base._exact_count(f, 10) for f in (0.05, 0.15, 0.25, 1.0)] == [1, 2, 3, 10]


@pytest.mark.parametrize("value, text", [
    (True, "true"), (False, "false"), (4 / 255, "4/255"), (1 / 255, "1/255"),
    (85 / 255, "85/255"),        # 1/3: a k/255 with no short decimal
    (200 / 255, "200/255"),      # above 1/2 too
    (0.2, "0.2"),                # = 51/255, but short: the decimal
    (0.5, "0.5"), (0.1, "0.1"), (1.0, "1.0"), (0.0, "0.0"), (3, "3"), ("random", "random"),
    (300 / 255, str(300 / 255)),  # only budgets below 1 are written as k/255
])
def test_fmt_spec_values(value, text):
    assert base._fmt(value) == text


@pytest.mark.parametrize("select, parsed", [
    ("random", ("random", None, None)), ("", ("random", None, None)),
    ("  random ", ("random", None, None)),
    ("concept:a+b", ("concept:a|b", ["a", "b"], None)),
    ("concept: a | b |", ("concept:a|b", ["a", "b"], None)),
    ("concept:2|1", ("concept:2|1", None, [2, 1])),
    ([3, 1, 3], ("concept:1|3", None, [1, 3])),
    (torch.tensor([5, 2]), ("concept:2|5", None, [2, 5])),
])
def test_parse_select(select, parsed):
    assert base._parse_select(select) == parsed


@pytest.mark.parametrize("select, message", [
    ("concept:", "select='concept:' names no concept; use 'concept:<name>' (several: "
                 "'concept:a|b')"),
    ("concept:|+", "select='concept:|+' names no concept; use 'concept:<name>' (several: "
                   "'concept:a|b')"),
    ("concept:0|2", "select='concept:0|2': concept ids are positive (0 = no label)"),
    ("bogus", "select='bogus' is not valid; use 'random', 'concept:<name>' or a set of "
              "concept ids"),
    ([], "select=[]: give a non-empty set of positive concept ids"),
    ([0, 1], "select=[0, 1]: give a non-empty set of positive concept ids"),
])
def test_parse_select_errors(select, message):
    with _raises(message):
        base._parse_select(select)


def test_resolve_concept():
    probe = ToyProbe(4)  # concepts 0..7, name "toy"
    assert base.resolve_concept(probe, 7) == 7 and base.resolve_concept(probe, " 3 ") == 3
    assert base.resolve_concept(probe, torch.tensor(2)) == 2
    assert base.resolve_concept(probe, "stripes") == 7
    assert base.resolve_concept(probe, "beach-scene") == 6
    for bad in (0, 8, "8"):
        with _raises("concept id 8 does not exist in probe 'toy' (valid ids: 1..7)"
                     if str(bad) == "8" else
                     "concept id 0 does not exist in probe 'toy' (valid ids: 1..7)"):
            base.resolve_concept(probe, bad)
    with _raises("unknown concept 'sky'; this probe has: red, blue, box, disc, lid, beach, "
                 "stripes"):
        base.resolve_concept(probe, "sky")

    class Bare(ToyProbe):
        def concept_id(self, name):
            raise KeyError

    with _raises("unknown concept 'sky'"):
        base.resolve_concept(Bare(4), "sky")


def test_as_id_list():
    assert base.as_id_list(torch.tensor([3, 1])) == [3, 1]
    assert base.as_id_list((2.0, 5)) == [2, 5]
    assert all(type(v) is int for v in base.as_id_list(torch.tensor([3])))


def test_concept_rule_at_fraction_zero_poisons_nothing_as_a_bool_mask():
    m = Corruption(select="concept:6", fraction=0.0).poisoned(_batch([0, 3, 1]))
    assert m.dtype == torch.bool and m.tolist() == [False, False, False]
