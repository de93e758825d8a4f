"""Find layers by name and record their outputs with forward hooks.

Names are those of the *inner* model of a :class:`~nemaudit.model.load.NormalizedModel`
(``layer4``, ``features.28``), i.e. what ``model.named_modules()`` prints for the user's own
network; ``model.layer4`` is accepted as an alias.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import nn

from nemaudit.errors import ModelSpecError, SpecError
from nemaudit.model.load import NormalizedModel, unwrap

_MAX_LISTED = 60


def layer_names(model: nn.Module) -> list[str]:
    """Every named submodule of the inner model, in definition order (the root excluded)."""
    return [name for name, _ in unwrap(model).named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; on failure the error lists valid names and close matches."""
    inner = unwrap(model)
    modules = dict(inner.named_modules())
    key = name.strip() if isinstance(name, str) else name
    if isinstance(model, NormalizedModel) and isinstance(key, str) and key.startswith("model.") \
            and key not in modules:
        key = key[len("model."):]
    if isinstance(key, str) and key and key in modules:
        return modules[key]
    valid = [n for n in modules if n]
    close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(valid[:_MAX_LISTED])
    more = f" ... (+{len(valid) - _MAX_LISTED} more)" if len(valid) > _MAX_LISTED else ""
    raise ModelSpecError(f"no layer named {name!r} in {type(inner).__name__}.{hint} "
                         f"Valid layer names: {shown}{more}")


def default_layer(model: nn.Module) -> str:
    """The layer audited when the user names none: the bundled model's registered default,
    else ``layer4`` when present (ResNets), else the last top-level child containing a conv."""
    if isinstance(model, NormalizedModel) and model.default_layer:
        return model.default_layer
    inner = unwrap(model)
    names = dict(inner.named_modules())
    if "layer4" in names:
        return "layer4"
    last = None
    for cname, child in inner.named_children():
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            last = cname
    if last is None:
        raise ModelSpecError(f"cannot guess a layer to audit in {type(inner).__name__}: "
                             "no convolutional submodule; name one explicitly")
    return last


class _StopForward(Exception):
    """Raised from a hook to abandon the forward pass once every requested layer has run.

    Private: only :meth:`LayerRecorder.run` raises and catches it."""


def _first_tensor(out: Any, name: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise ModelSpecError(f"layer {name!r} returned {type(out).__name__}, not a tensor; "
                         "pick a layer whose output is an activation map")


class LayerRecorder:
    """Context manager recording the outputs of one or several named layers.

    >>> with LayerRecorder(model, ["layer3", "layer4"], stop_at_layer=True) as rec:
    ...     rec.run(images)
    ...     acts = rec["layer4"]

    - ``keep_graph=False`` (default) stores detached outputs and :meth:`run` disables autograd;
      ``keep_graph=True`` keeps the graph so attacks and saliency can back-propagate through
      the recorded activations.
    - ``stop_at_layer=True`` makes :meth:`run` abandon the forward pass once every requested
      layer has produced its output, which saves most of the cost when dissecting early
      layers. A module may run several times per forward (e.g. a shared ReLU); the recorded
      output is its *last* call, so the recorder first counts the calls (a one-image dry run in
      eval mode; in train mode the first batch runs in full) and stops right after the last
      one. That assumes the call pattern does not depend on the input values (true for
      feed-forward CNNs).
    - Outputs are copied (``clone=True``) so that an in-place op after the layer (e.g. a
      ``ReLU(inplace=True)`` after a hooked BatchNorm) cannot change what was recorded; pass
      ``clone=False`` when the layer's output is known not to be modified in place.
    - Hooks are removed on exit, also on error. Calling ``model(x)`` directly inside the
      block records too, but never stops early.
    """

    def __init__(self, model: nn.Module, layers: str | Iterable[str], *,
                 keep_graph: bool = False, stop_at_layer: bool = False,
                 clone: bool = True) -> None:
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ModelSpecError("LayerRecorder needs at least one layer name")
        if len(set(self.layers)) != len(self.layers):
            raise ModelSpecError(f"duplicate layer names in {self.layers}")
        self.modules = {n: resolve_layer(model, n) for n in self.layers}
        self.keep_graph = keep_graph
        self.stop_at_layer = stop_at_layer
        self.clone = clone
        self.outputs: dict[str, torch.Tensor] = {}
        self.stopped = False  #: whether the last :meth:`run` was cut short
        self._handles: list[Any] = []
        self._calls: dict[str, int] = {}
        self._expected: dict[str | None, dict[str, int]] = {}  # per method: calls per layer
        self._active_expected: dict[str, int] = {}
        self._in_run = False

    # -- context manager
    def __enter__(self) -> LayerRecorder:
        if self._handles:
            raise RuntimeError("LayerRecorder is already active")
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            t = _first_tensor(output, name)
            if not self.keep_graph:
                t = t.detach()
            # A later in-place op (torchvision's ReLU(inplace=True) after a BatchNorm) would
            # otherwise rewrite the recorded tensor; the copy costs one activation map.
            self.outputs[name] = t.clone() if self.clone else t
            self._calls[name] = self._calls.get(name, 0) + 1
            if self._in_run and all(self._calls.get(n, 0) >= k
                                    for n, k in self._active_expected.items()):
                raise _StopForward()
        return hook

    # -- running
    def _count_calls(self, fn: Any, x: torch.Tensor) -> dict[str, int]:
        """How often each requested layer runs in one forward (one-image dry run)."""
        self._calls = {}
        with torch.no_grad():
            fn(x[:1])
        return dict(self._calls)

    def _check_all_ran(self, calls: dict[str, int], method: str | None) -> None:
        missing = [n for n in self.layers if not calls.get(n)]
        if missing:
            raise ModelSpecError(f"layer(s) {missing} never ran in the forward pass of "
                                 f"{type(unwrap(self.model)).__name__}"
                                 + (f".{method}" if method else "")
                                 + "; they are defined but unused by this forward")

    def run(self, x: torch.Tensor, method: str | None = None) -> Any:
        """Run ``model(x)`` (or ``model.<method>(x)``), recording the layers.

        Returns the model's output, or ``None`` when the pass was stopped early.
        """
        if not self._handles:
            raise RuntimeError("LayerRecorder.run() must be called inside its `with` block")
        fn = self.model if method is None else getattr(self.model, method)
        expected = self._expected.get(method)
        if self.stop_at_layer and expected is None and x.shape[0] > 1 \
                and not any(m.training for m in self.model.modules()):
            # Eval mode has no side effects, so count calls on one image: the real batch
            # can then stop early already on the first run.
            expected = self._count_calls(fn, x)
            self._check_all_ran(expected, method)
            self._expected[method] = expected
        self.outputs = {}
        self._calls = {}
        self.stopped = False
        self._in_run = expected is not None and self.stop_at_layer
        self._active_expected = expected or {}
        try:
            with torch.set_grad_enabled(self.keep_graph and torch.is_grad_enabled()):
                out = fn(x)
        except _StopForward:
            self.stopped = True
            return None
        finally:
            self._in_run = False
        self._check_all_ran(self._calls, method)
        self._expected.setdefault(method, dict(self._calls))
        return out

    def __call__(self, x: torch.Tensor, method: str | None = None) -> Any:
        return self.run(x, method)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.outputs:
            raise KeyError(f"no recorded output for {name!r} (recorded: {list(self.outputs)})")
        return self.outputs[name]


def validate_units(units: Iterable[int], n_units: int) -> list[int]:
    """Unit indices as a list, or a :class:`SpecError` naming the first out-of-range unit.

    An empty selection is an error too: an audit of no unit would pass every property
    vacuously (a flip rate of 0 out of 0)."""
    out: list[int] = []
    for u in units:
        try:
            if isinstance(u, bool):
                raise TypeError
            i = operator.index(u)
        except TypeError:
            raise SpecError(f"unit {u!r} is not an integer index") from None
        if not 0 <= i < n_units:
            raise SpecError(f"unit {i} is out of range: this layer has {n_units} units "
                            f"(valid: 0..{n_units - 1})")
        out.append(i)
    if not out:
        raise SpecError("no unit selected (an empty unit list): give at least one unit index, "
                        "or none at all to audit every unit")
    return out
