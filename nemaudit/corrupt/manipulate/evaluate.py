"""Per-image test losses of a fooling and its Fooling Success Rate (Eq. 6), batched.

One place for what both the trainer (early stopping, best epoch) and the audit (the FSR
table, the transfer table) measure: the fooled model's maps against the original's for the
same images and classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nemaudit.corrupt.manipulate.losses import (
    FSR_INTERVALS,
    active_test_losses,
    in_interval,
    test_loss,
)
from nemaudit.explain.saliency import heatmap


@dataclass
class TestLosses:
    """Per image: the test loss(es) and whether each lies in R."""

    #: [N] (passive) or [N, 2] (active: the c1 and c2 Spearman losses)
    losses: torch.Tensor
    hits: torch.Tensor

    def fsr(self) -> list[float]:
        """FSR per column (one for passive foolings, (c1, c2) for active)."""
        h = self.hits.float()
        h = h[:, None] if h.dim() == 1 else h  # not reshape(0, -1): ambiguous for no image
        return h.mean(0).tolist()  # no image: NaN per column


def maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, interpreter: str,
         layer: str | None, batch_size: int = 32) -> torch.Tensor:
    """Normalised maps ``[N, h, w]`` (no graph), in batches on the model's device."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        h = heatmap(model, images[i:i + batch_size].to(device),
                    labels[i:i + batch_size].to(device), interpreter, layer=layer)
        out.append(h.detach().float().cpu())
    return torch.cat(out)


def test_losses(fooling: str, interpreter: str, layer: str | None, fooled: nn.Module,
                original: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                classes: tuple[int, int] | None = None,
                interval: tuple[float, float] | None = None,
                batch_size: int = 32) -> TestLosses:
    """The test losses of ``fooling`` measured with ``interpreter`` (which may differ from the
    one that was fooled: the transfer table) on ``images``."""
    r = interval or FSR_INTERVALS[fooling]
    lyr = layer if interpreter in ("gradcam", "simplegrad_t", "lrp_t") else None
    if fooling == "active":
        if classes is None:
            raise ValueError("active fooling needs its two classes")
        n = len(images)
        c1 = torch.full((n,), classes[0], dtype=torch.long)
        c2 = torch.full((n,), classes[1], dtype=torch.long)
        h1, h2 = (maps(fooled, images, c, interpreter, lyr, batch_size) for c in (c1, c2))
        h1_0, h2_0 = (maps(original, images, c, interpreter, lyr, batch_size) for c in (c1, c2))
        s1, s2 = active_test_losses(h1, h2, h1_0, h2_0)
        t = torch.stack([s1, s2], 1)
    else:
        h = maps(fooled, images, labels, interpreter, lyr, batch_size)
        h0 = maps(original, images, labels, interpreter, lyr, batch_size)
        t = test_loss(fooling, h, h0, signed_input_map=interpreter == "lrp")
    return TestLosses(t, in_interval(t, r))


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 64) -> dict[str, float]:
    """Top-1 and top-5 accuracy (top-k of min(5, classes))."""
    from nemaudit.corrupt.manipulate.data import predict

    logits = predict(model, images, batch_size)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return {"top1": float((top[:, 0] == labels).float().mean()),
            "top5": float((top == labels[:, None]).any(1).float().mean())}
