"""The fine-tuning loop of a fooling: CE(D; w) + λ·L_F(D_fool; w, w₀), w₀ frozen (Eq. 2).

Choices, and why:

- The model stays in eval mode (batch norm uses its running statistics and does not update
  them), as the authors' code recommends for models with batch norm: the fooled model then
  differs from the original only in its weights, and its maps depend on no batch.
- Adam on every parameter; the interpreter's map is built with ``create_graph=True`` so L_F
  back-propagates into the weights (double backward for Grad-CAM/SimpleGrad).
- Passive foolings use the same batch for CE and L_F; active fooling draws CE batches from
  the plain images and L_F batches from the two-class images (D_fool), as the paper does to
  keep accuracy.
- After every epoch the held-out top-1 and FSR are measured; the returned weights are those
  of the epoch with the best FSR among the epochs whose top-1 drop is within
  ``max_top1_drop`` (the original weights, epoch 0, if none is): a fooling that costs more
  accuracy than allowed does not count as a success.
- Reproducible for a seed: initial state, batch order and two-class images all come from
  generators seeded with ``seed`` (bit-identical on the CPU for a fixed thread count).
- Data-parallel in a process group (``torchrun``, :mod:`nemaudit.dist`): every rank draws the
  same batch and takes its rows ``rank::world``; the losses are sums over those rows divided
  by the whole batch's size, so the summed gradients (one all-reduce per step) are the
  one-process gradient up to the order of the additions. Every rank applies the same summed
  gradient, so the ranks' weights, evaluations and epoch choices stay identical.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.corrupt.manipulate import FoolingConfig
from nemaudit.corrupt.manipulate.data import (
    LabelledImages,
    class_index,
    predict,
    two_class_images,
)
from nemaudit.corrupt.manipulate.evaluate import accuracy, test_losses
from nemaudit.corrupt.manipulate.losses import active_loss, penalty
from nemaudit.explain.saliency import heatmap, needs_layer


@dataclass
class FoolingRun:
    """A fooled model and how it got there."""

    model: nn.Module
    config: FoolingConfig
    #: per epoch (0 = the original): ce, lf (training means), top1, top5, fsr (held out)
    history: list[dict[str, Any]]
    best_epoch: int
    classes: tuple[int, int] | None = None
    #: the images active fooling measured on (two classes each), else None
    active_images: torch.Tensor | None = field(default=None, repr=False)

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch]


def _commonest_two(labels: torch.Tensor) -> tuple[int, int]:
    counts = torch.bincount(labels)
    top = counts.topk(min(2, len(counts))).indices.tolist()
    if len(top) < 2 or counts[top[1]] == 0:  # [0, 3]: two bins, one class
        from nemaudit.errors import SpecError

        raise SpecError("active fooling needs images of at least two classes")
    return int(top[0]), int(top[1])


def active_classes(config: FoolingConfig, train: LabelledImages, n_classes: int,
                   class_names: Sequence[str] | None) -> tuple[int, int]:
    """The two classes whose maps active fooling swaps."""
    if config.classes:
        a, b = (class_index(c, class_names, n_classes) for c in config.classes)
        if a == b:
            from nemaudit.errors import SpecError

            raise SpecError(f"active fooling needs two different classes, got {a} twice")
        return a, b
    return _commonest_two(train.labels)


def _evaluate(model: nn.Module, original: nn.Module, config: FoolingConfig,
              held: LabelledImages, active_x: torch.Tensor | None,
              classes: tuple[int, int] | None, layer: str | None) -> dict[str, Any]:
    """Top-1/top-5 on every held-out image (a forward pass each: cheap, and the 2-point
    budget needs the images), FSR on the first ``eval_images`` (maps of both models)."""
    acc = accuracy(model, held.images, held.labels)
    ev = held.take(config.eval_images)
    x = active_x if active_x is not None else ev.images
    tl = test_losses(config.fooling, config.interpreter, layer, model, original, x,
                     ev.labels[:len(x)], classes=classes, interval=config.interval)
    fsr = tl.fsr()
    return {**acc, "fsr": float(sum(fsr) / len(fsr)), "fsr_per_class": fsr,
            "test_loss": float(tl.losses.float().mean())}


def _step_losses(model: nn.Module, original: nn.Module, config: FoolingConfig,
                 train: LabelledImages, fool_x: torch.Tensor | None,
                 classes: tuple[int, int] | None, idx: torch.Tensor, fidx: torch.Tensor,
                 layer: str | None, device: torch.device, group: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """CE and L_F of one step: means over the batch ``idx`` (and ``fidx`` for active
    fooling's two-class images), computed on this rank's rows only in a process group."""
    n, n_fool = len(idx), len(fidx)
    if group is not None:
        idx, fidx = idx[group.rank::group.world], fidx[group.rank::group.world]
    def mean(rows: torch.Tensor, total: int) -> torch.Tensor:  # one process: exactly .mean()
        return rows.mean() if group is None else rows.sum() / total

    ce = lf = torch.zeros((), device=device)
    if len(idx):
        x = train.images[idx].to(device)
        y = train.labels[idx].to(device)
        ce = F.cross_entropy(model(x), y) if group is None else \
            F.cross_entropy(model(x), y, reduction="sum") / n
    if config.fooling == "active":
        assert fool_x is not None and classes is not None
        xf = fool_x[fidx].to(device)
        if len(xf):
            c1 = torch.full((len(xf),), classes[0], device=device)
            c2 = torch.full((len(xf),), classes[1], device=device)
            it = config.interpreter
            h1 = heatmap(model, xf, c1, it, layer=layer, create_graph=True)
            h2 = heatmap(model, xf, c2, it, layer=layer, create_graph=True)
            h1_0 = heatmap(original, xf, c1, it, layer=layer).detach()
            h2_0 = heatmap(original, xf, c2, it, layer=layer).detach()
            lf = mean(active_loss(h1, h2, h1_0, h2_0), n_fool)
    elif len(idx):
        h = heatmap(model, x, y, config.interpreter, layer=layer, create_graph=True)
        h0 = None
        if config.fooling != "location":
            h0 = heatmap(original, x, y, config.interpreter, layer=layer).detach()
        lf = mean(penalty(config.fooling, h, h0,
                          signed_input_map=config.interpreter == "lrp"), n)
    return ce, lf


def _sum_gradients(model: nn.Module) -> None:
    """Sum every parameter's gradient over the ranks, in one all-reduce (a rank with no rows
    in this batch contributes zeros)."""
    from nemaudit import dist

    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = dist.all_sum(torch.cat([g.reshape(-1) for g in grads]), "summing the gradients")
    pos = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[pos:pos + g.numel()].view_as(g).clone()
        pos += g.numel()


def fool(original: nn.Module, train: LabelledImages, held: LabelledImages,
         config: FoolingConfig, *, class_names: Sequence[str] | None = None,
         progress: bool = False) -> FoolingRun:
    """Fine-tune a copy of ``original`` with ``config``'s fooling; ``original`` is unchanged."""
    from nemaudit import dist
    from nemaudit.progress import progress_task

    group = dist.active()
    device = next(original.parameters()).device
    layer = config.layer if needs_layer(config.interpreter) else None
    if needs_layer(config.interpreter) and not layer:
        from nemaudit.errors import SpecError

        raise SpecError(f"fooling {config.interpreter} needs its layer (layer=...)")
    original = original.eval()  # its maps are detached: its weights get no gradient
    torch.manual_seed(config.seed)
    model = copy.deepcopy(original).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(config.seed)
    n_classes = int(predict(original, held.images[:1]).shape[1])
    classes = active_x = fool_x = None
    if config.fooling == "active":
        classes = active_classes(config, train, n_classes, class_names)
        fool_x = two_class_images(train, *classes, n=len(train), seed=config.seed)
        active_x = two_class_images(held, *classes, n=min(len(held), config.eval_images),
                                    seed=config.seed + 1)
    history = [{"epoch": 0, "ce": None, "lf": None,
                **_evaluate(model, original, config, held, active_x, classes, layer)}]
    base_top1 = history[0]["top1"]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, stale, best_fsr = 0, 0, history[0]["fsr"]
    steps = math.ceil(len(train) / config.batch_size)
    with progress_task(f"fooling {config.interpreter} ({config.fooling})",
                       total=steps * config.epochs, enabled=progress) as task:
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(len(train), generator=gen)
            fool_order = torch.randperm(len(train), generator=gen)
            ce_sum = lf_sum = 0.0
            for s in range(steps):
                idx = order[s * config.batch_size:(s + 1) * config.batch_size]
                fidx = fool_order[s * config.batch_size:(s + 1) * config.batch_size]
                ce, lf = _step_losses(model, original, config, train, fool_x, classes,
                                      idx, fidx, layer, device, group)
                loss = ce + config.lam * lf
                opt.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                if group is not None:
                    _sum_gradients(model)
                    parts = torch.stack([ce.detach(), lf.detach()]).double()
                    ce, lf = dist.all_sum(parts, "summing the fooling losses")
                opt.step()
                ce_sum += float(ce.detach())
                lf_sum += float(lf.detach())
                task.advance()
                task.describe(f"fooling {config.interpreter} ({config.fooling}) epoch {epoch}: "
                              f"CE {ce_sum / (s + 1):.3f} L_F {lf_sum / (s + 1):.4f} "
                              f"held-out top-1 {history[-1]['top1']:.3f}")
            row = {"epoch": epoch, "ce": ce_sum / steps, "lf": lf_sum / steps,
                   **_evaluate(model, original, config, held, active_x, classes, layer)}
            history.append(row)
            allowed = config.max_top1_drop is None or \
                base_top1 - row["top1"] <= config.max_top1_drop + 1e-12
            if allowed and row["fsr"] > history[best_epoch]["fsr"]:
                best_epoch = epoch
                best_state = copy.deepcopy(model.state_dict())
            # patience counts epochs without a better FSR, whatever their accuracy: an epoch
            # over the top-1 budget is often followed by one that recovers it
            if row["fsr"] > best_fsr:
                best_fsr, stale = row["fsr"], 0
            else:
                stale += 1
            if (allowed and row["fsr"] >= config.stop_fsr) or stale >= config.patience:
                break
    model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(False)
    return FoolingRun(model.eval(), config, history, best_epoch, classes, active_x)
