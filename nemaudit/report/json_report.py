"""Session reports as JSON, plus the small helpers every report format shares.

A report is one session: a list of *property records* (plain dicts made by the pytest
plugin or an example script, see :data:`OUTCOMES`) and the environment that produced them.
The file is versioned (``"schema": "nemaudit.report/2"``) and carries machine and commit
info, like pytest-benchmark's saved runs, so two reports can be compared honestly later.

Schema history:

- ``nemaudit.report/2``: exemplar pictures are left out by default. Records carry them as
  base64 PNGs so they cross pytest-xdist to the controller for the HTML report, but they made
  the JSON ~6 MB. Every base64 PNG string (``audit.exemplars[].images[].clean/corrupted`` of
  Network Dissection, ``audit.exemplars[].clean/corrupted[].png`` of MILAN; also WebP and
  JPEG ones, the saliency maps' thumbnails) is dropped with its key; the numbers about the pictures (image index, max activation, L∞) stay. A top-level
  ``"images": false`` says so; :func:`write_json` with ``include_images=True`` keeps them
  (``"images": true``, otherwise the /1 layout).
- ``nemaudit.report/1``: the first layout, pictures always included. Still read by
  :func:`load_json`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nemaudit.files import atomic_write_text
from nemaudit.specs import guess, tokenize

SCHEMA = "nemaudit.report/2"
#: schemas :func:`load_json` reads (a /1 file is a /2 file with the pictures left in)
READABLE_SCHEMAS = ("nemaudit.report/1", SCHEMA)
#: every base64 PNG starts with the encoded PNG signature
_PNG_B64 = "iVBORw0KGgo"
#: ... and every base64 WebP ("RIFF") and JPEG (FF D8 FF) with theirs
_PICTURE_B64 = (_PNG_B64, "UklGR", "/9j/")
#: record outcomes in the order reports list their counts
OUTCOMES = ("passed", "warned", "failed", "error", "skipped")


# --------------------------------------------------------------------------- environment


def git_info(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding ``cwd``; Nones outside a repo (or
    without git), because a report must never fail over missing provenance."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None}
    branch = run("rev-parse", "--abbrev-ref", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "branch": branch.strip() if branch else None,
            "dirty": None if status is None else bool(status.strip())}


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda": False, "cuda_device": None}
    cuda = bool(torch.cuda.is_available())
    name = None
    if cuda:
        try:
            name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - a broken driver must not break the report
            name = None
    return {"torch": torch.__version__, "cuda": cuda, "cuda_device": name,
            "cuda_version": getattr(torch.version, "cuda", None)}


def environment(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where and with what a session ran: enough to tell whether two reports are comparable."""
    from nemaudit import __version__

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpus": os.cpu_count(),
        "hostname": socket.gethostname(),
        **_torch_info(),
        "nemaudit": __version__,
        "git": git_info(cwd),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
    }


# --------------------------------------------------------------------------- records


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per outcome and total time, shared by every report format."""
    records = list(records)
    counts = {o: 0 for o in OUTCOMES}
    for r in records:
        counts[r.get("outcome", "error")] = counts.get(r.get("outcome", "error"), 0) + 1
    return {"total": len(records), **counts,
            "duration": float(sum(r.get("duration") or 0.0 for r in records)),
            "ok": counts["failed"] == 0 and counts["error"] == 0}  # a warning is not a failure


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number as people read it (``0.0625``, ``12``); ``—`` for missing."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def fmt_pct(v: float | None, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage; ``—`` when undefined (e.g. no detectors)."""
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def fmt_eps(v: Any) -> str:
    """Pixel budgets read best as k/255 when that is how they were written (``4/255`` rather
    than 0.0157); short decimals (``0.2``) stay decimals."""
    if isinstance(v, float) and 0 < v < 1 and len(repr(v)) > 6:
        k = v * 255
        if abs(k - round(k)) < 1e-6:
            return f"{round(k)}/255"
    return fmt_num(v)


_SKIP_KEYS = {"kind", "shared", "seed", "select"}


def parse_spec(spec: str) -> dict[str, Any]:
    """A corruption spec string (``"pgd:eps=4/255,steps=10"``: sweep points and spec files carry
    them) as a describe()-like dict, without importing torch: keys and values read as
    :func:`nemaudit.corrupt.parse_corruption` reads them (:mod:`nemaudit.specs`), the type
    guessed (:func:`nemaudit.specs.guess`). A report shows what it is given, so a malformed
    field is skipped rather than an error."""
    tokens = tokenize(str(spec), "corruption", strict=False)
    return {"kind": tokens.kind, **{k: guess(v) for k, v in tokens.fields.items()}}


def target_wording(corruption: Mapping[str, Any] | None) -> tuple[str, str]:
    """How reports name the rate of units that reached their target: a targeted attack's
    target is the user's concept; an untargeted one's is each unit's *runner-up*, chosen by
    the audit (so "targeted success" would mislead)."""
    if corruption and corruption.get("targeted") is False:
        return ("reached the runner-up", "untargeted: each unit's target is its runner-up "
                                         "concept, chosen from the clean run")
    return "targeted success", "units whose new concept is the attack's target"


def corruption_text(c: Mapping[str, Any] | None) -> str:
    """``Corruption.describe()`` as a short spec-like line: ``pgd eps=4/255 steps=10``."""
    if not c:
        return "—"
    parts = [str(c.get("kind", "?"))]
    for k, v in c.items():
        if k in _SKIP_KEYS or v is None or v is False:
            continue
        if k == "fraction" and v == 1.0:
            continue
        if k in ("max_copies",):
            continue
        parts.append(f"{k}={fmt_eps(v) if k in ('eps', 'std', 'alpha') else fmt_num(v)}")
    if c.get("select") not in (None, "random"):
        parts.append(f"select={c['select']}")
    return " ".join(parts)


def _jsonable(obj: Any) -> Any:
    """Make a record strictly JSON-safe: numpy/torch scalars and arrays, paths, sets; NaN/inf
    become None (strict JSON has no NaN, and browsers' JSON.parse rejects it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars
        return _jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    if hasattr(obj, "to_json"):
        return _jsonable(obj.to_json())
    return str(obj)


def is_png_b64(v: Any) -> bool:
    """True for a base64-encoded picture: a PNG (what the exemplar payloads carry), or a
    WebP or JPEG (the saliency maps' thumbnails)."""
    return isinstance(v, str) and len(v) > 32 and v.startswith(_PICTURE_B64)


def strip_images(obj: Any) -> Any:
    """A copy of ``obj`` without its base64 PNG strings: a dict loses the key, a list the
    item; everything else (indices, maxima, L∞ of the pictured images) is kept. The input is
    not modified: the HTML report renders the same records with their pictures."""
    if isinstance(obj, Mapping):
        return {k: strip_images(v) for k, v in obj.items() if not is_png_b64(v)}
    if isinstance(obj, (list, tuple)):
        return [strip_images(v) for v in obj if not is_png_b64(v)]
    return obj


def build_report(records: Iterable[Mapping[str, Any]], session: Mapping[str, Any] | None = None,
                 include_images: bool = False) -> dict[str, Any]:
    """The JSON document: schema, environment, session info, summary counts and records,
    without exemplar pictures unless ``include_images`` (see the module docstring).

    ``session["environment"]`` wins over a fresh :func:`environment` so a controller can
    record the environment the workers actually ran in."""
    records = [dict(r) if include_images else strip_images(r) for r in records]
    session = dict(session or {})
    env = session.pop("environment", None) or environment()
    return _jsonable({"schema": SCHEMA, "created": env.get("timestamp") or
                      datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "environment": env, "session": session, "images": bool(include_images),
                      "summary": summarize(records), "records": records})


def write_json(path: str | os.PathLike, records: Iterable[Mapping[str, Any]],
               session: Mapping[str, Any] | None = None, include_images: bool = False) -> Path:
    """Write the session report as JSON (atomically); returns the path. Exemplar pictures
    stay out unless ``include_images`` (they are for the HTML report, and weigh megabytes)."""
    doc = build_report(records, session, include_images=include_images)
    return atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report written by :func:`write_json`; a ValueError names a foreign schema."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not schema.startswith("nemaudit.report/"):
        raise ValueError(f"{path}: not a nemaudit report (schema {schema!r}, expected {SCHEMA!r})")
    if schema not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: report schema {schema!r} is not supported (expected {SCHEMA!r})")
    return doc
