"""Adversarial model manipulation (Heo, Joo & Moon, NeurIPS 2019): fine-tune a model so its
saliency maps lie while its accuracy barely moves.

The objective is CE(D; w) + λ·L_F(D_fool; w, w₀) with the original w₀ frozen (Eq. 2):
:mod:`~nemaudit.corrupt.manipulate.losses` holds the penalties and test losses,
:mod:`~nemaudit.corrupt.manipulate.train` the fine-tuning loop, ``evaluate`` the FSR and
accuracy, ``data`` the labelled images and active fooling's two-class images. Unlike the
probe corruptions of this package, a fooling corrupts the *model*: the audited explanation
(a saliency map, or a re-dissected unit) is computed on the same images by a changed model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nemaudit.errors import SpecError

#: fooling → what it does (the paper's §3.2)
FOOLINGS: dict[str, str] = {
    "location": "passive: maps pushed onto a frame around the image border",
    "topk": "passive: the original top 10% pixels suppressed",
    "center": "passive: the maps' centre of mass moved away from the original's",
    "active": "active: the maps of two classes swapped on images that hold both",
}
#: the interpreters a model can be fooled *through* (differentiable maps)
FOOLABLE = ("gradcam", "lrp_t", "lrp", "simplegrad", "simplegrad_t")


def check_fooling(name: str) -> str:
    if name not in FOOLINGS:
        raise SpecError(f"unknown fooling {name!r}; valid foolings: {', '.join(FOOLINGS)}")
    return name


@dataclass
class FoolingConfig:
    """The settings of one fooling run (recorded in the saved weights' JSON sidecar).

    Defaults are tuned on the bundled ConceptNet (see ``examples/fooling_findings.py``);
    the paper's ImageNet settings (its Table 4: lr 1e-7..6e-6, λ 0.25..15, plain SGD/Adam on
    pretrained ImageNet models) are far smaller steps for far larger models.
    """

    fooling: str = "location"
    interpreter: str = "gradcam"
    layer: str | None = None
    lr: float = 1e-3
    lam: float = 5.0
    epochs: int = 5
    batch_size: int = 32
    seed: int = 0
    #: keep the best epoch whose top-1 drop (held out) is at most this (None: any epoch)
    max_top1_drop: float | None = 0.02
    #: stop after this many epochs without a better held-out FSR (any accuracy)
    patience: int = 2
    #: stop as soon as the held-out FSR reaches this
    stop_fsr: float = 1.0
    #: active fooling: the two classes (names or indices); default: the two commonest
    classes: tuple[Any, Any] | None = None
    #: held-out images evaluated after each epoch (early stopping, best epoch)
    eval_images: int = 128
    #: the FSR interval R (default: the paper's, :data:`~.losses.FSR_INTERVALS`)
    interval: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fooling(self.fooling)
        from nemaudit.explain.saliency import check_interpreter

        check_interpreter(self.interpreter)
        for name, lo in (("lr", 0.0), ("lam", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > lo or v != v:
                raise SpecError(f"fooling setting {name}={v!r}: expected a number > {lo}")
        for name in ("epochs", "batch_size", "eval_images"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"fooling setting {name}={v!r}: expected an integer >= 1")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes) if self.classes else None
        d["interval"] = list(self.interval) if self.interval else None
        return d


__all__ = ["FOOLABLE", "FOOLINGS", "FoolingConfig", "check_fooling"]
