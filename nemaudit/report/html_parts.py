"""What the report skeleton (:mod:`nemaudit.report.html`) and the methods' sections
(``nemaudit.report.<method>_html``) share: the jinja2 environment the report is rendered
with, and the few helpers its views need. Shared markup (badge, cards, definition lists,
images) is in ``templates/macros.html.j2``.

The markup lives in ``nemaudit/report/templates/*.html.j2``; Python only computes what to
show. Every template is rendered with autoescape on: records carry user data (test names,
concept labels from an untrusted probe, messages, descriptions), and a template escapes
every value it prints unless it is :class:`~markupsafe.Markup`. Only two things are made
Markup: what a template rendered (:func:`render`) and fixed text (the package's CSS/JS).

This module imports none of the section modules, so a section module can use it without an
import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from nemaudit.report.json_report import OUTCOMES

__all__ = ["asset", "esc", "jinja_env", "picture", "render", "wbr"]


def _finalize(v: Any) -> Any:
    """What ``{{ v }}`` prints: ``None`` prints nothing (as :func:`esc` always did)."""
    return "" if v is None else v


@cache
def jinja_env() -> Environment:
    """The report's jinja2 environment (one per process): templates from
    ``nemaudit/report/templates``, autoescape on for every template, and a variable the view
    does not define is an error rather than an empty string."""
    env = Environment(loader=PackageLoader("nemaudit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, finalize=_finalize, trim_blocks=True,
                      lstrip_blocks=True, auto_reload=False)
    env.filters["wbr"] = wbr
    env.globals["OUTCOMES"] = OUTCOMES
    return env


def render(template: str, **context: Any) -> str:
    """``templates/<template>`` rendered with ``context``. A plain str, as the report's public
    functions return; a parent template takes it as ``Markup(...)`` (an autoescaping
    template made it), anything else it is given it escapes."""
    return jinja_env().get_template(template).render(**context)


def esc(v: Any) -> str:
    """``v`` as escaped HTML text (attribute-safe); ``""`` for None. The templates escape on
    their own; this is for HTML built outside them, e.g. a third-party
    :meth:`~nemaudit.audit.methods.Method.section` (same escaping as the templates')."""
    return str(escape("" if v is None else str(v)))


@cache
def asset(name: str) -> str:
    """The text of ``nemaudit/report/templates/<name>`` (CSS, JS)."""
    # one joinpath argument at a time: Traversable.joinpath(*parts) needs Python 3.11
    return resources.files("nemaudit.report").joinpath("templates").joinpath(name).read_text(
        encoding="utf-8")


def wbr(v: Any) -> Markup:
    """Escaped text with break opportunities after ``_``, ``/``, a ``.`` that is no decimal
    point, and before ``[``: names like ``flip_rate_detectors`` or
    ``test_noise_sweep_layer4[0.01]`` wrap in narrow table columns at their joints instead
    of mid-word or not at all. (Also the templates' ``wbr`` filter.)"""
    # the text is escaped first (entities hold none of _ / . [), then only <wbr> is added
    text = str(escape("" if v is None else str(v)))
    return Markup(re.sub(r"([_/]|\.(?!\d))", r"\1<wbr>", text).replace("[", "<wbr>["))


def picture(fn: Callable[..., str], *args: Any) -> str | None:
    """``fn(*args)``: a base64 PNG from :mod:`nemaudit.report.plots`; None when matplotlib is
    missing (the ``plot`` macro of ``macros.html.j2`` then says how to get it)."""
    try:
        return fn(*args)
    except ImportError:
        return None
