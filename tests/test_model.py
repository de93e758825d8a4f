"""nemaudit.model: specs, safe checkpoints, normalisation, layer hooks, device, training."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from nemaudit.errors import ModelSpecError
from nemaudit.model import (
    BUNDLED,
    LayerRecorder,
    NormalizedModel,
    layer_names,
    load_model,
    resolve_device,
    resolve_layer,
)
from nemaudit.model.bundled import ConceptNet
from nemaudit.model.layers import default_layer
from nemaudit.model.load import IMAGENET_MEAN, IMAGENET_STD, Normalize, parse_normalize
from nemaudit.probe.base import Concept, ProbeDataset, ProbeItem

torch.set_num_threads(1)


class Pickled:
    """A custom class: a checkpoint containing one must be refused by weights_only=True."""


def tiny_net() -> nn.Module:
    """Target of the ``package.module:function`` spec tests."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())


@pytest.fixture(scope="module")
def resnet_sd() -> dict[str, torch.Tensor]:
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=7).state_dict()


# ----------------------------------------------------------------------------- loading

@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix"])
def test_torchvision_checkpoint_forms(tmp_path, resnet_sd, wrap):
    sd = resnet_sd
    if wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    elif wrap == "model":
        obj = {"model": sd}
    elif wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = sd
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    m = load_model("torchvision:resnet18(num_classes=7)", weights=path, device="cpu")
    assert isinstance(m, NormalizedModel) and not m.training
    assert torch.equal(m.model.fc.weight, sd["fc.weight"])
    assert torch.equal(m.model.layer4[1].bn2.running_mean, sd["layer4.1.bn2.running_mean"])
    assert m.model.fc.out_features == 7
    assert m.normalize_spec == "imagenet" and m.normalize_spec.std == IMAGENET_STD


def test_torchvision_without_weights_is_random_and_never_downloads(monkeypatch):
    import torchvision
    calls = []
    real = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model",
                        lambda name, **kw: calls.append(kw) or real(name, **kw))
    m = load_model("torchvision:resnet18", weights="random", device="cpu")
    assert calls == [{"weights": None}]
    assert "layer4" in layer_names(m) and "model.layer4" not in layer_names(m)
    with pytest.raises(ModelSpecError, match="never downloads"):
        load_model("torchvision:resnet18(weights='DEFAULT')")
    # no weights at all is an explicit choice, not a silent random network
    with pytest.raises(ModelSpecError, match="has no weights.*weights='random'"):
        load_model("torchvision:resnet18", device="cpu")


def test_safetensors_checkpoints_load_and_random_weights_are_explicit(tmp_path):
    from safetensors.torch import save_file

    from tests.toys import ToyNet

    net = ToyNet(seed=3)
    path = tmp_path / "toy.safetensors"
    save_file(net.state_dict(), str(path))
    m = load_model(f"{Path(__file__).with_name('toys.py')}:ToyNet", weights=path,
                   normalize="none", device="cpu")
    for k, v in net.state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelSpecError, match="bad.safetensors"):
        load_model("torchvision:resnet18", weights=tmp_path / "bad.safetensors")
    bundled = load_model("nemaudit:conceptnet", device="cpu")
    random = load_model("nemaudit:conceptnet", weights="random", device="cpu")
    assert bundled.fingerprint() != random.fingerprint()


def test_strict_mismatch_names_keys(tmp_path, resnet_sd):
    sd = dict(resnet_sd)
    del sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ModelSpecError) as e:
        load_model("torchvision:resnet18(num_classes=7)", weights=tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing" in msg and "layer1.0.conv1.weight" in msg
    assert "unexpected" in msg and "extra.weight" in msg
    assert str(tmp_path / "bad.pt") in msg
    torch.save(resnet_sd, tmp_path / "seven.pt")
    with pytest.raises(ModelSpecError, match=r"shape mismatch.*fc\.weight"):
        load_model("torchvision:resnet18", weights=tmp_path / "seven.pt")  # 1000 classes


def test_missing_and_garbage_checkpoint(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelSpecError, match="checkpoint not found: .*nope.pt"):
        load_model("torchvision:resnet18", weights=missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ModelSpecError, match="garbage.pt: not a readable torch checkpoint"):
        load_model("torchvision:resnet18", weights=garbage)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelSpecError, match="expected a state_dict"):
        load_model("torchvision:resnet18", weights=tmp_path / "list.pt")


def test_weights_only_refuses_pickled_objects(tmp_path, monkeypatch):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "obj": Pickled()}, path)
    with pytest.raises(ModelSpecError, match=r"Pickled.*weights_only=True"):
        load_model(f"{__name__}:tiny_net", weights=path)
    # and torch.load is always asked for weights_only=True on the CPU
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    torch.save(tiny_net().state_dict(), tmp_path / "ok.pt")
    load_model(f"{__name__}:tiny_net", weights=tmp_path / "ok.pt")
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_function_specs(tmp_path, monkeypatch):
    m = load_model(f"{__name__}:tiny_net", normalize="none")
    assert layer_names(m) == ["0", "1"]
    m = load_model("nemaudit.model.bundled:conceptnet(num_classes=3, width=4)")
    assert isinstance(m.model, ConceptNet) and m.model.fc.out_features == 3
    src = tmp_path / "my_models.py"
    src.write_text(textwrap.dedent("""
        import torch.nn as nn
        def build(channels=2):
            return nn.Conv2d(3, channels, 1)
        def not_a_module():
            return 42
        def broken():
            raise RuntimeError("boom")
    """))
    assert load_model(f"{src}:build(channels=5)").model.out_channels == 5
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_model("my_models:build").model.out_channels == 2
    with pytest.raises(ModelSpecError, match="returned int, expected a torch.nn.Module"):
        load_model("my_models:not_a_module")
    with pytest.raises(ModelSpecError, match="raised RuntimeError: boom"):
        load_model("my_models:broken")
    with pytest.raises(ModelSpecError, match="has no attribute 'buld'.*Did you mean: build"):
        load_model("my_models:buld")
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_pkg_xyz.models'"):
        load_model("no_such_pkg_xyz.models:build")
    with pytest.raises(ModelSpecError, match="only literal keyword arguments"):
        load_model("my_models:build(__import__('os'))")


@pytest.mark.parametrize("spec, pattern", [
    ("", "empty model spec"),
    ("resnet18", "unrecognised model spec"),
    ("torchvision:", "unrecognised model spec"),
    ("torchvision:resnet1888", "unknown torchvision model.*Did you mean: resnet18"),
    ("nemaudit:nope", "unknown bundled model 'nope'.*nemaudit:conceptnet"),
    ("hf:microsoft/resnet-18", "never downloads"),
    ("https://example.com/x.pt", "URLs are not supported"),
    ("weights.pth", "checkpoint not found"),
])
def test_bad_specs(spec, pattern):
    with pytest.raises(ModelSpecError, match=pattern):
        load_model(spec)


def test_checkpoint_given_as_spec_explains_weights(tmp_path):
    torch.save(tiny_net().state_dict(), tmp_path / "m.pt")
    with pytest.raises(ModelSpecError, match="not the architecture.*--weights"):
        load_model(str(tmp_path / "m.pt"))


def test_bundled_without_trained_weights(monkeypatch, tmp_path):
    from dataclasses import replace
    monkeypatch.setitem(BUNDLED, "conceptnet", replace(BUNDLED["conceptnet"],
                                                       weights_dir=tmp_path))
    with pytest.raises(ModelSpecError, match="no trained weights.*nemaudit train"):
        load_model("nemaudit:conceptnet")


def test_fingerprint_tracks_weights_and_normalisation():
    torch.manual_seed(0)
    a = load_model(f"{__name__}:tiny_net")
    b = NormalizedModel(a.model, "imagenet")
    assert a.fingerprint() == b.fingerprint()
    assert NormalizedModel(a.model, "none").fingerprint() != a.fingerprint()
    with torch.no_grad():
        a.model[0].weight[0, 0, 0, 0] += 1
    assert a.fingerprint() != NormalizedModel(tiny_net(), "imagenet").fingerprint()


# ----------------------------------------------------------------------------- normalisation

def test_normalisation_is_applied_exactly():
    torch.manual_seed(0)
    inner = tiny_net()
    x = torch.rand(2, 3, 9, 9)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    wrapped = NormalizedModel(inner, "imagenet").eval()
    assert torch.allclose(wrapped(x), inner((x - mean) / std), atol=0, rtol=0)
    assert torch.equal(NormalizedModel(inner, "none")(x), inner(x))
    custom = NormalizedModel(inner, ((0.5, 0.4, 0.3), (0.1, 0.2, 0.3)))
    manual = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(custom(x), inner(manual), atol=0, rtol=0)
    assert custom.normalize_spec.mean == (0.5, 0.4, 0.3)
    # the spec is a JSON-able string that parses back to the same normalisation
    assert json.loads(json.dumps({"n": custom.normalize_spec}))["n"] == "0.5,0.4,0.3/0.1,0.2,0.3"
    again = parse_normalize(str(custom.normalize_spec))
    assert (again.mean, again.std) == (custom.normalize_spec.mean, custom.normalize_spec.std)
    # the wrapper's state_dict is the inner one: normalisation never leaks into checkpoints
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in inner.state_dict()}


def test_parse_normalize_forms():
    assert parse_normalize("ImageNet").mean == IMAGENET_MEAN
    assert parse_normalize("none").mean is None
    nd = parse_normalize("netdissect")
    x = torch.rand(1, 3, 4, 4)
    ref = (255 * x - torch.tensor([124.6901, 118.6897, 109.5388]).view(1, 3, 1, 1)) / (255 * 0.224)
    assert torch.allclose(Normalize(nd)(x), ref, atol=1e-5)
    assert parse_normalize("0.5,0.5,0.5/0.25,0.25,0.25").std == (0.25,) * 3
    assert parse_normalize({"mean": 0.5, "std": 0.5}).mean == (0.5,)
    for bad in ("imagenett", (1, 2, 3), ((0.5,) * 3, (0.0,) * 3), "a,b/c"):
        with pytest.raises(ModelSpecError):
            parse_normalize(bad)


# ----------------------------------------------------------------------------- layers

def test_wrong_layer_lists_valid_names():
    m = load_model("torchvision:resnet18", weights="random")
    with pytest.raises(ModelSpecError) as e:
        resolve_layer(m, "layer5")
    msg = str(e.value)
    assert "Did you mean: layer4" in msg or "layer4" in msg.split("Valid")[0]
    assert "Valid layer names: conv1, bn1, relu, maxpool, layer1" in msg
    assert resolve_layer(m, "model.layer4") is m.model.layer4
    assert resolve_layer(m, "layer4.1.conv2") is m.model.layer4[1].conv2
    with pytest.raises(ModelSpecError):
        resolve_layer(m, "")
    assert default_layer(m) == "layer4"


def _net(width: int = 4) -> NormalizedModel:
    torch.manual_seed(0)
    return NormalizedModel(ConceptNet(num_classes=5, num_concepts=6, width=width)).eval()


def test_recorder_shapes_and_cleanup():
    m = _net()
    x = torch.rand(3, 3, 64, 64)
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    with LayerRecorder(m, names) as rec:
        out = rec.run(x)
    assert out.shape == (3, 5)
    shapes = {n: tuple(rec[n].shape) for n in names}
    assert shapes == {"conv1": (3, 4, 32, 32), "layer1": (3, 4, 32, 32),
                      "layer2": (3, 8, 16, 16), "layer3": (3, 16, 8, 8),
                      "layer4": (3, 32, 4, 4)}
    assert not rec["layer4"].requires_grad
    assert all(not mod._forward_hooks for mod in m.modules())  # hooks removed
    with LayerRecorder(m, "layer2"):
        m(x)  # direct calls record too
        pass
    with pytest.raises(ModelSpecError, match="no layer named 'layer9'"):
        LayerRecorder(m, ["layer4", "layer9"])
    m.model.unused = nn.ReLU()  # defined but never called by forward()
    for stop in (False, True):
        with LayerRecorder(m, ["layer1", "unused"], stop_at_layer=stop) as rec, \
                pytest.raises(ModelSpecError, match=r"\['unused'\] never ran"):
            rec.run(x)


def test_stop_at_layer_gives_identical_activations_and_skips_the_rest():
    m = _net()
    x = torch.rand(4, 3, 64, 64)
    with LayerRecorder(m, ["layer2", "conv1"]) as full:
        full.run(x)
    later_calls = []
    h = m.model.layer3.register_forward_hook(lambda mod, inp, out: later_calls.append(len(out)))
    try:
        with LayerRecorder(m, ["layer2", "conv1"], stop_at_layer=True) as rec:
            for _ in range(2):
                later_calls.clear()
                assert rec.run(x) is None and rec.stopped
                assert 4 not in later_calls  # layer3 never ran on the real batch
                assert later_calls in ([1], [])  # only the one-image dry run, first time
                for n in ("conv1", "layer2"):
                    assert torch.equal(rec[n], full[n])
            # the presence head path stops too
            assert rec.run(x, method="presence_logits") is None
            assert torch.equal(rec["layer2"], full["layer2"])
    finally:
        h.remove()
    # asking for the last layer: nothing to skip, output still returned identically
    with LayerRecorder(m, "layer4", stop_at_layer=True) as rec:
        rec.run(x)
        assert torch.equal(rec["layer4"], m.model.features(m.normalize(x)))


def test_stop_at_layer_with_a_module_called_twice():
    """A shared module's recorded output is its last call, stopped or not."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(self.act(x - 0.5))))

    torch.manual_seed(0)
    m = NormalizedModel(Shared(), "none").eval()
    x = torch.rand(3, 3, 8, 8)
    expected = torch.relu(m.model.conv(torch.relu(x - 0.5)))
    for stop in (False, True):
        with LayerRecorder(m, "act", stop_at_layer=stop) as rec:
            for _ in range(2):
                rec.run(x)
                assert torch.equal(rec["act"], expected)
    m.train()  # train mode: no dry run, the first batch runs in full, later ones stop
    with LayerRecorder(m, "act", stop_at_layer=True) as rec:
        assert rec.run(x) is not None
        assert rec.run(x) is None and torch.equal(rec["act"], expected)


def test_recorded_output_survives_a_later_inplace_op():
    torch.manual_seed(0)
    m = NormalizedModel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                      nn.ReLU(inplace=True)), "none").eval()
    x = torch.rand(2, 3, 8, 8)
    expected = m.model[1](m.model[0](x))
    assert (expected < 0).any()
    with LayerRecorder(m, "1") as rec:
        rec.run(x)
    assert torch.equal(rec["1"], expected)


def test_keep_graph_allows_backprop_through_a_stopped_pass():
    m = _net()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    with LayerRecorder(m, "layer2", keep_graph=True, stop_at_layer=True) as rec:
        rec.run(x)
        rec.run(x)  # after the dry run, this one stops
        assert rec.stopped
        rec["layer2"][:, 0].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- device

def test_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ModelSpecError, match="CUDA is not available"):
            resolve_device(spec)
    with pytest.raises(ModelSpecError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ModelSpecError, match="CUDA is not available"):
        load_model(f"{__name__}:tiny_net", device="cuda")


# ----------------------------------------------------------------------------- training

class FakeWorld(ProbeDataset):
    """A colour background (the class) with a bright square (an object with a part)."""

    name = "fake"

    def __init__(self, n: int, seed: int, size: int = 48, seg: int = 24) -> None:
        self.n, self.seed, self.size, self.seg = n, seed, size, seg
        self.seg_size = (seg, seg)
        self.concepts = [Concept(0, "-", "none"), Concept(1, "square", "object"),
                         Concept(2, "corner", "part"), Concept(3, "red", "scene"),
                         Concept(4, "green", "scene"), Concept(5, "blue", "scene")]
        self.class_names = ["red", "green", "blue"]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> ProbeItem:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        target = int(torch.randint(3, (1,), generator=g))
        img = torch.rand(3, self.size, self.size, generator=g) * 0.3
        img[target] += 0.5
        labels = torch.zeros(1, self.seg, self.seg, dtype=torch.int64)
        if torch.rand(1, generator=g) < 0.5:
            r = self.seg // 4
            y0, x0 = (int(v) for v in torch.randint(0, self.seg - r, (2,), generator=g))
            s = self.size // self.seg
            img[:, y0 * s:(y0 + r) * s, x0 * s:(x0 + r) * s] = 1.0
            labels[0, y0:y0 + r, x0:x0 + r] = 1
            labels[0, y0, x0] = 2
        return ProbeItem(img.clamp(0, 1), labels, torch.tensor([3 + target]), i, target)


def test_train_smoke_writes_loadable_deterministic_weights(tmp_path):
    from nemaudit.training.conceptnet import materialize, train_bundled

    ds = FakeWorld(4, seed=1)
    mat = materialize(ds, min_pixels=2, num_concepts=ds.num_concepts)
    assert mat.images.dtype == torch.uint8 and mat.presence.shape == (4, 6)
    assert not mat.presence[:, 0].any()
    for i in range(4):
        item = ds[i]
        assert mat.presence[i, 3 + item.target]  # image-level label
        assert bool(mat.presence[i, 1]) == bool((item.pixel_labels == 1).sum() >= 2)
        assert not mat.presence[i, 2]  # 1 pixel < min_pixels

    kw = dict(n_train=64, n_val=32, epochs=1, width=4, batch_size=32, progress=False,
              image_size=48, seg_size=24, dataset_factory=lambda n, s: FakeWorld(n, s))
    metrics = train_bundled(tmp_path / "a", **kw)
    for key in ("val_class_accuracy", "val_presence_mean_auc", "train_images_per_second"):
        assert key in metrics
    meta = json.loads((tmp_path / "a" / "conceptnet.json").read_text())
    assert meta["arch"] == {"num_classes": 3, "num_concepts": 6, "width": 4}
    assert meta["class_names"] == ["red", "green", "blue"]
    assert meta["normalize"] == BUNDLED["conceptnet"].normalize
    assert meta["command"].startswith("python -m nemaudit.training.conceptnet --out ")
    assert meta["probe"]["train_seed"] == 1 and meta["probe"]["val_seed"] == 2
    assert meta["weights_dtype"] == "float32"

    m = load_model("nemaudit:conceptnet", weights=tmp_path / "a" / "conceptnet.pt")
    assert m.default_layer == "layer4" and m.meta["class_names"][0] == "red"
    assert m.normalize_spec == meta["normalize"]
    x = torch.rand(2, 3, 48, 48)
    assert m(x).shape == (2, 3) and m.presence_logits(x).shape == (2, 6)

    # same seed -> same weights
    train_bundled(tmp_path / "c", **kw)
    a = torch.load(tmp_path / "a" / "conceptnet.pt", weights_only=True)
    c = torch.load(tmp_path / "c" / "conceptnet.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_train_cli_parses_options(monkeypatch, tmp_path):
    import nemaudit.training.conceptnet as tr
    seen = {}
    monkeypatch.setattr(tr, "train_bundled", lambda out, **kw: seen.update(out=out, **kw))
    assert tr.main(["--out", str(tmp_path), "--epochs", "2", "--lr", "0.01", "--no-progress",
                    "--device", "cpu"]) == 0
    assert seen["out"] == tmp_path and seen["epochs"] == 2 and seen["lr"] == 0.01
    assert seen["progress"] is False and seen["n_train"] == tr.DEFAULTS["n_train"]
    assert seen["command"].endswith("--epochs 2 --lr 0.01 --no-progress --device cpu")


def test_train_on_the_concept_world_smoke(tmp_path):
    pytest.importorskip("nemaudit.probe.synthetic")
    from nemaudit.training.conceptnet import train_bundled

    metrics = train_bundled(tmp_path, n_train=16, n_val=8, epochs=1, width=2, batch_size=8,
                            progress=False)
    assert 0.0 <= metrics["val_class_accuracy"] <= 1.0
    m = load_model("nemaudit:conceptnet", weights=tmp_path / "conceptnet.pt")
    from nemaudit.probe.synthetic import SyntheticProbe
    probe = SyntheticProbe(2, 0)
    assert m.model.num_concepts == probe.num_concepts
    assert m.model.num_classes == len(probe.class_names)
