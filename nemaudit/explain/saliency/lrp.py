"""LRP-composite (Heo, Joo & Moon 2019, after Kohlbrenner et al.) as differentiable torch ops.

The model is first turned into a list of *LRP layers* (:func:`lrp_layers`, the one place that
knows architectures); one forward pass through them records every layer's input, then the
relevance walks back layer by layer:

- ``Linear``: ε-rule, ``R_i = x_i Σ_j w_ji R_j / (z_j ± ε)``, ε = :data:`EPSILON` (bias in z);
- ``Conv2d``: α1β0 (z⁺), ``R_i = Σ_j (x_i⁺ w_ji⁺ + x_i⁻ w_ji⁻) R_j / z_j⁺`` with
  ``z_j⁺ = Σ_i (x_i⁺ w_ji⁺ + x_i⁻ w_ji⁻) + b_j⁺``. The *first* convolution sees the normalised
  image, which is negative in places; it gets this same rule (its ``x⁻ w⁻`` terms are the
  positive contributions of negative inputs), not z^B or Flat: that is what the authors' code
  does and zennit's ``EpsilonPlus`` composite too, so there is one rule for every conv;
- ``BatchNorm`` is folded into the preceding conv/linear (scale and shift computed from its
  parameters and *running* statistics as tensors that keep their graph; the module is never
  modified), so the α1β0 rule sees the merged weights as zennit's canonizers would;
- a residual sum ``y = a + b`` splits relevance in proportion to each branch's contribution
  (z-rule: ``R_a = a R / y``); so do average pooling and the global mean (linear layers
  without weights); max pooling gives the winner everything; ReLU, flatten, dropout (eval)
  and the input normalisation (an affine map per pixel) pass relevance through unchanged.

Every denominator is stabilised as zennit does, ``z + sign(z)·1e-6`` (sign(0) = +1; the
authors' code uses 1e-2). The pass starts from the selected class logit (one-hot times logit),
so without biases the relevance across any cut of the network sums to that logit, up to the
stabilisers. Positive biases absorb some of it, and so does a unit with z⁺ = 0 that a residual
split hands (negative) relevance: α1β0 cannot pass that on (~1% of the logit on random
ConceptNets, as in zennit).

Differentiability: with ``create_graph=True`` the forward keeps its graph and each rule's
vector-Jacobian product is taken with ``torch.autograd.grad(..., create_graph=True)``, so a
loss on the map back-propagates into the weights (what model manipulation trains through).
Batch norm uses running statistics whatever the module's mode, so a map never depends on the
other images of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nemaudit.errors import SpecError

#: ε of the ε-rule on Linear layers (zennit's default).
EPSILON = 1e-6
#: stabiliser of every other denominator (z⁺, residual sums, pooling).
STABILIZER = 1e-6

Tape = list[tuple["LRPLayer", torch.Tensor, Any]]
_BN_AFTER: dict[type, type] = {nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}

_SUPPORTED = ("Conv2d, Linear, BatchNorm2d/1d after a Conv2d/Linear, ReLU, MaxPool2d, AvgPool2d, "
              "AdaptiveAvgPool2d, Flatten, Dropout, Identity, Sequential, nemaudit ConceptNet and "
              "its BasicBlock, torchvision ResNet (BasicBlock, Bottleneck) and VGG")


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * (2 * (z >= 0).to(z.dtype) - 1)


@dataclass
class _Ctx:
    target: nn.Module | None
    create_graph: bool
    found: torch.Tensor | None = None

    def leaf(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` to differentiate against: itself when its graph must be kept, else a fresh leaf."""
        if self.create_graph and x.requires_grad:
            return x
        return x.detach().requires_grad_(True)

    def vjp(self, z: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(z, x, grad_outputs=s, create_graph=self.create_graph)
        return g


@dataclass(eq=False)
class LRPLayer:
    """One step of the relevance pass; ``modules`` are those whose output is this step's output
    (what ``layer=...`` names)."""

    modules: list[nn.Module] = field(default_factory=list, kw_only=True)

    def f(self, x: torch.Tensor) -> torch.Tensor:  # the forward computation
        raise NotImplementedError

    def forward(self, x: torch.Tensor, tape: Tape) -> torch.Tensor:
        tape.append((self, x, None))
        return self.f(x)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        raise NotImplementedError

    def children(self) -> Iterator[LRPLayer]:
        return iter(())


@dataclass(eq=False)
class PassLayer(LRPLayer):
    """Element-wise or reshaping op (ReLU, flatten, normalisation): relevance passes as is."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        return r.reshape(x.shape)


@dataclass(eq=False)
class PoolLayer(LRPLayer):
    """Weight-free linear op (average pooling, global mean): z-rule, R_i = x_i ∂z/∂x_i R / z."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        x = ctx.leaf(x)
        with torch.enable_grad():
            z = self.fn(x)
            return x * ctx.vjp(z, x, r / _stab(z, STABILIZER))


@dataclass(eq=False)
class MaxLayer(LRPLayer):
    """Max pooling: the winner takes all the relevance (the gradient's routing)."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        x = ctx.leaf(x)
        with torch.enable_grad():
            return ctx.vjp(self.fn(x), x, r)


@dataclass(eq=False)
class LinearLayer(LRPLayer):
    """Fully connected layer (batch norm folded in): ε-rule."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        s = r / _stab(self.f(x), EPSILON)
        return x * (s @ self.weight)


@dataclass(eq=False)
class ConvLayer(LRPLayer):
    """2-D convolution (batch norm folded in): α1β0 / z⁺ rule, negative inputs included."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any
    padding: Any
    dilation: Any
    groups: int

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight, self.bias)

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        x = ctx.leaf(x)
        with torch.enable_grad():
            bias = None if self.bias is None else self.bias.clamp(min=0)
            z = self._conv(x.clamp(min=0), self.weight.clamp(min=0), bias)
            if bool((x < 0).any()):  # only the first conv, on the normalised image
                z = z + self._conv(x.clamp(max=0), self.weight.clamp(max=0), None)
            # x·∂z/∂x = x⁺·(W⁺ᵀs) + x⁻·(W⁻ᵀs): clamp's gradient masks each part to its sign
            return x * ctx.vjp(z, x, r / _stab(z, STABILIZER))


@dataclass(eq=False)
class ResidualLayer(LRPLayer):
    """``post(branch(x) + shortcut(x))``: the sum's relevance is split by contribution."""

    branch: list[LRPLayer]
    shortcut: list[LRPLayer]
    post: list[LRPLayer]

    def forward(self, x: torch.Tensor, tape: Tape) -> torch.Tensor:
        tb: Tape = []
        ts: Tape = []
        tp: Tape = []
        a, b = run_layers(self.branch, x, tb), run_layers(self.shortcut, x, ts)
        tape.append((self, x, (tb, ts, tp, a, b)))
        return run_layers(self.post, a + b, tp)

    def relevance(self, x: torch.Tensor, r: torch.Tensor, aux: Any, ctx: _Ctx) -> torch.Tensor:
        tb, ts, tp, a, b = aux
        r = _backward(tp, r, ctx)
        if ctx.found is not None:
            return r
        s = r / _stab(a + b, STABILIZER)
        # sum_to_size: a branch broadcast over the sum (ConceptNet's 1x1 shortcut at odd
        # sizes) gets the relevance of every position it was added to
        ra = _backward(tb, (a * s).sum_to_size(a.shape), ctx)
        if ctx.found is not None:
            return ra
        rb = _backward(ts, (b * s).sum_to_size(b.shape), ctx)
        return rb if ctx.found is not None else ra + rb

    def children(self) -> Iterator[LRPLayer]:
        return iter([*self.branch, *self.shortcut, *self.post])


def run_layers(layers: Sequence[LRPLayer], x: torch.Tensor, tape: Tape | None = None
               ) -> torch.Tensor:
    """The forward pass through ``layers`` (logits for a whole model), recording into ``tape``."""
    tape = [] if tape is None else tape
    for layer in layers:
        x = layer.forward(x, tape)
    return x


def _backward(tape: Tape, r: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    for layer, x, aux in reversed(tape):
        if ctx.target is not None and any(m is ctx.target for m in layer.modules):
            ctx.found = r
            return r
        r = layer.relevance(x, r, aux, ctx)
        if not ctx.create_graph:
            r = r.detach()
        if ctx.found is not None:
            return r
    return r


def _all(layers: Sequence[LRPLayer]) -> Iterator[LRPLayer]:
    for layer in layers:
        yield layer
        yield from _all(list(layer.children()))


# --------------------------------------------------------------------------- architectures

def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: _BatchNorm, name: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a layer followed by ``bn``, from the tensors (their graph kept)."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise SpecError(f"batch norm {name!r} keeps no running statistics "
                        "(track_running_stats=False): LRP folds it into the preceding layer "
                        "with fixed statistics")
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = bn.weight * scale
    b = -mean * scale if bias is None else (bias - mean) * scale
    if bn.bias is not None:
        b = b + bn.bias
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), b


def _affine(module: nn.Conv2d | nn.Linear, bn: _BatchNorm | None, name: str, bn_name: str
            ) -> LRPLayer:
    weight, bias = module.weight, module.bias
    if bn is not None:
        weight, bias = _fold(weight, bias, bn, bn_name)
    mods: list[nn.Module] = [module] if bn is None else [module, bn]
    if isinstance(module, nn.Linear):
        return LinearLayer(weight, bias, modules=mods)
    assert isinstance(module, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise SpecError(f"LRP supports zero-padded convolutions only; {name!r} uses "
                        f"padding_mode={module.padding_mode!r}")
    return ConvLayer(weight, bias, module.stride, module.padding, module.dilation,
                     module.groups, modules=mods)


def _plain(module: nn.Module, base: type[nn.Module], name: str) -> None:
    """Refuse subclasses and instances with their own forward: LRP follows the known one."""
    if type(module).forward is not base.forward or "forward" in vars(module):
        raise SpecError(f"{type(module).__name__} at {name or 'the model'!r} overrides "
                        f"{base.__name__}.forward; LRP follows the architecture's known forward "
                        "and cannot trace a custom one")


def _sequence(children: Sequence[tuple[str, nn.Module | None]], prefix: str) -> list[LRPLayer]:
    """Layers of modules applied one after the other, a batch norm folded into its predecessor."""
    out: list[LRPLayer] = []
    items = [(f"{prefix}.{n}" if prefix else n, m) for n, m in children if m is not None]
    i = 0
    while i < len(items):
        name, m = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if type(m) in _BN_AFTER and nxt is not None and type(nxt[1]) is _BN_AFTER[type(m)]:
            assert isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(nxt[1], _BatchNorm)
            out.append(_affine(m, nxt[1], name, nxt[0]))
            i += 2
            continue
        out.extend(_walk(m, name))
        i += 1
    return out


def _block(module: nn.Module, name: str, branch: Sequence[str], shortcut: nn.Module | None,
           post: Sequence[str]) -> LRPLayer:
    return ResidualLayer(
        _sequence([(n, getattr(module, n)) for n in branch], name),
        _walk(shortcut, f"{name}.{'downsample' if hasattr(module, 'downsample') else 'shortcut'}")
        if shortcut is not None else [],
        _sequence([(n, getattr(module, n)) for n in post], name),
        modules=[module])


def _torchvision(module: nn.Module) -> Any:
    if not type(module).__module__.startswith("torchvision."):
        return None
    from torchvision import models

    return models


def _walk(m: nn.Module, name: str) -> list[LRPLayer]:
    """The LRP layers of ``m`` (named ``name`` in the inner model)."""
    from nemaudit.model.bundled import BasicBlock, ConceptNet

    tv = _torchvision(m)
    layers: list[LRPLayer]
    if type(m) is nn.Sequential:
        layers = _sequence(list(m.named_children()), name)
    elif isinstance(m, ConceptNet):
        _plain(m, ConceptNet, name)
        if type(m).features is not ConceptNet.features:
            raise SpecError(f"{type(m).__name__} overrides ConceptNet.features; LRP follows "
                            "the known forward and cannot trace a custom one")
        layers = _sequence([(n, getattr(m, n)) for n in
                            ("conv1", "layer1", "layer2", "layer3", "layer4")], name)
        layers += [PoolLayer(lambda t: t.mean(dim=(2, 3))), *_walk(m.fc, "fc")]
    elif isinstance(m, BasicBlock):
        _plain(m, BasicBlock, name)
        layers = [_block(m, name, ("conv1", "bn1", "relu", "conv2", "bn2"), m.shortcut,
                         ("relu_out",))]
    elif tv is not None and isinstance(m, tv.resnet.BasicBlock):
        _plain(m, tv.resnet.BasicBlock, name)
        layers = [_block(m, name, ("conv1", "bn1", "relu", "conv2", "bn2"), m.downsample,
                         ("relu",))]
    elif tv is not None and isinstance(m, tv.resnet.Bottleneck):
        _plain(m, tv.resnet.Bottleneck, name)
        layers = [_block(m, name, ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3",
                                   "bn3"), m.downsample, ("relu",))]
    elif tv is not None and isinstance(m, tv.ResNet):
        _plain(m, tv.ResNet, name)
        layers = _sequence([(n, getattr(m, n)) for n in ("conv1", "bn1", "relu", "maxpool",
                            "layer1", "layer2", "layer3", "layer4", "avgpool")], name)
        layers += [PassLayer(lambda t: t.flatten(1)), *_walk(m.fc, "fc")]
    elif tv is not None and isinstance(m, tv.VGG):
        _plain(m, tv.VGG, name)
        layers = _sequence([("features", m.features), ("avgpool", m.avgpool)], name)
        layers += [PassLayer(lambda t: t.flatten(1)), *_walk(m.classifier, "classifier")]
    elif type(m) in (nn.Conv2d, nn.Linear):
        assert isinstance(m, (nn.Conv2d, nn.Linear))
        layers = [_affine(m, None, name, "")]
    elif type(m) is nn.ReLU:
        layers = [PassLayer(torch.relu)]
    elif type(m) in (nn.Flatten, nn.Identity, nn.Dropout):
        layers = [PassLayer(m if type(m) is nn.Flatten else (lambda t: t))]
    elif type(m) is nn.MaxPool2d:
        if m.return_indices:
            raise SpecError(f"MaxPool2d {name!r} returns indices; LRP needs a plain max pool")
        layers = [MaxLayer(m)]
    elif type(m) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
        layers = [PoolLayer(m)]
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise SpecError(f"batch norm {name!r} does not directly follow a Conv2d/Linear: LRP "
                        "merges each batch norm into the layer before it")
    else:
        raise SpecError(f"LRP does not support module type {type(m).__name__} (at "
                        f"{name or 'the model'!r}); supported: {_SUPPORTED}")
    if layers and m not in layers[-1].modules:
        layers[-1].modules.append(m)  # a container's output is its last layer's
    return layers


def lrp_layers(model: nn.Module) -> list[LRPLayer]:
    """``model`` (a NormalizedModel or a bare network) as LRP layers, batch norm folded.

    Build it under ``torch.no_grad()`` for a map without a graph; otherwise the folded
    weights keep theirs. Raises :class:`SpecError` naming any unsupported module type.
    """
    from nemaudit.model.load import NormalizedModel

    if isinstance(model, NormalizedModel):
        return [PassLayer(model.normalize), *_walk(model.model, "")]
    return _walk(model, "")


def _check_target(layers: Sequence[LRPLayer], target: nn.Module, layer: str,
                  model: nn.Module) -> None:
    from nemaudit.model.load import unwrap

    hits = sum(any(m is target for m in lay.modules) for lay in _all(layers))
    if hits == 1:
        return
    if hits > 1:
        raise SpecError(f"layer {layer!r} runs {hits} times in one forward pass (a shared "
                        "module); a relevance map needs a layer that runs exactly once")
    names = {id(m): n for n, m in unwrap(model).named_modules() if n}
    valid = dict.fromkeys(names[id(m)] for lay in _all(layers) for m in lay.modules
                          if id(m) in names)
    raise SpecError(f"layer {layer!r} is not on the path LRP follows through "
                    f"{type(unwrap(model)).__name__}.forward; layers with a relevance: "
                    f"{', '.join(valid)}")


def lrp(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
        layer: str | None = None, *, create_graph: bool = False,
        normalise: bool = True) -> torch.Tensor:
    """LRP-composite maps ``[B, h, w]`` of ``images`` ``[B, 3, H, W]`` for classes ``targets``.

    ``layer=None``: relevance at the input pixels, summed over colour channels (normalised by
    the per-image max); ``layer=name``: relevance at that module's output summed over channels
    (ReLU then per-image min-max). ``create_graph=True`` keeps the map differentiable in the
    model's parameters.
    """
    from nemaudit.explain.saliency import _max_norm, check_targets
    from nemaudit.explain.saliency.metrics import min_max
    from nemaudit.model.layers import resolve_layer

    if images.dim() != 4:
        raise SpecError(f"images must be [batch, 3, height, width]; got {tuple(images.shape)}")
    target = resolve_layer(model, layer) if layer is not None else None
    with torch.set_grad_enabled(create_graph):
        layers = lrp_layers(model)
        if target is not None and layer is not None:
            _check_target(layers, target, layer, model)
        tape: Tape = []
        logits = run_layers(layers, images, tape)
    targets = check_targets(logits, targets)
    idx = targets[:, None]
    ctx = _Ctx(target, create_graph)
    with torch.set_grad_enabled(create_graph):
        rel = _backward(tape, torch.zeros_like(logits).scatter(1, idx, logits.gather(1, idx)),
                        ctx)
    if target is not None:
        assert ctx.found is not None
        rel = ctx.found
        if rel.dim() != 4:
            raise SpecError(f"layer {layer!r} has output of shape {tuple(rel.shape)}: a map at "
                            "a layer needs a spatial output [batch, channels, height, width]")
    h = rel.sum(1)
    if not normalise:
        return h
    return _max_norm(h) if target is None else min_max(torch.relu(h))


__all__ = ["EPSILON", "STABILIZER", "LRPLayer", "lrp", "lrp_layers", "run_layers"]
