"""The ``nemaudit`` fixture: audits, expectations and committed baselines in a test.

A facade over the process's :class:`~nemaudit.auditor.Auditor`: keyword arguments and
``@pytest.mark.nemaudit(...)`` defaults become one validated
:class:`~nemaudit.audit.request.AuditRequest`, the Auditor runs it, and the result is noted
on the running item's record. Every registered method is reachable as
``nemaudit.run("<method>", ...)``; the methods' own verbs (``audit`` for Network Dissection,
``describe`` for MILAN) are spelled out below with their documented keywords.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemaudit.audit.methods import DEFAULT_METHOD, get_method
from nemaudit.audit.request import AuditRequest
from nemaudit.errors import NemauditError, SpecError
from nemaudit.expectations import in_method, metrics_of, parse_expectation
from nemaudit.harness.messages import failure_message, shallow


def _listen(state: Any) -> None:
    """Record every ``Metric`` comparison (a plain ``assert``) on the running item."""
    from nemaudit.audit.result import COMPARISON_HOOKS

    hook = getattr(state, "_comparison_hook", None)
    if hook is None:
        def hook(metric: Any, op: str, bound: float, holds: bool) -> None:
            if state.current is not None and metric.result is not None:
                state.current.note_expectation(f"{metric.name or 'metric'} {op} {bound:g}",
                                               float(metric), bound, holds, metric.result)
        state._comparison_hook = hook
    if hook not in COMPARISON_HOOKS:
        COMPARISON_HOOKS.append(hook)


def stop_listening(state: Any) -> None:
    import sys

    mod = sys.modules.get("nemaudit.audit.result")
    hook = getattr(state, "_comparison_hook", None)
    if mod is not None and hook in mod.COMPARISON_HOOKS:
        mod.COMPARISON_HOOKS.remove(hook)


def request_of(state: Any, method: str, values: dict[str, Any]) -> AuditRequest:
    """A request from fixture keywords, unset ones filled from the item's marker."""
    request = AuditRequest.build(method, **values)
    marker = state.current.item.get_closest_marker("nemaudit") if state.current else None
    return request.with_defaults(dict(marker.kwargs)) if marker else request


def run_request(state: Any, request: AuditRequest) -> Any:
    """Run ``request`` on the process's Auditor and note the result on the running item."""
    _ = state.device  # resolve it (and share the cores out under xdist) before any work
    _listen(state)
    result = state.auditor.run(request)
    if state.current is not None:
        state.current.audits.append((result, result.meta["specs"]))
    return result


def settle(state: Any, e: Any, result: Any, metrics: dict) -> tuple[Any, str, dict | None]:
    """Judge expectation ``e`` on ``result`` and note it on the running item: (verdict,
    status after ``--nemaudit-fail-on-warn``, the record entry). A warning that does not fail
    is a :class:`~nemaudit.errors.NemauditWarning` (pytest lists it in its summary)."""
    import warnings

    from nemaudit.errors import NemauditWarning
    from nemaudit.harness.messages import interval_text

    verdict = e.judge(metrics, result)
    status = verdict.status
    if status == "warned" and state.options.fail_on_warn:
        status = "failed"
    entry = None
    if state.current is not None:
        entry = state.current.note_expectation(e.text, verdict.measured, e.bound,
                                               status != "failed", result)
        entry["status"] = verdict.status
        if verdict.interval is not None:
            entry["interval"] = verdict.interval.to_json()
    if status == "warned":
        warnings.warn(NemauditWarning(f"{e.text} {interval_text(e, verdict.interval)}"),
                      stacklevel=3)
    return verdict, status, entry


def check_baseline(state: Any, name: str, request: AuditRequest, *, anchor: Path | None,
                   tolerance: float) -> Any:
    if anchor is None:
        if state.current is None:
            raise SpecError("nemaudit.baseline() must run inside a test (it stores the "
                            "baseline next to the test file)")
        anchor = Path(state.current.item.path)
    _ = state.device
    check = state.auditor.check_baseline(name, request, anchor=anchor,
                                         update=state.options.update, tolerance=tolerance)
    if state.current is not None:
        specs = state.auditor.provenance(request, check.layer)
        state.current.checks.append((check, {k: specs[k] for k in ("model", "probe", "layer")}))
    return check


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

    def __init__(self, state: Any) -> None:
        self._state = state

    def __repr__(self) -> str:  # shows up in hypothesis' "Falsifying example: ..."
        return f"<nemaudit device={self._state.device_name} seed={self._state.options.seed}>"

    @property
    def options(self) -> Any:
        return self._state.options

    @property
    def device(self) -> Any:
        return self._state.device

    def load_model(self, model: Any, weights: str | None = None, normalize: Any = None) -> Any:
        """The model for a spec string (cached), or ``model`` itself if it is a module."""
        _ = self._state.device
        return self._state.auditor.model(model, weights, normalize)

    def load_probe(self, probe: Any) -> Any:
        """The probe for a spec string (cached; ``python:module:callable`` too), or itself."""
        return self._state.auditor.probe(probe)

    def run(self, method: str, model: Any = None, probe: Any = None, layer: str | None = None,
            corruption: Any = None, **settings: Any) -> Any:
        """Audit ``layer`` with the registered ``method`` clean and under ``corruption``;
        ``settings`` are the request's shared ones (weights, normalize, units, max_units)
        and the method's own (:attr:`nemaudit.audit.methods.Method.fields`)."""
        __tracebackhide__ = True
        try:
            request = request_of(self._state, method, {
                "model": model, "probe": probe, "layer": layer, "corruption": corruption,
                **settings})
            if request.corruption is None and get_method(method).needs_corruption:
                verb = get_method(method).verb or f"run({method!r})"
                raise SpecError(f"{verb}() needs corruption=..., e.g. 'gaussian:std=0.02'")
            return run_request(self._state, request)
        except NemauditError as e:  # the message says it all: no deep traceback
            raise shallow(e) from None

    def audit(self, model: Any = None, probe: Any = None, layer: str | None = None,
              corruption: Any = None, *, weights: str | None = None, normalize: Any = None,
              units: Sequence[int] | None = None, eta: float | None = None,
              iou_threshold: float | None = None, max_units: int | None = None,
              repeats: int | None = None, bootstrap: int | None = None) -> Any:
        """Dissect ``layer`` clean and under ``corruption`` (a spec string or Corruption);
        the result's metrics are :class:`~nemaudit.audit.result.Metric` floats, so a plain
        ``assert result.flip_rate <= 0.05`` reports the per-unit diff when it fails.
        ``repeats``: draws of the corruption (mean metrics, intervals over units and draws);
        ``bootstrap``: resamples of the probe's images (flip-rate intervals over units and
        probe images)."""
        __tracebackhide__ = True
        return self.run("netdissect", model, probe, layer, corruption, weights=weights,
                        normalize=normalize, units=units, eta=eta,
                        iou_threshold=iou_threshold, max_units=max_units, repeats=repeats,
                        bootstrap=bootstrap)

    def describe(self, model: Any = None, probe: Any = None, layer: str | None = None,
                 corruption: Any = None, *, weights: str | None = None,
                 normalize: Any = None, units: Sequence[int] | None = None,
                 max_units: int | None = None, exemplars: int | None = None,
                 f1_threshold: float | None = None, describer: Any = None,
                 repeats: int | None = None) -> Any:
        """Describe ``layer``'s units with MILAN clean and under ``corruption``;
        ``assert result.manipulated_rate <= 0.1`` shows both descriptions of every
        manipulated unit when it fails. ``exemplars``: images per unit (MILAN: 15);
        ``f1_threshold``: F1-BERT at or below which a description counts as manipulated
        (default: calibrated for the offline MiniLM scorer); ``describer``: the bundled
        MILAN by default, ``"milan:PATH"`` for other MILAN weights,
        ``"python:module:callable(...)"`` or any object with ``describe(exemplars)``."""
        __tracebackhide__ = True
        return self.run("milan", model, probe, layer, corruption, weights=weights,
                        normalize=normalize, units=units, max_units=max_units,
                        exemplars=exemplars, f1_threshold=f1_threshold, describer=describer,
                        repeats=repeats)

    def expect(self, result: Any, expectation: str) -> Any:
        """Check ``"flip_rate <= 0.05"`` (the spec-file grammar) on ``result``; the
        expectation, measured value and bound go into the reports even when it passes."""
        __tracebackhide__ = True
        from nemaudit.audit.result import Metric

        text = in_method(str(expectation), result.method)  # bare names: the result's method
        e = parse_expectation(text)
        if e.is_baseline:
            raise SpecError(f"{e.text!r}: use nemaudit.baseline(name, ...) for baselines")
        if e.method != result.method:
            raise SpecError(f"{e.text!r} is a {get_method(e.method).title} metric: check it "
                            f"on a {get_method(e.method).title} result")
        verdict, status, _ = settle(self._state, e, result, metrics_of(result))
        if status == "failed":
            specs = result.meta.get("specs", {})
            raise AssertionError(failure_message(e, verdict.measured, result,
                                                 specs.get("model"), specs.get("probe"),
                                                 verdict=verdict))
        return Metric(verdict.measured or 0.0, e.subject, result)

    def compare_baseline(self, name: str, *, model: Any = None, probe: Any = None,
                         layer: str | None = None, weights: str | None = None,
                         normalize: Any = None, eta: float | None = None,
                         iou_threshold: float | None = None, tolerance: float = 0.01,
                         anchor: Path | None = None) -> Any:
        """Compare the layer's clean explanations with the committed baseline ``name`` (with
        ``--nemaudit-update``: write it) without failing; see :meth:`baseline`."""
        __tracebackhide__ = True
        try:
            request = request_of(self._state, DEFAULT_METHOD, {
                "model": model, "probe": probe, "layer": layer, "weights": weights,
                "normalize": normalize, "eta": eta, "iou_threshold": iou_threshold})
            return check_baseline(self._state, name, request.but(corruption=None),
                                  anchor=anchor, tolerance=tolerance)
        except NemauditError as e:
            raise shallow(e) from None

    def baseline(self, name: str, **kwargs: Any) -> Any:
        """Fail unless every unit keeps its label (and its IoU within ``tolerance``, 0.01
        absolute by default) since the baseline committed under ``__nemaudit_baselines__``.
        A missing baseline fails too, asking for ``--nemaudit-update``."""
        __tracebackhide__ = True
        check = self.compare_baseline(name, **kwargs)
        if not check.ok:
            raise AssertionError(check.message())
        return check

    assert_unchanged = baseline

    def __getattr__(self, name: str) -> Any:
        """A registered method's verb not spelled out above: ``nemaudit.<verb>(...)``."""
        from nemaudit.audit.methods import all_methods

        for m in all_methods():
            if m.verb == name:
                return lambda *args, **kw: self.run(m.name, *args, **kw)
        raise AttributeError(f"the nemaudit fixture has no attribute {name!r}")
