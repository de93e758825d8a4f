"""The ICCV'23 designed corruption (Eq. 9) on a tiny conv net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nemaudit.corrupt import concept_maps, contains_concepts
from nemaudit.corrupt.pgd import (
    ConceptAttack,
    ConceptPGD,
    act_avg,
    attack_units,
    untargeted_targets,
)
from nemaudit.errors import SpecError
from nemaudit.explain.common.masks import upsample
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import Concept, ProbeBatch, ProbeDataset, ProbeItem, collate

torch.set_num_threads(1)

CONCEPTS = [Concept(0, "-", "none"), Concept(1, "dog", "object"), Concept(2, "cat", "object"),
            Concept(3, "park", "scene")]


class TinyNet(nn.Module):
    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.relu(self.bn(self.conv1(x)))).mean(dim=(2, 3)))


class TinyProbe(ProbeDataset):
    """dog (pixel) in i % 3 == 0, cat (pixel) in i % 4 == 0, park (image-level) in i == 5."""

    name = "tiny"

    def __init__(self, n: int = 12) -> None:
        self.concepts = CONCEPTS
        self.seg_size = (8, 8)
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 16, 16, generator=g) * 0.8 + 0.1
        self.images[1, :, :4, :4] = 0.0  # extremes, to exercise the clamp
        self.images[2, :, -4:, -4:] = 1.0

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> ProbeItem:
        pix = torch.zeros(1, 8, 8, dtype=torch.int64)
        if i % 3 == 0:
            pix[0, :4, :4] = 1
        if i % 4 == 0:
            pix[0, 4:, 3:] = 2
        img = torch.tensor([3] if i == 5 else [], dtype=torch.int64)
        return ProbeItem(self.images[i], pix, img, i)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def probe() -> TinyProbe:
    return TinyProbe()


@pytest.fixture(scope="module")
def batch(probe) -> ProbeBatch:
    return collate([probe[i] for i in range(len(probe))])


UNITS, SOURCES, TARGETS = [0, 1, 2, 4], [1, 1, 2, 3], [2, 3, 1, None]


def test_act_avg_matches_definition(batch):
    maps = torch.randn(len(batch), 4, 4)
    for c in (1, 2, 3, 99):
        lab = concept_maps(batch.pixel_labels, batch.image_labels, c)
        got = act_avg(maps, lab)
        up = upsample(maps, (8, 8))
        for b in range(len(batch)):
            if lab[b].any():
                assert got[b] == pytest.approx(up[b][lab[b]].mean().item(), rel=1e-5)
            else:
                assert got[b] == 0  # absent concept contributes nothing
    # an image-level label covers the whole image
    assert concept_maps(batch.pixel_labels, batch.image_labels, 3)[5].all()


def test_stays_in_eps_ball_and_unit_interval(model, batch):
    eps = 6 / 255
    res = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=eps, steps=10)
    delta = res.images - batch.images[None]
    assert delta.abs().max() <= eps + 1e-6
    assert res.images.min() >= 0 and res.images.max() <= 1
    moved = delta.abs().amax(dim=(2, 3, 4))
    assert (moved[res.poisoned] > eps - 1e-6).all()  # the attack uses its budget
    # the clamp held at the extremes of images 1 and 2
    assert (res.images[:, 1, :, :4, :4] >= 0).all() and (res.images[:, 2, :, -4:, -4:] <= 1).all()


def test_objective_decreases(model, batch):
    res = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255, steps=10)
    before, after = res.objective_before[res.poisoned], res.objective_after[res.poisoned]
    assert torch.isnan(res.objective_before[~res.poisoned]).all()
    assert after.sum() < before.sum()
    assert (after < before).float().mean() >= 0.8
    # the reported objective is Eq. 9 recomputed on the returned images
    atk = ConceptPGD(model, "conv2", eps=4 / 255)
    u, b = res.poisoned.nonzero(as_tuple=True)
    s = torch.stack([concept_maps(batch.pixel_labels, batch.image_labels, SOURCES[i])[j]
                     for i, j in zip(u.tolist(), b.tolist(), strict=True)])
    t = torch.stack([concept_maps(batch.pixel_labels, batch.image_labels, TARGETS[i] or 0)[j]
                     for i, j in zip(u.tolist(), b.tolist(), strict=True)])
    units = torch.tensor(UNITS)[u]
    assert torch.allclose(atk.objective(res.images[u, b], units, s, t), after, atol=1e-5)
    assert torch.allclose(atk.objective(batch.images[b], units, s, t), before, atol=1e-5)


def test_only_images_with_source_or_target_change(model, batch):
    res = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255, steps=5)
    for i, (s, t) in enumerate(zip(SOURCES, TARGETS, strict=True)):
        expected = contains_concepts(batch.pixel_labels, batch.image_labels, [s, t or 0])
        assert torch.equal(res.poisoned[i], expected)
        for b in range(len(batch)):
            same = torch.equal(res.images[i, b], batch.images[b])
            assert same != bool(expected[b])


def test_batched_units_equal_single_unit_attacks(model, batch):
    together = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255,
                            steps=10, max_copies=64)
    chunked = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255,
                           steps=10, max_copies=3)
    assert torch.allclose(together.images, chunked.images, atol=1e-6)
    for i, (u, s, t) in enumerate(zip(UNITS, SOURCES, TARGETS, strict=True)):
        alone = attack_units(model, "conv2", batch, [u], [s], [t], eps=4 / 255, steps=10)
        assert torch.allclose(alone.images[0], together.images[i], atol=1e-6)
        assert torch.equal(alone.poisoned[0], together.poisoned[i])
        ok = together.poisoned[i]
        assert torch.allclose(alone.objective_after[0][ok], together.objective_after[i][ok],
                              atol=1e-6)


def test_result_does_not_depend_on_the_batch(model, probe, batch):
    full = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255, steps=10,
                        random_start=True, seed=5)
    part = collate([probe[i] for i in (9, 0, 4)])
    sub = attack_units(model, "conv2", part, UNITS[1:], SOURCES[1:], TARGETS[1:], eps=4 / 255,
                       steps=10, random_start=True, seed=5)
    assert torch.allclose(sub.images, full.images[1:][:, [9, 0, 4]], atol=1e-6)
    delta = full.images - batch.images[None]
    assert delta.abs().max() <= 4 / 255 + 1e-6
    other = attack_units(model, "conv2", batch, UNITS, SOURCES, TARGETS, eps=4 / 255,
                         steps=10, random_start=True, seed=6)
    assert not torch.equal(other.images, full.images)


def test_eq8_mask_mode(model, batch):
    """Without segmentation, L_c is the unit's clean mask M_u(x) (Eq. 8)."""
    units = [0, 3]
    with torch.no_grad():
        feats = model.conv1(batch.images)
        feats = model.conv2(model.relu(feats))[:, units]  # [B, 2, 8, 8]
    up = upsample(feats.transpose(0, 1), (8, 8))  # [U, B, 8, 8]
    thr = up.flatten(1).quantile(0.97, dim=1)
    masks = up > thr[:, None, None, None]
    res = attack_units(model, "conv2", batch, units, source_masks=masks, eps=4 / 255, steps=10)
    assert torch.equal(res.poisoned, masks.flatten(2).any(dim=2))
    assert 0 < res.poisoned.sum() < res.poisoned.numel()
    before = res.objective_before[res.poisoned]
    after = res.objective_after[res.poisoned]
    assert (after < before).all()  # the source activation is pushed down everywhere
    assert (res.images[~res.poisoned] == batch.images.expand(2, -1, -1, -1, -1)[~res.poisoned]).all()
    # shared [B, h, w] masks with target masks as well
    res2 = attack_units(model, "conv2", batch, [0], source_masks=masks[0],
                        target_masks=masks[1], eps=4 / 255, steps=3)
    assert torch.equal(res2.poisoned[0], masks.flatten(2).any(dim=2).any(dim=0))


def test_untargeted_targets_is_runner_up():
    iou = torch.tensor([[0.9, 0.1, 0.3, 0.2],   # column 0 ("no label") is never chosen
                        [0.0, 0.5, 0.4, 0.45],
                        [0.0, 0.2, 0.2, 0.7]])
    labels = torch.tensor([2, 1, 3])
    assert untargeted_targets(iou, labels).tolist() == [3, 3, 1]
    with pytest.raises(ValueError):
        untargeted_targets(iou, [1, 2])


def test_concept_attack_corruption(model, probe, batch):
    atk = ConceptAttack(eps=4 / 255, steps=4, targeted=True, target="cat").bind(probe)
    assert atk.target_id == 2 and not atk.shared
    res = atk.attack_units(model, "conv2", batch, [0, 1], sources=[1, 3])
    assert torch.equal(res.poisoned[0], contains_concepts(batch.pixel_labels,
                                                          batch.image_labels, [1, 2]))
    one = atk(batch, model, layer="conv2", unit=1, source=3)
    assert torch.equal(one, res.images[1])
    d = atk.describe()
    assert d["kind"] == "pgd" and d["target"] == "cat" and d["targeted"] is True

    # fraction/select restrict the candidates; s/t still required
    sel = ConceptAttack(eps=4 / 255, steps=2, fraction=0.5, seed=1).bind(probe)
    res = sel.attack_units(model, "conv2", batch, [0, 2], sources=[1, 2], targets={0: 2, 2: 3})
    cand = sel.poisoned(batch)
    assert cand.sum() == 6
    assert not (res.poisoned & ~cand[None]).any()
    has = contains_concepts(batch.pixel_labels, batch.image_labels, [1, 2])
    assert torch.equal(res.poisoned[0], cand & has)


def test_concept_attack_errors(model, probe, batch):
    with pytest.raises(SpecError, match="zebra"):
        ConceptAttack(eps=4 / 255, targeted=True, target="zebra").bind(probe)
    with pytest.raises(SpecError, match="target"):
        ConceptAttack(eps=4 / 255, targeted=True)
    untargeted = ConceptAttack(eps=4 / 255)
    with pytest.raises(SpecError, match="runner-up"):
        untargeted.attack_units(model, "conv2", batch, [0], sources=[1])
    with pytest.raises(SpecError, match="unit"):
        untargeted.attack_units(model, "conv2", batch, [0, 1], sources=[1, 1], targets={0: 2})
    with pytest.raises(SpecError, match="per unit"):
        untargeted(batch, model)
    with pytest.raises(SpecError, match="unit 6 is out of range"):
        attack_units(model, "conv2", batch, [6], [1], [2], steps=1)


def test_model_mode_restored_and_eval_used():
    torch.manual_seed(1)
    net = TinyNet(bn=True)
    with torch.no_grad():  # give BN running stats that differ from batch stats
        net.bn.running_mean.fill_(0.3)
        net.bn.running_var.fill_(2.0)
    probe = TinyProbe(6)
    b = collate([probe[i] for i in range(6)])
    net.train()
    res_train = attack_units(net, "conv2", b, [0], [1], [2], eps=4 / 255, steps=3)
    assert net.training
    net.eval()
    res_eval = attack_units(net, "conv2", b, [0], [1], [2], eps=4 / 255, steps=3)
    assert torch.equal(res_train.images, res_eval.images)
    assert float(net.bn.running_mean[0]) == pytest.approx(0.3)  # no stats updated


def test_torchattacks_adapter_matches_the_native_attack(model, batch):
    from nemaudit.corrupt.torchattacks_adapter import ConceptPGDAttack

    s = concept_maps(batch.pixel_labels, batch.image_labels, 1)
    t = concept_maps(batch.pixel_labels, batch.image_labels, 2)
    units = torch.zeros(len(batch), dtype=torch.int64)
    native = ConceptPGD(model, "conv2", eps=2 / 255, steps=3)(batch.images, units, s, t)
    atk = ConceptPGDAttack(model, "conv2", eps=2 / 255, steps=3)
    with pytest.raises(ValueError, match="set_maps"):
        atk(batch.images, units)
    atk.set_maps(s, t)
    assert torch.equal(atk(batch.images, units), native)
    atk.set_mode_targeted()
    atk.set_maps(s)
    with pytest.raises(ValueError, match="target maps"):
        atk(batch.images, units)


def test_torchattacks_adapter_settings_modes_and_messages(model, batch, capsys):
    from nemaudit.corrupt.torchattacks_adapter import ConceptPGDAttack
    from tests.helpers import raises_exactly

    atk = ConceptPGDAttack(model, "conv2")
    assert (atk.inner.eps, atk.inner.steps, atk.inner.alpha) == (4 / 255, 10, 2 * (4 / 255) / 10)
    assert ConceptPGDAttack(model, "conv2", eps=0.1, alpha=0.003, steps=2).inner.alpha == 0.003
    assert atk.attack == "ConceptPGD" and repr(atk).startswith("ConceptPGD(")
    assert atk.supported_mode == ["default", "targeted"] and atk.get_mode() == "default"
    s = concept_maps(batch.pixel_labels, batch.image_labels, 1)
    units = torch.zeros(len(batch), dtype=torch.int64)
    with raises_exactly(ValueError, "call set_maps(source_maps, target_maps) before the attack"):
        atk(batch.images, units)
    # the default mode runs without target maps: the plain untargeted attack
    small = ConceptPGDAttack(model, "conv2", eps=2 / 255, steps=2)
    small.set_maps(s)
    native = ConceptPGD(model, "conv2", eps=2 / 255, steps=2)(batch.images, units, s, None)
    assert torch.equal(small(batch.images, units), native)
    small.set_mode_targeted()
    assert small.targeted and small.get_mode() == "targeted"
    assert capsys.readouterr().out == ""  # quietly
    with raises_exactly(ValueError, "targeted mode needs target maps: set_maps(source, target)"):
        small(batch.images, units)


def test_torchattacks_interface_and_normalized_model(model, batch):
    wrapped = NormalizedModel(model, "imagenet")
    atk = ConceptPGD(wrapped, "conv2", eps=2 / 255, steps=3)
    assert atk.alpha == pytest.approx(2 * (2 / 255) / 3)
    s = concept_maps(batch.pixel_labels, batch.image_labels, 1)
    t = concept_maps(batch.pixel_labels, batch.image_labels, 2)
    units = torch.zeros(len(batch), dtype=torch.int64)
    adv = atk(batch.images, units, s, t)
    adv2, before, after = atk.run(batch.images, units, s, t)
    assert torch.equal(adv, adv2) and after.sum() < before.sum()
    assert (adv - batch.images).abs().max() <= 2 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(batch.images * 3, units, s, t)
