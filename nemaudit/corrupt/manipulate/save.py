"""Saving a fooled model: its state_dict (loadable with ``weights=``) and a JSON sidecar."""

from __future__ import annotations

import io
import json
import platform
from pathlib import Path
from typing import Any

import torch

from nemaudit.files import atomic_write_bytes, atomic_write_text, check_output


def save_fooled(run: Any, path: str | Path, provenance: dict[str, Any] | None = None
                ) -> tuple[Path, Path]:
    """Write ``run.model``'s inner state_dict to ``path`` (``.pt``) and the settings, seed,
    history and metrics beside it (``.json``); returns both paths. The weights load back
    with ``load_model(spec, weights=path)``, the original model's spec."""
    from nemaudit import __version__
    from nemaudit.model import unwrap

    out = check_output(path, "fooled weights")
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in unwrap(run.model).state_dict().items()}
    torch.save(state, buf)
    atomic_write_bytes(out, buf.getvalue())
    side = out.with_suffix(".json")
    doc = {"schema": "nemaudit.fooled/1", "weights": out.name, "settings": run.config.to_json(),
           "seed": run.config.seed, "best_epoch": run.best_epoch, "metrics": run.best,
           "history": run.history, "classes": list(run.classes) if run.classes else None,
           "provenance": provenance or {},
           "environment": {"nemaudit": __version__, "torch": torch.__version__,
                           "python": platform.python_version()}}
    atomic_write_text(side, json.dumps(doc, indent=2, default=str) + "\n")
    return out, side
