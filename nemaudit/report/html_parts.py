"""HTML primitives shared by the report skeleton (:mod:`nemaudit.report.html`) and the
methods' sections (``nemaudit.report.<method>_html``).

This module imports none of them, so a section module can use it without an import cycle.
Every function escapes what it is given as text: records carry user data (test names,
concept labels, messages, descriptions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from html import escape
from importlib import resources
from typing import Any

from nemaudit.report.json_report import OUTCOMES

__all__ = ["asset", "badge", "card", "card_row", "esc", "img", "kv", "plot", "wbr"]


def esc(v: Any) -> str:
    """``v`` as escaped HTML text (attribute-safe); ``""`` for None."""
    return escape("" if v is None else str(v), quote=True)


@cache
def asset(name: str) -> str:
    """The text of ``nemaudit/report/templates/<name>`` (CSS, JS)."""
    # one joinpath argument at a time: Traversable.joinpath(*parts) needs Python 3.11
    return resources.files("nemaudit.report").joinpath("templates").joinpath(name).read_text(
        encoding="utf-8")


def wbr(v: Any) -> str:
    """Escaped text with break opportunities after ``_``, ``/``, a ``.`` that is no decimal
    point, and before ``[``: names like ``flip_rate_detectors`` or
    ``test_noise_sweep_layer4[0.01]`` wrap in narrow table columns at their joints instead
    of mid-word or not at all."""
    return re.sub(r"([_/]|\.(?!\d))", r"\1<wbr>", esc(v)).replace("[", "<wbr>[")


def badge(outcome: str | None) -> str:
    """The coloured outcome badge (an unknown outcome reads as an error)."""
    o = outcome if outcome in OUTCOMES else "error"
    return f'<span class="badge {o}">{esc(outcome or "error")}</span>'


def img(b64: str | None, alt: str, cls: str = "") -> str:
    """An inline PNG (base64) as ``<img>``; ``""`` when there is no picture."""
    if not b64:
        return ""
    return (f'<img class="{esc(cls)}" alt="{esc(alt)}" '
            f'src="data:image/png;base64,{esc(b64)}">')


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list; keys are escaped, values are HTML already."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="kv">{items}</dl>'


def card(label: str, value: str, sub: str = "") -> str:
    """One metric card: a label, a big value and a line under it."""
    return (f'<div class="card"><div class="label">{esc(label)}</div>'
            f'<div class="value">{esc(value)}</div><div class="sub">{esc(sub)}</div></div>')


def card_row(items: Iterable[str]) -> str:
    """A row of :func:`card` s."""
    return f'<div class="cards">{"".join(items)}</div>'


def plot(fn: Callable[..., str], *args: Any, alt: str) -> str:
    """``fn(*args)`` (a base64 PNG from :mod:`nemaudit.report.plots`) as an image, or a note
    when matplotlib is missing."""
    try:
        return img(fn(*args), alt, "plot")
    except ImportError:
        return '<p class="muted">plots need matplotlib: pip install "nemaudit[report]"</p>'
