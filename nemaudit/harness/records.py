"""Records of audit items, and the reports written from them.

A record is a plain JSON-able dict per test item (its verdict, expectation, measured value,
and each method's payload under that method's ``record_key``), attached to the test report
(``report.nemaudit_record``) so pytest-xdist ships it to the controller, which alone writes
the JSON/HTML reports and the terminal summary. Which methods a record carries is read from
the registry (:mod:`nemaudit.audit.methods`); nothing here names a method.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import nemaudit
from nemaudit.audit.methods import DEFAULT_METHOD, all_methods, get_method, record_payloads
from nemaudit.baseline import BaselineCheck
from nemaudit.errors import NemauditError
from nemaudit.files import display_path
from nemaudit.harness.messages import corruption_spec
from nemaudit.harness.properties import PropertyItem

#: exemplar pictures per record: units shown × images per unit (keeps reports to ~MBs)
PAYLOAD_UNITS, PAYLOAD_IMAGES = 8, 3


def is_audit_item(item: pytest.Item) -> bool:
    return (isinstance(item, PropertyItem) or "nemaudit" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("nemaudit") is not None)


@dataclass
class ItemRun:
    """What one test item did: its audits, baseline checks and checked expectations."""

    item: pytest.Item
    #: every method's results (MethodResult), in call order, with their provenance
    audits: list[tuple[Any, dict]] = field(default_factory=list)
    checks: list[tuple[BaselineCheck, dict]] = field(default_factory=list)
    expectations: list[dict] = field(default_factory=list)
    #: the expectation the record reports; default: the last failing one (for hypothesis,
    #: the replay of the shrunk example), else the last one
    chosen: dict | None = None
    #: the audit each expectation was measured on (by position; None: unknown)
    sources: list[Any] = field(default_factory=list)

    def note_expectation(self, text: str, measured: float | None, bound: float | None,
                         ok: bool, result: Any = None) -> dict:
        entry = {"expectation": text, "measured": measured, "bound": bound, "ok": ok}
        self.expectations.append(entry)
        self.sources.append(result)
        return entry

    def source_of(self, entry: dict) -> Any:
        """The audit an expectation was measured on, when it was noted with one."""
        for e, r in zip(self.expectations, self.sources):
            if e is entry:
                return r
        return None


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def build_sweep(results: list[Any]) -> dict:
    """Several audits in one test (a loop, a hypothesis search) as the reports' sweep:
    ``{"x": <what varies>, "points": [{"x", "flip_rate", "flip_rate_detectors", "layer",
    "series", "corruption"}]}``. The axis (layer, L∞ budget, Gaussian σ, fraction, seed — or
    bars by corruption when none varies) is chosen where the reports choose it,
    :func:`nemaudit.report.plots.refine_sweep`."""
    from nemaudit.report.plots import refine_sweep  # matplotlib only when drawing

    points = [{"x": None, "flip_rate": r.metrics.get("flip_rate"),
               "flip_rate_detectors": r.metrics.get("flip_rate_detectors"),
               "changed": r.metrics.get("changed"), "units": r.metrics.get("units"),
               "layer": r.layer, "series": r.corruption.get("kind"),
               "layer_depth": (r.meta.get("specs") or {}).get("layer_depth"),
               "corruption": corruption_spec(r)} for r in results]
    return refine_sweep({"x": None, "points": points})


def payload(result: Any, pictures: bool) -> dict:
    """A result's record payload: with pictures (the method's own) when reports are written."""
    if pictures:
        try:
            return get_method(result.method).payload(result, max_units=PAYLOAD_UNITS,
                                                     k=PAYLOAD_IMAGES)
        except Exception as e:  # pictures must never change a verdict
            doc = result.to_json()
            doc["exemplar_error"] = f"{type(e).__name__}: {e}"
            return doc
    return result.to_json()


def make_record(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport,
                run: ItemRun | None, pictures: bool) -> dict | None:
    """The record of an audit item for the reports (one per item: its call phase, or the
    setup phase when that errored or skipped); ``run`` is what the item did, if known."""
    if call.when == "teardown" or (call.when == "setup" and report.passed):
        return None
    if report.passed:
        outcome = "passed"
    elif report.skipped:
        outcome = "skipped"
    else:
        outcome = "failed" if call.when == "call" else "error"
    rec: dict[str, Any] = {
        "nodeid": item.nodeid, "name": item.name, "outcome": outcome,
        "expectation": None, "measured": None, "bound": None, "message": None,
        "duration": round(float(report.duration), 4), "layer": None, "model": None,
        "probe": None, "corruption": None,
        # the default method's slot is always present (report schema /2)
        get_method(DEFAULT_METHOD).record_key: None,
        "kind": "property" if isinstance(item, PropertyItem) else "python",
        "file": str(item.path),
    }
    if isinstance(item, PropertyItem) and item.prop is not None:
        p = item.prop
        from nemaudit.report.json_report import parse_spec  # stdlib only: no torch

        rec.update(expectation=p.expectation_text, layer=item.layer,
                   model=p.model, probe=p.probe,
                   corruption=parse_spec(p.corruption) if p.corruption
                   else None)
        if p.description:
            rec["description"] = p.description
    if report.skipped:
        lr = report.longrepr
        rec["message"] = str(lr[2]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    elif report.failed:
        text = report.longreprtext
        if call.excinfo is not None and isinstance(call.excinfo.value,
                                                   (AssertionError, NemauditError)):
            text = str(call.excinfo.value) or text
        if text.startswith("Failed: "):
            text = text[len("Failed: "):]
        rec["message"] = text[:4000]
    if run is not None:
        _fill_from_run(rec, run, pictures)
        if outcome == "passed" and any(x.get("status") == "warned" for x in run.expectations):
            rec["outcome"] = "warned"  # held at the point estimate, not at a confidence bound
    return jsonable(rec)


def _fill_from_run(rec: dict, run: ItemRun, pictures: bool) -> None:
    source = None
    if run.expectations:
        failing = [x for x in run.expectations if not x["ok"]]
        warned = [x for x in run.expectations if x.get("status") == "warned"]
        chosen = run.chosen or (failing or warned or run.expectations)[-1]
        rec.update(expectation=chosen["expectation"], measured=chosen["measured"],
                   bound=chosen["bound"])
        if chosen.get("interval"):
            rec["interval"] = chosen["interval"]
        source = run.source_of(chosen)
        if len(run.expectations) > 1:
            rec["expectations"] = run.expectations[-50:]
    # each method's slot shows its last audit, or the one the reported expectation measured;
    # the record's layer/corruption are those of the measured audit (else the first method's)
    shown = []
    for method in all_methods():
        audits = [a for a in run.audits if a[0].method == method.name]
        if audits:
            pick = next((a for a in audits if a[0] is source), audits[-1])
            shown.append(pick)
            rec[method.record_key] = payload(pick[0], pictures)
    main = next((a for a in shown if a[0] is source), shown[0] if shown else None)
    if main is not None:
        result, specs = main
        rec.update(layer=result.layer, model=specs.get("model"), probe=specs.get("probe"),
                   corruption=dict(result.corruption))
        if specs.get("layer_depth") is not None:  # orders layers by depth in the reports
            rec["layer_depth"] = specs["layer_depth"]
    default = [r for r, _ in run.audits if r.method == DEFAULT_METHOD]
    if len(default) > 1:
        rec["sweep"] = build_sweep(default[-200:])
    if run.checks:
        check, specs = run.checks[-1]
        if check.layer != rec.get("layer"):
            rec.pop("layer_depth", None)  # it was the audit's layer
        rec.update(layer=check.layer, model=specs.get("model"), probe=specs.get("probe"))
        rec["baseline"] = check.to_json()
        if rec["expectation"] is None:
            rec["expectation"] = "unchanged_since_baseline"
        if check.status in ("changed", "unchanged"):  # measured: units that moved
            rec["measured"], rec["bound"] = float(len(check.changes)), 0.0
        if check.status in ("written", "unchanged") and rec["message"] is None:
            rec["message"] = check.message()


def html_extras(record: dict) -> list:
    """pytest-html extras for a record that carries method payloads (else none)."""
    if not record_payloads(record):
        return []
    try:
        from nemaudit.report.html import pytest_html_extras

        return pytest_html_extras(record)
    except ImportError:
        return []


class Records:
    """The records of one pytest process and the reports the controller writes from them."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.written: list[tuple[str, Path]] = []
        self.errors: list[str] = []
        self.order: dict[str, int] = {}
        self.started = time.time()
        #: lines of the comparison with a saved run, and the regressions it found
        self.compared: list[str] = []
        self.regressions: list[str] = []
        self.unused: list[Path] = []

    def collect(self, report: pytest.TestReport) -> None:
        rec = getattr(report, "nemaudit_record", None)
        if isinstance(rec, dict):
            self.records[rec["nodeid"]] = rec

    def set_order(self, nodeids: list[str]) -> None:
        """Collection order, so reports list items the same way with or without xdist."""
        if not self.order:
            self.order = {n: i for i, n in enumerate(nodeids)}

    def ordered(self) -> list[dict]:
        last = len(self.order)
        return sorted(self.records.values(), key=lambda r: self.order.get(r["nodeid"], last))

    def session_info(self, config: pytest.Config, options: Any, device: str,
                     exitstatus: int) -> dict:
        counts: dict[str, int] = {}
        for r in self.records.values():
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        torch = sys.modules.get("torch")
        return jsonable({
            "schema": "nemaudit.session/1", "nemaudit_version": nemaudit.__version__,
            "title": "pytest --nemaudit",
            "command": " ".join(["pytest", *map(str, config.invocation_params.args)]),
            "started": self.started, "finished": time.time(),
            "duration": round(time.time() - self.started, 3), "exitstatus": int(exitstatus),
            "argv": list(config.invocation_params.args),
            "rootdir": str(config.rootpath), "options": options.to_json(),
            "python": platform.python_version(), "platform": platform.platform(),
            "host": platform.node(), "pytest": pytest.__version__,
            "torch": getattr(torch, "__version__", None), "device": device,
            "workers": getattr(config.option, "numprocesses", None),
            "counts": counts,
        })

    def write_reports(self, info: dict, paths: dict[str, Path | None],
                      keep_in: Path | None = None) -> None:
        """Write the JSON/HTML reports (``paths[kind]``) from every record; a report whose
        path fails at the end is kept in ``keep_in`` (the cache folder) instead, and said."""
        records = self.ordered()
        for kind, path in paths.items():
            if path is None:
                continue
            try:
                _writer(kind)(path, records, info)
                self.written.append((kind, path))
            except Exception as e:  # a broken writer must not hide the test results
                msg = f"writing the {kind.upper()} report {path} failed: {type(e).__name__}: {e}"
                if isinstance(e, OSError):
                    msg += self._keep(kind, path, records, info, keep_in)
                self.errors.append(msg)

    @staticmethod
    def _keep(kind: str, path: Path, records: list[dict], info: dict,
              keep_in: Path | None) -> str:
        import tempfile

        from nemaudit.files import save_elsewhere

        tmp = Path(tempfile.mkdtemp(prefix="nemaudit-report-"))
        try:
            _writer(kind)(tmp / Path(path).name, records, info)
            kept = save_elsewhere((tmp / Path(path).name).read_bytes(), Path(path).name,
                                  [keep_in])
            return f"; the report is saved in {kept}"
        except Exception as e:  # noqa: BLE001 - nothing left to try
            return f"; keeping it elsewhere failed too ({e})"

    def unused_baselines(self, rootdir: Path) -> list[Path]:
        """Committed baseline files next to the collected test files that no item of this
        run checked (as syrupy reports unused snapshots); call it only for a full run."""
        from nemaudit.baseline import BASELINE_DIR, slug

        used = {Path(r["baseline"]["path"]).resolve() for r in self.records.values()
                if isinstance(r.get("baseline"), dict) and r["baseline"].get("path")}
        anchors = {Path(rootdir) / n.split("::", 1)[0] for n in self.order}
        out = []
        for anchor in sorted(anchors):
            folder = anchor.parent / BASELINE_DIR / slug(anchor.stem)
            if folder.is_dir():
                out += [p for p in sorted(folder.glob("*.json")) if p.resolve() not in used]
        return out

    def compare_and_save(self, info: dict, options: Any, rootdir: Path) -> None:
        """``--nemaudit-compare`` (against the saved run, read before this one is saved),
        its gates, then ``--nemaudit-autosave``."""
        from nemaudit.report.compare import (
            RUNS_DIR,
            Gate,
            autosave_name,
            compare_records,
            load_runs,
            regressions,
        )

        records = self.ordered()
        if options.compare is not None:
            try:
                diffs, gone, new = compare_records(load_runs(options.compare), records)
            except NemauditError as e:
                self.errors.append(str(e))
            else:
                changed = [d for d in diffs if d.changed]
                self.compared.append(
                    f"compared with {display_path(options.compare)}: {len(changed)} of {len(diffs)} "
                    f"properties changed ({len(gone)} gone, {len(new)} new)")
                for d in changed[:20]:
                    units = f", {len(d.units)} unit(s) changed" if d.units else ""
                    self.compared.append(f"  {d.name}: {d.outcome[0]} → {d.outcome[1]}, "
                                         f"measured {d.measured[0]} → {d.measured[1]}{units}")
                self.regressions = regressions(diffs, [Gate.parse(g)
                                                       for g in options.compare_fail])
        if options.autosave:
            from nemaudit.report.json_report import environment

            env = environment(rootdir)
            path = Path(rootdir) / RUNS_DIR / autosave_name(env)
            self.write_reports({**info, "environment": env}, {"json": path})

    def terminal_summary(self, tr: Any) -> None:
        records = self.ordered()
        if not records and not self.written and not self.errors and not self.compared:
            return
        tr.write_sep("=", "nemaudit")
        text = _summary_text(records, tr)
        if text:
            tr.write(text if text.endswith("\n") else text + "\n")
        for r in records:
            b = r.get("baseline")
            if b and b.get("status") == "written":
                tr.write_line(f"nemaudit: wrote baseline {display_path(b['path'])}")
        for kind, path in self.written:
            tr.write_line(f"nemaudit: wrote {kind.upper()} report {display_path(path)}")
        for err in self.errors:
            tr.write_line(f"nemaudit: {err}", red=True)
        for line in self.compared:
            tr.write_line(f"nemaudit: {line}")
        if self.unused:
            shown = ", ".join(display_path(p) for p in self.unused[:5])
            more = f" and {len(self.unused) - 5} more" if len(self.unused) > 5 else ""
            tr.write_line(f"nemaudit: {len(self.unused)} committed baseline(s) no test used: "
                          f"{shown}{more} (renamed or removed tests leave them behind)",
                          yellow=True)
        for line in self.regressions:
            tr.write_line(f"nemaudit: regression: {line}", red=True)


def _writer(kind: str) -> Any:
    if kind == "json":
        from nemaudit.report.json_report import write_json

        return write_json
    from nemaudit.report.html import write_html

    return write_html


def _summary_text(records: list[dict], tr: Any) -> str:
    """The report module's rich summary table, rendered for pytest's terminal."""
    from rich.console import Console

    from nemaudit.report.terminal import session_summary

    try:
        table = session_summary(records)
    except Exception as e:  # the summary is a courtesy: never fail the session over it
        return f"nemaudit: summary failed: {type(e).__name__}: {e}\n"
    buf = io.StringIO()
    markup = bool(getattr(tr, "hasmarkup", False))
    width = getattr(getattr(tr, "_tw", None), "fullwidth", 100)
    Console(file=buf, width=width, force_terminal=markup,
            color_system="standard" if markup else None).print(table)
    return buf.getvalue()
