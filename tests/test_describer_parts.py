"""Describers' plumbing value by value: a per-unit captioner as a describer, every describer
spec and its refusals in full, and the checks on MILAN weights and their metadata."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nemaudit.errors import ModelSpecError, SpecError
from nemaudit.explain.milan.describer import (
    DEFAULT_WEIGHTS,
    USAGE,
    CaptionerDescriber,
    MilanDescriber,
    resolve_describer,
)
from nemaudit.explain.milan.exemplars import ExemplarConfig, compute_exemplars
from tests.helpers import raises_exactly
from tests.test_milan_exemplars import ActsProbe, Identity
from tests.toys import BrightnessDescriber


def _exemplars(units: int = 5):
    acts = torch.rand(9, units, 3, 3, generator=torch.Generator().manual_seed(4))
    return compute_exemplars(Identity(), "feat", ActsProbe(acts, (3, 3)),
                             ExemplarConfig(k=2, eta=0.5))


@pytest.mark.parametrize("per_call", [1, 2, 8, 0])
def test_a_captioner_sees_each_units_images_and_masks_in_order(per_call):
    ex = _exemplars()
    seen = []

    def fn(images, masks):
        seen.append((images, masks))
        return len(seen) * 10  # not a string: the describer makes it one

    got = CaptionerDescriber(fn, rows_per_call=per_call).describe(ex)
    assert got == ["10", "20", "30", "40", "50"]
    all_images = ex.images()
    for r, (images, masks) in enumerate(seen):
        assert torch.equal(images, all_images[r]) and torch.equal(masks, ex.masks[r])
    assert CaptionerDescriber(fn, per_call).rows_per_call == max(1, per_call)


def test_a_captioners_settings_name_it():
    def my_captioner(images, masks):
        return ""

    assert CaptionerDescriber(my_captioner).describe_settings() == {
        "describer": "test_a_captioners_settings_name_it.<locals>.my_captioner"}


def test_describer_specs_and_their_refusals():
    obj = BrightnessDescriber()
    assert resolve_describer(obj) is obj
    got = resolve_describer("python:tests.toys:BrightnessDescriber(levels=2)")
    assert isinstance(got, BrightnessDescriber) and got.levels == 2
    with raises_exactly(SpecError, f"describer spec 'clip:ViT': expected {USAGE}"):
        resolve_describer("clip:ViT")
    with raises_exactly(SpecError, "describer spec 'python:tests.toys:ToyNet': ToyNet has no "
                           "describe(exemplars) method"):
        resolve_describer("python:tests.toys:ToyNet")
    with raises_exactly(SpecError, "describer spec 3: int has no describe(exemplars) method"):
        resolve_describer(3)


def test_a_missing_milan_file_is_a_spec_error_naming_both_files(tmp_path):
    pt = tmp_path / "m.pt"
    want = (f"describer spec 'MILAN: {pt}': MILAN weights not found: {pt} and "
            f"{pt.with_suffix('.json')} are written by python -m nemaudit.training.milan")
    with raises_exactly(SpecError, want):
        resolve_describer(f" MILAN: {pt}")


@pytest.fixture(scope="module")
def milan_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("milan")
    shutil.copy(DEFAULT_WEIGHTS, d / "milan.pt")
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), d / "milan.json")
    return d / "milan.pt"


def test_milan_by_path_with_settings_and_its_identity(milan_copy):
    got = resolve_describer(f"milan:{milan_copy}", beam_size=3, lam=0.0)
    assert isinstance(got, MilanDescriber)
    assert got.settings.beam_size == 3 and got.settings.lam == 0.0
    meta = json.loads(milan_copy.with_suffix(".json").read_text(encoding="utf-8"))
    ident = got.describe_settings()
    assert ident["describer"] == "milan" and ident["settings"] == got.settings.to_dict()
    for key in ("weights_sha256", "encoder", "name"):
        if key in meta:
            assert ident[key] == meta[key]
    assert set(ident) <= {"describer", "settings", "weights_sha256", "encoder", "name"}


def test_bad_milan_metadata_and_weights_are_named(milan_copy, tmp_path):
    pt, meta = tmp_path / "m.pt", tmp_path / "m.json"
    shutil.copy(milan_copy, pt)
    meta.write_text('{"vocab": []}', encoding="utf-8")
    with raises_exactly(ModelSpecError, f"{meta}: not MILAN metadata as nemaudit train-milan "
                                        "writes it (KeyError: 'settings')"):
        MilanDescriber.load(pt)
    good = json.loads(milan_copy.with_suffix(".json").read_text(encoding="utf-8"))
    meta.write_text(json.dumps({**good, "feature_size": good["feature_size"] + 1}),
                    encoding="utf-8")
    with raises_exactly(ValueError, f"encoder gives {good['feature_size']} features, the captioner "
                            f"was trained on {good['feature_size'] + 1}"):
        MilanDescriber.load(pt)
    meta.write_text(json.dumps(good), encoding="utf-8")
    torch.save({"lm": {}}, pt)
    with raises_exactly(ModelSpecError, f"{pt}: not MILAN weights (expected a dict with a "
                                        "'captioner' state_dict, as written by nemaudit "
                                        "train-milan)"):
        MilanDescriber.load(pt)


def test_the_encoder_network_warns_when_its_weights_changed():
    import hashlib
    import warnings

    from nemaudit.explain.milan.describer import _encoder_network
    from nemaudit.model.bundled import BUNDLED

    have = hashlib.sha256(BUNDLED["conceptnet"].weights_path.read_bytes()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = _encoder_network({"spec": "nemaudit:conceptnet", "weights_sha256": have},
                               torch.device("cpu"))
        _encoder_network({}, torch.device("cpu"))  # the bundled ConceptNet by default
    assert isinstance(net, torch.nn.Module)
    want = "f" * 64
    with pytest.warns(UserWarning) as rec:
        _encoder_network({"weights_sha256": want}, torch.device("cpu"))
    assert [str(w.message) for w in rec] == [
        f"the MILAN captioner was trained on the features of nemaudit:conceptnet with weights "
        f"{want[:12]}…, but those weights are now {have[:12]}…; descriptions may be poor "
        "until MILAN is retrained (python -m nemaudit.training.milan)"]


@pytest.fixture(scope="module")
def small_milan(milan_copy):
    return MilanDescriber.load(milan_copy, beam_size=4, max_length=2, lam=3.0)


@pytest.fixture(scope="module")
def layer4_exemplars():
    from nemaudit.model import load_model
    from nemaudit.probe.synthetic import SyntheticProbe

    model = load_model("nemaudit:conceptnet", device="cpu")
    return compute_exemplars(model, "layer4", SyntheticProbe(24, seed=1),
                             ExemplarConfig(k=4, batch_size=24), units=[0, 3, 5, 7])


def test_milans_settings_reach_its_decoding(small_milan, layer4_exemplars):
    assert not small_milan.captioner.training and not small_milan.lm.training
    texts = small_milan.describe(layer4_exemplars)
    cands = small_milan.candidates(layer4_exemplars)
    assert all(len(t.split()) <= 2 for t in texts)
    for text, unit in zip(texts, cands):
        assert 1 <= len(unit) <= 4 and all(len(c[0].split()) <= 2 for c in unit)
        ranked = [c[1] - 3.0 * c[2] for c in unit]
        assert ranked == sorted(ranked, reverse=True)  # reranked with λ = 3
        assert text == unit[0][0]


def test_milan_needs_both_of_its_files(milan_copy, tmp_path):
    pt = tmp_path / "m.pt"
    shutil.copy(milan_copy, pt)  # no .json next to it
    with pytest.raises(FileNotFoundError, match="MILAN weights not found"):
        MilanDescriber.load(pt)
    (tmp_path / "n.json").write_text("{}", encoding="utf-8")  # no .pt next to it
    with pytest.raises(FileNotFoundError, match="MILAN weights not found"):
        MilanDescriber.load(tmp_path / "n.pt")


def test_spec_settings_and_names_reach_their_loaders(monkeypatch):
    seen = {}

    def fake_load(path=None, device="cpu", **settings):
        seen.update(path=path, device=device, **settings)
        return BrightnessDescriber()

    monkeypatch.setattr(MilanDescriber, "load", staticmethod(fake_load))
    resolve_describer("", device="cpu", beam_size=3)
    assert seen == {"path": None, "device": "cpu", "beam_size": 3}
    resolve_describer("milan: /w/m.pt", device="meta", lam=0.5)
    assert seen == {"path": "/w/m.pt", "device": "meta", "beam_size": 3, "lam": 0.5}
    with pytest.raises(SpecError, match=r"^describer spec 'python:tests\.toys:Nope': "):
        resolve_describer("python:tests.toys:Nope")


def test_a_callable_object_is_named_by_its_type():
    class Captions:
        def __call__(self, images, masks):
            return "x"

    assert CaptionerDescriber(Captions()).describe_settings() == {"describer": "Captions"}


def test_milan_without_a_language_model_and_an_encoder_named_in_its_metadata(milan_copy,
                                                                            tmp_path):
    pt = tmp_path / "m.pt"
    state = torch.load(milan_copy, weights_only=True)
    torch.save({"captioner": state["captioner"]}, pt)
    meta = json.loads(milan_copy.with_suffix(".json").read_text(encoding="utf-8"))
    pt.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    assert MilanDescriber.load(pt).lm is None
    from nemaudit.explain.milan.describer import _encoder_network

    with pytest.raises((SpecError, ModelSpecError), match="nope"):
        _encoder_network({"spec": "nemaudit:nope"}, torch.device("cpu"))
