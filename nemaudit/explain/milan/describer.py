"""The ``Describer`` interface: exemplars in, one description per unit out.

Audits (:func:`nemaudit.audit.milan.audit_milan`) only ever call ``describe(exemplars)``, so
any captioner can stand in for nemaudit's offline MILAN:

- :class:`MilanDescriber` — the bundled model (``milan.pt``/``milan.json``): frozen
  ConceptNet pyramid encoder, attention-LSTM captioner, LSTM language model, beam search 50
  and reranking with λ = 0.2, ≤ 15 tokens.
- :class:`CaptionerDescriber` — wraps a function ``fn(images, masks) -> str`` that describes
  one unit from its k exemplar images ``[k, 3, H, W]`` (in [0, 1]) and boolean masks
  ``[k, h, w]``. This is how to plug in the original MILAN checkpoint (whose weights you
  download yourself; nemaudit never does)::

      from src import milan                      # evandez/neuron-descriptions
      decoder = milan.pretrained("base")          # or milan.Decoder.load(path)
      import torch.nn.functional as F

      def original_milan(images, masks):
          x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
          m = F.interpolate(masks[:, None].float(), size=(224, 224), mode="nearest")
          out = decoder(x[None], masks=m[None], strategy="rerank", temperature=0.2,
                        beam_size=50)
          return out.captions[0]

      describer = CaptionerDescriber(original_milan)

- anything else with a ``describe(exemplars) -> list[str]`` method (it is a ``Protocol``):
  read ``exemplars.images(rows)``, ``exemplars.masks``, ``exemplars.indices`` as needed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from nemaudit.explain.milan.decode import caption
from nemaudit.explain.milan.exemplars import Exemplars
from nemaudit.explain.milan.model import (
    Captioner,
    LanguageModel,
    MilanSettings,
    PyramidEncoder,
    Vocabulary,
)
from nemaudit.model.bundled import WEIGHTS_DIR

__all__ = ["CaptionerDescriber", "Describer", "MilanDescriber", "default_describer",
           "resolve_describer"]

DEFAULT_WEIGHTS = WEIGHTS_DIR / "milan.pt"


@runtime_checkable
class Describer(Protocol):
    """Anything that writes one description per unit (row) of an exemplar set."""

    def describe(self, exemplars: Exemplars) -> list[str]:
        ...


class MilanDescriber:
    """nemaudit's offline MILAN: d* = argmax log p(d|E) − λ·log p(d) over a beam of 50."""

    def __init__(self, encoder: PyramidEncoder, captioner: Captioner,
                 lm: LanguageModel | None, vocab: Vocabulary,
                 settings: MilanSettings | None = None, meta: dict | None = None) -> None:
        self.encoder, self.captioner, self.lm, self.vocab = encoder, captioner, lm, vocab
        self.settings = settings or MilanSettings()
        self.meta = dict(meta or {})
        self.captioner.eval()
        if self.lm is not None:
            self.lm.eval()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
             encoder_model: torch.nn.Module | None = None, **settings: Any) -> MilanDescriber:
        """Load ``milan.pt`` + ``milan.json`` (default: the bundled ones). ``settings``
        override decoding settings (``beam_size``, ``lam``, ``max_length``).
        ``encoder_model`` replaces the encoder network named in the metadata."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"MILAN weights not found: {path} and {meta_path} are "
                                    "written by python -m nemaudit.training.milan")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            cfg = MilanSettings.from_dict({**meta["settings"], **settings})
            vocab = Vocabulary.from_json(meta["vocab"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            from nemaudit.errors import ModelSpecError

            raise ModelSpecError(f"{meta_path}: not MILAN metadata as nemaudit train-milan "
                                 f"writes it ({type(e).__name__}: {e})") from None
        device = torch.device(device)
        if encoder_model is None:
            encoder_model = _encoder_network(meta["encoder"], device)
        encoder = PyramidEncoder(encoder_model, cfg.encoder_layers)
        if encoder.feature_size != meta["feature_size"]:
            raise ValueError(f"encoder gives {encoder.feature_size} features, the captioner "
                             f"was trained on {meta['feature_size']}")
        state = _read_weights(path)
        captioner = Captioner(len(vocab), encoder.feature_size, cfg.embedding_size,
                              cfg.hidden_size, cfg.attention_hidden_size, cfg.dropout)
        captioner.load_state_dict({k: v.float() for k, v in state["captioner"].items()})
        lm = None
        if "lm" in state:
            lm = LanguageModel(len(vocab), cfg.lm_embedding_size, cfg.lm_hidden_size,
                               cfg.lm_layers, cfg.lm_dropout, vocab.pad)
            lm.load_state_dict({k: v.float() for k, v in state["lm"].items()})
            lm.to(device)
        meta = {k: meta[k] for k in ("weights_sha256", "encoder", "name") if k in meta}
        return cls(encoder, captioner.to(device), lm, vocab, cfg, meta)

    def features(self, exemplars: Exemplars) -> torch.Tensor:
        """Exemplar vectors ``[U, k, F]`` from the frozen pyramid encoder."""
        return self.encoder.encode(exemplars)

    def describe(self, exemplars: Exemplars) -> list[str]:
        return self.describe_features(self.features(exemplars))

    def describe_features(self, features: torch.Tensor) -> list[str]:
        s = self.settings
        return caption(self.captioner, self.lm, features, self.vocab, beam_size=s.beam_size,
                       max_length=s.max_length, lam=s.lam)

    def candidates(self, exemplars: Exemplars) -> list[list[tuple[str, float, float]]]:
        """Per unit, the final beam as ``(text, log p(d|E), log p(d))``, best first."""
        s = self.settings
        _, beams = caption(self.captioner, self.lm, self.features(exemplars), self.vocab,
                           beam_size=s.beam_size, max_length=s.max_length, lam=s.lam,
                           return_beams=True)
        return beams

    def describe_settings(self) -> dict[str, Any]:
        """JSON-able identity of this describer (for reports and cache keys)."""
        return {"describer": "milan", **self.meta, "settings": self.settings.to_dict()}


def _encoder_network(info: dict, device: torch.device) -> torch.nn.Module:
    from nemaudit.model import load_model
    from nemaudit.model.bundled import BUNDLED

    spec = info.get("spec", "nemaudit:conceptnet")
    model = load_model(spec, device=device)
    want = info.get("weights_sha256")
    name = spec.partition(":")[2]
    if want and name in BUNDLED:
        p = BUNDLED[name].weights_path
        have = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        if have != want:
            warnings.warn(f"the MILAN captioner was trained on the features of {spec} with "
                          f"weights {want[:12]}…, but those weights are now {str(have)[:12]}…; "
                          "descriptions may be poor until MILAN is retrained "
                          "(python -m nemaudit.training.milan)", stacklevel=3)
    return model


@lru_cache(maxsize=2)
def _read_weights(path: Path) -> dict:
    """MILAN's weights, read like every checkpoint (``weights_only=True``: a pickle with code
    is refused with a message that says so, never run)."""
    from nemaudit.errors import ModelSpecError
    from nemaudit.model.load import _explain_load_error

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelSpecError(_explain_load_error(path, e)) from None
    if not isinstance(state, dict) or not isinstance(state.get("captioner"), dict):
        raise ModelSpecError(f"{path}: not MILAN weights (expected a dict with a 'captioner' "
                             "state_dict, as written by nemaudit train-milan)")
    return state


def default_describer(device: str = "cpu") -> MilanDescriber:
    """The bundled MILAN, loaded once per process."""
    return MilanDescriber.load(device=device)


USAGE = ("milan:PATH (MILAN weights with their .json) or python:<module or path.py>:<callable>"
         "[(key=value, ...)]; empty: the bundled MILAN")


def resolve_describer(spec: Any = None, device: str | torch.device = "cpu",
                      **settings: Any) -> Describer:
    """The describer a spec names: ``None``/``""`` (bundled MILAN), ``"milan:PATH"``,
    ``"python:module:callable(...)"``, or a :class:`Describer` object itself. ``settings``
    (``beam_size``, ``lam``) apply to MILAN weights."""
    from nemaudit.errors import SpecError
    from nemaudit.imports import load_python_object

    if spec is not None and not isinstance(spec, str):
        obj: Any = spec
    else:
        text = (spec or "").strip()
        kind, _, rest = text.partition(":")
        try:
            if not text:
                obj = MilanDescriber.load(device=device, **settings)
            elif kind.strip().lower() == "milan":
                obj = MilanDescriber.load(rest.strip(), device=device, **settings)
            elif kind.strip().lower() == "python":
                obj = load_python_object(text, "describer")
            else:
                raise SpecError(f"describer spec {text!r}: expected {USAGE}")
        except FileNotFoundError as e:
            raise SpecError(f"describer spec {text!r}: {e}") from None
    if not isinstance(obj, Describer):
        raise SpecError(f"describer spec {spec!r}: {type(obj).__name__} has no "
                        "describe(exemplars) method")
    return obj


class CaptionerDescriber:
    """Any per-unit captioner ``fn(images [k, 3, H, W], masks [k, h, w]) -> str`` as a
    :class:`Describer` (images in [0, 1], read ``rows_per_call`` units at a time)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], str],
                 rows_per_call: int = 8) -> None:
        self.fn = fn
        self.rows_per_call = max(1, int(rows_per_call))

    def describe(self, exemplars: Exemplars) -> list[str]:
        out: list[str] = []
        for s in range(0, len(exemplars), self.rows_per_call):
            rows = list(range(s, min(s + self.rows_per_call, len(exemplars))))
            images = exemplars.images(rows)
            for i, r in enumerate(rows):
                out.append(str(self.fn(images[i], exemplars.masks[r])))
        return out

    def describe_settings(self) -> dict[str, Any]:
        return {"describer": getattr(self.fn, "__qualname__", type(self.fn).__name__)}
