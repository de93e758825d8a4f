"""Load models from a spec string, wrap them with a visible normalisation, load checkpoints safely.

Specs:

- ``torchvision:<name>`` (optionally ``torchvision:<name>(num_classes=10)``): built with
  ``weights=None`` -- nemaudit never downloads; pass ``weights=PATH`` for a local checkpoint.
- ``package.module:function`` or ``path/to/file.py:function`` (optionally with literal keyword
  arguments ``:function(width=32)``): the function must return an ``nn.Module``.
- ``nemaudit:<name>``: a bundled model (see :data:`nemaudit.model.bundled.BUNDLED`).

Checkpoints are always read with ``torch.load(..., weights_only=True)``: a probe-auditing tool
runs in CI on files it did not create, and a full pickle can execute arbitrary code.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nemaudit.errors import CheckpointError, ModelSpecError, NormalizeSpecError, SpecError
from nemaudit.imports import import_target
from nemaudit.model.bundled import BUNDLED, DEFAULT_BUNDLED, read_meta
from nemaudit.model.device import resolve_device
from nemaudit.specs import convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The NetDissect-Lite reference feeds (255*x - [124.6901, 118.6897, 109.5388]) / (255*0.224)
#: (its loader lists the mean in BGR order: 109.5388, 118.6897, 124.6901).
NETDISSECT_MEAN = (124.6901 / 255, 118.6897 / 255, 109.5388 / 255)
NETDISSECT_STD = (0.224, 0.224, 0.224)

_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "netdissect": (NETDISSECT_MEAN, NETDISSECT_STD),
    "none": None,
}

SPEC_FORMS = ("torchvision:<name>", "package.module:function", "path/to/file.py:function",
              "nemaudit:<bundled name>")


# --------------------------------------------------------------------------- normalisation

class NormSpec(str):
    """A model's input normalisation, as data.

    It *is* a string -- the canonical spec, ``"imagenet"``, ``"none"``, ``"netdissect"`` or
    ``"m1,m2,m3/s1,s2,s3"`` -- so it drops into JSON reports, cache keys and CLI options as is
    and :func:`parse_normalize` reads it back; ``name``/``mean``/``std`` give the numbers
    (``None`` for ``"none"``: the model normalises itself or was trained on [0, 1] inputs; a
    1-tuple broadcasts over channels).
    """

    name: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def __new__(cls, name: str, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None) -> NormSpec:
        if name == "custom":
            text = "/".join(",".join(repr(float(v)) for v in vals or ()) for vals in (mean, std))
        else:
            text = name
        obj = super().__new__(cls, text)
        obj.name, obj.mean, obj.std = name, mean, std
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    def describe(self) -> str:
        """Human-readable form with the numbers, for reports."""
        if self.mean is None:
            return self.name
        return f"{self.name}(mean={list(self.mean)}, std={list(self.std or ())})"

    def __repr__(self) -> str:
        return f"NormSpec({str(self)!r})"


_NORM_FORMS = ("imagenet, none, netdissect, 'm1,m2,m3/s1,s2,s3' (as many means as stds), "
               "(mean, std) or {'mean': ..., 'std': ...}")


def _floats(v: Any, what: str, spec: Any) -> tuple[float, ...]:
    if isinstance(v, str):
        values: list[Any] = v.split(",")
    else:
        try:
            values = list(v)
        except TypeError:  # a scalar: one value for every channel
            values = [v]
    if not values:
        raise NormalizeSpecError(f"normalisation {spec!r}: {what} is empty")
    out = []
    for x in values:
        try:
            if isinstance(x, str):
                out.append(convert(x, float, what))
                continue
            try:
                f = None if isinstance(x, bool) else float(x)  # numpy and torch scalars too
            except (TypeError, ValueError):
                f = None
            if f is None:
                raise SpecError(f"{what} value {x!r} is not a number")
            if not math.isfinite(f):
                raise SpecError(f"{what}={x!r} must be finite")
            out.append(f)
        except SpecError as e:
            raise NormalizeSpecError(f"normalisation {spec!r}: {e}; expected {_NORM_FORMS}"
                                     ) from None
    return tuple(out)


def parse_normalize(spec: Any) -> NormSpec:
    """The one normalisation parser: ``"imagenet"``, ``"netdissect"``, ``"none"`` (any case),
    ``"m1,m2,m3/s1,s2,s3"`` (the CLI form; one value each applies to every channel),
    ``(mean, std)``, ``{"mean": ..., "std": ...}`` or a ``NormSpec``; ``None`` is ImageNet.

    Mean and std need as many values each, finite, the stds positive; anything else is a
    :class:`~nemaudit.errors.NormalizeSpecError` (a SpecError and a ModelSpecError)."""
    if isinstance(spec, NormSpec):
        return spec
    if spec is None:
        spec = "imagenet"
    given = spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in _PRESETS:
            preset = _PRESETS[key]
            return NormSpec(key, None, None) if preset is None else NormSpec(key, *preset)
        if key.count("/") != 1:
            close = difflib.get_close_matches(key, list(_PRESETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close and "/" not in key else ""
            raise NormalizeSpecError(f"unknown normalisation {spec!r}{hint}; expected "
                                     f"{_NORM_FORMS}")
        spec = tuple(key.split("/"))
    if isinstance(spec, Mapping):
        if "mean" not in spec or "std" not in spec:
            raise NormalizeSpecError(f"normalisation dict needs 'mean' and 'std', got "
                                     f"{dict(spec)}")
        spec = (spec["mean"], spec["std"])
    if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) != 2:
        raise NormalizeSpecError(f"cannot interpret normalisation {given!r}; expected "
                                 f"{_NORM_FORMS}")
    mean, std = _floats(spec[0], "mean", given), _floats(spec[1], "std", given)
    if len(mean) != len(std):
        raise NormalizeSpecError(f"normalisation {given!r}: mean has {len(mean)} value(s) but "
                                 f"std has {len(std)}; give as many of each (one per channel, "
                                 "or one for all channels)")
    if any(s <= 0 for s in std):
        raise NormalizeSpecError(f"normalisation {given!r}: std must be positive, got "
                                 f"{list(std)}")
    return NormSpec("custom", mean, std)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on [0, 1] images; identity for ``"none"``.

    The buffers are non-persistent so a wrapped model's ``state_dict`` is exactly the inner
    model's (prefixed ``model.``), and checkpoints never depend on the normalisation choice.
    """

    def __init__(self, spec: Any = "imagenet") -> None:
        super().__init__()
        self.spec = parse_normalize(spec)
        if self.spec.mean is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
        else:
            self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, -1, 1, 1),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(self.spec.std).view(1, -1, 1, 1),
                                 persistent=False)

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        c = self.mean.shape[1]
        if x.dim() != 4 or (c != 1 and x.shape[1] != c):
            raise ValueError(f"{self.spec.describe()} normalisation expects [B, {c}, H, W] "
                             f"images, got {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return self.spec.describe()


class NormalizedModel(nn.Module):
    """A model that takes [0, 1] images: ``model(normalize(x))``.

    Corruptions (noise, PGD) act in pixel space, so the normalisation must live in the model
    wrapper and be visible (``normalize_spec``) rather than buried in a data pipeline. Layer
    names refer to the *inner* model (``layer4``, not ``model.layer4``); see
    :mod:`nemaudit.model.layers`.
    """

    def __init__(self, model: nn.Module, normalize: Any = "imagenet", *, source: str = "",
                 meta: dict[str, Any] | None = None, default_layer: str | None = None) -> None:
        super().__init__()
        self.normalize = Normalize(normalize)
        self.model = model
        self.source = source  #: the spec the model was loaded from (for reports)
        self.meta = dict(meta or {})  #: bundled models: training metadata (class names, ...)
        self.default_layer = default_layer

    @property
    def normalize_spec(self) -> NormSpec:
        return self.normalize.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def presence_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Bundled models' concept-presence head, on [0, 1] images."""
        fn = getattr(self.model, "presence_logits", None)
        if fn is None:
            raise ModelSpecError(f"{type(self.model).__name__} has no presence head "
                                 "(only bundled nemaudit models do)")
        return fn(self.normalize(x))

    def fingerprint(self) -> str:
        """Hash of the weights, buffers, architecture class and normalisation (cache keys)."""
        h = hashlib.sha256()
        h.update(type(self.model).__qualname__.encode())
        h.update(repr(self.normalize_spec.to_dict()).encode())
        for name, t in sorted(self.model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (``weights_only=True``) from a bare state_dict or a dict with a
    ``state_dict``/``model``/``model_state_dict`` entry, stripping DataParallel's ``module.``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" +
                              (" (it is a directory)" if path.is_dir() else ""))
    try:
        if path.suffix.lower() == ".safetensors":  # tensors only, by construction
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # every failure must name the file
        raise CheckpointError(_explain_load_error(path, e)) from e
    sd = _extract_state_dict(obj, path)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _explain_load_error(path: Path, e: Exception) -> str:
    text = str(e)
    glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if glob:
        return (f"{path}: refusing to load this checkpoint: it contains a pickled "
                f"{glob.group(1)} object, and nemaudit always reads checkpoints with "
                "torch.load(weights_only=True) so that a file cannot run code. Save "
                "model.state_dict() (tensors only) instead.")
    if isinstance(e, pickle.UnpicklingError):
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        why = detail.group(1).strip() if detail else text.strip().splitlines()[0]
        return (f"{path}: not a readable torch checkpoint under weights_only=True "
                f"(corrupt file, or not written by torch.save?): {why}")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{path}: cannot read checkpoint: {type(e).__name__}: {first}"


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if not bad:
            return {str(k): v for k, v in obj.items()}
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(f"{path}: not a state_dict: entries {bad[:5]} are not tensors "
                              f"(top-level keys: {keys}); expected a state_dict or a dict "
                              "with a 'state_dict' or 'model' entry")
    raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got "
                          f"{type(obj).__name__}")


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor],
                           source: str | Path = "checkpoint") -> None:
    """Strict load that names missing/unexpected/mis-shaped keys instead of a bare traceback.

    Values are copied into the existing parameters, so a float16 checkpoint is converted back
    to the model's dtype.
    """
    expected = model.state_dict()
    if expected and sd and all(k.startswith("model.") for k in sd) \
            and not all(k.startswith("model.") for k in expected):
        sd = {k[len("model."):]: v for k, v in sd.items()}  # saved from a NormalizedModel
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_few(shapes, 3)}")
        raise CheckpointError(f"{source} does not match {type(model).__name__}: "
                              + "; ".join(parts) + ". Is this the right architecture "
                              "(e.g. num_classes=... in the spec)?")
    model.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------- specs

_CALL_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\((.*)\))?\s*$", re.S)
_REFUSED_SCHEMES = {"http", "https", "hf", "hub", "s3", "gs"}


def _parse_call(text: str, spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name(k=literal, ...)`` -> (name, kwargs); literals only, never code."""
    m = _CALL_RE.match(text)
    if not m:
        raise ModelSpecError(f"cannot parse {text!r} in model spec {spec!r}: expected a name "
                             "optionally followed by (key=literal, ...)")
    name, args = m.group(1), m.group(2)
    if not args or not args.strip():
        return name, {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call)
        if call.args:
            raise ValueError("positional arguments are not supported, use key=value")
        if any(kw.arg is None for kw in call.keywords):
            raise ValueError("**kwargs is not supported")
        kwargs = {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError) as e:
        raise ModelSpecError(f"bad arguments in model spec {spec!r}: {e}; only literal "
                             "keyword arguments like (num_classes=10) are allowed") from e
    return name, kwargs


def _torchvision_model(name_args: str, spec: str) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise ModelSpecError(f"{spec}: torchvision is not installed") from e
    name, kwargs = _parse_call(name_args, spec)
    valid = tvm.list_models()
    if name.lower() not in valid:
        close = difflib.get_close_matches(name.lower(), valid, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        examples = [v for v in ("resnet18", "resnet50", "alexnet", "vgg16", "densenet161",
                                "mobilenet_v3_small", "vit_b_16") if v in valid]
        raise ModelSpecError(f"unknown torchvision model {name!r}.{hint} Valid names include "
                             f"{', '.join(examples)} ({len(valid)} in total, see "
                             "torchvision.models.list_models()).")
    if "weights" in kwargs:
        raise ModelSpecError(f"{spec}: nemaudit builds torchvision models with weights=None "
                             "and never downloads; pass a local checkpoint with --weights")
    try:
        return tvm.get_model(name.lower(), weights=None, **kwargs)
    except TypeError as e:
        raise ModelSpecError(f"{spec}: {e}") from e


def _import_target(target: str, spec: str) -> Any:
    """``pkg.module`` or ``path/to/file.py`` -> module."""
    return import_target(target, spec, "model", ModelSpecError,
                         hint=f". Accepted forms: {', '.join(SPEC_FORMS)}")


def _function_model(target: str, func_args: str, spec: str) -> nn.Module:
    module = _import_target(target, spec)
    fname, kwargs = _parse_call(func_args, spec)
    fn: Any = module
    for part in fname.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n in dir(module) if not n.startswith("_")
                            and callable(getattr(module, n, None)))
            close = difflib.get_close_matches(fname, public, n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ModelSpecError(f"model spec {spec!r}: {target} has no attribute "
                                 f"{fname!r}.{hint}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ModelSpecError(f"model spec {spec!r}: {target}.{fname} is not callable")
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise ModelSpecError(f"model spec {spec!r}: calling {target}.{fname}() raised "
                             f"{type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model spec {spec!r}: {target}.{fname}() returned "
                             f"{type(model).__name__}, expected a torch.nn.Module")
    return model


def _looks_like_file(spec: str) -> bool:
    return spec.lower().endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors"))


#: the explicit choice of random initial weights (``weights="random"``)
RANDOM_WEIGHTS = "random"


def load_model(spec: str, weights: str | Path | None = None, normalize: Any = None,
               device: str | torch.device = "auto") -> NormalizedModel:
    """Build the model named by ``spec``, load ``weights`` and return it wrapped, in eval mode.

    ``normalize=None`` means the bundled model's own setting for ``nemaudit:`` specs and
    ImageNet mean/std otherwise (the torchvision convention).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"empty model spec; accepted forms: {', '.join(SPEC_FORMS)}")
    spec = spec.strip()
    if spec.lower() in ("nemaudit", "nemaudit:"):
        spec = f"nemaudit:{DEFAULT_BUNDLED}"
    dev = resolve_device(device)
    meta: dict[str, Any] = {}
    default_layer: str | None = None
    norm_default: Any = "imagenet"
    random_init = isinstance(weights, str) and weights.strip().lower() == RANDOM_WEIGHTS
    weights_path = Path(weights).expanduser() if weights is not None and not random_init \
        else None

    if re.match(r"^[A-Za-z][\w+.-]*://", spec):
        raise ModelSpecError(f"model spec {spec!r}: URLs are not supported; nemaudit never "
                             "downloads weights. Download the file yourself and pass it as "
                             "weights (--weights PATH, or weights = in a test or spec file) "
                             "with an architecture spec")
    if _looks_like_file(spec) or (":" not in spec and Path(spec).expanduser().is_file()):
        p = Path(spec).expanduser()
        if not p.exists():
            raise ModelSpecError(f"model spec {spec!r}: checkpoint not found: {p}")
        raise ModelSpecError(
            f"model spec {spec!r} is a checkpoint file, which holds weights but not the "
            "architecture: give the architecture as the spec and the file as weights, e.g. "
            f"--model torchvision:resnet18 --weights {spec} (model = and weights = in a "
            "spec file)")
    if ".py:" in spec:  # a file path may itself contain ':' (Windows drive letters)
        cut = spec.index(".py:") + 3
        scheme, sep, rest = spec[:cut], ":", spec[cut + 1:]
    else:
        scheme, sep, rest = spec.partition(":")
    if not sep or not rest.strip():
        raise ModelSpecError(f"unrecognised model spec {spec!r}; accepted forms: "
                             f"{', '.join(SPEC_FORMS)}")
    kind = scheme.strip().lower()  # as nemaudit.specs reads a kind; a module path keeps its case
    if kind in _REFUSED_SCHEMES:
        raise ModelSpecError(f"model spec {spec!r}: {scheme}: specs are not supported; "
                             "nemaudit never downloads weights. Build the model with a "
                             "package.module:function spec and pass a local --weights file")

    if kind == "torchvision":
        model = _torchvision_model(rest, spec)
        if weights_path is None and not random_init:
            raise ModelSpecError(
                f"model spec {spec!r} has no weights: torchvision models are built without "
                "them (nemaudit never downloads), so their units would be random; pass a "
                f"local checkpoint as weights, or weights={RANDOM_WEIGHTS!r} to dissect the "
                "randomly initialised network on purpose")
    elif kind == "nemaudit":
        name = rest.strip().lower() or DEFAULT_BUNDLED
        if name not in BUNDLED:
            raise ModelSpecError(f"unknown bundled model {name!r}; available: "
                                 f"{', '.join('nemaudit:' + n for n in BUNDLED)}")
        bspec = BUNDLED[name]
        if weights_path is None and not random_init:
            weights_path = bspec.weights_path
            if not weights_path.is_file():
                raise ModelSpecError(
                    f"bundled model {name!r} has no trained weights at {weights_path}; "
                    "train them with `nemaudit train` (python -m nemaudit.training.conceptnet)")
        # a training run's metadata beside the weights sizes the architecture; any other
        # sidecar (a fooled model's settings) does not, and the bundled one does
        side = read_meta(weights_path.with_suffix(".json")) if weights_path is not None else {}
        meta = side if "arch" in side else bspec.meta()
        model = bspec.build(meta)
        default_layer = meta.get("default_layer", bspec.default_layer)
        norm_default = meta.get("normalize", bspec.normalize)
    else:
        model = _function_model(scheme, rest, spec)

    if weights_path is not None:
        load_state_dict_strict(model, load_checkpoint(weights_path), source=weights_path)
    elif random_init:
        meta = {**meta, "weights": RANDOM_WEIGHTS}
    wrapped = NormalizedModel(model, norm_default if normalize is None else normalize,
                              source=spec, meta=meta, default_layer=default_layer)
    return wrapped.to(dev).eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The inner model of a :class:`NormalizedModel` (the model itself otherwise)."""
    return model.model if isinstance(model, NormalizedModel) else model

