"""The plugin's state and logic; :mod:`nemaudit.plugin` only forwards pytest hooks here.

One :class:`NemauditState` per pytest process (the controller and each xdist worker): the
parsed options, the models, probes and audit results loaded so far, and the records of audit
items. Records are plain JSON-able dicts attached to test reports (``report.nemaudit_record``)
so that xdist ships them to the controller, which alone writes the JSON/HTML reports.

Nothing here imports torch at module level: without ``--nemaudit`` a test run must stay light.
"""

from __future__ import annotations

import ast
import io
import json
import os
import platform
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import nemaudit
from nemaudit.baseline import BaselineCheck, baseline_document, baseline_path, check_baseline
from nemaudit.errors import NemauditError, SpecError
from nemaudit.imports import import_target
from nemaudit.spec import (
    MILAN_PREFIX,
    Expectation,
    ExpectationError,
    PropertyError,
    PropertyFailed,
    PropertyItem,
    milan_form,
    parse_expectation,
)

if TYPE_CHECKING:  # pragma: no cover
    from nemaudit.audit.milan import MilanAuditResult
    from nemaudit.audit.result import AuditResult, Metric

SKIP_REASON = "nemaudit audits are off; run pytest --nemaudit"
STATE_KEY = pytest.StashKey["NemauditState"]()
#: exemplar pictures per record: units shown × images per unit (keeps reports to ~MBs)
PAYLOAD_UNITS, PAYLOAD_IMAGES = 4, 3
#: audit results kept in memory per process (hypothesis sweeps would otherwise pile up)
RESULT_CACHE = 32
DIFF_LINES = 15

# --------------------------------------------------------------------------- options

#: name → (ini type, help). Each is ``--nemaudit-<name>`` and ini ``nemaudit_<name>``.
OPTIONS: dict[str, tuple[str, str]] = {
    "device": ("string", "auto | cpu | cuda | cuda:N | mps (default auto: the GPU if any)"),
    "seed": ("string", "seed of corruptions whose spec gives none (default 0)"),
    "json": ("string", "write the audit report as JSON to this path"),
    "html": ("string", "write the audit report as self-contained HTML to this path"),
    "cache-dir": ("string", "clean-baseline cache directory (default .nemaudit-cache, "
                            "relative to the rootdir; 'none' disables caching)"),
    "update": ("bool", "(re)write committed explanation baselines instead of comparing"),
    "batch-size": ("string", "probe images per forward pass (default 64)"),
    "max-units": ("string", "per-unit attacks attack at most this many units "
                            "(default: every labelled unit)"),
}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def add_options(parser: pytest.Parser) -> None:
    """One option group; CLI defaults are None so that an ini value can fill in."""
    group = parser.getgroup("nemaudit", "neuron-explanation robustness audits (nemaudit)")
    group.addoption("--nemaudit", action="store_true", default=False,
                    help="run nemaudit audits (otherwise audit tests are skipped)")
    for name, (kind, help_) in OPTIONS.items():
        dest = "nemaudit_" + name.replace("-", "_")
        if kind == "bool":
            group.addoption(f"--nemaudit-{name}", action="store_true", default=None, dest=dest,
                            help=help_)
        else:
            group.addoption(f"--nemaudit-{name}", action="store", default=None, dest=dest,
                            metavar=name.upper().replace("-", "_"), help=help_)
        parser.addini(dest, f"{help_} (--nemaudit-{name} wins)", type=kind,
                      default=False if kind == "bool" else "")


@dataclass
class Options:
    enabled: bool = False
    device: str = "auto"
    seed: int = 0
    json: Path | None = None
    html: Path | None = None
    cache_dir: Path | None = None
    update: bool = False
    batch_size: int = 64
    max_units: int | None = None

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def _raw(config: pytest.Config, name: str) -> tuple[Any, str, Path]:
    """(value, where it came from, the directory relative paths are resolved against)."""
    dest = "nemaudit_" + name.replace("-", "_")
    value = config.getoption(dest, None)
    if value is not None:
        return value, f"--nemaudit-{name}", Path(config.invocation_params.dir)
    ini = config.getini(dest)
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return (None if ini in ("", None) else ini), f"ini option {dest}", base


def _int_option(config: pytest.Config, name: str, minimum: int, default: int | None,
                allow_none: bool = False) -> int | None:
    value, src, _ = _raw(config, name)
    if value is None:
        return default
    text = str(value).strip()
    if allow_none and text.lower() in ("none", "all", "0"):
        return None
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < minimum:
        extra = " or 'none'" if allow_none else ""
        raise pytest.UsageError(f"{src}: expected an integer >= {minimum}{extra}, got {value!r}")
    return n


def parse_options(config: pytest.Config) -> Options:
    """Validate every option (CLI over ini); a bad value is a UsageError naming it."""
    opts = Options(enabled=bool(config.getoption("nemaudit", False)))
    device, src, _ = _raw(config, "device")
    if device is not None:
        if not _DEVICE_RE.match(str(device).strip().lower()):
            raise pytest.UsageError(f"{src}: expected auto, cpu, cuda, cuda:N or mps, "
                                    f"got {device!r}")
        opts.device = str(device).strip().lower()
    opts.seed = _int_option(config, "seed", 0, 0) or 0
    opts.batch_size = _int_option(config, "batch-size", 1, 64) or 64
    opts.max_units = _int_option(config, "max-units", 1, None, allow_none=True)
    for name in ("json", "html"):
        value, src, base = _raw(config, name)
        if value is not None:
            if not str(value).strip():
                raise pytest.UsageError(f"{src}: expected a file path, got {value!r}")
            path = base / Path(str(value)).expanduser()
            if path.is_dir():
                raise pytest.UsageError(f"{src}: {path} is a directory; expected a file path")
            setattr(opts, name, path)
    value, src, _ = _raw(config, "cache-dir")
    if value is None:
        opts.cache_dir = Path(config.rootpath) / ".nemaudit-cache"
    elif str(value).strip().lower() in ("none", "off", "false"):
        opts.cache_dir = None
    else:
        base = Path(config.rootpath)
        opts.cache_dir = base / Path(str(value)).expanduser()
        if opts.cache_dir.exists() and not opts.cache_dir.is_dir():
            raise pytest.UsageError(f"{src}: {opts.cache_dir} exists and is not a directory")
    update, _, _ = _raw(config, "update")
    opts.update = bool(update)
    return opts


# --------------------------------------------------------------------------- helpers

def with_seed(spec: str, seed: int) -> str:
    """Append ``seed=<seed>`` to a corruption spec that does not give one."""
    kind, sep, rest = spec.strip().partition(":")
    keys = {f.partition("=")[0].strip().lower() for f in rest.split(",") if f.strip()}
    if "seed" in keys:
        return spec.strip()
    return f"{kind}:{rest.strip().rstrip(',') + ',' if rest.strip() else ''}seed={seed}"


def _literal_kwargs(args: str, spec: str, what: str) -> dict[str, Any]:
    if not args.strip():
        return {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        if None in kwargs:
            raise ValueError
    except (SyntaxError, ValueError, AssertionError):
        raise SpecError(f"{what} spec {spec!r}: arguments must be literal keywords, e.g. "
                        "python:mymodule:make_probe(n=100)") from None
    return kwargs


def load_python_object(spec: str, what: str) -> Any:
    """``python:<module or path.py>:<callable>[(key=literal, ...)]`` → what the callable
    returns (a probe, a describer …; ``what`` names it in messages)."""
    body = spec[len("python:"):].strip()
    if ".py:" in body:
        cut = body.index(".py:") + 3
        target, call = body[:cut], body[cut + 1:]
    else:
        head = body.split("(", 1)[0]
        target, _, fname = head.rpartition(":")
        call = fname + body[len(head):]
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(?:\((.*)\))?\s*", call, re.S)
    if not target or not m:
        raise SpecError(f"{what} spec {spec!r}: expected python:<module or path.py>:<callable>"
                        "[(key=value, ...)]")
    obj: Any = import_target(target, spec, what, SpecError)
    for part in m.group(1).split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} spec {spec!r}: {target} has no attribute {m.group(1)!r}")
        obj = getattr(obj, part)
    return obj(**_literal_kwargs(m.group(2) or "", spec, what))


def load_python_probe(spec: str) -> Any:
    """``python:<module or path.py>:<callable>[(...)]`` → the probe it returns."""
    from nemaudit.probe.base import ProbeDataset

    probe = load_python_object(spec, "probe")
    if not isinstance(probe, ProbeDataset):
        raise SpecError(f"probe spec {spec!r}: it returned {type(probe).__name__}, "
                        "expected a nemaudit.probe.ProbeDataset")
    return probe


def _label(obj: Any) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    return str(getattr(obj, "source", None) or getattr(obj, "name", None) or type(obj).__name__)


def _jsonable(obj: Any) -> Any:
    """A deep copy made of JSON types only (xdist ships records with execnet)."""
    return json.loads(json.dumps(obj, default=str))


def corruption_spec(result: AuditResult) -> str:
    c = (result.context or {}).get("corruption")
    if c is not None and hasattr(c, "spec"):
        return c.spec()
    d = dict(result.corruption)
    kind = d.pop("kind", "?")
    d.pop("shared", None)
    return f"{kind}:" + ",".join(f"{k}={v}" for k, v in d.items() if v is not None)


def build_sweep(results: list[AuditResult]) -> dict:
    """Several audits in one test (a loop, a hypothesis search) as the reports' sweep:
    ``{"x": <what varies>, "points": [{"x", "flip_rate", "flip_rate_detectors", "layer",
    "series", "corruption"}]}``. The axis (layer, L∞ budget, Gaussian σ, fraction, seed — or
    bars by corruption when none varies) is chosen where the reports choose it,
    :func:`nemaudit.report.plots.refine_sweep`."""
    from nemaudit.report.plots import refine_sweep  # matplotlib only when drawing

    points = [{"x": None, "flip_rate": r.metrics.get("flip_rate"),
               "flip_rate_detectors": r.metrics.get("flip_rate_detectors"),
               "changed": r.metrics.get("changed"), "units": r.metrics.get("units"),
               "layer": r.layer, "series": r.corruption.get("kind"),
               "corruption": corruption_spec(r)} for r in results]
    return refine_sweep({"x": None, "points": points})


def metrics_of(result: AuditResult | MilanAuditResult) -> dict[str, Any]:
    """The metrics expectations read: a MILAN audit's under their ``milan.`` names."""
    if result.method == "milan":
        return {MILAN_PREFIX + k: v for k, v in result.metrics.items()}
    return result.metrics


def _fmt(v: float | None) -> str:
    return "undefined" if v is None else f"{v:.4g}"


def audit_context(result: AuditResult, model: str | None, probe: str | None) -> str:
    return (f"layer {result.layer} · model {model} · probe {probe} · "
            f"corruption {corruption_spec(result)}")


def change_summary(result: AuditResult | MilanAuditResult) -> str:
    m = result.metrics
    if result.method == "milan":
        return (f"{m.get('changed', 0)}/{m.get('units', 0)} unit descriptions manipulated "
                f"(F1-BERT ≤ {m.get('threshold', 0):.3f}; mean F1 {m.get('f1_mean', 1):.3f})")
    det = m.get("detectors") or 0
    fd = m.get("flip_rate_detectors")
    det_changed = round(fd * det) if fd is not None else 0
    return (f"{m.get('changed', 0)}/{m.get('units', 0)} units changed concept "
            f"({det_changed}/{det} clean detectors)")


# --------------------------------------------------------------------------- per-item state

@dataclass
class ItemRun:
    """What one test item did: its audits, baseline checks and checked expectations."""

    item: pytest.Item
    #: Network Dissection (AuditResult) and MILAN (MilanAuditResult) audits, in call order
    audits: list[tuple[Any, dict]] = field(default_factory=list)
    checks: list[tuple[BaselineCheck, dict]] = field(default_factory=list)
    expectations: list[dict] = field(default_factory=list)
    #: the expectation the record reports; default: the last failing one (for hypothesis,
    #: the replay of the shrunk example), else the last one
    chosen: dict | None = None
    #: the audit each expectation was measured on (by position; None: unknown)
    sources: list[Any] = field(default_factory=list)

    def note_expectation(self, text: str, measured: float | None, bound: float | None,
                         ok: bool, result: Any = None) -> dict:
        entry = {"expectation": text, "measured": measured, "bound": bound, "ok": ok}
        self.expectations.append(entry)
        self.sources.append(result)
        return entry

    def source_of(self, entry: dict) -> Any:
        """The audit an expectation was measured on, when it was noted with one."""
        for e, r in zip(self.expectations, self.sources):
            if e is entry:
                return r
        return None


class Nemaudit:
    """The ``nemaudit`` fixture: audits, expectations and baselines that read like properties.

    >>> def test_layer4_noise(nemaudit):
    ...     result = nemaudit.audit(model="nemaudit:conceptnet", probe="synthetic:n=300,seed=0",
    ...                             layer="layer4", corruption="gaussian:std=0.02")
    ...     assert result.flip_rate <= 0.05

    Loaded models, probes and results are cached per process, so many tests (or hypothesis
    examples) over the same model cost one load; clean dissections are cached on disk.
    Keyword defaults can come from ``@pytest.mark.nemaudit(model=..., probe=..., layer=...)``.
    """

    def __init__(self, state: NemauditState) -> None:
        self._state = state

    def __repr__(self) -> str:  # shows up in hypothesis' "Falsifying example: ..."
        o, dev = self._state.options, self._state._device
        return f"<nemaudit device={dev if dev is not None else o.device} seed={o.seed}>"

    @property
    def options(self) -> Options:
        return self._state.options

    @property
    def device(self) -> Any:
        return self._state.device

    def load_model(self, model: Any, weights: str | None = None, normalize: Any = None) -> Any:
        """The model for a spec string (cached), or ``model`` itself if it is a module."""
        return self._state.load_model(model, weights, normalize)

    def load_probe(self, probe: Any) -> Any:
        """The probe for a spec string (cached; ``python:module:callable`` too), or itself."""
        return self._state.load_probe(probe)

    def audit(self, model: Any = None, probe: Any = None, layer: str | None = None,
              corruption: Any = None, *, weights: str | None = None, normalize: Any = None,
              units: Sequence[int] | None = None, eta: float | None = None,
              iou_threshold: float | None = None, max_units: int | None = None) -> AuditResult:
        """Dissect ``layer`` clean and under ``corruption`` (a spec string or Corruption);
        the result's metrics are :class:`~nemaudit.audit.result.Metric` floats, so a plain
        ``assert result.flip_rate <= 0.05`` reports the per-unit diff when it fails."""
        __tracebackhide__ = True
        try:
            return self._state.audit(model, probe, layer, corruption, weights=weights,
                                     normalize=normalize, units=units, eta=eta,
                                     iou_threshold=iou_threshold, max_units=max_units)
        except NemauditError as e:  # the message says it all: no deep traceback
            raise _shallow(e) from None

    def describe(self, model: Any = None, probe: Any = None, layer: str | None = None,
                 corruption: Any = None, *, weights: str | None = None,
                 normalize: Any = None, units: Sequence[int] | None = None,
                 max_units: int | None = None, exemplars: int | None = None,
                 f1_threshold: float | None = None, describer: Any = None
                 ) -> MilanAuditResult:
        """Describe ``layer``'s units with MILAN clean and under ``corruption``;
        ``assert result.manipulated_rate <= 0.1`` shows both descriptions of every
        manipulated unit when it fails. ``exemplars``: images per unit (MILAN: 15);
        ``f1_threshold``: F1-BERT at or below which a description counts as manipulated
        (default: calibrated for the offline MiniLM scorer); ``describer``: the bundled
        MILAN by default, ``"milan:PATH"`` for other MILAN weights,
        ``"python:module:callable(...)"`` or any object with ``describe(exemplars)``."""
        __tracebackhide__ = True
        try:
            return self._state.describe(model, probe, layer, corruption, weights=weights,
                                        normalize=normalize, units=units, max_units=max_units,
                                        exemplars=exemplars, f1_threshold=f1_threshold,
                                        describer=describer)
        except NemauditError as e:
            raise _shallow(e) from None

    def expect(self, result: AuditResult | MilanAuditResult, expectation: str) -> Metric:
        """Check ``"flip_rate <= 0.05"`` (the spec-file grammar) on ``result``; the
        expectation, measured value and bound go into the reports even when it passes."""
        __tracebackhide__ = True
        from nemaudit.audit.result import Metric

        text = str(expectation).strip()
        if result.method == "milan" and not text.startswith(MILAN_PREFIX):
            text = milan_form(text)  # bare names on a MILAN result are MILAN metrics
        e = parse_expectation(text)
        if e.is_baseline:
            raise SpecError(f"{e.text!r}: use nemaudit.baseline(name, ...) for baselines")
        if e.method != result.method:
            raise SpecError(f"{e.text!r} is a MILAN metric: check it on the result of "
                            "nemaudit.describe(...)")
        ok, measured = e.evaluate(metrics_of(result))
        run = self._state.current
        if run is not None:
            run.note_expectation(e.text, measured, e.bound, ok, result)
        if not ok:
            specs = self._state.specs_of(result)
            raise AssertionError(failure_message(e, measured, result, specs.get("model"),
                                                 specs.get("probe")))
        return Metric(measured or 0.0, e.subject, result)

    def compare_baseline(self, name: str, *, model: Any = None, probe: Any = None,
                         layer: str | None = None, weights: str | None = None,
                         normalize: Any = None, eta: float | None = None,
                         iou_threshold: float | None = None, tolerance: float = 0.01,
                         anchor: Path | None = None) -> BaselineCheck:
        """Compare the layer's clean explanations with the committed baseline ``name`` (with
        ``--nemaudit-update``: write it) without failing; see :meth:`baseline`."""
        __tracebackhide__ = True
        try:
            return self._state.compare_baseline(name, model=model, probe=probe, layer=layer,
                                                weights=weights, normalize=normalize, eta=eta,
                                                iou_threshold=iou_threshold,
                                                tolerance=tolerance, anchor=anchor)
        except NemauditError as e:
            raise _shallow(e) from None

    def baseline(self, name: str, **kwargs: Any) -> BaselineCheck:
        """Fail unless every unit keeps its label (and its IoU within ``tolerance``, 0.01
        absolute by default) since the baseline committed under ``__nemaudit_baselines__``.
        A missing baseline fails too, asking for ``--nemaudit-update``."""
        __tracebackhide__ = True
        check = self.compare_baseline(name, **kwargs)
        if not check.ok:
            raise AssertionError(check.message())
        return check

    assert_unchanged = baseline


def _shallow(e: NemauditError) -> NemauditError:
    """The same error without its traceback into nemaudit's internals."""
    try:
        return type(e)(*e.args)
    except TypeError:
        return SpecError(str(e))


def failure_message(e: Expectation, measured: float | None, result: AuditResult,
                    model: str | None, probe: str | None, limit: int = DIFF_LINES) -> str:
    """What a failing property prints: verdict, context, and the capped per-unit diff."""
    head = (f"{e.subject} {e.op} {e.bound:g} does not hold: measured {_fmt(measured)}, "
            f"bound {e.bound:g}")
    diff = result.diff_lines(limit)
    lines = [head, "  " + audit_context(result, model, probe), "  " + change_summary(result)
             + (":" if diff else "")]
    lines += ["    " + d for d in diff]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the state

class NemauditState:
    """Per-process state: options, caches, records. Stored in ``config.stash``."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config, self.options = config, options
        self.helper = Nemaudit(self)
        self.current: ItemRun | None = None
        self.records: dict[str, dict] = {}
        self.written: list[tuple[str, Path]] = []
        self.report_errors: list[str] = []
        self._models: dict[Any, Any] = {}
        self._probes: dict[Any, Any] = {}
        self._results: OrderedDict[Any, AuditResult] = OrderedDict()
        self._device: Any = None
        self._order: dict[str, int] = {}
        self.started = time.time()

    @property
    def is_controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    @property
    def wants_pictures(self) -> bool:
        return bool(self.options.json or self.options.html)

    # -- torch and loading ------------------------------------------------------
    @property
    def device(self) -> Any:
        if self._device is None:
            import torch

            from nemaudit.model import resolve_device

            workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
            if workers and int(workers) > 1 and "OMP_NUM_THREADS" not in os.environ:
                # xdist workers share the cores: don't let each one use all of them
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
            self._device = resolve_device(self.options.device)
        return self._device

    def check_device(self) -> None:
        """Resolve the device now (audits on) so ``cuda`` without a GPU is a UsageError."""
        try:
            _ = self.device
        except NemauditError as e:
            raise pytest.UsageError(f"--nemaudit-device: {e}") from None

    def load_model(self, model: Any, weights: str | None = None, normalize: Any = None) -> Any:
        if model is None:
            raise SpecError("no model given: pass model='torchvision:resnet18', "
                            "'package.module:function', 'nemaudit:conceptnet', or a module")
        if not isinstance(model, str):
            return model
        key = (model, str(weights), str(normalize))
        if key not in self._models:
            from nemaudit.model import load_model

            self._models[key] = load_model(model, weights=weights, normalize=normalize,
                                           device=self.device)
        return self._models[key]

    def load_probe(self, probe: Any) -> Any:
        if probe is None:
            raise SpecError("no probe given: pass probe='synthetic:n=300,seed=0', "
                            "'broden:PATH', 'folder:PATH', 'python:module:callable' or a probe")
        if not isinstance(probe, str):
            return probe
        if probe not in self._probes:
            if probe.strip().startswith("python:"):
                self._probes[probe] = load_python_probe(probe.strip())
            else:
                from nemaudit.probe import load_probe

                self._probes[probe] = load_probe(probe)
        return self._probes[probe]

    def load_describer(self, describer: Any) -> Any:
        """The MILAN describer for ``None`` (bundled), ``"milan:PATH"``,
        ``"python:module:callable(...)"`` (cached), or ``describer`` itself."""
        if describer is not None and not isinstance(describer, str):
            return describer
        key = ("describer", describer)
        if key not in self._models:
            from nemaudit.explain.milan.describer import Describer, MilanDescriber

            spec = (describer or "").strip()
            if not spec:
                obj: Any = MilanDescriber.load(device=self.device)
            elif spec.startswith("milan:"):
                try:
                    obj = MilanDescriber.load(spec[len("milan:"):], device=self.device)
                except FileNotFoundError as e:
                    raise SpecError(f"describer spec {spec!r}: {e}") from None
            elif spec.startswith("python:"):
                obj = load_python_object(spec, "describer")
            else:
                raise SpecError(f"describer spec {spec!r}: expected milan:PATH (MILAN weights "
                                "with their .json) or python:<module or path.py>:<callable>")
            if not isinstance(obj, Describer):
                raise SpecError(f"describer spec {spec!r}: {type(obj).__name__} has no "
                                "describe(exemplars) method")
            self._models[key] = obj
        return self._models[key]

    def audit_config(self, eta: float | None, iou_threshold: float | None) -> Any:
        from nemaudit.audit.run import AuditConfig
        from nemaudit.explain.netdissect import DissectConfig

        kw: dict[str, Any] = {"batch_size": self.options.batch_size}
        if eta is not None:
            kw["eta"] = eta
        if iou_threshold is not None:
            kw["iou_threshold"] = iou_threshold
        return AuditConfig(dissect=DissectConfig(**kw), max_units=self.options.max_units)

    def _defaults(self, **given: Any) -> dict[str, Any]:
        """Fill unset arguments from the current test's ``@pytest.mark.nemaudit(...)``."""
        marker = self.current.item.get_closest_marker("nemaudit") if self.current else None
        kw = dict(marker.kwargs) if marker else {}
        return {k: (v if v is not None else kw.get(k)) for k, v in given.items()}

    # -- audits -----------------------------------------------------------------
    def audit(self, model: Any, probe: Any, layer: str | None, corruption: Any, *,
              weights: str | None = None, normalize: Any = None,
              units: Sequence[int] | None = None, eta: float | None = None,
              iou_threshold: float | None = None, max_units: int | None = None) -> AuditResult:
        from nemaudit.audit.run import audit

        a = self._defaults(model=model, probe=probe, layer=layer, corruption=corruption,
                           weights=weights, normalize=normalize, units=units, eta=eta,
                           iou_threshold=iou_threshold)
        m, p, lay, corr, key = self._resolve(a, "audit", (a["eta"], a["iou_threshold"],
                                                          max_units))

        def run() -> AuditResult:
            cache = str(self.options.cache_dir) if self.options.cache_dir else None
            config = self.audit_config(a["eta"], a["iou_threshold"])
            if max_units is not None:  # this call's cap wins over --nemaudit-max-units
                config.max_units = max_units
            return audit(m, lay, p, corr, config, device=self.device, cache_dir=cache,
                         units=a["units"])

        return self._cached(key, run, a, lay)

    def describe(self, model: Any, probe: Any, layer: str | None, corruption: Any, *,
                 weights: str | None = None, normalize: Any = None,
                 units: Sequence[int] | None = None, max_units: int | None = None,
                 exemplars: int | None = None, f1_threshold: float | None = None,
                 describer: Any = None) -> MilanAuditResult:
        from nemaudit.audit.milan import MilanAuditConfig, audit_milan
        from nemaudit.explain.milan.exemplars import ExemplarConfig

        a = self._defaults(model=model, probe=probe, layer=layer, corruption=corruption,
                           weights=weights, normalize=normalize, units=units,
                           describer=describer)
        cap = max_units if max_units is not None else self.options.max_units
        d = a["describer"]
        m, p, lay, corr, key = self._resolve(a, "describe", (cap, exemplars, f1_threshold, d))
        if d is not None and not isinstance(d, str):
            key = None  # like a model or probe object: no in-memory cache
        desc = self.load_describer(d)

        def run() -> MilanAuditResult:
            ex = ExemplarConfig(batch_size=self.options.batch_size,
                                **({} if exemplars is None else {"k": int(exemplars)}))
            config = MilanAuditConfig(exemplars=ex, threshold=f1_threshold, max_units=cap)
            return audit_milan(m, lay, p, corr, describer=desc, config=config,
                               device=self.device, units=a["units"])

        return self._cached(key, run, a, lay)

    def _resolve(self, a: dict[str, Any], what: str, settings: tuple
                 ) -> tuple[Any, Any, str, Any, tuple | None]:
        """Model, probe, layer, seeded corruption and the in-memory cache key of a call."""
        from nemaudit.model import default_layer

        if a["corruption"] is None:
            raise SpecError(f"{what}() needs corruption=..., e.g. 'gaussian:std=0.02'")
        m = self.load_model(a["model"], a["weights"], a["normalize"])
        p = self.load_probe(a["probe"])
        lay = a["layer"] or default_layer(m)
        corr = a["corruption"]
        if isinstance(corr, str):
            corr = with_seed(corr, self.options.seed)
            ckey: Any = corr
        else:
            ckey = ("obj", type(corr).__name__, corr.spec())
        key = None
        if isinstance(a["model"], str) and isinstance(a["probe"], str):
            key = (what, a["model"], str(a["weights"]), str(a["normalize"]), a["probe"], lay,
                   ckey, None if a["units"] is None else tuple(a["units"]), settings)
        return m, p, lay, corr, key

    def _cached(self, key: tuple | None, run: Any, a: dict[str, Any], layer: str) -> Any:
        """``run()``'s result, from the per-process cache when the same call ran before;
        recorded on the current item either way."""
        import torch

        from nemaudit.audit.result import COMPARISON_HOOKS

        if self._on_comparison not in COMPARISON_HOOKS:
            COMPARISON_HOOKS.append(self._on_comparison)
        result = self._results.get(key) if key is not None else None
        if result is not None:
            self._results.move_to_end(key)
        else:
            torch.manual_seed(self.options.seed)
            result = run()
            if key is not None:
                self._results[key] = result
                while len(self._results) > RESULT_CACHE:
                    self._results.popitem(last=False)
        specs = {"model": _label(a["model"]), "probe": _label(a["probe"]), "layer": layer,
                 "weights": a["weights"]}
        result.meta["specs"] = specs  # provenance for messages and the JSON payload
        if self.current is not None:
            self.current.audits.append((result, specs))
        return result

    def _on_comparison(self, metric: Metric, op: str, bound: float, holds: bool) -> None:
        """A plain ``assert result.flip_rate <= 0.05`` in a test: record it as the test's
        expectation, measured value and bound, whether it holds or not."""
        if self.current is not None and metric.result is not None:
            self.current.note_expectation(f"{metric.name or 'metric'} {op} {bound:g}",
                                          float(metric), bound, holds, metric.result)

    def close(self) -> None:
        """End of the pytest session: stop listening to Metric comparisons."""
        mod = sys.modules.get("nemaudit.audit.result")
        if mod is not None and self._on_comparison in mod.COMPARISON_HOOKS:
            mod.COMPARISON_HOOKS.remove(self._on_comparison)

    def specs_of(self, result: AuditResult) -> dict:
        return result.meta.get("specs", {})

    def clean_dissection(self, model: Any, probe: Any, layer: str, weights: str | None,
                         normalize: Any, eta: float | None, iou_threshold: float | None) -> Any:
        from nemaudit.audit.cache import BaselineCache
        from nemaudit.audit.run import clean_baseline

        m = self.load_model(model, weights, normalize)
        p = self.load_probe(probe)
        cache = BaselineCache(str(self.options.cache_dir) if self.options.cache_dir else None)
        base = clean_baseline(m, layer, p, self.audit_config(eta, iou_threshold), self.device,
                              cache)
        return base.dissection

    def compare_baseline(self, name: str, *, model: Any, probe: Any, layer: str | None,
                         weights: str | None, normalize: Any, eta: float | None,
                         iou_threshold: float | None, tolerance: float,
                         anchor: Path | None) -> BaselineCheck:
        from nemaudit.model import default_layer

        a = self._defaults(model=model, probe=probe, layer=layer, weights=weights,
                           normalize=normalize, eta=eta, iou_threshold=iou_threshold)
        if anchor is None:
            if self.current is None:
                raise SpecError("nemaudit.baseline() must run inside a test (it stores the "
                                "baseline next to the test file)")
            anchor = Path(self.current.item.path)
        lay = a["layer"] or default_layer(self.load_model(a["model"], a["weights"],
                                                          a["normalize"]))
        d = self.clean_dissection(a["model"], a["probe"], lay, a["weights"], a["normalize"],
                                  a["eta"], a["iou_threshold"])
        doc = baseline_document(name, lay, d.rows(), model=_label(a["model"]),
                                probe=_label(a["probe"]), method="netdissect",
                                settings=d.config.as_dict())
        check = check_baseline(baseline_path(anchor, name, lay), doc,
                               update=self.options.update, tolerance=tolerance)
        if self.current is not None:
            self.current.checks.append((check, {"model": _label(a["model"]),
                                                "probe": _label(a["probe"]), "layer": lay}))
        return check

    # -- spec-file properties ---------------------------------------------------
    def prepare_property(self, item: PropertyItem) -> None:
        """Setup of a spec item: load and validate everything that needs torch, so that a bad
        model, probe, layer or corruption is an ERROR naming the field, before any audit."""
        from nemaudit.corrupt.spec import parse_corruption
        from nemaudit.model import resolve_layer

        p = item.prop
        assert p is not None and item.layer is not None

        def fail(fld: str, e: BaseException) -> PropertyError:
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            return PropertyError(msg, file=p.file, prop=p.name, field=fld)

        loading = (NemauditError, OSError, ValueError, KeyError, ImportError, TypeError)
        try:
            model = self.load_model(p.model, p.weights, p.normalize)
        except loading as e:
            raise fail("weights" if p.weights and "weights" in str(e).lower() else "model",
                       e) from None
        try:
            probe = self.load_probe(p.probe)
        except loading as e:
            raise fail("probe", e) from None
        try:
            resolve_layer(model, item.layer)
        except NemauditError as e:
            raise fail("layers", e) from None
        if "milan" in p.methods:
            try:
                self.load_describer(p.describer)
            except loading as e:
                raise fail("describer", e) from None
        if p.corruption is not None:
            try:
                parse_corruption(p.corruption)  # errors quote the spec as the user wrote it
                parse_corruption(with_seed(p.corruption, self.options.seed)).bind(probe)
            except NemauditError as e:
                raise fail("corruption", e) from None
        cats = list(probe.categories)
        for e in p.expect:
            bad = _bad_category(e, cats)
            if bad:
                raise PropertyError(f"{e.text!r}: unknown category {bad!r}; this probe's "
                                    f"categories: {', '.join([*cats, 'all'])}", file=p.file,
                                    prop=p.name, field="expect")

    def run_property(self, item: PropertyItem) -> None:
        p = item.prop
        assert p is not None and item.layer is not None
        if p.is_baseline:
            check = self.compare_baseline(p.name, model=p.model, probe=p.probe,
                                          layer=item.layer, weights=p.weights,
                                          normalize=p.normalize, eta=p.eta,
                                          iou_threshold=p.iou_threshold, tolerance=p.tolerance,
                                          anchor=p.file)
            if not check.ok:
                raise PropertyFailed(check.message())
            return
        results: dict[str, Any] = {}
        if "netdissect" in p.methods:
            results["netdissect"] = self.audit(
                p.model, p.probe, item.layer, p.corruption, weights=p.weights,
                normalize=p.normalize, units=p.units, eta=p.eta,
                iou_threshold=p.iou_threshold, max_units=p.max_units)
        if "milan" in p.methods:
            results["milan"] = self.describe(
                p.model, p.probe, item.layer, p.corruption, weights=p.weights,
                normalize=p.normalize, units=p.units, max_units=p.max_units,
                exemplars=p.exemplars, f1_threshold=p.f1_threshold, describer=p.describer)
        metrics: dict[str, Any] = {}
        for r in results.values():
            metrics.update(metrics_of(r))
        failed = []
        for e in p.expect:
            try:
                ok, measured = e.evaluate(metrics)
            except ExpectationError as err:
                raise PropertyError(str(err), file=p.file, prop=p.name, field="expect") from None
            if self.current is not None:
                entry = self.current.note_expectation(e.text, measured, e.bound, ok,
                                                      results[e.method])
                if not ok and self.current.chosen is None:
                    self.current.chosen = entry  # the first failing one is the verdict
            if not ok:
                failed.append((e, measured))
        if failed:
            msgs = [failure_message(e, v, results[e.method], p.model, p.probe)
                    for e, v in failed[:1]]
            msgs += [f"also: {e.subject} {e.op} {e.bound:g} does not hold: measured {_fmt(v)}"
                     for e, v in failed[1:]]
            raise PropertyFailed("\n".join(msgs))

    # -- records ----------------------------------------------------------------
    def begin(self, item: pytest.Item) -> None:
        self.current = ItemRun(item)

    def end(self) -> None:
        self.current = None

    def make_record(self, item: pytest.Item, call: pytest.CallInfo[None],
                    report: pytest.TestReport) -> dict | None:
        """The record of an audit item for the reports (one per item: its call phase, or the
        setup phase when that errored or skipped)."""
        if not self.options.enabled or not is_audit_item(item):
            return None
        if call.when == "teardown" or (call.when == "setup" and report.passed):
            return None
        if report.passed:
            outcome = "passed"
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = "failed" if call.when == "call" else "error"
        run = self.current if self.current is not None and self.current.item is item else None
        rec: dict[str, Any] = {
            "nodeid": item.nodeid, "name": item.name, "outcome": outcome,
            "expectation": None, "measured": None, "bound": None, "message": None,
            "duration": round(float(report.duration), 4), "layer": None, "model": None,
            "probe": None, "corruption": None, "audit": None,
            "kind": "property" if isinstance(item, PropertyItem) else "python",
            "file": str(item.path),
        }
        if isinstance(item, PropertyItem) and item.prop is not None:
            p = item.prop
            from nemaudit.report.json_report import parse_spec  # stdlib only: no torch

            rec.update(expectation=p.expectation_text, layer=item.layer, model=p.model,
                       probe=p.probe, corruption=parse_spec(p.corruption) if p.corruption else None)
            if p.description:
                rec["description"] = p.description
        if report.skipped:
            lr = report.longrepr
            rec["message"] = str(lr[2]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
        elif report.failed:
            text = report.longreprtext
            if call.excinfo is not None and isinstance(call.excinfo.value,
                                                       (AssertionError, NemauditError)):
                text = str(call.excinfo.value) or text
            if text.startswith("Failed: "):
                text = text[len("Failed: "):]
            rec["message"] = text[:4000]
        if run is not None:
            self._fill_from_run(rec, run)
        return _jsonable(rec)

    def _fill_from_run(self, rec: dict, run: ItemRun) -> None:
        source = None
        if run.expectations:
            failing = [x for x in run.expectations if not x["ok"]]
            chosen = run.chosen or (failing or run.expectations)[-1]
            rec.update(expectation=chosen["expectation"], measured=chosen["measured"],
                       bound=chosen["bound"])
            source = run.source_of(chosen)
            if len(run.expectations) > 1:
                rec["expectations"] = run.expectations[-50:]
        nd = [(r, s) for r, s in run.audits if r.method == "netdissect"]
        milan = [(r, s) for r, s in run.audits if r.method == "milan"]
        # each slot shows its last audit, or the one the reported expectation measured;
        # the record's layer/corruption are those of the measured audit (else Network
        # Dissection's last)
        shown: dict[str, tuple[Any, dict]] = {}
        for audits, slot in ((milan, "milan"), (nd, "audit")):
            if audits:
                pick = next((a for a in audits if a[0] is source), audits[-1])
                shown[slot] = pick
                rec[slot] = self._payload(pick[0])
        main = next((a for a in shown.values() if a[0] is source), None) \
            or shown.get("audit") or shown.get("milan")
        if main is not None:
            result, specs = main
            rec.update(layer=result.layer, model=specs.get("model"), probe=specs.get("probe"),
                       corruption=dict(result.corruption))
        if len(nd) > 1:
            rec["sweep"] = build_sweep([r for r, _ in nd[-200:]])
        if run.checks:
            check, specs = run.checks[-1]
            rec.update(layer=check.layer, model=specs.get("model"), probe=specs.get("probe"))
            rec["baseline"] = check.to_json()
            if rec["expectation"] is None:
                rec["expectation"] = "unchanged_since_baseline"
            if check.status in ("changed", "unchanged"):  # measured: units that moved
                rec["measured"], rec["bound"] = float(len(check.changes)), 0.0
            if check.status in ("written", "unchanged") and rec["message"] is None:
                rec["message"] = check.message()

    def _payload(self, result: AuditResult | MilanAuditResult) -> dict:
        if self.wants_pictures:
            try:
                from nemaudit.audit.exemplars import milan_payload, report_payload

                if result.method == "milan":
                    return milan_payload(result, max_units=PAYLOAD_UNITS, k=PAYLOAD_IMAGES)
                return report_payload(result, max_units=PAYLOAD_UNITS, k=PAYLOAD_IMAGES)
            except Exception as e:  # pictures must never change a verdict
                doc = result.to_json()
                doc["exemplar_error"] = f"{type(e).__name__}: {e}"
                return doc
        return result.to_json()

    def attach(self, item: pytest.Item, call: pytest.CallInfo[None],
               report: pytest.TestReport) -> None:
        """Put the record on the report (and pytest-html extras, when that plugin runs)."""
        record = self.make_record(item, call, report)
        if record is None:
            return
        report.nemaudit_record = record  # type: ignore[attr-defined]  # JSON: crosses xdist
        if self.config.pluginmanager.hasplugin("html") and (record.get("audit")
                                                            or record.get("milan")):
            try:
                from nemaudit.report.html import pytest_html_extras

                extras = pytest_html_extras(record)
            except ImportError:
                extras = []
            if extras:
                report.extras = [*getattr(report, "extras", []), *extras]  # type: ignore

    def set_order(self, nodeids: list[str]) -> None:
        """Collection order, so reports list items the same way with or without xdist."""
        if not self._order:
            self._order = {n: i for i, n in enumerate(nodeids)}

    def ordered_records(self) -> list[dict]:
        last = len(self._order)
        return sorted(self.records.values(), key=lambda r: self._order.get(r["nodeid"], last))

    def collect(self, report: pytest.TestReport) -> None:
        rec = getattr(report, "nemaudit_record", None)
        if isinstance(rec, dict):
            self.records[rec["nodeid"]] = rec

    # -- assertion explanations -------------------------------------------------
    def assertrepr(self, op: str, left: Any, right: Any) -> list[str] | None:
        mod = sys.modules.get("nemaudit.audit.result")
        if mod is None:
            return None
        metric_t = mod.Metric
        flip = {"<=": ">=", "<": ">", ">=": "<=", ">": "<", "==": "==", "!=": "!="}
        if isinstance(left, metric_t) and _is_number(right):
            metric, bound = left, float(right)
        elif isinstance(right, metric_t) and _is_number(left):
            metric, bound, op = right, float(left), flip.get(op, op)
        else:
            return None
        result = metric.result
        if result is None or op not in flip:
            return None
        name = metric.name or "metric"
        if self.current is not None and op in ("==", "!="):  # the others: _on_comparison
            self.current.note_expectation(f"{name} {op} {bound:g}", float(metric), bound,
                                          False, result)
        specs = self.specs_of(result)
        max_lines, max_chars = _explanation_budget(self.config)
        lines = [f"{name} {op} {bound:g} does not hold: measured {float(metric):.4g}, "
                 f"bound {bound:g}",
                 audit_context(result, specs.get("model"), specs.get("probe")),
                 change_summary(result) + ":"]
        diff = result.diff_lines(DIFF_LINES)
        if diff and diff[-1].startswith("…"):
            diff = diff[:-1]
        total = len(result.changed_units)
        room = max_lines - len(lines) - 1
        used = sum(map(len, lines))
        shown = []
        for d in diff:
            if len(shown) >= room or used + len(d) + 40 > max_chars:
                break
            shown.append(d)
            used += len(d)
        lines += shown
        if total > len(shown):
            hint = "" if len(shown) >= DIFF_LINES else f"; -vv shows up to {DIFF_LINES}"
            lines.append(f"… {total - len(shown)} more changed unit(s){hint}")
        elif not total:
            lines[-1] = lines[-1].rstrip(":")
        return lines

    # -- end of session -----------------------------------------------------------
    def session_info(self, exitstatus: int) -> dict:
        counts: dict[str, int] = {}
        for r in self.records.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        torch = sys.modules.get("torch")
        return _jsonable({
            "schema": "nemaudit.session/1", "nemaudit_version": nemaudit.__version__,
            "title": "pytest --nemaudit",
            "command": " ".join(["pytest", *map(str, self.config.invocation_params.args)]),
            "started": self.started, "finished": time.time(),
            "duration": round(time.time() - self.started, 3), "exitstatus": int(exitstatus),
            "argv": list(self.config.invocation_params.args),
            "rootdir": str(self.config.rootpath), "options": self.options.to_json(),
            "python": platform.python_version(), "platform": platform.platform(),
            "host": platform.node(), "pytest": pytest.__version__,
            "torch": getattr(torch, "__version__", None),
            "device": str(self._device) if self._device is not None else self.options.device,
            "workers": getattr(self.config.option, "numprocesses", None),
            "counts": counts,
        })

    def write_reports(self, exitstatus: int) -> None:
        """Controller only: write --nemaudit-json / --nemaudit-html from every record."""
        if not self.options.enabled or not self.is_controller:
            return
        records = self.ordered_records()
        info = self.session_info(exitstatus)
        for kind in ("json", "html"):
            path = getattr(self.options, kind)
            if path is None:
                continue
            try:
                _writer(kind)(path, records, info)
                self.written.append((kind, path))
            except Exception as e:  # a broken writer must not hide the test results
                self.report_errors.append(f"writing the {kind.upper()} report {path} failed: "
                                          f"{type(e).__name__}: {e}")

    def terminal_summary(self, tr: Any) -> None:
        if not self.options.enabled or not self.is_controller:
            return
        records = self.ordered_records()
        if not records and not self.written and not self.report_errors:
            return
        tr.write_sep("=", "nemaudit")
        text = _summary_text(records, tr)
        if text:
            tr.write(text if text.endswith("\n") else text + "\n")
        for r in records:
            b = r.get("baseline")
            if b and b.get("status") == "written":
                tr.write_line(f"nemaudit: wrote baseline {_rel(b['path'])}")
        for kind, path in self.written:
            tr.write_line(f"nemaudit: wrote {kind.upper()} report {_rel(path)}")
        for err in self.report_errors:
            tr.write_line(f"nemaudit: {err}", red=True)


def _rel(path: Any) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad_category(e: Expectation, cats: list[str]) -> str | None:
    if e.metric == "per_category_flip_rate" and e.keys[0] not in cats:
        return e.keys[0]
    if e.metric == "detector_share" and e.keys[1] not in [*cats, "all"]:
        return e.keys[1]
    if e.metric in ("detector_share_clean", "detector_share_corrupted") and e.keys \
            and e.keys[0] not in [*cats, "all"]:
        return e.keys[0]
    return None


def _explanation_budget(config: pytest.Config) -> tuple[int, int]:
    """Lines/chars pytest will show of an assert explanation (mirrors its truncation rules),
    so the per-unit diff fits instead of being cut off mid-list."""
    try:
        verbose = config.get_verbosity("assertions")
    except (TypeError, ValueError, AttributeError):
        verbose = config.getoption("verbose", 0) or 0
    if verbose >= 2 or os.environ.get("CI") or os.environ.get("BUILD_NUMBER"):
        return DIFF_LINES + 4, 10**9
    try:
        lines, chars = config.getini("truncation_limit_lines"), config.getini("truncation_limit_chars")
    except ValueError:
        lines = chars = None
    max_lines = 8 if lines in (None, "") else int(lines) or DIFF_LINES + 4
    max_chars = 640 if chars in (None, "") else int(chars) or 10**9
    return min(max_lines, DIFF_LINES + 4), max_chars


def is_audit_item(item: pytest.Item) -> bool:
    return (isinstance(item, PropertyItem) or "nemaudit" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("nemaudit") is not None)


def _writer(kind: str) -> Any:
    if kind == "json":
        from nemaudit.report.json_report import write_json

        return write_json
    from nemaudit.report.html import write_html

    return write_html


def _summary_text(records: list[dict], tr: Any) -> str:
    """The report module's rich summary table, rendered for pytest's terminal."""
    from rich.console import Console

    from nemaudit.report.terminal import session_summary

    try:
        table = session_summary(records)
    except Exception as e:  # the summary is a courtesy: never fail the session over it
        return f"nemaudit: summary failed: {type(e).__name__}: {e}\n"
    buf = io.StringIO()
    markup = bool(getattr(tr, "hasmarkup", False))
    width = getattr(getattr(tr, "_tw", None), "fullwidth", 100)
    Console(file=buf, width=width, force_terminal=markup,
            color_system="standard" if markup else None).print(table)
    return buf.getvalue()


def get_state(config: pytest.Config) -> NemauditState:
    return config.stash[STATE_KEY]
