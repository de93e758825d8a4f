"""Committed explanation baselines: "did this retrain change what my units detect?".

A baseline is the clean Network Dissection of one layer — per unit its label, category and
IoU — stored as JSON next to the spec file or test module that declares it::

    tests/__nemaudit_baselines__/<file stem>/<name>__<layer>.json

One file per (name, layer), so pytest-xdist workers never write the same file. Files are
written only with ``--nemaudit-update`` (like snapshot tools: a test run must not silently
accept a change), one unit per line so that ``git diff`` shows which units moved.
Pure Python: the caller passes the rows of a :class:`~nemaudit.explain.netdissect.Dissection`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemaudit.files import atomic_write_text, display_path

SCHEMA = "nemaudit.baseline/1"
BASELINE_DIR = "__nemaudit_baselines__"
DEFAULT_TOLERANCE = 0.01


def slug(text: str) -> str:
    """A file-name-safe form of a property or layer name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")
    return s or "baseline"


def baseline_path(anchor: Path, name: str, layer: str) -> Path:
    """Where the baseline ``name`` of ``layer`` declared in file ``anchor`` lives."""
    anchor = Path(anchor)
    return anchor.parent / BASELINE_DIR / slug(anchor.stem) / f"{slug(name)}__{slug(layer)}.json"


def snapshot_units(rows: list[dict]) -> list[dict]:
    """The part of each dissection row a baseline keeps (label, category, IoU)."""
    return [{"unit": int(r["unit"]), "label": r.get("label"), "category": r.get("category"),
             "iou": round(float(r.get("iou") or 0.0), 6),
             "runners_up": [[c["concept"], round(float(c["iou"]), 6)]
                            for c in (r.get("top") or [])[1:3]]} for r in rows]


def render(doc: dict) -> str:
    """JSON with the header indented and one unit per line (reviewable diffs)."""
    head = {k: v for k, v in doc.items() if k != "units"}
    text = json.dumps(head, indent=1, sort_keys=True)
    units = ",\n".join("  " + json.dumps(u, sort_keys=True) for u in doc.get("units", []))
    return text[:-2] + ',\n "units": [\n' + units + "\n ]\n}\n"


@dataclass
class BaselineCheck:
    """The outcome of comparing a layer's clean explanations with its committed baseline."""

    name: str
    layer: str
    path: Path
    status: str  # "unchanged" | "changed" | "missing" | "written" | "invalid"
    tolerance: float = DEFAULT_TOLERANCE
    changes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    units: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("unchanged", "written")

    def diff_lines(self, limit: int = 15) -> list[str]:
        """``unit 12: car (0.081) → wheel (0.052)``, label changes first."""
        rows = sorted(self.changes, key=lambda c: (not c["label_changed"], -abs(c["delta"])))
        out = []
        for c in rows[:limit]:
            what = "" if c["label_changed"] else f"  (IoU {c['delta']:+.3f})"
            out.append(f"unit {c['unit']:>4}: {c['old_label'] or '—'} ({c['old_iou']:.3f}) → "
                       f"{c['new_label'] or '—'} ({c['new_iou']:.3f}){what}")
        if len(rows) > limit:
            out.append(f"… {len(rows) - limit} more changed unit(s)")
        return out

    def message(self, limit: int = 15) -> str:
        rel = display_path(self.path)
        if self.status == "written":
            return f"baseline {self.name!r} [{self.layer}] written to {rel}"
        if self.status == "unchanged":
            return f"baseline {self.name!r} [{self.layer}] unchanged ({self.units} units)"
        if self.status == "missing":
            return (f"no committed baseline {self.name!r} for layer {self.layer} at {rel}; "
                    "run pytest --nemaudit --nemaudit-update to record it, then commit it")
        if self.status == "invalid":
            return (f"baseline {rel} is unreadable ({'; '.join(self.notes)}); rerun with "
                    "--nemaudit-update to rewrite it")
        labels = sum(c["label_changed"] for c in self.changes)
        ious = len(self.changes) - labels
        lines = [f"explanations of {self.layer} changed since baseline {self.name!r} ({rel}): "
                 f"{labels}/{self.units} unit label(s) changed, {ious} IoU change(s) beyond "
                 f"±{self.tolerance:g}", *self.notes, *self.diff_lines(limit),
                 "if the change is intended, rerun with --nemaudit-update and commit the file"]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "path": str(self.path),
                "status": self.status, "tolerance": self.tolerance, "units": self.units,
                "changes": self.changes[:200], "notes": self.notes}


def diff_units(old: list[dict], new: list[dict], tolerance: float) -> list[dict]:
    """Units whose label changed (beyond a near tie), or whose IoU moved by more than
    ``tolerance``."""
    before = {int(u["unit"]): u for u in old}
    out = []
    for u in new:
        b = before.get(int(u["unit"]))
        if b is None:
            continue
        delta = float(u["iou"]) - float(b["iou"])
        # a swap between two concepts whose IoUs are within the tolerance is a near tie
        # (a pixel's worth of floating-point difference can flip it), not a new explanation
        tied = {name for name, iou in u.get("runners_up", [])
                if float(u["iou"]) - float(iou) <= tolerance}
        label_changed = u["label"] != b["label"] and b["label"] not in tied
        if label_changed or abs(delta) > tolerance + 1e-12:
            out.append({"unit": int(u["unit"]), "old_label": b["label"],
                        "old_category": b.get("category"), "old_iou": float(b["iou"]),
                        "new_label": u["label"], "new_category": u.get("category"),
                        "new_iou": float(u["iou"]), "delta": delta,
                        "label_changed": label_changed})
    return out


def check_baseline(path: Path, doc: dict, *, update: bool,
                   tolerance: float = DEFAULT_TOLERANCE) -> BaselineCheck:
    """Compare ``doc`` (a fresh snapshot) with the file at ``path``; with ``update`` write it.

    ``doc`` carries ``name``, ``layer``, ``units`` and provenance (model, probe, settings).
    With ``update`` the file is rewritten only when its content would change.
    """
    path = Path(path)
    doc = {"schema": SCHEMA, **doc}
    check = BaselineCheck(doc["name"], doc["layer"], path, "unchanged", tolerance,
                          units=len(doc["units"]))
    text = render(doc)
    if update:
        old_text = path.read_text(encoding="utf-8") if path.is_file() else None
        if old_text != text:
            atomic_write_text(path, text)
            check.status = "written"
        return check
    if not path.is_file():
        check.status = "missing"
        return check
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        old_units = old["units"]
        if not isinstance(old_units, list):
            raise TypeError("'units' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        check.status, check.notes = "invalid", [f"{type(e).__name__}: {e}"]
        return check
    check.notes = _provenance_notes(old, doc)
    if len(old_units) != len(doc["units"]):
        check.notes.insert(0, f"the layer had {len(old_units)} units, now {len(doc['units'])}")
    check.changes = diff_units(old_units, doc["units"], tolerance)
    if check.changes or len(old_units) != len(doc["units"]):
        check.status = "changed"
    return check


def _provenance_notes(old: dict, new: dict) -> list[str]:
    """Differences in how the two snapshots were made (they explain a change, not cause it)."""
    notes = []
    for key in ("model", "probe", "method", "settings"):
        if key in old and old.get(key) != new.get(key):
            notes.append(f"note: recorded with {key} {old.get(key)!r}, now {new.get(key)!r}")
    return notes


def baseline_document(name: str, layer: str, rows: list[dict], **provenance: Any) -> dict:
    """The JSON document for a layer's clean dissection rows."""
    return {"name": name, "layer": layer, **provenance, "units": snapshot_units(rows)}
