"""Attacks on the classifier's output applied to the probe (Xie, "Interpretability analysis of
DNNs under adversarial attacks"): FGSM and PGD on cross-entropy.

Both use the model's *predicted* labels (argmax of the clean logits), never the probe's class
labels: an audit must not leak ground truth into the attack, and most probes have none.

Written in torch (a dozen lines each, step for step torchattacks' ``FGSM`` and ``PGD``
without random start: the tests check the two agree exactly), so that the core does not
depend on torchattacks, whose 3.5.1 pins ``requests~=2.25``. The model takes [0, 1] images
(a :class:`~nemaudit.model.load.NormalizedModel` normalises itself) and is attacked in eval
mode, then handed back in the mode it came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from nemaudit.corrupt.base import Corruption, check_nonneg, check_steps
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeBatch

__all__ = ["FGSMCorruption", "PGDCECorruption", "fgsm", "pgd_ce", "predicted_labels"]


def _input_grad(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(x), labels), x)[0]


@contextmanager
def _eval(model: torch.nn.Module) -> Iterator[None]:
    given = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(given)


def fgsm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
         eps: float) -> torch.Tensor:
    """x' = clamp(x + ε·sign(∇_x CE(f(x), y)), 0, 1)."""
    with _eval(model):
        adv = images + eps * _input_grad(model, images, labels).sign()
        return torch.clamp(adv, min=0.0, max=1.0).detach()


def pgd_ce(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
           alpha: float, steps: int) -> torch.Tensor:
    """PGD ascending cross-entropy in the L∞ ball of ``eps`` around ``images``, no random
    start: each step ``x ← clip_ε(x + α·sign(∇CE))``, then clamped to [0, 1]."""
    images = images.clone().detach()
    adv = images.clone()
    with _eval(model):
        for _ in range(steps):
            adv = adv.detach() + alpha * _input_grad(model, adv, labels).sign()
            delta = torch.clamp(adv - images, min=-eps, max=eps)
            adv = torch.clamp(images + delta, min=0.0, max=1.0).detach()
    return adv


@torch.no_grad()
def predicted_labels(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """argmax of the clean logits, computed in eval mode (the mode the attacks run in)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    try:
        logits = model(images if param is None else images.to(param.device))
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise SpecError(f"classifier attacks need a model returning logits [B, classes]; "
                        f"{type(model).__name__} returned {shape}")
    return logits.argmax(dim=1).to(images.device)


class FGSMCorruption(Corruption):
    """x' = clamp(x + ε·sign(∇_x CE(f(x), ŷ)), 0, 1), ŷ the model's own prediction."""

    kind = "fgsm"
    needs_model = True
    params = {"eps": float}
    required = ("eps",)

    def __init__(self, eps: float, *, fraction: float = 1.0,
                 select: str | Iterable[int] = "random", seed: int = 0) -> None:
        super().__init__(fraction=fraction, select=select, seed=seed)
        self.eps = check_nonneg(eps, "eps")

    def attack(self, model: torch.nn.Module, images: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        return fgsm(model, images, labels, self.eps)

    def _corrupt(self, batch: ProbeBatch, model: torch.nn.Module | None) -> torch.Tensor:
        assert model is not None
        labels = predicted_labels(model, batch.images)
        param = next(model.parameters(), None)
        images = batch.images if param is None else batch.images.to(param.device)
        return self.attack(model, images, labels.to(images.device)).to(batch.images.device)

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps}


class PGDCECorruption(FGSMCorruption):
    """PGD on cross-entropy with the predicted labels (spec kind ``pgd-ce``).

    No random start: one drawn from the global RNG would break the (seed, index)
    determinism every corruption promises.
    """

    kind = "pgd-ce"
    params = {"eps": float, "steps": int, "alpha": float}

    def __init__(self, eps: float, steps: int = 10, *, alpha: float | None = None,
                 fraction: float = 1.0, select: str | Iterable[int] = "random",
                 seed: int = 0) -> None:
        super().__init__(eps, fraction=fraction, select=select, seed=seed)
        self.steps = check_steps(steps)
        self.alpha = 2.0 * self.eps / self.steps if alpha is None else check_nonneg(alpha, "alpha")

    def attack(self, model: torch.nn.Module, images: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        return pgd_ce(model, images, labels, self.eps, self.alpha, self.steps)

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "alpha": self.alpha}
