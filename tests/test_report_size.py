"""The HTML report's weight: pictures of probe images are shown as WebP at the size they are
shown (112 px), charts as palette PNGs, and a property with a full set of exemplars stays
within a budget of bytes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from nemaudit.report import html as html_report
from nemaudit.report.html_parts import PHOTO_PX, mime_of, photo

Image = pytest.importorskip("PIL.Image")


def _png(size: int, noisy: bool = True, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2] = (40, 60, 140)
    arr[size // 2:] = (120, 90, 30)
    if noisy:  # σ = 0.02 noise on a probe image: what makes the PNGs heavy
        arr = np.clip(arr + rng.normal(0, 5.1, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _decode(b64: str):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_probe_pictures_become_webp_at_the_shown_size():
    png = _png(112)
    shown = photo(png)
    assert mime_of(shown) == "webp" and _decode(shown).size == (112, 112)
    assert len(shown) * 4 < len(png)  # a noisy probe image: several times smaller
    big = photo(_png(224))  # a larger picture is shrunk to what is shown
    assert _decode(big).size == (PHOTO_PX, PHOTO_PX)
    tiny = _png(8, noisy=False)  # where WebP would not save bytes, the PNG stays
    assert photo(tiny) == tiny and mime_of(tiny) == "png"
    # what is not a PNG picture comes back as it is (the template escapes it)
    for other in (None, "", "<script>alert(1)</script>", "iVBORw0KGgo<b>broken", 3):
        assert photo(other) == other


def test_charts_are_palette_pngs():
    pytest.importorskip("matplotlib")
    from nemaudit.report.plots import sweep_png

    points = [{"x": s, "flip_rate": s, "flip_rate_detectors": s / 2, "series": "g"}
              for s in (0.01, 0.02, 0.05)]
    chart = _decode(sweep_png({"x": "std", "points": points}))
    assert chart.format == "PNG" and chart.mode == "P"


def _record(i: int, pictures: list[str]) -> dict:
    units = [{"unit": u, "clean_label": "car", "clean_category": "object", "clean_iou": 0.2,
              "corrupted_label": "sky" if u % 2 else "car", "corrupted_category": "scene",
              "corrupted_iou": 0.1, "changed": bool(u % 2), "clean_detector": True,
              "corrupted_detector": True} for u in range(128)]
    ex = [{"unit": u, "threshold_clean": 0.5, "threshold_corrupted": 0.4,
           "images": [{"index": j, "clean": pictures[(2 * (3 * k + j)) % len(pictures)],
                       "corrupted": pictures[(2 * (3 * k + j) + 1) % len(pictures)],
                       "clean_max": 1.0, "corrupted_max": 0.9, "linf": 0.02}
                      for j in range(3)]} for k, u in enumerate((1, 3, 5, 7))]
    corruption = {"kind": "gaussian", "std": 0.01 * (i + 1), "fraction": 1.0, "seed": 0}
    return {"nodeid": f"t::p{i}", "name": f"p{i}", "outcome": "passed", "layer": "layer4",
            "model": "m", "probe": "p", "corruption": corruption, "duration": 1.0,
            "expectation": "flip_rate <= 0.6", "measured": 0.5, "bound": 0.6,
            "audit": {"method": "netdissect", "layer": "layer4", "corruption": corruption,
                      "units": units, "exemplars": ex,
                      "metrics": {"flip_rate": 0.5, "flip_rate_detectors": 0.5, "units": 128,
                                  "changed": 64, "detectors": 128,
                                  "detector_share": {"clean": {"all": 1.0, "object": 1.0},
                                                     "corrupted": {"all": 1.0}}}}}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_property_with_exemplars_stays_within_its_byte_budget():
    pictures = [_png(112, seed=s) for s in range(24)]  # 4 units × 3 images × 2 sides
    records = [_record(i, pictures) for i in range(3)]
    page = html_report.render_html(records, {"title": "t", "environment": {"python": "3"}})
    raw = sum(len(p) for p in pictures)
    per_property = len(page.encode()) / len(records)
    assert page.count('src="data:image/webp;base64,') == 24 * len(records)
    # the pictures alone came as ~0.6 MB per property; shown, the whole property is < 200 KB
    assert raw > 400_000 and per_property < 200_000, per_property


def test_the_json_report_leaves_webp_and_jpeg_pictures_out_too(tmp_path):
    import json

    from nemaudit.report.json_report import write_json

    webp = photo(_png(112))
    rec = {"nodeid": "t::s", "name": "s", "outcome": "passed",
           "saliency": {"pictures": [{"index": 1, "image": _png(112),
                                      "maps": [{"interpreter": "gradcam", "reference": webp,
                                                "candidate": "/9j/" + "A" * 40,
                                                "spearman": 0.5}]}]}}
    doc = json.loads(write_json(tmp_path / "r.json", [rec]).read_text())
    (pic,) = doc["records"][0]["saliency"]["pictures"]
    assert pic == {"index": 1, "maps": [{"interpreter": "gradcam", "spearman": 0.5}]}
