"""Properties as data: the expectation grammar, ``nemaudit_*.toml`` spec files, their items.

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

Expectations use a tiny grammar, never ``eval``: ``<metric>[<key>]... <op> <number>`` with
``<= < >= > ==``, or the word ``unchanged_since_baseline``. Metrics named ``milan.<name>``
(e.g. ``milan.manipulated_rate <= 0.1``) are those of a MILAN audit; a property with such an
expectation describes its units with MILAN clean and corrupted. Everything here is checked
without importing torch, so a malformed file is an error even when audits are off; what
needs torch (corruption specs, model files, layer names) is checked in the item's setup.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from nemaudit.errors import NemauditError, SpecError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - py3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = [
    "BASELINE",
    "METRICS",
    "MILAN_METRICS",
    "OPS",
    "Expectation",
    "ExpectationError",
    "Property",
    "PropertyError",
    "PropertyFailed",
    "PropertyItem",
    "SpecFile",
    "load_spec_file",
    "parse_document",
    "parse_expectation",
]

#: the word that makes a property compare the clean explanations with a committed baseline
BASELINE = "unchanged_since_baseline"

#: every metric of an AuditResult (``nemaudit.audit.result.metrics_from_rows`` plus accuracy)
#: → how it is indexed. Kept here, not imported, so spec files validate without torch;
#: tests/test_spec.py checks it against a real audit.
METRICS: dict[str, str] = {
    "units": "number",
    "flip_rate": "number",
    "detectors": "number",
    "flip_rate_detectors": "number",
    "changed": "number",
    "targeted_success_rate": "number",
    "mean_source_iou_drop": "number",
    "accuracy_clean": "number",
    "accuracy_corrupted": "number",
    "detector_share_clean": "number, or [category]",
    "detector_share_corrupted": "number, or [category]",
    "per_category_flip_rate": "[category]",
    "detector_share": "[clean|corrupted][category|all]",
    "xie_table": "[clean|corrupted][C|T|S|M|P|O|All]",
}
#: every metric of a MILAN audit (``nemaudit.audit.milan.milan_metrics``), written with the
#: ``milan.`` prefix in expectations; tests/test_spec.py checks it against a real audit.
MILAN_METRICS: dict[str, str] = {
    "units": "number",
    "changed": "number",
    "threshold": "number",
    "manipulated_rate": "number",
    "f1_mean": "number",
    "f1_std": "number",
    "f1_min": "number",
    "description_change_rate": "number",
    "exemplar_overlap_mean": "number",
}
MILAN_PREFIX = "milan."
METHODS = ("netdissect", "milan")
#: how many ``[key]`` subscripts each metric takes
_ARITY: dict[str, tuple[int, ...]] = {
    **{m: (0,) for m, how in METRICS.items() if how == "number"},
    "detector_share_clean": (0, 1),
    "detector_share_corrupted": (0, 1),
    "per_category_flip_rate": (1,),
    "detector_share": (2,),
    "xie_table": (2,),
    **{MILAN_PREFIX + m: (0,) for m in MILAN_METRICS},
}
_SIDES = ("clean", "corrupted")

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}
_OPS_TEXT = "<=, <, >=, >, =="
_NAME_RE = re.compile(r"(?:[A-Za-z_]\w*\.)?[A-Za-z_]\w*")
_KEY_RE = re.compile(r"""\[\s*(?:'([^'\]]*)'|"([^"\]]*)"|([\w-]+))\s*\]""")
_OP_RE = re.compile(r"<=|>=|==|<|>|!=|=<|=>|=|≤|≥")
_NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+\.?\d*)?")


class ExpectationError(SpecError):
    """An expectation string does not follow the grammar (the message says what does)."""


@dataclass(frozen=True)
class Expectation:
    """One parsed expectation: ``metric[key]... op bound``, or the baseline check."""

    text: str
    metric: str = ""
    keys: tuple[str, ...] = ()
    op: str = ""
    bound: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.metric == BASELINE

    @property
    def method(self) -> str:
        """The explanation method whose audit measures this: ``milan`` or ``netdissect``."""
        return "milan" if self.metric.startswith(MILAN_PREFIX) else "netdissect"

    @property
    def subject(self) -> str:
        """``metric['key']`` as written canonically (for reports)."""
        return self.metric + "".join(f"[{k!r}]" for k in self.keys)

    def lookup(self, metrics: Mapping[str, Any]) -> Any:
        """The measured value; a SpecError lists the valid keys when one is unknown."""
        if self.metric not in metrics:
            raise ExpectationError(f"{self.text!r}: this audit has no metric {self.metric!r} "
                                   f"(it has: {', '.join(sorted(metrics))})")
        value: Any = metrics[self.metric]
        keys = list(self.keys)
        if self.metric in ("detector_share_clean", "detector_share_corrupted") and keys:
            value = metrics.get("detector_share", {}).get(self.metric.rsplit("_", 1)[1], {})
        where = self.metric
        for k in keys:
            if not isinstance(value, Mapping) or k not in value:
                valid = ", ".join(map(str, value)) if isinstance(value, Mapping) else "none"
                raise ExpectationError(f"{self.text!r}: {where} has no key {k!r}; valid keys: "
                                       f"{valid}")
            value = value[k]
            where += f"[{k!r}]"
        return value

    def evaluate(self, metrics: Mapping[str, Any]) -> tuple[bool, float | None]:
        """(holds?, measured value); an undefined measurement (None) never holds."""
        value = self.lookup(metrics)
        if value is None:
            return False, None
        if isinstance(value, Mapping) or isinstance(value, bool) \
                or not isinstance(value, (int, float)):
            raise ExpectationError(f"{self.text!r}: {self.subject} is not a number "
                                   f"({type(value).__name__}); index it with [key]")
        assert self.bound is not None
        return bool(OPS[self.op](float(value), self.bound)), float(value)


def _number(text: str) -> float | None:
    t = text.strip()
    if not _NUM_RE.fullmatch(t):
        return None
    try:
        v = float(Fraction(t.replace(" ", ""))) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) else None


def parse_expectation(text: Any) -> Expectation:
    """Parse ``"flip_rate <= 0.05"``, ``"detector_share['corrupted']['object'] >= 0.2"``,
    ``"per_category_flip_rate['object'] < 4/255"`` or ``"unchanged_since_baseline"``."""
    if not isinstance(text, str) or not text.strip():
        raise ExpectationError(f"expected a string like 'flip_rate <= 0.05' or "
                               f"'{BASELINE}', got {text!r}")
    s = text.strip()
    if s == BASELINE:
        return Expectation(s, BASELINE)
    m = _NAME_RE.match(s)
    if not m:
        raise ExpectationError(f"{s!r}: expected a metric name first, as in 'flip_rate <= 0.05'")
    metric, pos = m.group(), m.end()
    if metric not in _ARITY:
        import difflib

        milan = [MILAN_PREFIX + k for k in MILAN_METRICS]
        close = difflib.get_close_matches(metric, [*METRICS, *milan, BASELINE], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if metric.startswith(MILAN_PREFIX) or "." not in metric:
            known = (f"MILAN metrics: {', '.join(milan)}" if metric.startswith(MILAN_PREFIX)
                     else f"known metrics: {', '.join(METRICS)}; MILAN metrics: "
                          f"{MILAN_PREFIX}<{'|'.join(MILAN_METRICS)}>; or the word "
                          f"{BASELINE!r}")
            raise ExpectationError(f"{s!r}: unknown metric {metric!r}{hint}; {known}")
        raise ExpectationError(f"{s!r}: unknown metric namespace {metric.split('.')[0]!r}"
                               f"{hint}; metrics are plain names (Network Dissection) or "
                               f"{MILAN_PREFIX}<name> (MILAN)")
    keys: list[str] = []
    while True:
        while pos < len(s) and s[pos].isspace():
            pos += 1
        km = _KEY_RE.match(s, pos)
        if not km:
            break
        keys.append(next(g for g in km.groups() if g is not None))
        pos = km.end()
    if pos < len(s) and s[pos] == "[":
        raise ExpectationError(f"{s!r}: bad subscript at {s[pos:]!r}; write ['key'] or [key]")
    if len(keys) not in _ARITY[metric]:
        shape = METRICS.get(metric) or MILAN_METRICS[metric[len(MILAN_PREFIX):]]
        raise ExpectationError(f"{s!r}: {metric} takes {shape} — "
                               f"{' or '.join(str(a) for a in _ARITY[metric])} subscript(s), "
                               f"got {len(keys)}")
    if metric in ("detector_share", "xie_table") and keys[0] not in _SIDES:
        raise ExpectationError(f"{s!r}: {metric}[{keys[0]!r}]: the first key is the side, one "
                               f"of {', '.join(_SIDES)}")
    rest = s[pos:].lstrip()
    om = _OP_RE.match(rest)
    if not om:
        raise ExpectationError(f"{s!r}: expected a comparison after {metric}"
                               f"{''.join(f'[{k!r}]' for k in keys)}; allowed operators: "
                               f"{_OPS_TEXT}")
    op = om.group()
    if op not in OPS:
        raise ExpectationError(f"{s!r}: unknown operator {op!r}; allowed operators: {_OPS_TEXT}")
    num = rest[om.end():]
    bound = _number(num)
    if bound is None:
        raise ExpectationError(f"{s!r}: expected a number after {op!r}, got {num.strip()!r} "
                               "(decimals, 1e-3 or fractions like 4/255)")
    return Expectation(s, metric, tuple(keys), op, bound)


# --------------------------------------------------------------------------- properties

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


def display_path(path: Path | str) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _check_str(v: Any) -> str:
    if not _is_str(v):
        raise TypeError("a non-empty string")
    return v.strip()


def _check_layers(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(_is_str(x) for x in v):
        raise TypeError('a non-empty list of layer names, e.g. ["layer4"]')
    return [x.strip() for x in v]


def _check_expect(v: Any) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(_is_str(x) for x in v):
        raise TypeError(f"a string like \"flip_rate <= 0.05\" or \"{BASELINE}\", "
                        "or a list of such strings")
    return list(v)


def _check_units(v: Any) -> list[int]:
    if not isinstance(v, list) or not v or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise TypeError("a non-empty list of unit indices (integers >= 0)")
    return list(v)


def _check_float(lo: float, hi: float | None, lo_open: bool = False
                 ) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok:
            ok = (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo}, {'∞)' if hi is None else f'{hi}]'}"
            raise TypeError(f"a number in {rng}")
        return float(v)
    return check


def _check_method(v: Any) -> str:
    if v not in METHODS:
        raise TypeError(" or ".join(f'"{m}"' for m in METHODS))
    return v


def _check_int(lo: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise TypeError(f"an integer >= {lo}")
        return int(v)
    return check


#: field → (validator, help). A validator raises TypeError("<what is allowed>").
FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "name": (_check_str, "the property's name (its test id)"),
    "description": (_check_str, "free text"),
    "model": (_check_str, "torchvision:NAME, package.module:function, path.py:function or "
                          "nemaudit:NAME"),
    "weights": (_check_str, "a local checkpoint path"),
    "normalize": (_check_str, "imagenet | none | netdissect | m,m,m/s,s,s"),
    "probe": (_check_str, "synthetic:..., broden:PATH, folder:PATH or python:module:callable"),
    "method": (_check_method, "netdissect (default) or milan: what bare metric names in "
                              "expect mean"),
    "layers": (_check_layers, "list of layer names"),
    "layer": (_check_layers, "one layer name (or use layers = [...])"),
    "corruption": (_check_str, "a corruption spec such as gaussian:std=0.02"),
    "expect": (_check_expect, "expectation(s)"),
    "units": (_check_units, "unit indices"),
    "eta": (_check_float(0.0, 1.0, lo_open=True), "top-η quantile"),
    "iou_threshold": (_check_float(0.0, 1.0), "IoU of a detector"),
    "tolerance": (_check_float(0.0, None), "absolute IoU change allowed by the baseline"),
    "max_units": (_check_int(1), "per-unit attacks: attack at most this many units"),
    "exemplars": (_check_int(1), "MILAN: exemplar images per unit (default 15)"),
    "f1_threshold": (_check_float(0.0, 1.0), "MILAN: F1-BERT at or below which a description "
                                             "counts as manipulated"),
    "describer": (_check_str, "MILAN: milan:PATH (other MILAN weights) or "
                              "python:module:callable (any Describer); default: bundled"),
}
#: fields that only mean something for MILAN expectations
_MILAN_ONLY = ("exemplars", "f1_threshold", "describer")
_DEFAULTABLE = [f for f in FIELDS if f not in ("name", "description")]
_ALLOWED_TOP = ("defaults", "property")


@dataclass
class Property:
    """One validated property; it yields one test item per layer."""

    name: str
    index: int
    file: Path
    model: str
    probe: str
    layers: list[str]
    expect: list[Expectation]
    corruption: str | None = None
    method: str = "netdissect"
    weights: str | None = None
    normalize: str | None = None
    units: list[int] | None = None
    eta: float | None = None
    iou_threshold: float | None = None
    tolerance: float = 0.01
    description: str | None = None
    max_units: int | None = None
    exemplars: int | None = None
    f1_threshold: float | None = None
    describer: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_baseline(self) -> bool:
        return any(e.is_baseline for e in self.expect)

    @property
    def methods(self) -> set[str]:
        """Which audits the expectations need (``netdissect``, ``milan`` or both)."""
        return {e.method for e in self.expect if not e.is_baseline}

    @property
    def expectation_text(self) -> str:
        return " and ".join(e.text for e in self.expect)


def _validate_table(table: Any, allowed: list[str], file: Path, prop: str | None,
                    what: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise PropertyError(f"{what} must be a table, got {type(table).__name__}",
                            file=file, prop=prop)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PropertyError(f"unknown field{hint}; allowed fields in {what}: "
                                f"{', '.join(allowed)}", file=file, prop=prop, field=key)
        check, _ = FIELDS[key]
        try:
            out[key] = check(value)
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
    label = table.get("name") if isinstance(table, Mapping) and _is_str(table.get("name")) \
        else f"#{index + 1}"
    own = _validate_table(table, list(FIELDS), file, label, "[[property]]")
    merged = {**defaults, **own}
    name = own.get("name") or f"property {index + 1}"
    for req in ("model", "probe", "layers", "expect"):
        if req not in merged:
            raise PropertyError("is required (set it in the property or in [defaults])",
                                file=file, prop=label, field=req)
    method = merged.get("method", "netdissect")
    expects = []
    for text in merged["expect"]:
        try:
            bare = isinstance(text, str) and not text.strip().startswith(MILAN_PREFIX) \
                and text.strip() != BASELINE
            e = parse_expectation(text if method != "milan" or not bare
                                  else milan_form(text))
        except ExpectationError as err:
            raise PropertyError(str(err), file=file, prop=label, field="expect") from None
        expects.append(e)
    baseline = any(e.is_baseline for e in expects)
    if baseline and method == "milan":
        raise PropertyError(f"{BASELINE!r} compares Network Dissection labels; it cannot take "
                            'method = "milan"', file=file, prop=label, field="method")
    milan = any(e.method == "milan" for e in expects if not e.is_baseline)
    for f in _MILAN_ONLY:  # in [defaults] they may serve other properties
        if f in own and not milan:
            raise PropertyError(f"only applies to MILAN expectations ({MILAN_PREFIX}<metric>, "
                                'or method = "milan")', file=file, prop=label, field=f)
    if baseline and len(expects) > 1:
        raise PropertyError(f"{BASELINE!r} must be the property's only expectation; put "
                            "metric expectations in another property", file=file, prop=label,
                            field="expect")
    if baseline and "corruption" in own:
        raise PropertyError(f"a {BASELINE!r} property compares clean explanations; it takes "
                            "no corruption", file=file, prop=label, field="corruption")
    if not baseline and "corruption" not in merged:
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
    return Property(
        name=name, index=index, file=file, model=merged["model"], probe=merged["probe"],
        layers=merged["layers"], expect=expects,
        corruption=None if baseline else merged.get("corruption"),
        method=merged.get("method", "netdissect"), weights=merged.get("weights"),
        normalize=merged.get("normalize"), units=merged.get("units"), eta=merged.get("eta"),
        iou_threshold=merged.get("iou_threshold"), tolerance=merged.get("tolerance", 0.01),
        description=own.get("description"), max_units=merged.get("max_units"),
        exemplars=merged.get("exemplars"), f1_threshold=merged.get("f1_threshold"),
        describer=merged.get("describer"), raw=dict(table))


def milan_form(text: str) -> str:
    """``"manipulated_rate <= 0.1"`` → ``"milan.manipulated_rate <= 0.1"``: where bare names
    mean MILAN metrics (``method = "milan"``, or a check on a MILAN result)."""
    m = _NAME_RE.match(text.strip())
    if m and m.group() not in MILAN_METRICS:
        raise ExpectationError(
            f"{text.strip()!r}: metric names here are MILAN metrics, and {m.group()!r} is not "
            f"one; MILAN metrics: {', '.join(MILAN_METRICS)} (Network Dissection metrics go "
            "in a property without method = \"milan\", or on a nemaudit.audit(...) result)")
    return MILAN_PREFIX + text.strip()


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
    defaults = _validate_table(doc.get("defaults", {}), _DEFAULTABLE, file, None,
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
        text = path.read_text(encoding="utf-8")
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
            get_state(self.config).prepare_property(self)
        except NemauditError as e:
            message = str(e)
        if message is not None:  # raised outside the except block: no chained traceback
            pytest.fail(message, pytrace=False)

    def runtest(self) -> None:
        from nemaudit.session import get_state

        get_state(self.config).run_property(self)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:
        if isinstance(excinfo.value, (PropertyFailed, NemauditError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.line, f"nemaudit property {self.name}"
