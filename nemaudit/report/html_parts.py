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
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from nemaudit.report.json_report import OUTCOMES

__all__ = ["asset", "esc", "jinja_env", "mime_of", "photo", "picture", "render", "wbr"]


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
    env.filters["photo"] = photo
    env.globals["mime_of"] = mime_of
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


#: the size (CSS px, the longer side) exemplar pictures are shown at (report.css: figure img)
PHOTO_PX = 112
#: lossy WebP quality for pictures of probe images; sharp RGB→YUV keeps 1-px mask outlines
PHOTO_QUALITY = 85
_PNG_B64 = "iVBORw0KGgo"


@lru_cache(maxsize=512)
def _photo(b64: str, px: int) -> str:
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as source:
        img = source.convert("RGB")
    resized = max(img.size) > px
    if resized:
        img.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=PHOTO_QUALITY, method=6, use_sharp_yuv=True)
    out = base64.b64encode(buf.getvalue()).decode("ascii")
    return out if resized or len(out) < len(b64) else b64


def photo(b64: Any, px: int = PHOTO_PX) -> Any:
    """A picture of probe images (an exemplar with its mask, a saliency thumbnail) as the
    report shows it: at most ``px`` pixels on its longer side (the size it is shown at) and
    as lossy WebP, when that is smaller than the base64 PNG it came as (≈ 2 KB instead of
    ≈ 20 KB for a noisy 112×112 probe image). Anything that is not a decodable PNG is
    returned as it is (the template escapes it). Also the templates' ``photo`` filter.

    The payloads keep their lossless PNGs (the JSON drops them; a 4/255 perturbation stays
    in them); the page reports each picture's L∞ change as a number, which no eye reads
    off a picture anyway."""
    if not isinstance(b64, str) or not b64.startswith(_PNG_B64):
        return b64
    try:
        return _photo(b64, int(px))
    except Exception:  # noqa: BLE001 - no Pillow, a broken picture: show what came
        return b64


def mime_of(b64: Any) -> str:
    """The image type of a base64 picture, by its signature: ``webp``, ``jpeg`` or ``png``
    (the default: a string that is none of them is shown as the PNG it was said to be)."""
    text = str(b64 or "")
    if text.startswith("UklGR"):
        return "webp"
    if text.startswith("/9j/"):
        return "jpeg"
    return "png"


def picture(fn: Callable[..., str], *args: Any) -> str | None:
    """``fn(*args)``: a base64 PNG from :mod:`nemaudit.report.plots`; None when matplotlib is
    missing (the ``plot`` macro of ``macros.html.j2`` then says how to get it)."""
    try:
        return fn(*args)
    except ImportError:
        return None
