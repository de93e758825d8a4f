"""Properties as data: ``nemaudit_*.toml`` spec files and the test items they become.

A spec file is a list of properties that ``pytest --nemaudit`` turns into test items, one per
(property, layer)::

    [defaults]
    model = "nemaudit:conceptnet"
    probe = "synthetic:n=300,seed=0"

    [[property]]
    name = "layer4 gaussian noise"
    layers = ["layer4"]
    corruption = "gaussian:std=0.02"
    expect = "flip_rate <= 0.05"

Expectations follow :mod:`nemaudit.expectations`; the fields a property takes are the audit
request's (:mod:`nemaudit.audit.fields`, each registered method's own) plus the property's
own (name, layers, expect, …). Everything here is checked without importing torch, so a
malformed file is an error even when audits are off; what needs torch (model files, layer
names, corruption names) is checked in the item's setup, by the Auditor.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nemaudit.audit.fields import COMMON, Field, FloatRange, check_layers, check_str
from nemaudit.audit.methods import DEFAULT_METHOD, METHODS, all_methods, get_method
from nemaudit.audit.request import AuditRequest
from nemaudit.errors import NemauditError, SpecError
from nemaudit.expectations import (
    BASELINE,
    Expectation,
    ExpectationError,
    in_method,
    parse_expectation,
)
from nemaudit.files import display_path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - py3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


class PropertyError(SpecError):
    """A property (or a whole spec file) is malformed: names the file, property and field."""

    def __init__(self, message: str, *, file: Path | str | None = None,
                 prop: str | None = None, field: str | None = None) -> None:
        self.file, self.prop, self.field, self.detail = file, prop, field, message
        where = [display_path(file)] if file else []
        if prop:
            where.append(f"property {prop!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(": ".join([*where, message]))


class PropertyFailed(AssertionError):
    """A property's expectation does not hold; the message carries the per-unit diff."""


def _check_expect(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise TypeError(f"a string like \"flip_rate <= 0.05\" or \"{BASELINE}\", "
                        "or a list of such strings")
    return list(v)


def _check_method(v: Any) -> str:
    if v not in METHODS:
        raise TypeError(" or ".join(f'"{m}"' for m in METHODS))
    return v


#: the property's own fields (the request's come from COMMON and the methods)
_OWN: dict[str, Field] = {
    "name": Field(check_str, "the property's name (its test id)"),
    "description": Field(check_str, "free text"),
    "method": Field(_check_method, f"{DEFAULT_METHOD} (default) or another registered method: "
                                   "what bare metric names in expect mean"),
    "layers": Field(check_layers, "list of layer names"),
    "layer": Field(check_layers, "one layer name (or use layers = [...])"),
    "expect": Field(_check_expect, "expectation(s)"),
    "tolerance": Field(FloatRange(0.0, None), "absolute IoU change allowed by the baseline"),
}


def fields() -> dict[str, Field]:
    """Every field a property may set: its own, the request's, each method's."""
    common = {k: v for k, v in COMMON.items() if k != "layer"}
    head = ("name", "description", "model", "weights", "normalize", "probe", "method",
            "layers", "layer", "corruption", "expect", "units")
    out = {k: {**_OWN, **common}[k] for k in head}
    default = get_method(DEFAULT_METHOD)
    out.update(default.fields)
    out["tolerance"] = _OWN["tolerance"]
    out.update({k: v for k, v in common.items() if k not in out})
    for m in all_methods():
        out.update(m.fields)
    return out


def _methods_of_field(name: str) -> list[str]:
    """The methods that own a field (empty: shared by all)."""
    return [m.name for m in all_methods() if name in m.fields]


_ALLOWED_TOP = ("defaults", "property")


@dataclass
class Property:
    """One validated property; it yields one test item per layer."""

    name: str
    index: int
    file: Path
    layers: list[str]
    expect: list[Expectation]
    #: the audit request's values (shared and every method's), merged over [defaults]
    settings: dict[str, Any]
    method: str = DEFAULT_METHOD
    tolerance: float = 0.01
    description: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:
        """A request setting by name (``p.eta``, ``p.exemplars``; None when unset)."""
        if name != "settings" and name in fields():
            return self.__dict__.get("settings", {}).get(name)
        raise AttributeError(f"Property has no attribute {name!r}")

    @property
    def model(self) -> Any:
        return self.settings.get("model")

    @property
    def probe(self) -> Any:
        return self.settings.get("probe")

    @property
    def corruption(self) -> Any:
        return self.settings.get("corruption")

    @property
    def is_baseline(self) -> bool:
        return any(e.is_baseline for e in self.expect)

    @property
    def methods(self) -> list[str]:
        """The methods whose audits the expectations need, in registry order."""
        used = {e.method for e in self.expect if not e.is_baseline}
        return [m for m in METHODS if m in used]

    @property
    def expectation_text(self) -> str:
        return " and ".join(e.text for e in self.expect)

    def request(self, method: str, layer: str) -> AuditRequest:
        """The audit request of ``method`` on ``layer`` (only the settings it takes)."""
        own = get_method(method).fields
        values = {k: v for k, v in self.settings.items() if k in COMMON or k in own}
        if self.is_baseline:
            values.pop("corruption", None)
        return AuditRequest.build(method, layer=layer, **values)


#: fields a property may clear with ``= ""`` when [defaults] set them (a ``weights`` in the
#: defaults must not leak into a property that audits another model)
UNSETTABLE = ("weights", "normalize", "describer", "units", "max_units", "eta",
              "iou_threshold", "exemplars", "f1_threshold")
_UNSET = object()


def _relative_to(file: Path, key: str, value: Any) -> Any:
    """Relative paths in a spec file (weights, and the paths inside model, probe and
    describer specs) are relative to the spec file's folder, not to where pytest runs."""
    if not isinstance(value, str):
        return value
    base = Path(file).resolve().parent

    def rebase(path: str) -> str:  # kept relative to the working folder when under it
        p = Path(path).expanduser()
        if p.is_absolute():
            return path
        full = base / p
        try:
            return str(full.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(full)

    text = value.strip()
    if key == "weights":
        return text if text.lower() == "random" else rebase(text)
    if key in ("model", "probe", "describer") and ".py:" in text:  # [python:]path.py:callable
        head, _, _ = text.partition(".py:")
        prefix = "python:" if head.startswith("python:") else ""
        path = head[len(prefix):] + ".py"
        if "/" in path or "\\" in path or Path(path).suffix == ".py":
            return prefix + rebase(path) + text[len(head) + 3:]
    if key == "probe":
        kind, sep, rest = text.partition(":")
        if sep and kind.strip().lower() in ("broden", "folder") and rest:
            path, comma, opts = rest.partition(",")
            return f"{kind}:{rebase(path.strip())}{comma}{opts}"
    if key == "describer" and text.lower().startswith("milan:"):
        return "milan:" + rebase(text[len("milan:"):].strip())
    return value


def _validate_table(table: Any, allowed: list[str], file: Path, prop: str | None,
                    what: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise PropertyError(f"{what} must be a table, got {type(table).__name__}",
                            file=file, prop=prop)
    known = fields()
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PropertyError(f"unknown field{hint}; allowed fields in {what}: "
                                f"{', '.join(allowed)}", file=file, prop=prop, field=key)
        if value == "" and key in UNSETTABLE:
            out[key] = _UNSET  # clears what [defaults] set
            continue
        try:
            out[key] = known[key].check(value)
        except TypeError as e:
            raise PropertyError(f"expected {e}, got {value!r}", file=file, prop=prop,
                                field=key) from None
    if "layer" in out and "layers" in out:
        raise PropertyError("give either layer or layers, not both", file=file, prop=prop,
                            field="layer")
    if "layer" in out:
        out["layers"] = out.pop("layer")
    return out


def build_property(table: Any, defaults: Mapping[str, Any], index: int, file: Path) -> Property:
    """Validate one ``[[property]]`` table (merged over the validated defaults)."""
    label = table.get("name") if isinstance(table, Mapping) and isinstance(table.get("name"), str) \
        and table.get("name").strip() else f"#{index + 1}"
    own = _validate_table(table, list(fields()), file, label, "[[property]]")
    merged = {**defaults, **own}
    name = own.get("name") or f"property {index + 1}"
    for req in ("model", "probe", "layers", "expect"):
        if req not in merged:
            raise PropertyError("is required (set it in the property or in [defaults])",
                                file=file, prop=label, field=req)
    method = merged.get("method", DEFAULT_METHOD)
    expects = []
    for text in merged["expect"]:
        try:
            expects.append(parse_expectation(in_method(text, method)))
        except ExpectationError as err:
            raise PropertyError(str(err), file=file, prop=label, field="expect") from None
    baseline = any(e.is_baseline for e in expects)
    if baseline and method != DEFAULT_METHOD:
        raise PropertyError(f"{BASELINE!r} compares {get_method(DEFAULT_METHOD).title} labels; "
                            f"it cannot take method = \"{method}\"", file=file, prop=label,
                            field="method")
    used = {e.method for e in expects if not e.is_baseline}
    for f in own:  # a method's own field where no expectation uses that method
        owners = _methods_of_field(f)
        if owners and DEFAULT_METHOD not in owners and not used.intersection(owners):
            m = get_method(owners[0])
            raise PropertyError(f"only applies to {m.title} expectations ({m.prefix}<metric>, "
                                f'or method = "{m.name}")', file=file, prop=label, field=f)
    if baseline and len(expects) > 1:
        raise PropertyError(f"{BASELINE!r} must be the property's only expectation; put "
                            "metric expectations in another property", file=file, prop=label,
                            field="expect")
    if baseline and "corruption" in own:
        raise PropertyError(f"a {BASELINE!r} property compares clean explanations; it takes "
                            "no corruption", file=file, prop=label, field="corruption")
    needs = any(get_method(e.method).needs_corruption for e in expects if not e.is_baseline)
    if not baseline and needs and "corruption" not in merged:
        raise PropertyError("is required for a robustness property (e.g. "
                            "corruption = \"gaussian:std=0.02\"); only "
                            f"expect = \"{BASELINE}\" runs without one", file=file,
                            prop=label, field="corruption")
    if "tolerance" in own and not baseline:
        raise PropertyError(f"only applies to expect = \"{BASELINE}\"", file=file, prop=label,
                            field="tolerance")
    if len(set(merged["layers"])) != len(merged["layers"]):
        raise PropertyError(f"lists a layer twice: {merged['layers']}", file=file, prop=label,
                            field="layers")
    settings = {k: _relative_to(file, k, v) for k, v in merged.items()
                if k not in _OWN and v is not _UNSET}
    if baseline:
        settings.pop("corruption", None)
    return Property(name=name, index=index, file=file, layers=merged["layers"], expect=expects,
                    settings=settings, method=method, tolerance=merged.get("tolerance", 0.01),
                    description=own.get("description"), raw=dict(table))


@dataclass
class SpecDocument:
    """A parsed spec: properties in order, each either valid or the error that names why not."""

    file: Path
    properties: list[Property | PropertyError]


def parse_document(doc: Any, file: Path, prefix: str = "") -> SpecDocument:
    """Validate a loaded TOML document (``prefix`` is ``tool.nemaudit.`` for pyproject)."""
    if not isinstance(doc, Mapping):
        raise PropertyError("expected a table at the top level", file=file)
    unknown = [k for k in doc if k not in _ALLOWED_TOP]
    if unknown:
        raise PropertyError(f"unknown top-level table or key {prefix + unknown[0]!r}; allowed: "
                            f"[{prefix}defaults] and [[{prefix}property]]", file=file)
    defaultable = [f for f in fields() if f not in ("name", "description")]
    defaults = _validate_table(doc.get("defaults", {}), defaultable, file, None,
                               f"[{prefix}defaults]")
    props = doc.get("property", [])
    if not isinstance(props, list) or not all(isinstance(p, Mapping) for p in props):
        raise PropertyError(f"properties must be an array of tables: write [[{prefix}property]]",
                            file=file)
    if not props:
        raise PropertyError(f"no properties; add at least one [[{prefix}property]] table",
                            file=file)
    out: list[Property | PropertyError] = []
    seen: set[str] = set()
    for i, table in enumerate(props):
        try:
            p = build_property(table, defaults, i, file)
            if p.name in seen:
                raise PropertyError("another property already has this name; names must be "
                                    "unique (they are the test ids)", file=file, prop=p.name,
                                    field="name")
            seen.add(p.name)
            out.append(p)
        except PropertyError as e:
            out.append(e)
    return SpecDocument(file, out)


def read_toml(path: Path) -> dict:
    """Load TOML, turning syntax errors into a PropertyError naming the file."""
    if tomllib is None:  # pragma: no cover - py3.10 without tomli
        raise PropertyError("reading spec files needs Python 3.11+ or `pip install tomli`",
                            file=path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PropertyError(f"invalid TOML: {e}", file=path) from None
    except UnicodeDecodeError as e:
        raise PropertyError(f"not UTF-8 text (TOML files are UTF-8): byte {e.start} "
                            f"({e.object[e.start:e.start + 1]!r})", file=path) from None
    except OSError as e:
        raise PropertyError(f"cannot read: {e}", file=path) from None


def load_spec_file(path: Path | str) -> SpecDocument:
    """Parse a ``nemaudit_*.toml`` file; file-level problems raise PropertyError."""
    path = Path(path)
    return parse_document(read_toml(path), path)


def pyproject_table(path: Path) -> dict | None:
    """The ``[tool.nemaudit]`` table of a pyproject.toml, or None when there is none."""
    try:
        doc = read_toml(path)
    except PropertyError:
        return None  # pytest itself reports a broken pyproject.toml
    table = doc.get("tool", {}).get("nemaudit")
    return table if isinstance(table, dict) else None


# --------------------------------------------------------------------------- collection

def is_spec_file(path: Path) -> bool:
    return path.suffix == ".toml" and path.name.startswith("nemaudit_")


class SpecFile(pytest.File):
    """A ``nemaudit_*.toml`` file (or the rootdir pyproject's ``[tool.nemaudit]``)."""

    table: dict | None = None  # set for pyproject.toml

    def _document(self) -> SpecDocument:
        if self.table is not None:
            return parse_document(self.table, self.path, prefix="tool.nemaudit.")
        return load_spec_file(self.path)

    def collect(self) -> Iterator[pytest.Item]:
        try:
            doc = self._document()
        except PropertyError as e:
            # one error item instead of a collection error: the rest of the session still runs
            yield PropertyItem.from_parent(self, name="[spec]", prop=None, layer=None, error=e,
                                           line=0)
            return
        lines = _property_lines(self.path, self.table is not None)
        for i, p in enumerate(doc.properties):
            line = lines[i] if i < len(lines) else 0
            if isinstance(p, PropertyError):
                name = p.prop if p.prop and not p.prop.startswith("#") else f"property {i + 1}"
                yield PropertyItem.from_parent(self, name=f"{name}[invalid]", prop=None,
                                               layer=None, error=p, line=line)
                continue
            for layer in p.layers:
                yield PropertyItem.from_parent(self, name=f"{p.name}[{layer}]", prop=p,
                                               layer=layer, error=None, line=line)


def _property_lines(path: Path, in_pyproject: bool) -> list[int]:
    """0-based line of each ``[[property]]`` header, for test locations."""
    head = r"tool\.nemaudit\.property" if in_pyproject else r"property"
    pattern = re.compile(rf"^\s*\[\[\s*{head}\s*\]\]")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [i for i, line in enumerate(text.splitlines()) if pattern.match(line)]


class PropertyItem(pytest.Item):
    """One (property, layer). Setup loads and validates; the call audits and checks."""

    def __init__(self, *, prop: Property | None, layer: str | None,
                 error: PropertyError | None, line: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prop, self.layer, self.error, self.line = prop, layer, error, line
        self.outcome_detail: dict[str, Any] = {}
        self.add_marker(pytest.mark.nemaudit)

    def setup(self) -> None:
        """Errors here make the item an ERROR with just the message (no traceback)."""
        if self.error is not None:
            pytest.fail(str(self.error), pytrace=False)
        from nemaudit.session import get_state

        message = None
        try:
            prepare_property(get_state(self.config), self)
        except NemauditError as e:
            message = str(e)
        if message is not None:  # raised outside the except block: no chained traceback
            pytest.fail(message, pytrace=False)

    def runtest(self) -> None:
        from nemaudit.session import get_state

        run_property(get_state(self.config), self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:
        if isinstance(excinfo.value, (PropertyFailed, NemauditError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.line, f"nemaudit property {self.name}"


# --------------------------------------------------------------------------- running

def prepare_property(state: Any, item: PropertyItem) -> None:
    """Setup of a spec item: load and validate everything that needs torch, so that a bad
    model, probe, layer or corruption is an ERROR naming the field, before any audit."""
    from nemaudit.auditor import RequestError

    p = item.prop
    assert p is not None and item.layer is not None
    resolved = None
    for method in p.methods or [DEFAULT_METHOD]:
        try:
            resolved = state.auditor.prepare(p.request(method, item.layer))
        except RequestError as e:
            fld = "layers" if e.field == "layer" else e.field
            raise PropertyError(str(e), file=p.file, prop=p.name, field=fld) from None
    for exp in p.expect:
        if exp.is_baseline or resolved is None:
            continue
        m = get_method(exp.method)
        bad = m.check_expectation(exp.metric[len(m.prefix):], exp.keys, resolved.probe)
        if bad:
            raise PropertyError(f"{exp.text!r}: {bad}", file=p.file, prop=p.name,
                                field="expect")


def run_property(state: Any, item: PropertyItem) -> None:
    """Audit the property's layer with every method its expectations need, then check them."""
    from nemaudit.expectations import metrics_of
    from nemaudit.harness.fixture import check_baseline, run_request, settle
    from nemaudit.harness.messages import failure_message, fmt

    p = item.prop
    assert p is not None and item.layer is not None
    if p.is_baseline:
        check = check_baseline(state, p.name, p.request(DEFAULT_METHOD, item.layer),
                               anchor=p.file, tolerance=p.tolerance)
        if not check.ok:
            raise PropertyFailed(check.message())
        return
    results = {m: run_request(state, p.request(m, item.layer)) for m in p.methods}
    metrics: dict[str, Any] = {}
    for r in results.values():
        metrics.update(metrics_of(r))
    failed = []
    for e in p.expect:
        try:
            verdict, status, entry = settle(state, e, results[e.method], metrics)
        except ExpectationError as err:
            raise PropertyError(str(err), file=p.file, prop=p.name, field="expect") from None
        if status == "failed":
            if entry is not None and state.current.chosen is None:
                state.current.chosen = entry  # the first failing one is the verdict
            failed.append((e, verdict))
    if failed:
        msgs = [failure_message(e, v.measured, results[e.method], p.model, p.probe, verdict=v)
                for e, v in failed[:1]]
        msgs += [f"also: {e.subject} {e.op} {e.bound:g} does not hold: measured "
                 f"{fmt(v.measured)}" for e, v in failed[1:]]
        raise PropertyFailed("\n".join(msgs))
