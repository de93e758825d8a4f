"""Offline MILAN training data: unit descriptions written from the probe's ground truth.

MILAN is trained on MILANNOTATIONS, three human descriptions per unit of exemplar images.
Offline, with the concept world's segmentation, we write them from what the masks cover:

1. **Evidence.** For a unit's k exemplars, count the masked pixels carrying each concept (an
   image-level scene/texture label covers the whole mask of its image), the concept's area in
   those images, their overlap with other concepts under the mask (which object a part or
   colour belongs to), and where the concept sits (mean row) — :func:`unit_evidence`.
2. **Choice.** The concept with the highest IoU between masks and labels *within the
   exemplars* is the subject (IoU, not coverage: a wheel unit's masks are almost all black
   rubber on cars too, but only "wheel" is covered *and* mostly inside the masks). Full-image
   textures and scenes win when most of the masked area belongs to one of them and no pixel
   concept explains the masks. Modifiers are added when the evidence is strong: the colour
   or material of an object, the object a part belongs to, a second region and which one
   lies above, the scene a region is seen in.
3. **Phrasing.** Three distinct phrasings per unit from templates in the style of
   MILANNOTATIONS ("red cars", "wheels of cars", "the sky above grass", "striped surfaces",
   "wooden things", "beach scenes"), drawn by a seeded generator per unit.

Words map back to concepts (:func:`mentioned_concepts`, longest match first) so generated
descriptions can be scored by the concept category they name. Template words never collide
with concept words (a unit test checks it).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from nemaudit.probe.base import Concept, ProbeDataset, collate

__all__ = [
    "Evidence",
    "UnitAnnotation",
    "annotate",
    "concept_forms",
    "describe_evidence",
    "mentioned_categories",
    "mentioned_concepts",
    "split_units",
    "template_words",
    "unit_evidence",
]

PIXEL_CATEGORIES = ("object", "part", "material", "color")
IMAGE_CATEGORIES = ("scene", "texture")

#: Region-like concepts read as mass nouns ("the sky", "sand"), never pluralised.
MASS = {"sky", "night-sky", "sunset-sky", "cloudy-sky", "hazy-sky", "sea", "water", "sand",
        "snow", "grass", "ground", "wallpaper", "foliage", "field"}
_IRREGULAR = {"person": "people", "leaf": "leaves", "canopy": "canopies", "bench": "benches",
              "beach": "beaches", "sofa": "sofas", "glass": "glass", "canvas": "canvases",
              "night-city": "night cities", "grid": "grids", "valley": "valleys"}
#: Adjectives used for materials ("wooden benches"), with the noun for "made of wood".
MATERIAL_ADJ = {"wood": "wooden", "metal": "metal", "glass": "glass", "brick": "brick",
                "fabric": "fabric", "stone": "stone", "plastic": "plastic",
                "foliage": "leafy", "rubber": "rubber", "skin": "skin", "tile": "tiled",
                "ceramic": "ceramic"}
#: Concepts that are regions of a scene (the "object" category's background stuff).
REGION_WORDS = {"sky", "night-sky", "sunset-sky", "cloudy-sky", "hazy-sky", "sea", "water",
                "sand", "snow", "grass", "lawn", "field", "ground", "mountain", "cliff", "road",
                "sidewalk", "building", "treeline", "dock", "wall", "wallpaper", "floor",
                "ceiling", "carpet"}

# Phrasings; {x} singular, {X} plural (or mass), {a} adjective, {u}/{l} upper/lower region.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "texture": ("{a} surfaces", "{a} patterns", "{a} textures", "surfaces with {a} patterns",
                "{a} things"),
    "texture2": ("{a} and {b} patterns", "{a} or {b} textures", "{a} and {b} surfaces"),
    "scene": ("{x} scenes", "images of {X}", "{x} images", "pictures of {X}", "the {x}"),
    "region": ("the {x}", "{X}", "{x} regions", "areas of {x}", "images with {x}"),
    "region_scene": ("{X} in {s} scenes", "the {x} in {S}", "{x} regions in {S}"),
    "region_pair": ("the {u} above {l}", "{u} above {l}", "{u} and {l}", "{U} over {L}"),
    "region_and": ("{x} and {y}", "{X} and {Y}", "{x} or {y}", "areas of {x} and {y}"),
    "region_material": ("{m} {X}", "{X} made of {mn}", "{m} {x} surfaces"),
    "thing": ("{X}", "the {x}", "images of {X}", "pictures of {X}", "{x} objects"),
    "thing_color": ("{c} {X}", "the {c} {x}", "{X} colored {c}", "{c} colored {X}"),
    "thing_material": ("{m} {X}", "{X} made of {mn}", "the {m} {x}"),
    "part": ("{X}", "the {x}", "{x} parts", "parts like {X}"),
    "part_of": ("{X} of {O}", "the {x} of {O}", "{o} {X}", "{X} on {O}"),
    "part_color": ("{c} {X}", "{X} colored {c}", "the {c} {x}"),
    "color": ("{c} things", "{c} objects", "things colored {c}", "{c} regions", "{c} areas"),
    "color_on": ("{c} {O}", "{c} parts of {O}", "{c} things"),
    "material": ("{m} things", "{m} objects", "things made of {mn}", "{mn} surfaces"),
    "material_on": ("{m} {O}", "{O} made of {mn}", "{m} things"),
}


def _plural(name: str) -> str:
    if name in MASS:
        return name.replace("-", " ")
    if name in _IRREGULAR:
        return _IRREGULAR[name]
    head, _, last = name.rpartition("-")
    if last.endswith(("s", "sh", "ch", "x")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}".strip() if head else last


@dataclass(frozen=True)
class Forms:
    """How a concept is written: singular, plural (or mass), adjective."""

    sg: str
    pl: str
    adj: str


def concept_forms(concepts: Sequence[Concept]) -> dict[int, Forms]:
    """Surface forms of every concept (hyphens become spaces: "car-body" → "car body")."""
    out = {}
    for c in concepts[1:]:
        sg = c.name.replace("-", " ")
        adj = MATERIAL_ADJ.get(c.name, sg)
        out[c.id] = Forms(sg, _plural(c.name), adj)
    return out


def template_words() -> set[str]:
    """Every word the templates add around concept names."""
    words = set()
    for ts in TEMPLATES.values():
        for t in ts:
            for w in t.split():
                if not w.startswith("{"):
                    words.add(w)
    return words


def _surface_index(concepts: Sequence[Concept]) -> dict[tuple[str, ...], int]:
    index: dict[tuple[str, ...], int] = {}
    for cid, f in concept_forms(concepts).items():
        for s in {f.sg, f.pl, f.adj}:
            index.setdefault(tuple(s.split()), cid)
    return index


_INDEX_CACHE: dict[int, tuple[dict[tuple[str, ...], int], int]] = {}


def mentioned_concepts(text: str, concepts: Sequence[Concept]) -> list[int]:
    """Concept ids named in ``text`` (longest match first, in order of appearance)."""
    key = hash(tuple((c.id, c.name) for c in concepts))
    if key not in _INDEX_CACHE:
        idx = _surface_index(concepts)
        _INDEX_CACHE[key] = (idx, max((len(k) for k in idx), default=1))
    index, longest = _INDEX_CACHE[key]
    words = text.lower().split()
    out, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            cid = index.get(tuple(words[i:i + n]))
            if cid is not None:
                out.append(cid)
                i += n
                break
        else:
            i += 1
    return out


def mentioned_categories(text: str, concepts: Sequence[Concept]) -> list[str]:
    """Categories of the concepts named in ``text`` (first mention first, no repeats)."""
    return list(dict.fromkeys(concepts[c].category for c in mentioned_concepts(text, concepts)))


# --------------------------------------------------------------------------- evidence

@dataclass
class Evidence:
    """What one unit's exemplar masks cover (counts over its k exemplars)."""

    total: float  # masked pixels
    inter: torch.Tensor  # [C] masked pixels carrying c (image labels: the image's mask)
    area: torch.Tensor  # [C] pixels carrying c in the exemplar images
    ymean: torch.Tensor  # [C] mean row (0 top, 1 bottom) of the masked pixels carrying c
    joint: torch.Tensor  # [C, C] masked pixels carrying both (pixel labels)
    present: torch.Tensor  # [k, C] bool: the concept is under exemplar j's mask

    def iou(self) -> torch.Tensor:
        return self.inter / (self.total + self.area - self.inter).clamp(min=1.0)

    def coverage(self) -> torch.Tensor:
        return self.inter / max(self.total, 1.0)


def unit_evidence(exemplars, probe: ProbeDataset) -> list[Evidence]:
    """Evidence for every row of an :class:`~.exemplars.Exemplars` set, from ``probe``'s
    labels (read once per distinct exemplar image)."""
    concepts = probe.concepts
    n_c = len(concepts)
    cat_of = torch.tensor([-1] + [_cat_index(c.category) for c in concepts[1:]])
    uniq, inv = torch.unique(exemplars.indices.flatten(), return_inverse=True)
    batch = collate([probe[int(i)] for i in uniq.tolist()])
    pix, img = batch.pixel_labels, batch.image_labels
    n_img = uniq.numel()
    h, w = exemplars.masks.shape[-2:]
    if pix.shape[1]:
        # one label map per pixel category [n, 4, h, w] (a pixel has ≤ 1 label per category)
        cats = cat_of[pix]
        per_cat = torch.stack([torch.where(cats == i, pix, 0).amax(dim=1)
                               for i in range(len(PIXEL_CATEGORIES))], dim=1)
    else:
        per_cat = torch.zeros(n_img, 0, h, w, dtype=torch.int64)
    # image-level labels as a multi-hot [n, C]
    onehot = torch.zeros(n_img, n_c)
    if img.numel():
        onehot.scatter_(1, img, 1.0)
    onehot[:, 0] = 0
    # per image: pixels of each concept [n, C]
    offs = (torch.arange(n_img) * n_c)[:, None, None, None]
    img_area = torch.bincount((per_cat + offs).flatten(), minlength=n_img * n_c
                              ).reshape(n_img, n_c).float() + onehot * (h * w)
    rows = ((torch.arange(h, dtype=torch.float32) + 0.5) / h)[:, None].expand(h, w)
    pairs = [(a, b) for a in range(per_cat.shape[1]) for b in range(per_cat.shape[1]) if a != b]
    inv = inv.reshape(exemplars.indices.shape)
    out = []
    for r in range(len(exemplars)):
        m = exemplars.masks[r].bool()  # [k, h, w]
        k = m.shape[0]
        lab = per_cat[inv[r]]  # [k, 4, h, w]
        jj = torch.arange(k)[:, None, None, None].expand_as(lab)
        mm = m[:, None].expand_as(lab)
        sel = lab[mm]
        idx = jj[mm] * n_c + sel
        counts = torch.bincount(idx, minlength=k * n_c).reshape(k, n_c).float()
        yw = rows[None, None].expand_as(lab)[mm]
        ysum_k = torch.bincount(idx, weights=yw, minlength=k * n_c).reshape(k, n_c).float()
        msum = m.flatten(1).sum(1).float()  # [k]
        mrow = (rows[None] * m).flatten(1).sum(1)
        oh = onehot[inv[r]]  # [k, C]
        counts = counts + oh * msum[:, None]
        ysum_k = ysum_k + oh * mrow[:, None]
        counts[:, 0] = 0
        inter, ysum = counts.sum(0), ysum_k.sum(0)
        present = counts > 0
        area = img_area[inv[r]].sum(0)
        area[0] = 0
        joint = torch.zeros(n_c * n_c)
        if pairs:
            masked = lab.permute(1, 0, 2, 3)[:, m]  # [4, P]
            codes = torch.cat([masked[a] * n_c + masked[b] for a, b in pairs])
            joint = torch.bincount(codes, minlength=n_c * n_c).float()
        joint = joint.reshape(n_c, n_c)
        joint[0, :] = 0
        joint[:, 0] = 0
        out.append(Evidence(float(m.sum()), inter, area, ysum / inter.clamp(min=1.0), joint,
                            present))
    return out


def _cat_index(category: str) -> int:
    return PIXEL_CATEGORIES.index(category) if category in PIXEL_CATEGORIES else -1


# --------------------------------------------------------------------------- phrasing

@dataclass
class UnitAnnotation:
    """Three descriptions of one unit, with the concept they are about."""

    model: str
    layer: str
    unit: int
    descriptions: list[str]
    concept: str  # the primary concept
    category: str
    kind: str  # which template family
    exemplars: list[int] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)  # best concepts by IoU
    probe_seed: int | None = None  # which probe the exemplars came from (a "view")

    @property
    def key(self) -> str:
        return f"{self.model}/{self.layer}/{self.unit}"

    def to_json(self) -> dict:
        return {"model": self.model, "layer": self.layer, "unit": self.unit,
                "descriptions": self.descriptions, "concept": self.concept,
                "category": self.category, "kind": self.kind, "exemplars": self.exemplars,
                "top": [[n, round(v, 4)] for n, v in self.top], "probe_seed": self.probe_seed}

    @classmethod
    def from_json(cls, d: dict) -> UnitAnnotation:
        return cls(d["model"], d["layer"], int(d["unit"]), list(d["descriptions"]),
                   d["concept"], d["category"], d["kind"], list(d.get("exemplars", [])),
                   [tuple(t) for t in d.get("top", [])], d.get("probe_seed"))


def describe_evidence(ev: Evidence, concepts: Sequence[Concept], rng: random.Random,
                      n: int = 3) -> tuple[int, str, list[str]] | None:
    """(primary concept id, template family, ``n`` distinct phrasings), or None when the masks
    are empty (a dead unit has nothing to describe)."""
    if ev.total <= 0:
        return None
    forms = concept_forms(concepts)
    cats = [c.category for c in concepts]
    iou, cov = ev.iou(), ev.coverage()

    def best(category: str, score: torch.Tensor, exclude: Sequence[int] = ()) -> tuple[int, float]:
        ids = [c.id for c in concepts[1:] if c.category == category and c.id not in exclude]
        if not ids:
            return 0, 0.0
        s = score[ids]
        j = int(s.argmax())
        return ids[j], float(s[j])

    scene, scene_share = best("scene", cov)
    p = int(iou.argmax())
    if p == 0 or float(iou[p]) <= 0:
        return None
    p_iou = float(iou[p])
    if cats[p] == "texture":
        tex2, iou2 = best("texture", iou, exclude=[p])
        if iou2 >= 0.6 * p_iou:
            return p, "texture2", _fill("texture2", rng, n, a=forms[p].adj, b=forms[tex2].adj)
        return p, "texture", _fill("texture", rng, n, a=forms[p].adj)
    if cats[p] == "scene":
        return p, "scene", _fill("scene", rng, n, **_xs(forms[p]))
    f = forms[p]
    cat, name = cats[p], concepts[p].name
    within = ev.joint[p] / max(float(ev.inter[p]), 1.0)  # share of p's masked pixels with c

    def modifier(category: str, min_share: float) -> int:
        c, s = best(category, within)
        return c if s >= min_share else 0

    if cat == "object" and name in REGION_WORDS:
        others = [c.id for c in concepts[1:] if c.name in REGION_WORDS and c.id != p]
        if others:
            r2 = others[int(iou[others].argmax())]
            if float(iou[r2]) >= 0.5 * p_iou and float(cov[r2]) >= 0.2:
                fired = ev.present.any(dim=1)
                both = (ev.present[fired][:, p] & ev.present[fired][:, r2]).float().mean()
                if float(both) < 0.4:  # seen in different images: no spatial relation
                    return p, "region_and", _fill("region_and", rng, n, x=f.sg, X=f.pl,
                                                  y=forms[r2].sg, Y=forms[r2].pl)
                up, lo = (p, r2) if float(ev.ymean[p]) <= float(ev.ymean[r2]) else (r2, p)
                return p, "region_pair", _fill("region_pair", rng, n, u=forms[up].sg,
                                               l=forms[lo].sg, U=forms[up].pl, L=forms[lo].pl)
        mat = modifier("material", 0.6)
        if mat:
            return p, "region_material", _fill("region_material", rng, n, m=forms[mat].adj,
                                               mn=forms[mat].sg, **_xs(f))
        if scene and scene_share >= 0.7:
            return p, "region_scene", _fill("region_scene", rng, n, s=forms[scene].sg,
                                            S=forms[scene].pl, **_xs(f))
        return p, "region", _fill("region", rng, n, **_xs(f))
    if cat == "object":
        col = modifier("color", 0.6)
        if col:
            return p, "thing_color", _fill("thing_color", rng, n, c=forms[col].sg, **_xs(f))
        mat = modifier("material", 0.7) if name != "person" else 0  # not "fabric people"
        if mat:
            return p, "thing_material", _fill("thing_material", rng, n, m=forms[mat].adj,
                                              mn=forms[mat].sg, **_xs(f))
        return p, "thing", _fill("thing", rng, n, **_xs(f))
    if cat == "part":
        obj = modifier("object", 0.6)
        col = modifier("color", 0.7)
        if col and rng.random() < 0.5:
            return p, "part_color", _fill("part_color", rng, n, c=forms[col].sg, **_xs(f))
        if obj:
            return p, "part_of", _fill("part_of", rng, n, o=forms[obj].sg, O=forms[obj].pl,
                                       **_xs(f))
        if col:
            return p, "part_color", _fill("part_color", rng, n, c=forms[col].sg, **_xs(f))
        return p, "part", _fill("part", rng, n, **_xs(f))
    if cat == "color":
        obj = modifier("object", 0.5)
        if obj and concepts[obj].name not in REGION_WORDS:
            return p, "color_on", _fill("color_on", rng, n, c=f.sg, O=forms[obj].pl)
        return p, "color", _fill("color", rng, n, c=f.sg)
    obj = modifier("object", 0.6)  # material
    if obj:
        return p, "material_on", _fill("material_on", rng, n, m=f.adj, mn=f.sg,
                                       O=forms[obj].pl)
    return p, "material", _fill("material", rng, n, m=f.adj, mn=f.sg)


def _xs(f: Forms) -> dict[str, str]:
    return {"x": f.sg, "X": f.pl}


def _fill(family: str, rng: random.Random, n: int, **words: str) -> list[str]:
    texts = list(dict.fromkeys(t.format(**words) for t in TEMPLATES[family]))
    rng.shuffle(texts)
    while len(texts) < n:  # a family with fewer distinct phrasings than n: repeat
        texts.append(texts[len(texts) % max(len(texts), 1)])
    return texts[:n]


def annotate(exemplars, probe: ProbeDataset, model_name: str, n: int = 3,
             seed: int = 0) -> list[UnitAnnotation]:
    """Annotations of every unit of ``exemplars`` with non-empty masks (dead units skipped)."""
    concepts = probe.concepts
    out = []
    for r, ev in enumerate(unit_evidence(exemplars, probe)):
        unit = int(exemplars.units[r])
        rng = random.Random(_seed(seed, model_name, exemplars.layer, unit))
        res = describe_evidence(ev, concepts, rng, n)
        if res is None:
            continue
        cid, kind, texts = res
        iou = ev.iou()
        top = torch.topk(iou, min(5, iou.numel())).indices.tolist()
        out.append(UnitAnnotation(model_name, exemplars.layer, unit, texts, concepts[cid].name,
                                  concepts[cid].category, kind,
                                  exemplars.indices[r].tolist(),
                                  [(concepts[c].name, float(iou[c])) for c in top if c]))
    return out


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def split_units(keys: Sequence[str], val_share: float = 0.2, seed: int = 0
                ) -> tuple[list[str], list[str]]:
    """Split unit keys into (train, validation) *by unit*, seeded and order-independent."""
    ordered = sorted(set(keys))
    random.Random(seed).shuffle(ordered)
    n_val = round(val_share * len(ordered))
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])
