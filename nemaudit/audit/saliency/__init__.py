"""Saliency maps as registered methods (Heo, Joo & Moon, NeurIPS 2019), torch-free here.

Two methods, one per question an auditor asks of a model's interpreters:

- ``saliency`` — *audit*: compare a candidate model's maps with a trusted reference model's on
  the probe's images (``saliency.spearman_gradcam >= 0.8`` with ``reference = "…"``), with
  top-1/top-5 of both and AOPC to tell a lying map from a model that really changed;
- ``fooling`` — *red team*: fine-tune the model to fool one interpreter (location, top-k,
  center-mass or active fooling) and measure how far it gets: the FSR of the fooled
  interpreter and of every other (the transfer table), the accuracy cost, and how many units
  Network Dissection sees change concept (``fooling.fsr <= 0.2`` with ``max_top1_drop``).

The runners are :mod:`nemaudit.audit.saliency.run`; neither takes a probe corruption (the
model is what changes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nemaudit.audit.fields import Field, FloatRange, IntRange, check_str
from nemaudit.audit.methods import Method, MetricShape

#: interpreters, as :data:`nemaudit.explain.saliency.INTERPRETERS` (kept torch-free here)
INTERPRETER_NAMES = ("gradcam", "simplegrad", "simplegrad_t", "lrp", "lrp_t")
FOOLING_NAMES = ("location", "topk", "center", "active")
_N = MetricShape()
_R = MetricShape(rate=True)


def _check_interpreters(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    if not isinstance(v, (list, tuple)) or not v or any(x not in INTERPRETER_NAMES for x in v):
        raise TypeError(f"a list of interpreters from {', '.join(INTERPRETER_NAMES)}")
    return tuple(dict.fromkeys(v))


def _one_of(names: tuple[str, ...]):
    def check(v: Any) -> str:
        if v not in names:
            raise TypeError(" or ".join(f'"{n}"' for n in names))
        return str(v)
    return check


def _check_classes(v: Any) -> tuple[str, str]:
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",")]
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
            isinstance(x, (str, int)) and not isinstance(x, bool) and str(x).strip() for x in v):
        raise TypeError('two class names or indices, e.g. "beach,forest"')
    return str(v[0]).strip(), str(v[1]).strip()


def _check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("true or false")
    return v


_SHARED = {
    "interpreters": Field(_check_interpreters, "saliency: interpreters measured (default all: "
                                               + ", ".join(INTERPRETER_NAMES) + ")"),
    "saliency_layer": Field(check_str, "saliency: the target layer of Grad-CAM and the _t maps "
                                       "(default: the audited layer)"),
    "images": Field(IntRange(1, 100_000), "saliency: held-out images measured (default 64)"),
    "aopc_steps": Field(IntRange(1, 64), "saliency: perturbation steps of AOPC (default 8)"),
}


def _per_interpreter(prefixes: tuple[str, ...], rate: tuple[str, ...] = ()) -> dict:
    return {f"{p}_{i}": (_R if p in rate else _N) for p in prefixes for i in INTERPRETER_NAMES}


class Saliency(Method):
    name = "saliency"
    prefix = "saliency."
    title = "Saliency maps (candidate vs reference)"
    verb = "saliency"
    record_key = "saliency"
    headline = "spearman_gradcam"
    headline_label = "Spearman Grad-CAM"
    repeatable = False
    needs_corruption = False
    metrics = {"images": _N, "top1": _N, "top5": _N, "top1_reference": _N,
               "top5_reference": _N, "top1_drop": _N, "top5_drop": _N, "aopc_random": _N,
               **_per_interpreter(("spearman", "changed_rate", "aopc", "aopc_reference"),
                                  rate=("changed_rate",))}
    fields = {
        "reference": Field(check_str, "saliency: the trusted reference model's spec"),
        "reference_weights": Field(check_str, "saliency: the reference model's checkpoint"),
        "spearman_threshold": Field(FloatRange(-1.0, 1.0), "saliency: an image's map counts "
                                    "as changed below this Spearman ρ (default 0.5)"),
        **_SHARED,
    }

    def run(self, request, resolved):
        from nemaudit.audit.saliency.run import run_saliency

        return run_saliency(request, resolved)

    def payload(self, result, *, max_units: int, k: int) -> dict:
        from nemaudit.audit.saliency.pictures import saliency_payload

        return saliency_payload(result, max_images=max_units)

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        from nemaudit.report.saliency_html import saliency_section

        return saliency_section(payload, index)

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        rho = ", ".join(f"{i} {metrics[f'spearman_{i}']:.3f}" for i in INTERPRETER_NAMES
                        if metrics.get(f"spearman_{i}") is not None)
        return (f"{metrics.get('images', 0)} images: mean Spearman ρ vs the reference: {rho}; "
                f"top-1 {metrics.get('top1', 0):.3f} vs {metrics.get('top1_reference', 0):.3f}")


class Fooling(Method):
    name = "fooling"
    prefix = "fooling."
    title = "Model manipulation (fooling)"
    verb = "fool"
    record_key = "fooling"
    headline = "fsr"
    headline_label = "FSR"
    repeatable = False
    needs_corruption = False
    metrics = {"fsr": _R, "fsr_c1": _R, "fsr_c2": _R, "test_loss_mean": _N, "images": _N,
               "top1": _N, "top5": _N, "top1_original": _N, "top5_original": _N,
               "top1_drop": _N, "top5_drop": _N, "epochs": _N, "best_epoch": _N,
               "nd_units": _N, "nd_changed": _N, "nd_flip_rate": _R,
               "nd_flip_rate_detectors": _R,
               **_per_interpreter(("fsr", "spearman"), rate=("fsr",))}
    fields = {
        "fooling": Field(_one_of(FOOLING_NAMES), "fooling: location, topk, center or active"),
        "interpreter": Field(_one_of(INTERPRETER_NAMES), "fooling: the interpreter fooled "
                                                         "(default gradcam)"),
        "fool_lr": Field(FloatRange(0.0, 1.0, lo_open=True), "fooling: Adam learning rate "
                                                             "(default 1e-3)"),
        "fool_lambda": Field(FloatRange(0.0, 1e4, lo_open=True), "fooling: λ, the weight "
                                                                  "of L_F (default 5)"),
        "fool_epochs": Field(IntRange(1, 1000), "fooling: most epochs of fine-tuning "
                                                     "(default 5)"),
        "fool_batch_size": Field(IntRange(1, 4096), "fooling: fine-tuning batch size"),
        "max_top1_drop": Field(FloatRange(0.0, 1.0), "fooling: largest held-out top-1 drop "
                                                      "an epoch may cost (default 0.02)"),
        "train_probe": Field(check_str, "fooling: the images fine-tuned on (default: 3/4 of "
                                        "the probe; the rest is held out)"),
        "train_images": Field(IntRange(2, 1_000_000), "fooling: cap on training images"),
        "active_classes": Field(_check_classes, "fooling: active fooling's two classes"),
        "fool_seed": Field(IntRange(0, 2**31 - 1), "fooling: seed of the fine-tuning"),
        "save_weights": Field(check_str, "fooling: write the fooled state_dict here (.pt, with "
                                         "a .json sidecar)"),
        "dissect": Field(_check_bool, "fooling: re-dissect the layer (default true)"),
        "fsr_low": Field(FloatRange(-1e9, 1e9), "fooling: lower end of the FSR interval R"),
        "fsr_high": Field(FloatRange(-1e9, 1e9), "fooling: upper end of the FSR interval R"),
        **_SHARED,
    }

    def run(self, request, resolved):
        from nemaudit.audit.saliency.run import run_fooling

        return run_fooling(request, resolved)

    def payload(self, result, *, max_units: int, k: int) -> dict:
        from nemaudit.audit.saliency.pictures import saliency_payload

        return saliency_payload(result, max_images=max_units)

    def facts(self, payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
        meta = payload.get("meta") or {}
        keys = ("fooling", "interpreter", "lr", "lam", "epochs_run", "best_epoch",
                "train_images", "label_source", "seconds")
        return [(k.replace("_", " "), meta[k]) for k in keys if meta.get(k) is not None]

    def section(self, payload: Mapping[str, Any], index: int, interactive: bool,
                diff_limit: int | None = None) -> str:
        from nemaudit.report.saliency_html import saliency_section

        return saliency_section(payload, index)

    def change_summary(self, metrics: Mapping[str, Any]) -> str:
        nd = ""
        if metrics.get("nd_units"):
            nd = (f"; Network Dissection: {metrics.get('nd_changed', 0)}/"
                  f"{metrics['nd_units']} units changed concept")
        return (f"FSR {metrics.get('fsr', 0):.3f} at top-1 {metrics.get('top1', 0):.3f} "
                f"(original {metrics.get('top1_original', 0):.3f}){nd}")
