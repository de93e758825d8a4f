"""Comparing two runs: what changed per property and per unit, and regression gates.

Two JSON reports (``--nemaudit-json``, ``--nemaudit-autosave``) are matched property by
property (by node id); for each, the verdict, the measured value (with its interval) and
every method payload's metrics are compared, and so are the units: a unit whose clean
explanation changed (another model, a retrain) or whose robustness changed (it now flips, or
no longer does). A gate (``--nemaudit-compare-fail=flip_rate:+5%``) fails a run in which a
metric grew by more than the allowance against the reference run, as pytest-benchmark's
``--benchmark-compare-fail`` does for timings. Torch-free: it reads only JSON.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemaudit.audit.methods import record_payloads
from nemaudit.errors import SpecError

#: where --nemaudit-autosave keeps runs (below the rootdir), newest last by name
RUNS_DIR = ".nemaudit-runs"


@dataclass(frozen=True)
class Gate:
    """``metric:+0.05`` / ``metric:+5%`` (rates: percentage points) / ``metric:-0.1``: fail
    when the metric moved by more than the allowance in that direction."""

    metric: str
    allowance: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Gate:
        m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*:\s*([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*",
                         str(text))
        if not m:
            raise SpecError(f"compare gate {text!r}: expected METRIC:+N or METRIC:+N% (e.g. "
                            "flip_rate:+5%: fail when the flip rate grew by more than 5 points)")
        amount = float(m.group(3)) / (100 if m.group(4) else 1)
        return cls(m.group(1), amount if m.group(2) == "+" else -amount, text.strip())

    def breaks(self, old: float, new: float) -> bool:
        delta = new - old
        return delta > self.allowance + 1e-12 if self.allowance >= 0 \
            else delta < self.allowance - 1e-12


@dataclass
class RecordDiff:
    """How one property changed between the reference run (a) and this one (b)."""

    nodeid: str
    name: str
    outcome: tuple[Any, Any]
    measured: tuple[Any, Any]
    metrics: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    units: list[dict] = field(default_factory=list)
    intervals: tuple[Any, Any] = (None, None)

    @property
    def changed(self) -> bool:
        return (self.outcome[0] != self.outcome[1] or self.measured[0] != self.measured[1]
                or bool(self.units) or any(a != b for a, b in self.metrics.values()))


def _numbers(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {prefix + k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _metrics(record: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for method, payload in record_payloads(record):
        out.update(_numbers(payload.get("metrics") or {}, method.prefix))
    return out


def _unit_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict]:
    """Units whose clean explanation or robustness differs between two records."""
    out = []
    payload_a = dict((m.name, p) for m, p in record_payloads(a))
    for method, pb in record_payloads(b):
        pa = payload_a.get(method.name)
        if pa is None:
            continue
        rows_a = {r.get("unit"): r for r in pa.get("units") or []}
        for rb in pb.get("units") or []:
            ra = rows_a.get(rb.get("unit"))
            if ra is None:
                continue
            clean_key = "clean_label" if "clean_label" in rb else "clean"
            flag = "changed" if "changed" in rb else "manipulated"
            if ra.get(clean_key) != rb.get(clean_key) or bool(ra.get(flag)) != bool(rb.get(flag)):
                out.append({"method": method.name, "unit": rb.get("unit"),
                            "clean": [ra.get(clean_key), rb.get(clean_key)],
                            "changed": [bool(ra.get(flag)), bool(rb.get(flag))]})
    # units that now change come first: what a reader of a regression looks for
    return sorted(out, key=lambda u: (not (u["changed"][1] and not u["changed"][0]),
                                      str(u["unit"])))


def compare_records(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]
                    ) -> tuple[list[RecordDiff], list[str], list[str]]:
    """(diffs of the properties in both runs, node ids only in a, node ids only in b)."""
    old = {r["nodeid"]: r for r in a}
    new = {r["nodeid"]: r for r in b}
    diffs = []
    for nodeid, rb in new.items():
        ra = old.get(nodeid)
        if ra is None:
            continue
        ma, mb = _metrics(ra), _metrics(rb)
        diffs.append(RecordDiff(
            nodeid, str(rb.get("name") or nodeid), (ra.get("outcome"), rb.get("outcome")),
            (ra.get("measured"), rb.get("measured")),
            {k: (ma.get(k), mb.get(k)) for k in sorted(set(ma) | set(mb))},
            _unit_changes(ra, rb), (ra.get("interval"), rb.get("interval"))))
    return diffs, [n for n in old if n not in new], [n for n in new if n not in old]


def regressions(diffs: Sequence[RecordDiff], gates: Sequence[Gate]) -> list[str]:
    """One line per (property, gate) that this run broke against the reference."""
    out = []
    for d in diffs:
        for g in gates:
            old, new = d.metrics.get(g.metric, (None, None))
            if old is None or new is None:
                continue
            if g.breaks(old, new):
                out.append(f"{d.name}: {g.metric} {old:.4g} → {new:.4g} "
                           f"({new - old:+.4g}, allowed {g.text.split(':', 1)[1].strip()})")
    return out


def run_path(path: str | Path) -> Path:
    """The report file a run argument names: the file, or the newest in a runs folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
        if not files:
            raise SpecError(f"compare: no saved runs in {p}")
        p = files[-1]
    if not p.is_file():
        raise SpecError(f"compare: no report at {p}")
    return p


def load_run(path: str | Path) -> dict:
    """A saved run's whole document (records, environment, session): a report file, or the
    newest in a runs folder; ``"path"`` is added, the file actually read."""
    from nemaudit.report.json_report import load_json

    p = run_path(path)
    try:
        doc = load_json(p)
        records = list(doc["records"])
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise SpecError(f"compare: cannot read {p}: {e}") from None
    if not all(isinstance(r, Mapping) and "nodeid" in r for r in records):
        raise SpecError(f"compare: {p}: every record needs a nodeid")
    return {**doc, "records": records, "path": str(p)}


def load_runs(path: str | Path) -> list[dict]:
    """The records of a saved run: a report file, or the newest in a runs folder."""
    return list(load_run(path)["records"])


def autosave_name(environment: Mapping[str, Any]) -> str:
    """``20261202-074501-<commit8>.json``: sorted by time, tagged with the commit."""
    commit = ((environment.get("git") or {}).get("commit") or "nogit")[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{commit}.json"


def diff_json(diffs: Sequence[RecordDiff]) -> list[dict]:
    return [json.loads(json.dumps(d.__dict__, default=str)) for d in diffs]
