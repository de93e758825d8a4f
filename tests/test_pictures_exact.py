"""Report pictures value by value: PNG/WebP encoding, the NetDissect-style mask overlay and
the heatmap overlay on hand cases, exemplar strips, and Network Dissection's payload (which
units are pictured, which images, and that each picture shows the clean and the corrupted
image with its own mask) against a recomputation here."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from nemaudit.audit import AuditConfig, audit
from nemaudit.audit.netdissect import pictures as nd_pictures
from nemaudit.audit.pictures import heat_overlay, overlay, png_b64, strip, webp_b64
from nemaudit.explain.common.masks import upsample
from nemaudit.explain.netdissect import DissectConfig
from nemaudit.model.layers import LayerRecorder
from nemaudit.model.load import NormalizedModel
from nemaudit.probe.base import collate
from tests.toys import ToyNet, ToyProbe

torch.set_num_threads(1)


def _decode(b64: str) -> tuple[str, np.ndarray]:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    return img.format, np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- encodings

def test_png_is_lossless_and_webp_keeps_the_size():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    fmt, back = _decode(png_b64(rgb))
    assert fmt == "PNG" and np.array_equal(back, rgb)
    flat = np.full((16, 12, 3), 120, dtype=np.uint8)
    fmt, back = _decode(webp_b64(flat))
    assert fmt == "WEBP" and back.shape == (16, 12, 3)
    assert np.abs(back.astype(int) - 120).max() <= 3
    assert len(webp_b64(rgb, quality=10)) < len(webp_b64(rgb, quality=100))


# --------------------------------------------------------------------------- overlays

def test_mask_overlay_keeps_the_mask_darkens_the_rest_and_outlines_it():
    image = torch.full((3, 5, 5), 0.5)
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[1:3, 1:3] = True
    out = overlay(image, mask)
    assert out.dtype == np.uint8 and out.shape == (5, 5, 3)
    # the ring just outside the mask is the outline (yellow), inside stays, outside ×0.3
    ring = np.zeros((5, 5), bool)
    ring[0:4, 0:4] = True
    ring[1:3, 1:3] = False
    assert (out[ring] == [255, 217, 0]).all()
    assert (out[1:3, 1:3] == 128).all()  # round(0.5 · 255)
    rest = ~ring
    rest[1:3, 1:3] = False
    assert (out[rest] == 38).all()  # round(0.15 · 255)
    # a coarser mask is resized (nearest) to the image; scale repeats pixels
    coarse = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    big = overlay(torch.ones(3, 4, 4), coarse, scale=2)
    assert big.shape == (8, 8, 3)
    assert (big[:4, :4] == 255).all() and (big[:4, :4] != [255, 217, 0]).any()
    small = overlay(torch.ones(3, 4, 4), coarse)
    assert (small[2:, 3] == 76).all()  # far from the mask: darkened, round(0.3 · 255)
    assert np.array_equal(big[::2, ::2], small)
    # pixels outside [0, 1] are clamped first
    assert (overlay(torch.full((3, 2, 2), 2.0), torch.ones(2, 2)) == 255).all()


RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                dtype=np.float32) / 255


@pytest.mark.parametrize("heat, colour", [
    (torch.ones(2, 2), RAMP[4]),                      # the maximum: the ramp's bright end
    (torch.full((2, 2), 7.0), RAMP[4]),               # scaled by its max first
    (torch.tensor([[1.0, -1.0], [0.5, 0.125]]), None),
])
def test_heat_overlay_blends_the_ramp_over_the_image(heat, colour):
    image = torch.zeros(3, 2, 2)
    out = heat_overlay(image, heat)
    if colour is not None:
        assert (out == np.round(0.55 * colour * 255).astype(np.uint8)).all()
        return
    want = np.zeros((2, 2, 3))
    for (y, x), v in np.ndenumerate(heat.numpy()):
        pos = max(v, 0.0) * 4  # negative relevance: the dark end
        lo = min(int(np.floor(pos)), 3)
        t = pos - lo
        want[y, x] = RAMP[lo] * (1 - t) + RAMP[lo + 1] * t
    assert np.array_equal(out, np.round(0.55 * want * 255).astype(np.uint8))


def test_heat_overlay_scales_by_the_largest_magnitude_and_clamps_the_image():
    image = torch.zeros(3, 2, 2)
    top = np.round(0.55 * RAMP[4] * 255).astype(np.uint8)
    assert (heat_overlay(image, torch.full((2, 2), 0.5)) == top).all()
    # scaled by max |value| (2 here): 1 → 0.5, the ramp's middle
    assert (heat_overlay(image, torch.tensor([[-2.0, 1.0], [1.0, 1.0]]))[0, 1] ==
            np.round(0.55 * RAMP[2] * 255).astype(np.uint8)).all()
    zeros = torch.zeros(2, 2)
    assert np.array_equal(heat_overlay(torch.full((3, 2, 2), 2.0), zeros),
                          heat_overlay(torch.ones(3, 2, 2), zeros))
    assert np.array_equal(heat_overlay(torch.full((3, 2, 2), -1.0), zeros),
                          heat_overlay(torch.zeros(3, 2, 2), zeros))
    two = heat_overlay(torch.rand(3, 2, 2), torch.rand(2, 2), scale=2)
    assert two.shape == (4, 4, 3) and np.array_equal(two[::2, ::2], two[1::2, 1::2])


def test_mask_overlay_thresholds_soft_masks_and_clamps():
    image = torch.full((3, 3, 3), 0.5)
    assert np.array_equal(overlay(image, torch.full((3, 3), 0.3)),
                          overlay(image, torch.zeros(3, 3)))
    assert np.array_equal(overlay(image, torch.full((3, 3), 0.7)),
                          overlay(image, torch.ones(3, 3)))
    assert np.array_equal(overlay(torch.full((3, 2, 2), -1.0), torch.zeros(2, 2)),
                          overlay(torch.zeros(3, 2, 2), torch.zeros(2, 2)))


def test_heat_overlay_mixes_with_the_image_resizes_and_scales():
    image = torch.full((3, 4, 4), 1.0)
    out = heat_overlay(image, torch.zeros(2, 2), alpha=0.25)
    assert (out == np.round((0.75 + 0.25 * RAMP[0]) * 255).astype(np.uint8)).all()
    assert heat_overlay(image, torch.rand(3, 3), scale=3).shape == (12, 12, 3)
    hm = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    big = heat_overlay(torch.zeros(3, 4, 4), hm)
    resized = torch.nn.functional.interpolate(hm[None, None], size=(4, 4), mode="bilinear",
                                              align_corners=False)[0, 0]
    assert np.array_equal(big, heat_overlay(torch.zeros(3, 4, 4), resized))


def test_a_strip_is_one_overlay_per_exemplar():
    images, masks = torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4) > 0.5
    got = strip(images, masks, [7, 3], [1.5, 0.25])
    assert [(g["index"], g["max"]) for g in got] == [(7, 1.5), (3, 0.25)]
    for g, img, m in zip(got, images, masks, strict=True):
        assert np.array_equal(_decode(g["png"])[1], overlay(img, m))
    assert strip(images[:0], masks[:0], [], []) == []


# --------------------------------------------------------------------------- Network Dissection

CFG = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8))


@pytest.fixture(scope="module")
def noise():
    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(40)
    return model, probe, audit(model, "layer2", probe, "gaussian:std=0.3,fraction=1.0,seed=3",
                               CFG)


def test_the_units_pictured_are_changed_detectors_first(noise, monkeypatch):
    _, _, result = noise
    calls = []
    monkeypatch.setattr(nd_pictures, "unit_exemplars",
                        lambda res, unit, k: calls.append((unit, k)) or {"unit": unit})
    doc = nd_pictures.report_payload(result, max_units=5, k=3)
    rows = result.rows
    key = {r["unit"]: (0 if r["changed"] else 1, 0 if r["clean_detector"] else 1,
                       -r["clean_iou"]) for r in rows}
    want = sorted(key, key=lambda u: (key[u], [r["unit"] for r in rows].index(u)))[:5]
    assert [u for u, _ in calls] == want and {k for _, k in calls} == {3}
    assert doc["exemplars"] == [{"unit": u} for u in want]
    assert {k: v for k, v in doc.items() if k != "exemplars"} == result.to_json()
    assert any(r["changed"] for r in rows) and any(not r["changed"] for r in rows)


def test_a_units_pictures_are_its_top_images_clean_and_corrupted(noise):
    model, probe, result = noise
    unit = next(r["unit"] for r in result.rows if r["changed"])
    got = nd_pictures.unit_exemplars(result, unit, k=3)
    # the top images by the unit's max activation over the whole probe
    batch = collate([probe[i] for i in range(len(probe))])
    with torch.no_grad(), LayerRecorder(model, ["layer2"]) as rec:
        rec.run(batch.images)
        acts = rec["layer2"][:, unit].float()
    maxes = acts.flatten(1).max(1).values
    top = torch.argsort(maxes, descending=True, stable=True)[:3].tolist()
    assert [g["index"] for g in got["images"]] == top
    t_clean = float(result.clean.thresholds[unit])
    t_bad = float(result.corrupted.thresholds[unit])
    assert (got["unit"], got["threshold_clean"], got["threshold_corrupted"]) == (
        unit, t_clean, t_bad)
    sub = collate([probe[i] for i in top])
    bad = result.context["corruption"](sub, model)
    with torch.no_grad(), LayerRecorder(model, ["layer2"]) as rec:
        rec.run(bad)
        bad_acts = rec["layer2"][:, unit].float()
    for j, g in enumerate(got["images"]):
        assert g["clean_max"] == pytest.approx(float(maxes[top[j]]))
        assert g["corrupted_max"] == pytest.approx(float(bad_acts[j].max()))
        clean_mask = upsample(acts[top[j]][None], tuple(probe.seg_size))[0] > t_clean
        bad_mask = upsample(bad_acts[j][None], tuple(probe.seg_size))[0] > t_bad
        assert np.array_equal(_decode(g["clean"])[1], overlay(sub.images[j], clean_mask))
        assert np.array_equal(_decode(g["corrupted"])[1], overlay(bad[j], bad_mask))
        assert g["linf"] == pytest.approx(float((bad[j] - sub.images[j]).abs().max()))
        assert g["linf"] > 0


def _decoded_pairs(got):
    return [(_decode(g["clean"])[1], _decode(g["corrupted"])[1]) for g in got["images"]]


@pytest.mark.parametrize("spec", ["pgd:eps=8/255,steps=2", "pgd:eps=8/255,steps=2,targeted=true,target=disc"])
def test_per_unit_attack_pictures_replay_the_units_own_attack(spec):
    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(24)
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8), max_units=3)
    result = audit(model, "layer2", probe, spec, cfg)
    row = next(r for r in result.rows if r["changed"] and r.get("target"))
    unit = row["unit"]
    got = nd_pictures.unit_exemplars(result, unit, k=2)
    corruption = result.context["corruption"]
    assert corruption.shared is False
    sub = collate([probe[g["index"]] for g in got["images"]])
    src, tgt = probe.concept_id(row["clean_label"]), probe.concept_id(row["target"])
    res = corruption.attack_units(model, "layer2", sub, [unit], [src],
                                  None if corruption.targeted else {unit: tgt})
    bad = res.images[0]
    with torch.no_grad(), LayerRecorder(model, ["layer2"]) as rec:
        rec.run(sub.images)
        clean_acts = rec["layer2"][:, unit].float()
        rec.run(bad)
        bad_acts = rec["layer2"][:, unit].float()
    t_clean = float(result.clean.thresholds[unit])
    t_bad = float(result.corrupted.thresholds[unit])
    for j, (clean_png, bad_png) in enumerate(_decoded_pairs(got)):
        cm = upsample(clean_acts[j][None], tuple(probe.seg_size))[0] > t_clean
        bm = upsample(bad_acts[j][None], tuple(probe.seg_size))[0] > t_bad
        assert np.array_equal(clean_png, overlay(sub.images[j], cm))
        assert np.array_equal(bad_png, overlay(bad[j], bm))
        assert got["images"][j]["linf"] == pytest.approx(float((bad[j] - sub.images[j])
                                                               .abs().max()))
    assert 0 < max(g["linf"] for g in got["images"]) <= 8 / 255 + 1e-6
    # the attack of another unit, or of this unit towards nothing, draws other pictures
    other = corruption.attack_units(model, "layer2", sub, [unit], [src],
                                    None if corruption.targeted else {unit: src})
    assert not torch.equal(other.images[0], bad) or corruption.targeted


def test_a_model_based_shared_corruption_is_replayed_with_the_model():
    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(24)
    result = audit(model, "layer2", probe, "fgsm:eps=8/255", CFG)
    unit = next(r["unit"] for r in result.rows if r["changed"])
    got = nd_pictures.unit_exemplars(result, unit, k=2, scale=2)
    sub = collate([probe[g["index"]] for g in got["images"]])
    bad = result.context["corruption"](sub, model)
    with torch.no_grad(), LayerRecorder(model, ["layer2"]) as rec:
        rec.run(bad)
        bad_acts = rec["layer2"][:, unit].float()
    t_bad = float(result.corrupted.thresholds[unit])
    for j, (clean_png, bad_png) in enumerate(_decoded_pairs(got)):
        bm = upsample(bad_acts[j][None], tuple(probe.seg_size))[0] > t_bad
        assert np.array_equal(bad_png, overlay(bad[j], bm, scale=2))
        assert clean_png.shape[:2] == (2 * sub.images.shape[-2], 2 * sub.images.shape[-1])


def test_the_payloads_defaults(noise, monkeypatch):
    _, _, result = noise
    calls = []
    real = nd_pictures.unit_exemplars
    monkeypatch.setattr(nd_pictures, "unit_exemplars",
                        lambda res, unit, k: calls.append((res, k)) or real(res, unit, k))
    doc = nd_pictures.report_payload(result)
    assert len(doc["exemplars"]) == 6 and all(r is result and k == 4 for r, k in calls)
    assert max(len(e["images"]) for e in doc["exemplars"]) == 4  # k = 4 by default
    unit = next(e["unit"] for e in doc["exemplars"] if len(e["images"]) == 4)
    assert len(real(result, unit)["images"]) == 4


def test_no_pictures_without_the_audits_context_or_candidates(noise):
    _, _, result = noise
    import copy

    bare = copy.copy(result)
    bare.context = None
    assert nd_pictures.unit_exemplars(bare, 0) == {"unit": 0, "images": []}
    no_probe = copy.copy(result)
    no_probe.context = {**result.context, "probe": None}
    assert nd_pictures.unit_exemplars(no_probe, 0) == {"unit": 0, "images": []}
    none = copy.copy(result)
    none.clean = copy.copy(result.clean)
    none.clean.state = None
    assert nd_pictures._top_images(none, 0, 3) == []
    assert nd_pictures.unit_exemplars(none, 0) == {"unit": 0, "images": []}


# --------------------------------------------------------------------------- MILAN

class _Ex:
    """Stands for an Exemplars set: k exemplars of U units, images served by row."""

    def __init__(self, u: int, k: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.k = k
        self.pixels = torch.rand(u, k, 3, 4, 4, generator=g)
        self.masks = torch.rand(u, k, 4, 4, generator=g) > 0.5
        self.indices = torch.arange(u * k).reshape(u, k) + 100 * seed
        self.maxes = torch.rand(u, k, generator=g)
        self.calls: list = []

    def images(self, rows, first):
        self.calls.append((list(rows), first))
        return self.pixels[rows, :first]


class _MilanResult:
    def __init__(self, rows, kept=None, k=4) -> None:
        self.rows = rows
        self.clean, self.corrupted = _Ex(len(rows), k, 1), _Ex(len(rows), k, 2)
        self.context = None if kept is None else {"corrupted_pixels": kept}

    def to_json(self):
        return {"method": "milan", "units": list(self.rows)}


ROWS = [{"unit": 10, "manipulated": False, "f1": 0.1},
        {"unit": 11, "manipulated": True, "f1": 0.6},
        {"unit": 12, "manipulated": True, "f1": 0.2},
        {"unit": 13, "manipulated": False, "f1": 0.05}]


def _strip_of(ex, i, k, images):
    return strip(images, ex.masks[i, :k], ex.indices[i, :k].tolist(), ex.maxes[i, :k].tolist())


def test_milan_pictures_manipulated_units_first_lowest_f1_first():
    from nemaudit.audit.milan.pictures import milan_payload

    r = _MilanResult(ROWS)
    doc = milan_payload(r, max_units=3, k=2)
    shown = [2, 1, 3]  # manipulated (F1 0.2, 0.6), then the lowest F1 of the rest
    assert [e["unit"] for e in doc["exemplars"]] == [12, 11, 13]
    assert r.clean.calls == [(shown, 2)] and r.corrupted.calls == [(shown, 2)]  # one batch each
    for e, i in zip(doc["exemplars"], shown, strict=True):
        assert e["clean"] == _strip_of(r.clean, i, 2, r.clean.pixels[i, :2])
        assert e["corrupted"] == _strip_of(r.corrupted, i, 2, r.corrupted.pixels[i, :2])
        assert "note" not in e
    assert doc["units"] == ROWS and doc["method"] == "milan"
    # k is capped at the exemplars kept
    assert len(milan_payload(_MilanResult(ROWS, k=3), k=5)["exemplars"][0]["clean"]) == 3


def test_milan_pictures_of_per_unit_attacks_use_the_kept_pixels():
    from nemaudit.audit.milan.pictures import milan_payload

    kept = {12: (torch.rand(1, 3, 4, 4) * 255).round().to(torch.uint8),
            11: (torch.rand(3, 3, 4, 4) * 255).round().to(torch.uint8)}
    r = _MilanResult(ROWS, kept=kept)
    doc = milan_payload(r, max_units=4, k=2)
    by_unit = {e["unit"]: e for e in doc["exemplars"]}
    assert r.corrupted.calls == []  # nothing re-read through a corruption
    assert by_unit[12]["corrupted"] == _strip_of(r.corrupted, 2, 1, kept[12][:1].float() / 255)
    assert by_unit[11]["corrupted"] == _strip_of(r.corrupted, 1, 2, kept[11][:2].float() / 255)
    for u in (10, 13):
        assert by_unit[u]["corrupted"] == []
        assert by_unit[u]["note"] == "the poisoned pixels of this unit were not kept for pictures"


def test_milan_pictures_need_both_sides_and_rows():
    from nemaudit.audit.milan.pictures import milan_payload

    empty = _MilanResult([])
    assert milan_payload(empty) == {"method": "milan", "units": []}
    half = _MilanResult(ROWS)
    half.corrupted = None
    assert "exemplars" not in milan_payload(half)
    six = ROWS + [{"unit": 14, "manipulated": False, "f1": 0.5},
                  {"unit": 15, "manipulated": False, "f1": 0.6}]
    assert len(milan_payload(_MilanResult(six))["exemplars"]) == 4  # the default max_units
    assert len(milan_payload(_MilanResult(ROWS))["exemplars"][0]["clean"]) == 3  # default k


# --------------------------------------------------------------------------- saliency

class _SaliencyResult:
    def __init__(self, n_images: int = 4) -> None:
        g = torch.Generator().manual_seed(5)
        self.rows = [{"index": 20 + j, "label": f"class{j}",
                      "spearman": {"gradcam": rho, "lrp": 0.5}}
                     for j, rho in enumerate([0.9, 0.6, 0.3, 0.1])]
        self.meta = {"interpreters": ["lrp", "simplegrad", "x", "gradcam", "lrp_t"],
                     "nd_rows": [{"unit": 1}]}
        maps = {i: (torch.rand(4, 2, 2, generator=g), torch.rand(4, 2, 2, generator=g))
                for i in ("gradcam", "lrp", "lrp_t", "x")}
        maps["x"] = (maps["x"][0][:2], maps["x"][1][:2])  # maps of the first 2 images only
        self.context = {"images": torch.rand(n_images, 3, 4, 4, generator=g), "maps": maps}

    @staticmethod
    def diff_order(row):
        return row["spearman"]["gradcam"]

    def to_json(self):
        return {"method": "saliency", "meta": dict(self.meta), "rows": self.rows}


def test_saliency_pictures_the_worst_images_with_each_models_maps(monkeypatch):
    from nemaudit.audit.saliency.pictures import PICTURED, saliency_payload
    from nemaudit.report import saliency_html

    seen = []
    monkeypatch.setattr(saliency_html, "charts", lambda doc: seen.append(doc) or {"c": "png"})
    r = _SaliencyResult(n_images=3)
    doc = saliency_payload(r, max_images=3)
    assert PICTURED == 3
    assert doc["meta"] == {"interpreters": r.meta["interpreters"]}  # nd_rows moved out
    assert doc["nd_units"] == [{"unit": 1}]
    assert doc["charts"] == {"c": "png"} and seen == [doc]
    # the worst 3 by the result's own order (lowest Grad-CAM ρ): images 3, 2, 1; image 3 has
    # no pixels kept (3 images): skipped
    kept = [r.rows[2], r.rows[1]]
    assert [p["index"] for p in doc["pictures"]] == [22, 21]
    for p, w in zip(doc["pictures"], kept, strict=True):
        j = w["index"] - 20
        img = r.context["images"][j]
        assert p["label"] == w["label"]
        want = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        assert np.array_equal(_decode(p["image"])[1], want)
        # the first PICTURED interpreters measured that have maps, in the audit's order
        # (simplegrad has none); x's maps cover the first 2 images only
        want_interps = ["lrp", "x", "gradcam"] if j < 2 else ["lrp", "gradcam"]
        assert [m["interpreter"] for m in p["maps"]] == want_interps
        for m in p["maps"]:
            ref, cand = r.context["maps"][m["interpreter"]]
            assert m["reference"] == webp_b64(heat_overlay(img, ref[j]))
            assert m["candidate"] == webp_b64(heat_overlay(img, cand[j]))
            assert m["spearman"] == w["spearman"].get(m["interpreter"])


def test_saliency_pictures_need_images_and_maps():
    from nemaudit.audit.saliency.pictures import saliency_payload

    r = _SaliencyResult()
    r.context = {"images": None, "maps": {}}
    doc = saliency_payload(r)
    assert "pictures" not in doc and "charts" not in doc and doc["nd_units"] == [{"unit": 1}]
    r.context = None
    assert "pictures" not in saliency_payload(r)
    r2 = _SaliencyResult()
    assert len(saliency_payload(r2, max_images=2)["pictures"]) == 2
    assert len(saliency_payload(_SaliencyResult())["pictures"]) == 4  # at most 8 by default


def test_saliency_pictures_edges(monkeypatch):
    from nemaudit.audit.saliency.pictures import saliency_payload
    from nemaudit.report import saliency_html

    def no_matplotlib(doc):
        raise ImportError("matplotlib")

    monkeypatch.setattr(saliency_html, "charts", no_matplotlib)
    r = _SaliencyResult()
    g = torch.Generator().manual_seed(6)
    r.rows = [{"index": 20 + j, "label": f"c{j}", "spearman": {"gradcam": j / 10}}
              for j in range(10)]
    r.rows[0] = {"index": 20, "label": "class0"}  # no ρ recorded
    r.diff_order = staticmethod(lambda row: row["index"])
    r.context = {"images": torch.rand(10, 3, 4, 4, generator=g) * 3 - 1,  # outside [0, 1]
                 "maps": {"gradcam": (torch.rand(10, 2, 2, generator=g),
                                      torch.rand(10, 2, 2, generator=g))}}
    doc = saliency_payload(r)
    assert len(doc["pictures"]) == 8 and doc["charts"] == {}  # 8 images at most
    first = doc["pictures"][0]
    assert [m["spearman"] for m in first["maps"]] == [None]
    assert doc["pictures"][1]["maps"][0]["spearman"] == 0.1
    img = r.context["images"][0]
    want = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    assert np.array_equal(_decode(first["image"])[1], want)
    maps_only = _SaliencyResult()
    maps_only.context["images"] = None
    assert "pictures" not in saliency_payload(maps_only)
    images_only = _SaliencyResult()
    images_only.context["maps"] = {}
    assert "pictures" not in saliency_payload(images_only)


def test_a_per_unit_picture_of_a_unit_without_a_target_attacks_towards_none():
    """A changed row with no target recorded is replayed with the target term off (rows of
    per-unit audits carry their runner-up; a hand-made or older payload may not)."""
    import copy

    model, probe = NormalizedModel(ToyNet(), "none"), ToyProbe(24)
    cfg = AuditConfig(dissect=DissectConfig(eta=0.02, batch_size=8), max_units=3)
    result = audit(model, "layer2", probe, "pgd:eps=8/255,steps=2", cfg)
    row = next(r for r in result.rows if r["changed"])
    bare = copy.copy(result)
    bare.rows = [dict(r, target=None) if r is row else r for r in result.rows]
    got = nd_pictures.unit_exemplars(bare, row["unit"], k=1)
    sub = collate([probe[got["images"][0]["index"]]])
    res = result.context["corruption"].attack_units(
        model, "layer2", sub, [row["unit"]], [probe.concept_id(row["clean_label"])],
        {row["unit"]: 0})
    assert got["images"][0]["linf"] == pytest.approx(float((res.images[0] - sub.images)
                                                           .abs().max()))
