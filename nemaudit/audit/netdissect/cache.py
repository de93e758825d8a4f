"""On-disk cache of the clean side of audits (a dissection plus its incremental state).

Not to be confused with committed explanation baselines (:mod:`nemaudit.baseline`).

The key hashes everything that determines the clean result: the model's weights and
normalisation, the layer, the probe's content, the method settings and the nemaudit
version. Files are written to a temporary name and renamed into place, so an interrupted
audit never leaves a half-written entry; they are read with ``weights_only=True``. An entry
that cannot be read is reported, deleted and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

import nemaudit
from nemaudit.explain.common.quantile import TopQuantile
from nemaudit.explain.netdissect import DissectConfig, Dissection, DissectState
from nemaudit.explain.netdissect.dissect import PixelTable
from nemaudit.explain.netdissect.tally import IoUTally
from nemaudit.files import atomic_write_bytes, atomic_write_text
from nemaudit.probe.base import Concept

#: how long a process waits for another to finish the same clean run (then it fails loudly)
LOCK_TIMEOUT_S = 3600
CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This file is a cache directory tag created by nemaudit (clean runs of "
                "audits).\n# For information about cache directory tags, see "
                "https://bford.info/cachedir/\n")


#: the layout of a cached entry; bump it when DissectState gains or changes a field, so an
#: old entry is never read as a new one
FORMAT = 3


def clean_run_key(model_fp: str, layer: str, probe_fp: str, config: DissectConfig,
                 extra: dict | None = None) -> str:
    doc = {"model": model_fp, "layer": layer, "probe": probe_fp, "settings": config.as_dict(),
           "batch": config.batch_size, "extra": extra or {}, "version": nemaudit.__version__,
           "torch": torch.__version__, "format": FORMAT}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def _to_payload(d: Dissection) -> dict:
    payload = {
        "layer": d.layer, "thresholds": d.thresholds.cpu(),
        "tally": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in d.tally.state_dict().items()},
        "concepts": [[c.id, c.name, c.category] for c in d.concepts],
        "categories": list(d.categories),
        "config": {"eta": d.config.eta, "quantile_level": d.config.quantile_level,
                   "iou_threshold": d.config.iou_threshold, "top_k": d.config.top_k,
                   "batch_size": d.config.batch_size, "cache_budget_mb": d.config.cache_budget_mb},
        "meta": json.dumps(d.meta),
    }
    st = d.state
    if st is not None:
        q = st.quant
        payload["state"] = {
            "level": q.level, "n_total": q.n_total, "count": q.count, "slack": q.slack,
            "values": q.values.cpu(), "ids": q.ids.cpu() if q.ids is not None else None,
            "cut": st.cut.cpu(),
            **{k: (getattr(st, k).cpu() if getattr(st, k) is not None else None)
               for k in ("maps", "units", "images", "maxes")},
            "pixels": None if st.pixels is None else st.pixels.to("cpu").to_dict(),
        }
    return payload


def _from_payload(p: dict, device: torch.device) -> Dissection:
    t = p["tally"]
    tally = IoUTally(t["both"], t["unit_cat"], t["unit_pixels"], t["label"], t["images"]).to(device)
    state = None
    if p.get("state") is not None:
        s = p["state"]
        dev = lambda x: None if x is None else x.to(device)  # noqa: E731
        quant = TopQuantile(s["level"], s["n_total"], s["values"].to(device), s["count"],
                            s["slack"], dev(s["ids"]))
        pixels = s.get("pixels")
        state = DissectState(quant, s["cut"].to(device), dev(s["maps"]), dev(s["units"]),
                             dev(s["images"]), dev(s["maxes"]),
                             None if pixels is None else PixelTable(**pixels).to(device))
    return Dissection(p["layer"], p["thresholds"].to(device), tally,
                      [Concept(*c) for c in p["concepts"]], list(p["categories"]),
                      DissectConfig(**p["config"]), json.loads(p["meta"]), state)


#: the entries this process read or wrote last, by (file, its mtime and size, device): every
#: audit of a session starts from a clean run, and reading it from memory costs nothing.
#: The file's identity is in the key, so an entry rewritten on disk is read again.
_MEMO: OrderedDict[tuple, tuple[Dissection, dict]] = OrderedDict()
MEMO_ENTRIES = 2


def _memo_key(path: Path, device: torch.device | str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size, str(torch.device(device)))


def _remember(memo: tuple, hit: tuple[Dissection, dict]) -> None:
    _MEMO[memo] = hit
    _MEMO.move_to_end(memo)
    while len(_MEMO) > MEMO_ENTRIES:
        _MEMO.popitem(last=False)


class CleanRunCache:
    """A directory of clean runs; ``None`` as directory disables caching.

    A directory that cannot be written (read-only, or a file in its place) is a warning and
    the run goes on uncached; :meth:`lock` keeps two processes (pytest-xdist workers) from
    computing one entry twice. The folder carries a ``CACHEDIR.TAG`` so backup tools skip it.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = Path(directory) if directory is not None else None

    def path(self, key: str) -> Path | None:
        return None if self.dir is None else self.dir / f"clean-{key}.pt"

    def _usable(self) -> bool:
        """Create the folder (and its tag) if needed; False, with a warning, if it cannot be."""
        if self.dir is None:
            return False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tag = self.dir / "CACHEDIR.TAG"
            if not tag.exists():
                atomic_write_text(tag, CACHEDIR_TAG)
            return True
        except OSError as e:
            warnings.warn(f"nemaudit: the clean-run cache {self.dir} cannot be written ({e}); "
                          "going on without it", stacklevel=3)
            self.dir = None
            return False

    def lock(self, key: str) -> Any:
        """A cross-process lock on one entry (a no-op context without a usable cache)."""
        path = self.path(key)
        if path is None or not self._usable():
            return contextlib.nullcontext()
        from filelock import FileLock

        return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def load(self, key: str, device: torch.device | str = "cpu"
             ) -> tuple[Dissection, dict] | None:
        """(dissection, extra tensors) for ``key``, or None."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            memo = _memo_key(path, device)
            if memo in _MEMO:
                _MEMO.move_to_end(memo)
                return _MEMO[memo]
            payload = torch.load(path, map_location="cpu", weights_only=True)
            extras = payload.get("extras") or {}
            hit = _from_payload(payload, torch.device(device)), extras
            _remember(memo, hit)
            return hit
        except Exception as e:  # a truncated or foreign file: recompute, never trust it
            warnings.warn(f"nemaudit: ignoring unreadable clean-run cache {path} ({e}); "
                          "recomputing", stacklevel=2)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            return None

    def save(self, key: str, d: Dissection, extras: dict | None = None) -> Path | None:
        path = self.path(key)
        if path is None or not self._usable():
            return None
        buf = io.BytesIO()
        torch.save(_to_payload(d) | {"extras": extras or {}}, buf)
        try:
            written = atomic_write_bytes(path, buf.getvalue())
            _remember(_memo_key(path, d.thresholds.device), (d, extras or {}))
            return written
        except OSError as e:
            warnings.warn(f"nemaudit: could not write the clean-run cache {path} ({e}); going "
                          "on without it", stacklevel=2)
            return None
