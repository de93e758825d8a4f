"""nemaudit's designed attack as a real torchattacks ``Attack`` (extra ``nemaudit[torchattacks]``).

The core attack is torch-native (:class:`nemaudit.corrupt.pgd.ConceptPGD`); this adapter lets
torchattacks' tooling (model-mode handling, ``MultiAttack``, ``save``, targeted-mode checks)
drive it. torchattacks' ``forward(images, labels)`` takes no label maps, so the maps of the
next call are set first; ``labels`` are the rows' unit indices::

    atk = ConceptPGDAttack(model, "layer4", eps=4/255)
    atk.set_maps(source_maps, target_maps)
    adv = atk(images, units)

Modes: ``default`` uses the maps it was given (source, and target when there is one: the
untargeted attack of ICCV'23 pushes towards the runner-up concept); ``targeted`` (set with
:meth:`set_mode_targeted`) requires target maps, as a targeted attack needs a target.
"""

from __future__ import annotations

import torch
from torchattacks.attack import Attack

from nemaudit.corrupt.pgd import ConceptPGD

__all__ = ["ConceptPGDAttack"]


class ConceptPGDAttack(Attack):
    def __init__(self, model: torch.nn.Module, layer: str, eps: float = 4 / 255,
                 alpha: float | None = None, steps: int = 10) -> None:
        super().__init__("ConceptPGD", model)
        self.inner = ConceptPGD(model, layer, eps=eps, alpha=alpha, steps=steps)
        self.supported_mode = ["default", "targeted"]
        self._maps: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def set_maps(self, source: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """The label maps (bool ``[N, h, w]``) of the rows of the next call."""
        self._maps = (source, target)

    def set_mode_targeted(self) -> None:
        """Targeted mode: every call needs target maps."""
        self._set_mode_targeted("targeted", quiet=True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._maps is None:
            raise ValueError("call set_maps(source_maps, target_maps) before the attack")
        source, target = self._maps
        if self.targeted and target is None:
            raise ValueError("targeted mode needs target maps: set_maps(source, target)")
        return self.inner.run(images, labels, source, target)[0]
