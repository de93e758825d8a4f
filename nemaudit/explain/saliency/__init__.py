"""Saliency interpreters (Heo, Joo & Moon, NeurIPS 2019): one heatmap per image and class.

Every interpreter is *differentiable in the model's parameters*: with ``create_graph=True``
a loss on the heatmap back-propagates into the weights (double backward for the gradient
methods, a relevance pass built from differentiable torch ops for LRP). That is what the
model-manipulation attack (:mod:`nemaudit.corrupt.manipulate`) trains through, and why the
maps are computed here rather than by Captum or zennit: those are the tests' oracles, but
neither gives a map whose gradient reaches the weights.

Names (``interpreter``), as in the paper and the authors' code:

- ``gradcam``: Grad-CAM at a layer — ReLU(Σ_k α_k A_k), α_k the spatial mean of ∂y_c/∂A_k;
- ``simplegrad``: |∂y_c/∂x| at the input, summed over colour channels;
- ``simplegrad_t``: |∂y_c/∂A| at a layer, summed over channels;
- ``lrp``: LRP-composite at the input (ε on linear layers, α1β0 on convolutions, batch norm
  merged into the preceding convolution, relevance split at residual sums in proportion to
  each branch's contribution), summed over colour channels;
- ``lrp_t``: the same relevance taken at a layer, summed over channels.

``y_c`` is the class logit (before the softmax). Maps are ``[B, h, w]``: at the layer's
resolution for ``gradcam``/``*_t``, at the input's for ``simplegrad``/``lrp``.

Normalisation (``normalise=True``, the default) follows the authors' code, because the
paper's test-loss thresholds (FSR) are stated on these scales: ``gradcam`` divided by its
per-image max (so in [0, 1]); ``simplegrad_t`` and ``lrp_t`` ReLU then min-max per image (in
[0, 1]); ``simplegrad`` divided by its per-image sum; ``lrp`` divided by its per-image max
(signed, ≤ 1). ``normalise=False`` returns the raw map (for conservation checks and oracles).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nemaudit.errors import SpecError
from nemaudit.explain.saliency.metrics import EPS, min_max

#: interpreter name → (needs a target layer, one-line description)
INTERPRETERS: dict[str, tuple[bool, str]] = {
    "gradcam": (True, "Grad-CAM at a layer"),
    "simplegrad": (False, "input gradient |dy/dx|"),
    "simplegrad_t": (True, "gradient |dy/dA| at a layer"),
    "lrp": (False, "LRP-composite (eps on linear, alpha1-beta0 on conv) at the input"),
    "lrp_t": (True, "LRP-composite relevance at a layer"),
}


def check_interpreter(name: str) -> str:
    """``name`` if it is a known interpreter, else a SpecError listing the valid ones."""
    if name not in INTERPRETERS:
        raise SpecError(f"unknown interpreter {name!r}; valid interpreters: "
                        f"{', '.join(INTERPRETERS)}")
    return name


def needs_layer(name: str) -> bool:
    """Whether the interpreter reads a target layer (Grad-CAM and the ``_t`` variants)."""
    return INTERPRETERS[check_interpreter(name)][0]


def check_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` as a long vector of valid class indices for ``logits`` ``[B, C]``."""
    if logits.dim() != 2:
        raise SpecError(f"the model must return class logits [batch, classes]; it returned "
                        f"a tensor of shape {tuple(logits.shape)} (no classification output)")
    targets = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
    if targets.numel() != logits.shape[0]:
        raise SpecError(f"{targets.numel()} class indices for {logits.shape[0]} images")
    bad = (targets < 0) | (targets >= logits.shape[1])
    if bool(bad.any()):
        raise SpecError(f"class index {int(targets[bad][0])} out of range: the model has "
                        f"{logits.shape[1]} classes (0..{logits.shape[1] - 1})")
    return targets


def forward_with_layer(model: nn.Module, images: torch.Tensor, layer: str | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, the layer's output with its graph) from one forward pass."""
    if layer is None:
        return model(images), None
    from nemaudit.model.layers import resolve_layer

    module = resolve_layer(model, layer)
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(t, torch.Tensor):
            raise SpecError(f"layer {layer!r} does not output a tensor")
        seen.append(t)

    handle = module.register_forward_hook(hook)
    try:
        logits = model(images)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise SpecError(f"layer {layer!r} ran {len(seen)} times in one forward pass; a saliency "
                        "map needs a layer that runs exactly once")
    act = seen[0]
    if act.dim() != 4:
        raise SpecError(f"layer {layer!r} has output of shape {tuple(act.shape)}: a map at a "
                        "layer needs a spatial output [batch, channels, height, width]")
    return logits, act


def _selected(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, targets[:, None]).sum()


def _max_norm(h: torch.Tensor) -> torch.Tensor:
    return h / (h.flatten(1).amax(1)[:, None, None] + EPS)


def gradcam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str, *,
            create_graph: bool = False, normalise: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at ``layer``: ReLU(Σ_k mean(∂y_c/∂A_k)·A_k)."""
    logits, act = forward_with_layer(model, images, layer)
    targets = check_targets(logits, targets)
    assert act is not None
    (grad,) = torch.autograd.grad(_selected(logits, targets), act, create_graph=create_graph)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1))
    return _max_norm(cam) if normalise else cam


def simplegrad(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
               layer: str | None = None, *, create_graph: bool = False,
               normalise: bool = True) -> torch.Tensor:
    """SimpleGrad (Simonyan et al. 2014): |∂y_c/∂x| summed over channels, at the input
    (``layer=None``) or at ``layer`` (SimpleG_T)."""
    x = images if layer is not None else images.detach().requires_grad_(True)
    logits, act = forward_with_layer(model, x, layer)
    targets = check_targets(logits, targets)
    wrt = act if act is not None else x
    (grad,) = torch.autograd.grad(_selected(logits, targets), wrt, create_graph=create_graph)
    g = grad.abs().sum(1)
    if not normalise:
        return g
    if layer is None:
        return g / (g.flatten(1).sum(1)[:, None, None] + EPS)
    return min_max(g)


def heatmap(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, interpreter: str,
            *, layer: str | None = None, create_graph: bool = False,
            normalise: bool = True) -> torch.Tensor:
    """The ``interpreter``'s maps ``[B, h, w]`` of ``images`` ``[B, 3, H, W]`` in [0, 1] for
    the classes ``targets`` ``[B]`` (see the module docstring for names and scales)."""
    check_interpreter(interpreter)
    if images.dim() != 4:
        raise SpecError(f"images must be [batch, 3, height, width]; got {tuple(images.shape)}")
    if needs_layer(interpreter) and not layer:
        raise SpecError(f"interpreter {interpreter!r} needs a target layer (layer=...)")
    if not images.requires_grad:  # every map differentiates the logit w.r.t. its input side
        images = images.detach().requires_grad_(True)
    kw = {"create_graph": create_graph, "normalise": normalise}
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "gradcam": lambda: gradcam(model, images, targets, str(layer), **kw),
        "simplegrad": lambda: simplegrad(model, images, targets, None, **kw),
        "simplegrad_t": lambda: simplegrad(model, images, targets, layer, **kw),
        "lrp": lambda: _lrp(model, images, targets, None, **kw),
        "lrp_t": lambda: _lrp(model, images, targets, layer, **kw),
    }
    with torch.enable_grad():
        return fns[interpreter]()


def _lrp(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: str | None,
         **kw: bool) -> torch.Tensor:
    from nemaudit.explain.saliency.lrp import lrp

    return lrp(model, images, targets, layer, **kw)


__all__ = ["INTERPRETERS", "check_interpreter", "check_targets", "forward_with_layer",
           "gradcam", "heatmap", "needs_layer", "simplegrad"]
