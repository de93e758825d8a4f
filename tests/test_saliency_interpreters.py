"""Saliency interpreters against independent oracles (Captum, zennit, finite differences).

Everything runs in double precision on tiny models (ConceptNet width 4 at 32 px) so that the
oracles can be matched to ~1e-12 and finite differences to 1e-4. Batch norms get random
statistics and affine parameters: with the defaults (mean 0, var 1, γ 1, β 0) a missing fold
would go unnoticed.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nemaudit.errors import ModelSpecError, SpecError
from nemaudit.explain.saliency import INTERPRETERS, gradcam, heatmap, simplegrad
from nemaudit.explain.saliency.lrp import lrp, lrp_layers, run_layers
from nemaudit.model.bundled import BasicBlock, ConceptNet
from nemaudit.model.layers import resolve_layer
from nemaudit.model.load import NormalizedModel

torch.set_num_threads(1)
DT = torch.float64
LAYER_OF = {"gradcam": "layer4", "simplegrad": None, "simplegrad_t": "layer3", "lrp": None,
            "lrp_t": "layer3"}


def _random_bn(net: nn.Module, seed: int = 1, eps: float | None = None) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
                if eps is not None:
                    m.eps = eps
    return net


def _wrap(net: nn.Module) -> NormalizedModel:
    return NormalizedModel(net, "imagenet").to(DT).eval()


def conceptnet(seed: int = 0, eps: float | None = None, width: int = 4) -> NormalizedModel:
    torch.manual_seed(seed)
    return _wrap(_random_bn(ConceptNet(num_classes=5, width=width), seed + 1, eps))


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


TARGETS = torch.tensor([0, 1, 2, 4])


def vgg_like(bias: bool = True) -> nn.Sequential:
    """Plain Sequential CNN with every supported leaf type (and a BN after a Linear)."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=bias), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16, bias=bias),
        nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5, bias=bias))


def tv_vgg(eps: float | None = None) -> NormalizedModel:
    """A torchvision ``VGG`` instance with tiny parts (its constructor allocates 100M weights)."""
    from torchvision.models import VGG

    net = VGG.__new__(VGG)
    nn.Module.__init__(net)
    seq = vgg_like()
    net.features, net.avgpool = seq[:9], nn.AdaptiveAvgPool2d(2)
    net.classifier = seq[11:]
    return _wrap(_random_bn(net, 5, eps))


def tv_resnet(kind: str, eps: float | None = None) -> NormalizedModel:
    from torchvision.models import resnet

    torch.manual_seed(7)
    net = resnet.resnet18(num_classes=5) if kind == "basic" else \
        resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=5)
    return _wrap(_random_bn(net, 8, eps))


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_gradcam_matches_captum(layer):
    from captum.attr import LayerGradCam

    model, x = conceptnet(), images()
    ours = gradcam(model, x, TARGETS, layer, normalise=False)
    ref = LayerGradCam(model, resolve_layer(model, layer)).attribute(
        x, target=TARGETS, relu_attributions=True)[:, 0]
    assert ours.shape == ref.shape == (4, *ref.shape[1:])
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    peak = ours.flatten(1).amax(1)
    assert (peak > 0).sum() >= 3  # (a map may be all zero: every class score ReLU'd away)
    torch.testing.assert_close(gradcam(model, x, TARGETS, layer),
                               ours / (peak[:, None, None] + 1e-8))


def test_simplegrad_matches_captum_saliency():
    from captum.attr import Saliency

    model, x = conceptnet(), images()
    ours = simplegrad(model, x, TARGETS, normalise=False)
    ref = Saliency(model).attribute(x.clone().requires_grad_(True), target=TARGETS,
                                    abs=True).sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(simplegrad(model, x, TARGETS).sum((1, 2)), torch.ones(4, dtype=DT))


@pytest.mark.parametrize("layer", ["layer2", "layer3"])
def test_simplegrad_t_matches_captum_layer_gradient(layer):
    # LayerGradientXActivation without the multiplication by the activation is Captum's
    # plain layer gradient ∂y_c/∂A, obtained through its own hooks
    from captum.attr import LayerGradientXActivation

    model, x = conceptnet(), images()
    ours = simplegrad(model, x, TARGETS, layer, normalise=False)
    ref = LayerGradientXActivation(model, resolve_layer(model, layer), multiply_by_inputs=False
                                   ).attribute(x, target=TARGETS).abs().sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    lo, hi = ours.flatten(1).amin(1)[:, None, None], ours.flatten(1).amax(1)[:, None, None]
    assert (hi > lo).all()
    torch.testing.assert_close(simplegrad(model, x, TARGETS, layer),
                               (ours - lo) / (hi - lo + 1e-8))


# ----------------------------------------------------------------------------- LRP vs zennit

def _conceptnet_block_forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu_out(self.canonizer_sum(torch.stack([y, self.shortcut(x)], dim=-1)))


def _conceptnet_forward(self, x):
    return self.fc(self.canonizer_pool(self.features(x)).flatten(1))


def _conceptnet_attributes(name, module):
    """zennit canonizer for ConceptNet: the residual sum and the global mean as modules, so
    that zennit's z-rule (``Norm``) applies to them as it does for torchvision ResNets."""
    if type(module) is BasicBlock:
        from zennit.layer import Sum

        return {"forward": _conceptnet_block_forward.__get__(module), "canonizer_sum": Sum()}
    if type(module) is ConceptNet:
        return {"forward": _conceptnet_forward.__get__(module),
                "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
    return None


def zennit_lrp(model: NormalizedModel, canonizers: list, x: torch.Tensor, t: torch.Tensor,
               layer: str | None = None) -> torch.Tensor:
    """zennit's EpsilonPlus (z⁺ on every conv, the first included; ε on Linear; z-rule on sums
    and average pools) on the inner model fed the normalised image; at ``layer`` the relevance
    is the gradient arriving at that module's output (zennit hooks turn gradients into
    relevance)."""
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    inner, store, handle = model.model, {}, None
    if layer is not None:
        def hook(_m, _i, out):
            out.register_hook(lambda g: store.__setitem__("r", g))
        handle = dict(inner.named_modules())[layer].register_forward_hook(hook)
    try:
        with Gradient(inner, EpsilonPlus(canonizers=canonizers)) as attributor:
            _, rel = attributor(model.normalize(x).detach(), lambda o: torch.zeros_like(o).scatter(
                1, t[:, None], o.gather(1, t[:, None])))
    finally:
        if handle is not None:
            handle.remove()
    return (store["r"] if layer is not None else rel).sum(1)


def _conceptnet_canonizers() -> list:
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm

    return [SequentialMergeBatchNorm(), AttributeCanonizer(_conceptnet_attributes)]


def _assert_matches(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


# zennit 0.5's merged batch norm keeps its eps with var = 1, i.e. scales by (1 + eps)^-1/2
# where the identity is meant (~5e-6 per BN, 5e-5 relative over a random ResNet, 1e-2 at the
# input of the trained ConceptNet); with a negligible eps (1e-30: 1 + eps == 1 in double,
# and torch may refuse eps = 0) both are exact.
TINY_EPS = 1e-30
@pytest.mark.parametrize("layer", [None, "layer4", "layer3", "layer2.conv1", "layer2.shortcut",
                                   "layer2.relu_out", "conv1"])
def test_lrp_matches_zennit_on_conceptnet(layer):
    model, x = conceptnet(eps=TINY_EPS), images()
    _assert_matches(lrp(model, x, TARGETS, layer, normalise=False),
                    zennit_lrp(model, _conceptnet_canonizers(), x, TARGETS, layer))


@pytest.mark.parametrize("kind,layer", [("basic", None), ("basic", "layer3"),
                                        ("bottleneck", None), ("bottleneck", "layer2.0.conv2")])
def test_lrp_matches_zennit_on_torchvision_resnets(kind, layer):
    from zennit.torchvision import ResNetCanonizer

    model, x, t = tv_resnet(kind, eps=TINY_EPS), images(2), TARGETS[:2]
    _assert_matches(lrp(model, x, t, layer, normalise=False),
                    zennit_lrp(model, [ResNetCanonizer()], x, t, layer))


@pytest.mark.parametrize("layer", [None, "features.5"])
def test_lrp_matches_zennit_on_vgg_style_models(layer):
    from zennit.canonizers import SequentialMergeBatchNorm

    x = images(4)
    seq = _wrap(_random_bn(vgg_like(), 4, TINY_EPS))
    seq_layer = None if layer is None else layer.split(".")[1]
    _assert_matches(lrp(seq, x, TARGETS, seq_layer, normalise=False),
                    zennit_lrp(seq, [SequentialMergeBatchNorm()], x, TARGETS, seq_layer))
    vgg = tv_vgg(eps=TINY_EPS)
    _assert_matches(lrp(vgg, x, TARGETS, layer, normalise=False),
                    zennit_lrp(vgg, [SequentialMergeBatchNorm()], x, TARGETS, layer))


def test_lrp_matches_zennit_on_dilated_and_grouped_convolutions_with_a_dead_channel():
    """Dilation and groups reach every convolution of the rule; a channel whose weights and
    bias are all zero has z⁺ = 0 everywhere, so its (zero) relevance is divided by the
    stabiliser alone (sign(0) = +1): the map stays finite, as zennit's does."""
    from zennit.canonizers import SequentialMergeBatchNorm

    torch.manual_seed(5)
    seq = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 5)).to(DT)
    with torch.no_grad():
        seq[4].weight[0] = 0.0
        seq[4].bias[0] = 0.0
    model, x = _wrap(seq), images(4, 16)
    for layer in (None, "2"):
        ours = lrp(model, x, TARGETS, layer, normalise=False)
        assert torch.isfinite(ours).all()
        _assert_matches(ours, zennit_lrp(model, [SequentialMergeBatchNorm()], x, TARGETS,
                                         layer))


@pytest.mark.parametrize("build", [conceptnet, lambda: tv_resnet("basic"),
                                   lambda: tv_resnet("bottleneck"), tv_vgg,
                                   lambda: _wrap(_random_bn(vgg_like(), 4))],
                         ids=["conceptnet", "resnet18", "bottleneck", "tv_vgg", "sequential"])
def test_lrp_layers_reproduce_the_forward(build):
    """The folded layers (batch-norm eps included) compute the model's own logits."""
    model, x = build(), images(2)
    with torch.no_grad():
        torch.testing.assert_close(run_layers(lrp_layers(model), x), model(x),
                                   rtol=1e-12, atol=1e-12)


def test_empty_containers_and_dropout_change_no_map():
    """An empty ``Sequential`` is the identity, and dropout is too: LRP explains the model's
    deterministic (eval) forward, batch norms folded with their running statistics, even when
    the model was left in training mode."""
    torch.manual_seed(9)
    body = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    plain = nn.Sequential(*body, nn.Linear(4, 5)).to(DT)
    padded = nn.Sequential(body[0], nn.Sequential(), *body[1:], nn.Dropout(0.9), plain[-1]).to(DT)
    x = images(4, 16)
    want = lrp(_wrap(plain), x, TARGETS, normalise=False)
    assert want.abs().max() > 0
    for model in (_wrap(padded), _wrap(padded).train()):
        torch.testing.assert_close(lrp(model, x, TARGETS, normalise=False), want,
                                   rtol=0, atol=0)
        torch.testing.assert_close(lrp(model, x, TARGETS, "0", normalise=False),
                                   lrp(_wrap(plain), x, TARGETS, "0", normalise=False),
                                   rtol=0, atol=0)


def test_lrp_keeps_a_graph_of_images_that_carry_none():
    """``create_graph=True`` on plain images (no gradient of their own): every step still
    differentiates against a fresh leaf, and the maps are those without a graph."""
    model, x = conceptnet(), images(2)
    assert not x.requires_grad
    for layer in (None, "layer3"):
        got = lrp(model, x, TARGETS[:2], layer, create_graph=True, normalise=False)
        assert got.requires_grad
        torch.testing.assert_close(got.detach(), lrp(model, x, TARGETS[:2], layer,
                                                     normalise=False), rtol=1e-12, atol=1e-14)


def test_lrp_normalised_scales():
    model, x = conceptnet(), images()
    h = heatmap(model, x, TARGETS, "lrp")
    raw = lrp(model, x, TARGETS, normalise=False)
    torch.testing.assert_close(h, raw / (raw.flatten(1).amax(1)[:, None, None] + 1e-8))
    torch.testing.assert_close(lrp(model, x, TARGETS), h)  # normalised by default
    assert h.shape == (4, 32, 32)
    ht = heatmap(model, x, TARGETS, "lrp_t", layer="layer4")
    assert ht.shape == (4, 2, 2)
    assert ht.flatten(1).amin(1).eq(0).all() and ht.flatten(1).amax(1).sub(1).abs().lt(1e-6).all()


# ----------------------------------------------------------------------------- conservation

def test_lrp_conserves_the_logit_without_biases():
    """Without biases every rule conserves relevance up to its 1e-6 stabiliser, wherever no
    unit carrying relevance has z⁺ = 0. That holds in a plain CNN (relevance reaches a conv
    output only where it is positive) and in a ConceptNet whose convolutions after the first
    are non-negative; with mixed-sign weights a residual branch can hand negative relevance to
    a unit with z⁺ = 0, where α1β0 drops it (~1% of the logit measured on random ConceptNets,
    as in zennit)."""
    x, t = images(4), TARGETS
    seq = _wrap(_random_bn(vgg_like(bias=False), 4))
    cn = conceptnet(seed=2)
    with torch.no_grad():
        for m in [*seq.modules(), *cn.modules()]:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):  # scale only: no folded bias
                m.running_mean.zero_()
                m.bias.zero_()
        for m in cn.modules():
            if isinstance(m, nn.Conv2d) and m is not cn.model.conv1[0]:
                m.weight.abs_().mul_(0.4)  # (non-negative, and logits of order 1)
        cn.model.fc.bias.zero_()
    # layers that cut the network in two (not one branch of a residual block); at 24 px
    # ConceptNet's stride-2 shortcuts are 1x1 where the branch is 2x2 (a broadcast sum)
    for model, xs, layers in ((seq, x, [None, "2", "3", "8"]),
                              (cn, x, [None, "conv1", "layer2", "layer3", "layer4"]),
                              (cn, images(4, 24, 1), [None, "layer3", "layer4"])):
        logit = model(xs).gather(1, t[:, None])[:, 0].detach()
        assert logit.abs().min() > 1e-3
        for layer in layers:
            rel = lrp(model, xs, t, layer, normalise=False).sum((1, 2))
            # each stabiliser moves a denominator by 1e-6: the sum is off by ~1e-6 absolute
            torch.testing.assert_close(rel, logit, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- gradients wrt w

@pytest.mark.parametrize("interpreter", list(INTERPRETERS))
def test_heatmaps_are_differentiable_in_the_weights(interpreter):
    model, x = conceptnet(width=2), images(2, 32)
    layer = LAYER_OF[interpreter]
    weights = torch.rand(2, *heatmap(model, x, TARGETS[:2], interpreter, layer=layer).shape[1:],
                         generator=torch.Generator().manual_seed(9), dtype=DT)
    params = dict(model.model.named_parameters())
    names = ["conv1.0.weight", "conv1.1.weight", "layer3.conv2.weight", "layer4.conv1.weight",
             "layer4.bn1.bias", "fc.weight"]
    if interpreter.startswith("simplegrad"):  # a gradient reads biases only through ReLU masks
        names = [n for n in names if not n.endswith("bias")]
    if interpreter == "simplegrad_t":  # and ∂y/∂A3 the layers above layer3 only (a.e.)
        names = [n for n in names if n.startswith(("layer4", "fc"))]
    probes = {n: params[n] for n in names}

    def loss() -> torch.Tensor:
        h = heatmap(model, x, TARGETS[:2], interpreter, layer=layer, create_graph=True)
        return (h * weights).sum()

    grads = torch.autograd.grad(loss(), list(probes.values()))
    for (name, p), g in zip(probes.items(), grads):
        assert g.abs().max() > 0, f"{interpreter}: no gradient reaches {name}"
        # central differences on two entries of each probed tensor (double precision)
        for k in (0, p.numel() - 1):
            with torch.no_grad():
                old = p.view(-1)[k].item()
                p.view(-1)[k] = old + 1e-6
                up = loss().item()
                p.view(-1)[k] = old - 1e-6
                down = loss().item()
                p.view(-1)[k] = old
            fd, an = (up - down) / 2e-6, g.reshape(-1)[k].item()
            assert an == pytest.approx(fd, rel=1e-4, abs=1e-7 * max(1.0, abs(fd))), \
                f"{interpreter} {name}[{k}]: autograd {an} vs finite differences {fd}"


# ----------------------------------------------------------------------------- bad input

def _raises(match: str):
    return pytest.raises((SpecError, ModelSpecError), match=match)


def test_bad_input_is_a_spec_error():
    model, x = conceptnet(), images(2)
    t = TARGETS[:2]
    with _raises("spatial output"):
        heatmap(model, x, t, "gradcam", layer="fc")
    with _raises("spatial output"):
        heatmap(model, x, t, "lrp_t", layer="fc")
    for interpreter in INTERPRETERS:
        with _raises(r"class index 5 out of range: the model has 5 classes"):
            heatmap(model, x, torch.tensor([0, 5]), interpreter, layer=LAYER_OF[interpreter])
    with _raises("unknown interpreter 'lrp2'; valid interpreters: gradcam"):
        heatmap(model, x, t, "lrp2")
    with _raises("needs a target layer"):
        heatmap(model, x, t, "lrp_t")
    with _raises(r"no layer named 'layer9'.*Did you mean"):
        heatmap(model, x, t, "gradcam", layer="layer9")
    with _raises(r"no layer named 'layer9'"):
        heatmap(model, x, t, "lrp_t", layer="layer9")
    with _raises("images must be"):
        lrp(model, x[0], t)
    with _raises("'presence' is not on the path"):
        lrp(model, x, t, "presence")
    headless = _wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    for interpreter in ("gradcam", "simplegrad", "lrp", "lrp_t"):
        with _raises(r"no classification output"):
            heatmap(headless, x, t, interpreter, layer="0" if INTERPRETERS[interpreter][0]
                    else None)


class _Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class _OwnForward(ConceptNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def _instance_forward() -> nn.Module:
    """A plain ConceptNet whose *instance* was given another forward."""
    net = ConceptNet(num_classes=5, width=2)
    net.forward = lambda x: ConceptNet.forward(net, x) * 2  # type: ignore[method-assign]
    return net


@pytest.mark.parametrize("net,match", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh()), "module type Tanh .at '1'"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), _Custom()), "module type _Custom"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Tanh())),
     "module type Tanh .at '1.1'"),
    (nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)), "does not directly follow"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), "zero-padded"),
    (_OwnForward(num_classes=5, width=2), "overrides ConceptNet.forward"),
    (_instance_forward(), "ConceptNet at 'the model' overrides ConceptNet.forward"),
])
def test_lrp_refuses_what_it_cannot_follow(net, match):
    with _raises(match):
        lrp(_wrap(net), images(1), torch.tensor([0]))


def test_lrp_t_refuses_a_shared_module():
    model = tv_resnet("basic")
    with _raises("runs 2 times"):  # a BasicBlock's relu runs after bn1 and after the sum
        lrp(model, images(1), torch.tensor([0]), "layer1.0.relu")


# ----------------------------------------------------------------------------- batching

@functools.cache
def _batch_model() -> NormalizedModel:
    return conceptnet(seed=4, width=2)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 3), size=st.sampled_from([16, 24]), seed=st.integers(0, 2**16),
       interpreter=st.sampled_from(list(INTERPRETERS)))
def test_a_batch_map_is_the_maps_of_its_images(n, size, seed, interpreter):
    model, x = _batch_model(), images(n, size, seed)
    t = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed))
    layer = LAYER_OF[interpreter]
    batch = heatmap(model, x, t, interpreter, layer=layer)
    one = torch.cat([heatmap(model, x[i:i + 1], t[i:i + 1], interpreter, layer=layer)
                     for i in range(n)])
    assert batch.shape[0] == n and batch.isfinite().all()
    torch.testing.assert_close(batch, one, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- messages, entry

def test_every_refusal_says_what_and_why_in_full():
    import re

    model, x = conceptnet(), images(2)
    t = TARGETS[:2]

    def exact(text: str):
        return _raises("^" + re.escape(text) + "$")

    with exact("unknown interpreter 'lrp2'; valid interpreters: gradcam, simplegrad, "
               "simplegrad_t, lrp, lrp_t"):
        heatmap(model, x, t, "lrp2")
    with exact("class index 5 out of range: the model has 5 classes (0..4)"):
        heatmap(model, x, torch.tensor([0, 5]), "gradcam", layer="layer4")
    with exact("3 class indices for 2 images"):
        heatmap(model, x, torch.tensor([0, 1, 2]), "simplegrad")
    with exact("images must be [batch, 3, height, width]; got (3, 32, 32)"):
        heatmap(model, x[0], t[:1], "simplegrad")
    with exact("layer 'fc' has output of shape (2, 5): a map at a layer needs a spatial "
               "output [batch, channels, height, width]"):
        heatmap(model, x, t, "gradcam", layer="fc")
    with exact("layer 'layer1.0.relu' ran 2 times in one forward pass; a saliency map needs a "
               "layer that runs exactly once"):
        heatmap(tv_resnet("basic"), x, t, "gradcam", layer="layer1.0.relu")
    with exact("layer 'inner' does not output a tensor"):
        heatmap(_wrap(_DictNet()), x, t, "gradcam", layer="inner")


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {"y": self.conv(x)}


class _DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.fc = _DictOut(), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.inner(x)["y"].mean(dim=(2, 3)))


class _TupleOut(nn.Module):
    """A block that returns (features, a side output the model does not read)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y, y.detach().sum()


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.block, self.fc = _TupleOut(), nn.Linear(4, 5)

    def forward(self, x):
        feats, _ = self.block(x)
        return self.fc(feats.amax(dim=(2, 3)))


def test_a_layer_returning_a_tuple_is_read_at_its_first_element():
    net = _TupleNet().to(DT).eval()
    model, x, t = NormalizedModel(net, "none").eval(), images(2), TARGETS[:2]
    got = heatmap(model, x, t, "gradcam", layer="model.block")
    feats = torch.relu(net.block.conv(x))  # Grad-CAM of the block's first output, by hand
    logits = net.fc(feats.amax(dim=(2, 3)))
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), feats)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * feats).sum(1))
    want = cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-8)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)


def test_simplegrad_t_through_heatmap_is_the_gradient_at_the_layer():
    model, x, t = conceptnet(), images(2), TARGETS[:2]
    got = heatmap(model, x, t, "simplegrad_t", layer="layer3")
    want = simplegrad(model, x, t, "layer3")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape[-2:] == (4, 4)  # layer3's resolution at 32 px, not the input's


def test_maps_of_a_frozen_model_are_those_of_the_trainable_one():
    """An audit may freeze the model's weights: every map must still be computed (each
    differentiates through its input side)."""
    x, t = images(2), TARGETS[:2]
    for interpreter, layer in LAYER_OF.items():
        want = heatmap(conceptnet(), x, t, interpreter, layer=layer)
        frozen = conceptnet().requires_grad_(False)
        got = heatmap(frozen, x, t, interpreter, layer=layer)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_by_default_maps_carry_no_graph_of_their_gradient():
    """``create_graph`` is off by default: an input-gradient map is a plain tensor, and
    Grad-CAM's weight gradient treats α as a constant (only fooling asks for the graph)."""
    model, x, t = conceptnet(), images(2), TARGETS[:2]
    assert heatmap(model, x, t, "simplegrad").grad_fn is None
    assert simplegrad(model, x, t).grad_fn is None
    w = resolve_layer(model, "fc").weight

    def dw(**kw):
        return torch.autograd.grad(heatmap(model, x, t, "gradcam", layer="layer4",
                                           **kw).sum(), w, allow_unused=True)[0]

    def dw_direct(**kw):
        return torch.autograd.grad(gradcam(model, x, t, "layer4", **kw).sum(), w,
                                   allow_unused=True)[0]

    off, on = dw(create_graph=False), dw(create_graph=True)
    assert on is not None and (off is None or not torch.allclose(off, on))
    for got in (dw(), dw_direct()):
        assert (got is None and off is None) or torch.equal(got, off)
