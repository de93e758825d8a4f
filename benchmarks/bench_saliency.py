"""Heatmaps per second of the saliency interpreters against Captum's and zennit's (a
measurement, not a test).

On the bundled ConceptNet, one batch of random images, each interpreter is timed three ways:
ours as an audit computes it (``create_graph=False``), the reference library's implementation
of the same map (Captum ``LayerGradCam``/``Saliency``/layer gradient, zennit ``EpsilonPlus``
with a ConceptNet canonizer for LRP), and ours with ``create_graph=True`` plus the backward of a
loss on the map into the weights: the step model manipulation pays on every batch. The
largest difference from the reference (relative to its largest value) is printed beside it.
zennit 0.5's merged batch norm is not quite the identity (it keeps eps with var = 1, a scale
of (1 + eps)^-1/2), which moves its LRP by ~1e-5 at layer4 and ~1e-2 at the input of the
trained model; with eps = 0 the two agree to 1e-14 in double (see the tests).

    python benchmarks/bench_saliency.py [--batch 32] [--size 112] [--layer layer4] [--device auto]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _zennit_lrp(model: nn.Module, x: torch.Tensor, t: torch.Tensor,
                layer: str | None) -> torch.Tensor:
    """zennit EpsilonPlus on ConceptNet: residual sums and the global mean made modules (the
    same canonizer as tests/test_saliency_interpreters.py)."""
    from zennit.attribution import Gradient
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus
    from zennit.layer import Sum

    from nemaudit.model.bundled import BasicBlock, ConceptNet

    def block_forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu_out(self.canonizer_sum(torch.stack([y, self.shortcut(x)], dim=-1)))

    def net_forward(self: ConceptNet, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.canonizer_pool(self.features(x)).flatten(1))

    def attributes(_name: str, m: nn.Module) -> dict | None:
        if type(m) is BasicBlock:
            return {"forward": block_forward.__get__(m), "canonizer_sum": Sum()}
        if type(m) is ConceptNet:
            return {"forward": net_forward.__get__(m), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        return None

    inner, store, handle = model.model, {}, None
    if layer is not None:
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            out.register_hook(lambda g: store.__setitem__("r", g))
        handle = dict(inner.named_modules())[layer].register_forward_hook(hook)
    composite = EpsilonPlus(canonizers=[SequentialMergeBatchNorm(), AttributeCanonizer(attributes)])
    try:
        with Gradient(inner, composite) as attributor:
            _, rel = attributor(model.normalize(x).detach(), lambda o: torch.zeros_like(o).scatter(
                1, t[:, None], o.gather(1, t[:, None])))
    finally:
        if handle is not None:
            handle.remove()
    return (store["r"] if layer is not None else rel).sum(1).detach()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--layer", default="layer4")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    from captum.attr import LayerGradCam, LayerGradientXActivation, Saliency

    from nemaudit.explain.saliency import heatmap
    from nemaudit.model import load_model, resolve_layer

    model = load_model("nemaudit:conceptnet", device=a.device)
    device = next(model.parameters()).device
    for q in model.parameters():
        q.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, 3, a.size, a.size, generator=g).to(device)
    with torch.no_grad():
        t = model(x).argmax(1)
    module = resolve_layer(model, a.layer)

    refs: dict[str, tuple[str, Callable[[], torch.Tensor]]] = {
        "gradcam": ("captum LayerGradCam", lambda: LayerGradCam(model, module).attribute(
            x, target=t, relu_attributions=True)[:, 0].detach()),
        "simplegrad": ("captum Saliency", lambda: Saliency(model).attribute(
            x, target=t, abs=True).sum(1)),
        "simplegrad_t": ("captum layer gradient", lambda: LayerGradientXActivation(
            model, module, multiply_by_inputs=False).attribute(x, target=t).abs().sum(1)),
        "lrp": ("zennit EpsilonPlus", lambda: _zennit_lrp(model, x, t, None)),
        "lrp_t": ("zennit EpsilonPlus", lambda: _zennit_lrp(model, x, t, a.layer)),
    }
    print(f"bundled conceptnet, batch {a.batch} at {a.size} px, layer {a.layer}, "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {a.repeats}")
    head = (f"{'interpreter':<13}{'ours maps/s':>12}  {'reference':<22}{'ref maps/s':>11}"
            f"{'ours/ref':>9}{'max diff':>10}{'graph+bwd maps/s':>18}{'cost x':>8}")
    print(head)
    print("-" * len(head))
    for name, (ref_name, ref) in refs.items():
        layer = a.layer if name in ("gradcam", "simplegrad_t", "lrp_t") else None

        def ours(name: str = name, layer: str | None = layer) -> torch.Tensor:
            return heatmap(model, x, t, name, layer=layer, normalise=False)

        def fooling_step(name: str = name, layer: str | None = layer) -> None:
            h = heatmap(model, x, t, name, layer=layer, create_graph=True)
            h.square().sum().backward()
            model.zero_grad(set_to_none=True)

        diff = float((ours().detach() - ref()).abs().max() / ref().abs().max().clamp_min(1e-30))
        t_ours = _timed(ours, device, a.repeats)
        t_ref = _timed(ref, device, a.repeats)
        t_fool = _timed(fooling_step, device, a.repeats)
        n = a.batch
        print(f"{name:<13}{n / t_ours:>12.1f}  {ref_name:<22}{n / t_ref:>11.1f}"
              f"{t_ref / t_ours:>9.2f}{diff:>10.1e}{n / t_fool:>18.1f}{t_fool / t_ours:>8.1f}")
    print("ours/ref > 1: ours is faster. cost x: create_graph=True and the backward into the "
          "weights, in units of one plain map.")


if __name__ == "__main__":
    main()
