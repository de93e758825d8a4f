"""Classifier attacks (FGSM, PGD on cross-entropy) under the Corruption contract."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from nemaudit.corrupt.fgsm import FGSMCorruption, PGDCECorruption, predicted_labels
from nemaudit.errors import SpecError
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem, collate

torch.set_num_threads(1)


class HalfNet(nn.Module):
    """Looks only at the left half of the image: the gradient on the right half is exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x[..., : x.shape[-1] // 2])).mean(dim=(2, 3)))


class Probe(ProbeDataset):
    name = "cls"

    def __init__(self, n: int = 10, grey: bool = True) -> None:
        self.concepts = [Concept(0, "-", "none"), Concept(1, "dog", "object")]
        self.seg_size = (4, 4)
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, 16, 16, generator=g) * 0.2 + 0.4 if grey else \
            torch.rand(n, 3, 16, 16, generator=g)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> ProbeItem:
        pix = torch.full((1, 4, 4), 1 if i % 2 == 0 else 0, dtype=torch.int64)
        return ProbeItem(self.images[i], pix, torch.zeros(0, dtype=torch.int64), i, target=4)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return HalfNet().eval()


@pytest.fixture()
def batch():
    p = Probe()
    return collate([p[i] for i in range(len(p))])


def input_grad(model, images, labels):
    x = images.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), labels)
    return torch.autograd.grad(loss, x)[0]


def test_fgsm_uses_predicted_labels_and_matches_torchattacks(model, batch):
    """The torch-native FGSM is torchattacks' FGSM with the model's predicted labels, to the
    bit; the probe's own ("true") labels are never used."""
    pred = model(batch.images).argmax(dim=1)
    batch.targets = (pred + 1) % 5  # wrong "true" labels: they must not be used
    out = FGSMCorruption(eps=2 / 255)(batch, model)
    assert torch.equal(out, torchattacks.FGSM(model, eps=2 / 255)(batch.images, pred))
    assert not torch.equal(out, torchattacks.FGSM(model, eps=2 / 255)(batch.images,
                                                                       batch.targets))
    # same as an FGSM step along the predicted-label gradient
    g = input_grad(model, batch.images, pred)
    expected = (batch.images + 2 / 255 * g.sign()).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_fgsm_perturbation_is_exactly_eps_where_gradient_nonzero(model, batch):
    eps = 2 / 255
    out = FGSMCorruption(eps=eps)(batch, model)
    g = input_grad(model, batch.images, predicted_labels(model, batch.images))
    delta = (out - batch.images).abs()
    nz = g != 0
    assert nz.any() and (~nz).any()
    assert torch.allclose(delta[nz], torch.full_like(delta[nz], eps), atol=1e-6)
    assert (delta[~nz] == 0).all()
    assert (~nz[..., 9:]).all()  # the right half is ignored by the model


def test_fraction_and_selection(model):
    probe = Probe(10)
    c = FGSMCorruption(eps=4 / 255, fraction=0.3, seed=2).bind(probe)
    idx = c.poisoned_indices(probe)
    assert len(idx) == 3
    b = collate([probe[i] for i in range(10)])
    out = c(b, model)
    for i in range(10):
        assert torch.equal(out[i], b.images[i]) == (i not in idx)
    c = FGSMCorruption(eps=4 / 255, select="concept:dog").bind(probe)
    out = c(b, model)
    for i in range(10):
        assert torch.equal(out[i], b.images[i]) == (i % 2 == 1)
    # an image is attacked the same way whatever else is in its batch
    alone = FGSMCorruption(eps=4 / 255)(collate([probe[4]]), model)
    assert torch.allclose(alone[0], FGSMCorruption(eps=4 / 255)(b, model)[4], atol=1e-7)


def test_pgd_ce(model, batch):
    eps = 4 / 255
    c = PGDCECorruption(eps=eps, steps=5)
    assert c.alpha == pytest.approx(2 * eps / 5)
    out = c(batch, model)
    pred = predicted_labels(model, batch.images)
    ref = torchattacks.PGD(model, eps=eps, alpha=c.alpha, steps=5, random_start=False)
    assert torch.equal(out, ref(batch.images, pred))  # torchattacks, no random start
    assert (out - batch.images).abs().max() <= eps + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(out), pred) > ce(model(batch.images), pred)
    assert torch.equal(out, c(batch, model))  # deterministic: no random start


def test_normalized_model_and_mode(batch):
    torch.manual_seed(0)
    inner = HalfNet()
    wrapped = NormalizedModel(inner, "imagenet").train()
    c = FGSMCorruption(eps=2 / 255)
    out = c(batch, wrapped)
    assert wrapped.training  # mode restored
    assert (out - batch.images).abs().max() <= 2 / 255 + 1e-6
    # attacked in eval mode on [0, 1] images: the wrapper normalises (not the attack, twice)
    pred = predicted_labels(wrapped.eval(), batch.images)
    assert torch.equal(out, torchattacks.FGSM(wrapped, eps=2 / 255)(batch.images, pred))


def test_errors(model, batch):
    with pytest.raises(SpecError, match="model"):
        FGSMCorruption(eps=2 / 255)(batch)
    with pytest.raises(SpecError, match="eps"):
        FGSMCorruption(eps=-1.0)
    with pytest.raises(SpecError, match="steps"):
        PGDCECorruption(eps=0.1, steps=0)

    class Maps(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(SpecError, match="logits"):
        FGSMCorruption(eps=2 / 255)(batch, Maps())
