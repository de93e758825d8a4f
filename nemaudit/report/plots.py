"""Plots for reports, as base64 PNGs (inline in HTML and JSON) or files (examples' ``reports/``).

matplotlib is optional (``nemaudit[report]``) and imported only when a plot is drawn. We draw
on a bare ``Figure`` with the Agg canvas instead of pyplot: no global backend switch in the
user's process, no figure registry to leak, safe under pytest-xdist workers.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nemaudit.report.json_report import parse_spec

#: x-axis labels for the sweep kinds the plugin produces
X_LABELS = {"sigma": "noise σ", "std": "noise σ", "eps": "ε (L∞ budget)",
            "linf": "perturbation budget ε (L∞)", "fraction": "poisoned fraction of the probe",
            "layer": "layer", "seed": "seed"}
#: kinds whose ``eps`` (attacks) or ``std`` (noise of exactly ±std) bounds every pixel's change:
#: both are L∞ budgets and share one axis. Gaussian σ is not a bound, so it keeps its own.
#: Xie-table columns in display order, with their Broden category
XIE_COLUMNS = {"C": "color", "T": "texture", "S": "scene", "M": "material", "P": "part",
               "O": "object", "All": "all"}
CLEAN, CORRUPTED = "#4c72b0", "#dd8452"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: colours of a chart's palette PNG: line art with anti-aliasing needs few (64 keeps the
#: edges smooth at about a third of the bytes of matplotlib's RGBA PNG)
CHART_COLOURS = 64


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return _palette_png(buf.getvalue())


def _palette_png(png: bytes) -> bytes:
    """A chart's PNG as a palette PNG of :data:`CHART_COLOURS` colours, when Pillow is there
    and that is smaller (charts are line art: lossless PNG stays right, 8-bit colour is
    plenty); else the PNG as it is."""
    try:
        from PIL import Image

        img = Image.open(io.BytesIO(png)).convert("RGB")
        small = img.quantize(colors=CHART_COLOURS, method=Image.Quantize.MEDIANCUT,
                             dither=Image.Dither.NONE)
        out = io.BytesIO()
        small.save(out, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - a smaller chart is a courtesy
        return png
    return out.getvalue() if out.tell() < len(png) else png


def _b64(fig) -> str:
    return base64.b64encode(_png_bytes(fig)).decode("ascii")


#: for methods' own report sections: a sized figure, and it as a base64 PNG
figure = _figure
figure_png = _b64


def save_png(path: str | os.PathLike, png_b64: str) -> Path:
    """Write a base64 PNG (as returned by the ``*_png`` functions) to ``path``."""
    from nemaudit.files import atomic_write_bytes

    return atomic_write_bytes(path, base64.b64decode(png_b64))


# --------------------------------------------------------------------------- sweeps as data


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_dict(c: Any) -> dict[str, Any]:
    if isinstance(c, Mapping):
        return dict(c)
    return parse_spec(c) if isinstance(c, str) and c else {}


def _linf_key(kind: str) -> str | None:
    from nemaudit.corrupt.kinds import linf_key  # the registry says which key bounds L∞

    return linf_key(kind)


def _budget(kind: str) -> str | None:
    from nemaudit.corrupt.kinds import KINDS

    k = KINDS.get(kind)
    return k.budget if k is not None else None


def corruption_axes(corruption: Mapping[str, Any] | str | None) -> dict[str, float]:
    """The quantities a corruption can be swept along: ``linf`` (its L∞ budget: ``eps`` of an
    attack, ``std`` of ±std Bernoulli/uniform noise), ``std`` (Gaussian σ only: not a bound),
    ``fraction`` (poisoned share of the probe) and ``seed``."""
    c = _as_dict(corruption)
    kind = str(c.get("kind", ""))
    out: dict[str, float] = {}
    key = _linf_key(kind)
    if key and _number(c.get(key)):
        out["linf"] = float(c[key])
    if key is None and _budget(kind) == "std" and _number(c.get("std")):  # Gaussian σ
        out["std"] = float(c["std"])
    for k in ("fraction", "seed"):
        if _number(c.get(k)):
            out[k] = c[k]
    return out


def _distinct(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def sweep_is_degenerate(sweep: Mapping[str, Any]) -> bool:
    """True when the sweep's x takes fewer than two values: a line through one x says nothing,
    so :func:`sweep_figure` draws grouped bars instead."""
    return len(_distinct(p.get("x") for p in sweep.get("points") or [])) < 2


def refine_sweep(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """A per-test sweep on an axis that varies (``session.build_sweep`` passes its points with
    no x; sweeps saved by older versions may carry one that does not vary, e.g. PGD at ε=4/255
    beside Bernoulli ±4/255 on x=fraction). When x has one value, try the layer, the L∞ budget
    (attacks' ε and ±std noise share it), Gaussian σ, the fraction and the seed; when none
    varies, label each point by its corruption for the bar chart and note in ``same`` what the
    points share (``{"linf": 4/255, "fraction": 1.0, "layer": "layer4"}``)."""
    points = [dict(p) for p in sweep.get("points") or []]
    out = dict(sweep, points=points)
    cs = [_as_dict(p.get("corruption")) or {"kind": p.get("series")} for p in points]
    axes = [corruption_axes(c) for c in cs]
    xkind = str(sweep.get("x", ""))
    if not sweep_is_degenerate(out):
        if xkind in ("eps", "std") and points and all(
                a.get("linf") is not None and a["linf"] == p.get("x")
                for a, p in zip(axes, points)):
            out["x"] = "linf"  # the same numbers, named for what they bound
        return out
    for axis in ("layer", "linf", "std", "fraction", "seed"):
        vals = [p.get("layer") for p in points] if axis == "layer" else \
            [a.get(axis) for a in axes]
        if any(v is None for v in vals) or len(_distinct(vals)) < 2:
            continue
        return dict(out, x=axis, points=[dict(p, x=v) for p, v in zip(points, vals)])
    from nemaudit.report.json_report import corruption_text

    same = {}  # what the bars have in common, e.g. one L∞ budget for an attack and a noise
    for axis in ("layer", "linf", "std", "fraction"):
        vals = [p.get("layer") for p in points] if axis == "layer" else \
            [a.get(axis) for a in axes]
        if vals and vals[0] is not None and all(v == vals[0] for v in vals):
            same[axis] = vals[0]
    out["same"] = same
    labels = [corruption_text(c) if c.get("kind") else str(p.get("series") or "?")
              for p, c in zip(points, cs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} · {p.get('layer')}" if p.get("layer") else lab
                  for lab, p in zip(labels, points)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i}" for i, lab in enumerate(labels, 1)]
    return dict(out, points=[dict(p, label=lab) for p, lab in zip(points, labels)])


def _freeze(d: Mapping[str, Any]) -> tuple:
    return tuple(sorted((str(k), json.dumps(v, sort_keys=True, default=str))
                        for k, v in d.items()))


def _disambiguate(series: list[list]) -> None:
    """Series whose labels read alike (``gaussian layer4`` at two fractions) get the settings
    in which they differ appended: ``gaussian layer4 fraction=1``, ``… fraction=0.5``."""
    from nemaudit.report.json_report import fmt_eps

    for label in _distinct(s[0] for s in series):
        alike = [s for s in series if s[0] == label]
        if len(alike) < 2:
            continue
        keys = sorted({k for s in alike for k in s[1]})
        differ = [k for k in keys if len({json.dumps(s[1].get(k), default=str)
                                          for s in alike}) > 1]
        for s in alike:
            s[0] = label + "".join(f" {k}={fmt_eps(s[1].get(k))}" for k in differ)


#: session overview axes in display order, with the record field or corruption axis behind them
OVERVIEW_AXES = ("layer", "std", "linf", "fraction")

#: top-level module names that are a network's stem (before its stages) or head (after them),
#: for ordering layer names without the model: ``conv1 < layer1``, ``layer4 < fc``
_STEM = re.compile(r"(stem|conv_?\d?|bn_?\d?|relu\d?|maxpool|pool0|norm0|input|embed\w*|"
                   r"patch_embed|quant)$", re.I)
_HEAD = re.compile(r"(avgpool|global_pool|pool|fc\d*|classifier|head|heads|logits|"
                   r"last_linear|norm|pre_logits)$", re.I)


def natural_layer_key(name: str) -> tuple:
    """A layer name's place in network depth, read from the name alone: stem modules first
    (``conv1``, ``bn1``, ``stem``), head modules last (``avgpool``, ``fc``, ``classifier``),
    and in between a natural sort of the dotted parts, numbers as numbers:
    ``layer1 < layer2 < layer10``, ``features.3 < features.10``, ``layer2.1 < layer3``."""
    parts = str(name).split(".")
    top = parts[0]
    rank = 0 if _STEM.fullmatch(top) else 2 if _HEAD.fullmatch(top) else 1
    chunks: list[tuple[int, int, str]] = []
    for part in parts:
        for run in re.findall(r"\d+|\D+", part):
            chunks.append((0, int(run), "") if run.isdigit() else (1, 0, run.lower()))
        chunks.append((-1, 0, ""))  # the end of a part sorts before any continuation
    return (rank, tuple(chunks))


def order_layers(layers: Iterable[str], depth: Mapping[str, Any] | None = None) -> list[str]:
    """Distinct layer names in network depth order: by the depth index recorded at audit time
    (the layer's position in ``model.named_modules()``, a record's ``layer_depth``) when every
    layer has one, else by :func:`natural_layer_key` (never a mix of the two: an index and
    a name are not comparable)."""
    names = _distinct(str(n) for n in layers)
    depth = depth or {}
    known = {n: depth.get(n) for n in names}
    if names and all(_number(v) for v in known.values()):
        return sorted(names, key=lambda n: (float(known[n]), natural_layer_key(n)))  # type: ignore[arg-type]
    return sorted(names, key=natural_layer_key)


def layer_depth(record: Mapping[str, Any], payload: Mapping[str, Any] | None,
                layer: str) -> int | None:
    """The depth index recorded for ``layer``: the payload's provenance
    (``meta.specs.layer_depth``) or the record's ``layer_depth``, when it is about that layer."""
    specs = ((payload or {}).get("meta") or {}).get("specs") or {}
    if isinstance(specs, Mapping) and specs.get("layer") == layer and \
            _number(specs.get("layer_depth")):
        return int(specs["layer_depth"])
    if record.get("layer") == layer and _number(record.get("layer_depth")):
        return int(record["layer_depth"])
    return None


def _flip_payloads(record: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], str]]:
    """(payload, method name) of each method payload in ``record`` whose metrics have a flip
    rate (the quantity the overview plots), in registry order."""
    from nemaudit.audit.methods import record_payloads

    return [(p, m.name) for m, p in record_payloads(record)
            if _number((p.get("metrics") or {}).get("flip_rate"))]


def session_sweeps(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sweeps *across* test items, for the report's overview plots. Audited records (those with
    a method payload whose metrics have ``flip_rate``: Network Dissection's ``audit``) are
    grouped by (model, probe, method); within that, records
    identical except for the layer form a layer series (one per corruption), and records
    identical except for Gaussian σ, the L∞ budget or the poisoned fraction form a series per
    (kind, layer). Only series with ≥ 2 distinct x values are kept. A point's ``record`` is
    its record's 1-based position (the report's ``#p<i>`` anchor); when several records audit
    the same configuration (a spec property and a parametrized test), the point shows the
    first and ``records`` lists them all as ``[position, name]``."""
    from nemaudit.report.json_report import corruption_text

    entries = []
    for i, r in enumerate(records, 1):
        for a, m in _flip_payloads(r):
            c = {k: v for k, v in _as_dict(r.get("corruption") or a.get("corruption")).items()
                 if v is not None and k != "shared"}
            layer = r.get("layer") or a.get("layer")
            if not c or not layer:
                continue
            entries.append({"index": i, "name": str(r.get("name") or r.get("nodeid") or i),
                            "base": (str(r.get("model") or "—"), str(r.get("probe") or "—"),
                                     str(a.get("method") or m)),
                            "layer": str(layer), "c": c, "axes": corruption_axes(c),
                            "m": a["metrics"], "depth": layer_depth(r, a, str(layer))})
    bases = _distinct(e["base"] for e in entries)
    sweeps = []
    for base in bases:
        mine = [e for e in entries if e["base"] == base]
        # layers in network depth order, not test order (the same model: one depth map)
        depths: dict[str, Any] = {}
        for e in mine:
            if e["depth"] is not None:
                depths.setdefault(e["layer"], e["depth"])
        layer_rank = {n: i for i, n in enumerate(order_layers((e["layer"] for e in mine),
                                                              depths))}
        for axis in OVERVIEW_AXES:
            groups: dict[tuple, list[dict]] = {}
            for e in mine:
                if axis == "layer":
                    key: tuple = (_freeze(e["c"]),)
                else:
                    if axis not in e["axes"]:
                        continue
                    kind = str(e["c"].get("kind"))
                    hidden = _linf_key(kind) if axis == "linf" else axis
                    rest = {k: v for k, v in e["c"].items() if k != hidden}
                    key = (kind, e["layer"], _freeze(rest))
                groups.setdefault(key, []).append(e)
            series = []
            for group in groups.values():
                xs = [e["layer"] if axis == "layer" else e["axes"][axis] for e in group]
                if len(_distinct(xs)) < 2:
                    continue
                at: dict[Any, list[dict]] = {}
                for e, x in zip(group, xs):
                    at.setdefault(x, []).append(e)
                pts = [(same, x) for x, same in at.items()]
                first = group[0]
                if axis == "layer":
                    label, rest = corruption_text(first["c"]), dict(first["c"])
                else:
                    kind = str(first["c"].get("kind"))
                    hidden = _linf_key(kind) if axis == "linf" else axis
                    rest = {k: v for k, v in first["c"].items() if k != hidden}
                    label = f"{kind} {first['layer']}"
                series.append([label, rest, pts])
            if not series:
                continue
            _disambiguate(series)
            points = []
            for label, _rest, pts in series:  # type: ignore[assignment]
                for same, x in pts:
                    e = same[0]
                    points.append({"x": x, "flip_rate": e["m"].get("flip_rate"),
                                   "flip_rate_detectors": e["m"].get("flip_rate_detectors"),
                                   "changed": e["m"].get("changed"), "units": e["m"].get("units"),
                                   "layer": e["layer"], "series": label,
                                   "corruption": corruption_text(e["c"]), "record": e["index"],
                                   "name": e["name"], "layer_depth": e["depth"],
                                   "records": [[d["index"], d["name"]] for d in same]})
            if axis == "layer":
                points.sort(key=lambda p: layer_rank[p["x"]])
            sweeps.append({"x": axis, "model": base[0], "probe": base[1], "method": base[2],
                           "points": points})
    return sweeps


def _is_255(values: Sequence[float]) -> bool:
    return bool(values) and all(abs(v * 255 - round(v * 255)) < 1e-6 and v < 1 for v in values)


def _interval(point: Mapping[str, Any]) -> tuple[float, float] | None:
    """The 95% exact interval of a point's flip rate from its changed/units counts."""
    k, n = point.get("changed"), point.get("units")
    if not (isinstance(k, (int, float)) and isinstance(n, (int, float)) and n > 0
            and _number(point.get("flip_rate"))):
        return None
    from nemaudit.audit.confidence import binomial_interval

    iv = binomial_interval(int(k), int(n), 0.95)
    return iv.lo, iv.hi


def sweep_figure(sweep: Mapping[str, Any], title: str | None = None):
    """Flip rate against the swept quantity: one colour per series, solid over all units and
    dashed over clean detectors (all-unit flip rates are dominated by near-ties among
    non-detectors, so both are always shown). A sweep whose x takes one value has no line to
    draw: it becomes grouped bars, one group per point (see :func:`sweep_is_degenerate`).
    Error bars: the all-unit rate's 95% exact interval over units."""
    if sweep_is_degenerate(sweep):
        return _bars_figure(sweep, title)
    xkind = str(sweep.get("x", "x"))
    points = list(sweep.get("points") or [])
    categorical = xkind == "layer" or any(isinstance(p.get("x"), str) for p in points)
    series: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        series.setdefault(str(p.get("series") or p.get("layer") or "flip rate"), []).append(p)
    order: list[str] = []
    if categorical:
        for p in points:
            if str(p["x"]) not in order:
                order.append(str(p["x"]))
        if xkind == "layer":  # network depth, not the order the tests ran in
            known: dict[str, Any] = {}
            for p in points:
                if p.get("layer_depth") is not None:
                    known.setdefault(str(p["x"]), p["layer_depth"])
            order = order_layers(order, known)
    many = len(series) > 3  # more than 6 legend entries: the legend goes beside the axes
    fig = _figure(8.6 if many else 6.4, 3.6)
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    xs_all: list[float] = []
    for i, (name, pts) in enumerate(series.items()):
        if categorical:
            pts = sorted(pts, key=lambda p: order.index(str(p["x"])))
            xs = [order.index(str(p["x"])) for p in pts]
        else:
            pts = sorted(pts, key=lambda p: float(p["x"]))
            xs = [float(p["x"]) for p in pts]  # type: ignore[misc]
        xs_all += [float(x) for x in xs]
        c = colours[i % len(colours)]
        ax.plot(xs, [p.get("flip_rate") for p in pts], "-o", color=c, ms=4,
                label=f"{name}: all units")
        bx, by, lo, hi = [], [], [], []
        for x, p in zip(xs, pts):
            iv = _interval(p)
            if iv is not None:
                y = float(p["flip_rate"])
                bx.append(x)
                by.append(y)
                lo.append(max(y - iv[0], 0.0))
                hi.append(max(iv[1] - y, 0.0))
        if bx:  # 95% exact intervals over units (the all-unit rate)
            ax.errorbar(bx, by, yerr=[lo, hi], fmt="none", ecolor=c, alpha=0.45, capsize=2,
                        lw=1)
        det = [p.get("flip_rate_detectors") for p in pts]
        if any(d is not None for d in det):
            ax.plot(xs, [float("nan") if d is None else d for d in det], "--s", color=c, ms=4,
                    mfc="white", label=f"{name}: detectors")
    if categorical:
        ax.set_xticks(range(len(order)), order, rotation=30 if len(order) > 5 else 0)
        ax.set_xlim(-0.4, len(order) - 0.6)
    elif xkind in ("eps", "linf") and _is_255(xs_all):
        ticks = sorted(set(xs_all))
        ax.set_xticks(ticks, [f"{round(t * 255)}/255" for t in ticks])
    ax.set_xlabel(X_LABELS.get(xkind, xkind))
    ax.set_ylabel("flip rate")
    top = _y_top(points)
    ax.set_ylim(-0.03 * top, top)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%" if top > 0.2 else
                                 f"{100 * v:.1f}%".replace(".0%", "%"))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if series and many:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif series:
        ax.legend(fontsize=8, frameon=False, loc="best")
    return fig


def _y_top(points: Sequence[Mapping[str, Any]]) -> float:
    """The y range's top: the whole 0–100% when rates are high, else zoomed to the data with
    headroom (flip rates under noise are often a few percent: a 0–100% axis flattens them)."""
    vals = [float(v) for p in points for v in (p.get("flip_rate"), p.get("flip_rate_detectors"))  # type: ignore[arg-type]
            if _number(v)]
    top = max(vals or [0.0])
    if top > 0.6:
        return 1.03
    return max(0.05, math.ceil(top * 1.3 / 0.05) * 0.05)


def _bars_figure(sweep: Mapping[str, Any], title: str | None = None):
    """Flip rate by corruption: a group per point, a bar over all units and a hatched one over
    clean detectors (a missing detector rate, i.e. no detectors, is marked n/a, not zero)."""
    points = list(sweep.get("points") or [])
    labels = [str(p.get("label") or p.get("series") or p.get("corruption") or i)
              for i, p in enumerate(points, 1)]
    fig = _figure(max(3.6, min(6.4, 1.4 + 1.3 * len(points))), 3.2)
    ax = fig.add_subplot()
    w = 0.36
    for j, (key, name, colour, hatch) in enumerate((
            ("flip_rate", "all units", CLEAN, None),
            ("flip_rate_detectors", "detectors", CORRUPTED, "//"))):
        for i, p in enumerate(points):
            x, v = i + (j - 0.5) * w, p.get(key)
            if v is None:
                ax.annotate("n/a", (x, 0), ha="center", va="bottom", fontsize=7,
                            color="#59636e")
                continue
            ax.bar(x, v, w, color=colour if hatch is None else "white", edgecolor=colour,
                   hatch=hatch, label=name)
            ax.annotate(f"{100 * v:.0f}%", (x, v), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    ax.set_xticks(range(len(points)), labels, fontsize=8,
                  rotation=15 if sum(map(len, labels)) > 60 else 0)
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.set_ylabel("flip rate")
    ax.set_ylim(0, 1.08)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
    ax.grid(axis="y", alpha=0.3)
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, frameon=False, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def sweep_png(sweep: Mapping[str, Any], title: str | None = None) -> str:
    """:func:`sweep_figure` as base64 PNG."""
    return _b64(sweep_figure(sweep, title))


def save_sweep_png(path: str | os.PathLike, sweep: Mapping[str, Any],
                   title: str | None = None) -> Path:
    """:func:`sweep_figure` written to ``path``."""
    return save_png(path, sweep_png(sweep, title))


def xie_rows(metrics: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """{"clean"|"corrupted": {C, T, S, M, P, O, All → share or None}} from audit metrics,
    using ``detector_share`` (full category names) when ``xie_table`` lacks a column."""
    xie = metrics.get("xie_table") or {}
    share = metrics.get("detector_share") or {}
    out: dict[str, dict[str, float | None]] = {}
    for side in ("clean", "corrupted"):
        row = {}
        for col, cat in XIE_COLUMNS.items():
            v = (xie.get(side) or {}).get(col)
            if v is None:
                v = (share.get(side) or {}).get(cat)
            row[col] = v
        out[side] = row
    return out


def detector_share_figure(metrics: Mapping[str, Any], title: str | None = None):
    """Grouped bars of the share of units that are detectors, per category, clean beside
    corrupted: Xie's table as a picture. Absent categories are drawn as gaps, not zeros."""
    rows = xie_rows(metrics)
    cols = list(XIE_COLUMNS)
    fig = _figure(4.8, 2.6)
    ax = fig.add_subplot()
    w = 0.38
    for j, (side, colour) in enumerate((("clean", CLEAN), ("corrupted", CORRUPTED))):
        vals = [rows[side][c] for c in cols]
        xs = [i + (j - 0.5) * w for i in range(len(cols))]
        ax.bar([x for x, v in zip(xs, vals) if v is not None],
               [v for v in vals if v is not None], w, color=colour, label=side)
        for x, v in zip(xs, vals):
            if v is not None and v > 0:
                ax.annotate(f"{100 * v:.0f}", (x, v), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("units that are detectors")
    top = max([v for r in rows.values() for v in r.values() if v is not None] or [0.0])
    ax.set_ylim(0, max(0.05, min(1.0, top * 1.18)) if top < 0.85 else 1.08)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def detector_share_png(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """:func:`detector_share_figure` as base64 PNG."""
    return _b64(detector_share_figure(metrics, title))


def save_detector_share_png(path: str | os.PathLike, metrics: Mapping[str, Any],
                            title: str | None = None) -> Path:
    """:func:`detector_share_figure` written to ``path``."""
    return save_png(path, detector_share_png(metrics, title))
