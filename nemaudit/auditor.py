"""The Auditor: resolves model, probe and describer specs (cached) and runs audit requests.

One object behind both front doors — ``nemaudit …`` on the command line and the ``nemaudit``
fixture under pytest — so every spec form one accepts the other accepts, and both share the
on-disk clean-run cache (a ``nemaudit dissect`` spares a later pytest run the same clean
pass). No pytest here; torch is imported on first use, never at import.

Resolvers are each package's own (:func:`nemaudit.model.load_model`,
:func:`nemaudit.probe.load_probe`, :func:`nemaudit.explain.milan.describer.resolve_describer`);
the Auditor only caches what they return and tags each failure with the setting that caused
it (:class:`RequestError`), so a spec file's item can name the field.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.errors import CheckpointError, NemauditError, NormalizeSpecError, SpecError

#: audit results kept in memory (hypothesis sweeps replay the same audits)
RESULT_CACHE = 32
#: what loading user code or files may raise besides NemauditError
_LOADING = (NemauditError, OSError, ValueError, KeyError, ImportError, TypeError)


def _mean_metrics(all_metrics: list[dict]) -> dict:
    """Element-wise means of the draws' metrics (a number, or a nested table of them); an
    entry undefined in any draw stays undefined."""
    first = all_metrics[0]
    out: dict = {}
    for key, value in first.items():
        values = [m.get(key) for m in all_metrics]
        if isinstance(value, dict):
            tables = [v for v in values if isinstance(v, dict)]
            out[key] = _mean_metrics(tables) if len(tables) == len(values) else value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            nums = [float(v) for v in values if isinstance(v, (int, float))]
            if len(nums) != len(values):
                out[key] = None
            elif all(v == value for v in values):
                out[key] = value  # the same in every draw (units, detectors): kept as it is
            else:
                out[key] = sum(nums) / len(nums)
        else:
            out[key] = value
    return out


class RequestError(SpecError):
    """A request's setting cannot be resolved; ``field`` names it (``model``, ``probe``…)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _message(e: BaseException) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def layer_depth(model: Any, layer: str) -> int | None:
    """The layer's index in ``model.named_modules()`` (the inner model's, root excluded):
    its place in definition order, which for sequential networks is their depth. None when
    the layer cannot be found (never an error: it only orders reports)."""
    try:
        from nemaudit.model import resolve_layer
        from nemaudit.model.load import unwrap

        target = resolve_layer(model, layer)
        modules = [m for n, m in unwrap(model).named_modules() if n]
        return next((i for i, m in enumerate(modules) if m is target), None)
    except Exception:  # noqa: BLE001 - provenance must never fail an audit
        return None


def label(obj: Any) -> str | None:
    """How reports name a model, probe or describer (its spec, else its name or type)."""
    if obj is None or isinstance(obj, str):
        return obj
    return str(getattr(obj, "source", None) or getattr(obj, "name", None) or type(obj).__name__)


class Auditor:
    """Resolves specs and runs :class:`~nemaudit.audit.request.AuditRequest` s.

    ``seed`` is given to corruption specs that name none, and seeds torch before each audit;
    ``max_units`` caps per-unit attacks whose request sets no cap; ``cache_dir`` (None: off)
    holds clean runs on disk; ``workers`` DataLoader processes decode the probe (what they
    decode is kept in the run's in-memory probe all the same)."""

    def __init__(self, device: Any = "auto", *, cache_dir: str | Path | None = None,
                 batch_size: int = 64, seed: int = 0, max_units: int | None = None,
                 progress: bool = False, workers: int = 0) -> None:
        self.device_spec = device
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.batch_size, self.seed, self.max_units = int(batch_size), int(seed), max_units
        self.progress = progress
        self.workers = max(0, int(workers))
        self._device: Any = None
        self._models: dict[Any, Any] = {}
        self._probes: dict[Any, Any] = {}
        self._describers: dict[Any, Any] = {}
        self._results: OrderedDict[Any, Any] = OrderedDict()

    # -- resolving -------------------------------------------------------------------
    @property
    def device(self) -> Any:
        if self._device is None:
            from nemaudit.model import resolve_device

            self._device = resolve_device(self.device_spec)
        return self._device

    @property
    def device_resolved(self) -> bool:
        """Whether :attr:`device` was resolved already (torch set up)."""
        return self._device is not None

    @property
    def device_name(self) -> str:
        return str(self._device) if self._device is not None else str(self.device_spec)

    def model(self, spec: Any, weights: str | None = None, normalize: Any = None) -> Any:
        """The model for a spec string (cached), or ``spec`` itself if it is a module."""
        if spec is None:
            raise RequestError("model", "no model given: pass model='torchvision:resnet18', "
                                        "'package.module:function', 'nemaudit:conceptnet', or "
                                        "a module")
        if not isinstance(spec, str):
            return spec
        key = (spec, str(weights), str(normalize))
        if key not in self._models:
            from nemaudit.model import load_model

            try:
                self._models[key] = load_model(spec, weights=weights, normalize=normalize,
                                               device=self.device)
            except _LOADING as e:
                field = "model"
                if isinstance(e, CheckpointError):
                    field = "weights"
                elif isinstance(e, NormalizeSpecError):
                    field = "normalize"
                raise RequestError(field, _message(e)) from None
        return self._models[key]

    def probe(self, spec: Any) -> Any:
        """The probe for a spec string (cached; ``python:module:callable`` too), or itself."""
        if spec is None:
            raise RequestError("probe", "no probe given: pass probe='synthetic:n=300,seed=0', "
                                        "'broden:PATH', 'folder:PATH', "
                                        "'python:module:callable' or a probe")
        if not isinstance(spec, str):
            return spec
        if spec not in self._probes:
            from nemaudit.probe import load_probe
            from nemaudit.probe.memory import MemoProbe

            try:  # items are kept once read: every audit passes over the probe many times
                self._probes[spec] = MemoProbe(load_probe(spec.strip()))
            except _LOADING as e:
                raise RequestError("probe", _message(e)) from None
        return self._probes[spec]

    def describer(self, spec: Any = None, **settings: Any) -> Any:
        """A MILAN describer: ``None`` (bundled), ``"milan:PATH"``, ``"python:…"`` (cached),
        or a describer object itself."""
        if spec is not None and not isinstance(spec, str):
            from nemaudit.explain.milan.describer import resolve_describer

            return resolve_describer(spec)
        key = (spec or "", tuple(sorted(settings.items())))
        if key not in self._describers:
            from nemaudit.explain.milan.describer import resolve_describer

            try:
                self._describers[key] = resolve_describer(spec, device=self.device, **settings)
            except _LOADING as e:
                raise RequestError("describer", _message(e)) from None
        return self._describers[key]

    def _resolve(self, kind: str, spec: Any, **settings: Any) -> Any:
        if kind == "describer":
            return self.describer(spec, **settings)
        if kind == "model":  # a second model (a saliency audit's reference)
            return self.model(spec, settings.get("weights"), settings.get("normalize"))
        if kind == "probe":  # a second probe (a fooling's training images)
            return self.probe(spec)
        raise SpecError(f"nothing resolves {kind!r} specs")

    def seeded(self, corruption: Any) -> Any:
        """A corruption spec with ``seed=<the Auditor's seed>`` when it names none."""
        if isinstance(corruption, str):
            from nemaudit.specs import with_field

            return with_field(corruption, "seed", self.seed)
        return corruption

    def resolve(self, request: AuditRequest, *, corruption: bool = True) -> Resolved:
        """Live model, probe, layer and corruption of a request; every failure is a
        :class:`RequestError` naming the setting, raised before any audit work."""
        from nemaudit.model import default_layer, resolve_layer

        model = self.model(request.model, request.weights, request.normalize)
        probe = self.probe(request.probe)
        layer = request.layer or default_layer(model)
        try:
            resolve_layer(model, layer)
        except NemauditError as e:
            raise RequestError("layer", str(e)) from None
        corr = None
        if corruption:
            if request.corruption is None:
                raise RequestError("corruption", "no corruption given, e.g. "
                                                 "'gaussian:std=0.02'")
            corr = self.seeded(request.corruption)
            if isinstance(corr, str):
                from nemaudit.corrupt.spec import parse_corruption

                try:
                    parse_corruption(request.corruption)  # errors quote the user's spec
                    parse_corruption(corr).bind(probe)
                except NemauditError as e:
                    raise RequestError("corruption", str(e)) from None
        return Resolved(model=model, probe=probe, layer=layer, corruption=corr,
                        device=self.device, cache_dir=self.cache_dir,
                        batch_size=self.batch_size, workers=self.workers,
                        max_units=self.max_units,
                        progress=self.progress, resolve=self._resolve)

    def prepare(self, request: AuditRequest) -> Resolved:
        """:meth:`resolve`, plus what the method itself needs loaded (its
        :meth:`~nemaudit.audit.methods.Method.preload`: MILAN's describer)."""
        resolved = self.resolve(request, corruption=request.corruption is not None)
        request.declaration.preload(request, self._resolve)
        return resolved

    # -- running ---------------------------------------------------------------------
    def run(self, request: AuditRequest) -> Any:
        """Audit ``request`` with its method; the same request (by spec) runs once per
        Auditor. The result's ``meta["specs"]`` says which model and probe it audited."""
        import torch

        needs = request.declaration.needs_corruption or request.corruption is not None
        resolved = self.resolve(request, corruption=needs)
        request.declaration.preload(request, self._resolve)
        key = request.but(corruption=resolved.corruption, layer=resolved.layer).cache_key()
        result = self._results.get(key) if key is not None else None
        if result is not None:
            self._results.move_to_end(key)
        else:
            torch.manual_seed(self.seed)
            result = self._run_draws(request, resolved)
            if key is not None:
                self._results[key] = result
                while len(self._results) > RESULT_CACHE:
                    self._results.popitem(last=False)
        result.meta["specs"] = self.provenance(request, resolved.layer, resolved.model)
        return result

    def _run_draws(self, request: AuditRequest, resolved: Resolved) -> Any:
        """One audit, or ``repeats`` of them with derived corruption seeds: the first draw's
        result (its rows) with the draws' mean metrics and every draw kept for intervals."""
        repeats = request.repeats or 1
        if repeats == 1:
            return request.declaration.run(request, resolved)
        if not request.declaration.repeatable or not isinstance(resolved.corruption, str):
            raise RequestError("repeats", f"repeats={repeats}: needs a corruption spec string "
                                          f"and a method that draws it ({request.method} "
                                          "does not)" if isinstance(resolved.corruption, str)
                               else f"repeats={repeats} needs the corruption as a spec string")
        from dataclasses import replace

        from nemaudit.corrupt.base import derive_seed
        from nemaudit.specs import format_spec, tokenize

        tokens = tokenize(resolved.corruption, "corruption")
        seed = int(tokens.fields.get("seed", self.seed))
        seeds = [seed] + [derive_seed(seed, "repeat", r) % 2**31 for r in range(1, repeats)]
        draws = [request.declaration.run(request, replace(
            resolved, corruption=format_spec(tokens.kind, {**tokens.fields, "seed": s})))
            for s in seeds]
        first = draws[0]
        per_draw = [{k: v for k, v in d.metrics.items() if isinstance(v, (int, float))}
                    for d in draws]
        first.metrics = _mean_metrics([d.metrics for d in draws])  # (its rows stay draw 0's)
        first.draws = draws
        first.meta["repeats"] = {"draws": repeats, "seeds": seeds, "per_draw": per_draw}
        return first

    def provenance(self, request: AuditRequest, layer: str, model: Any = None) -> dict:
        """Which model, probe and layer an audit ran on; with the live ``model``, also
        ``layer_depth``: the layer's position in ``model.named_modules()`` (definition
        order), so reports order layers by depth without the model (:func:`layer_depth`)."""
        out: dict[str, Any] = {"model": label(request.model), "probe": label(request.probe),
                               "layer": layer, "weights": request.weights}
        if model is not None:
            out["layer_depth"] = layer_depth(model, layer)
        return out

    def clean_dissection(self, request: AuditRequest) -> Any:
        """The clean Network Dissection of a request's layer (shared on-disk cache)."""
        from nemaudit.audit.netdissect.run import clean_dissection

        return clean_dissection(request, self.resolve(request, corruption=False))

    def check_baseline(self, name: str, request: AuditRequest, *, anchor: Path, update: bool,
                       tolerance: float) -> Any:
        """Compare the layer's clean explanations with the committed baseline ``name``
        declared in file ``anchor`` (``update``: write it instead)."""
        from nemaudit.baseline import baseline_document, baseline_path, check_baseline

        resolved = self.resolve(request, corruption=False)
        from nemaudit.audit.netdissect.run import clean_dissection

        d = clean_dissection(request, resolved)
        doc = baseline_document(name, resolved.layer, d.rows(), model=label(request.model),
                                probe=label(request.probe), method="netdissect",
                                settings=d.config.as_dict())
        return check_baseline(baseline_path(anchor, name, resolved.layer), doc, update=update,
                              tolerance=tolerance)
