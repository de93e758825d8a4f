"""Noise corruptions and the selection/determinism contract every corruption shares."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemaudit.corrupt import BernoulliNoise, GaussianNoise, UniformNoise
from nemaudit.errors import SpecError
from nemaudit.probe.base import Concept, ProbeBatch, ProbeDataset, ProbeItem, collate

torch.set_num_threads(1)

CONCEPTS = [Concept(0, "-", "none"), Concept(1, "dog", "object"), Concept(2, "cat", "object"),
            Concept(3, "park", "scene")]


class TinyProbe(ProbeDataset):
    """n images; dog (pixel) in i % 4 == 0, cat (pixel) in i % 5 == 0, park (image-level) in
    i % 7 == 0."""

    name = "tiny"

    def __init__(self, n: int = 40, size: int = 16, grey: bool = False) -> None:
        self.concepts = CONCEPTS
        self.seg_size = (8, 8)
        g = torch.Generator().manual_seed(1)
        self.images = torch.full((n, 3, size, size), 0.5) if grey else \
            torch.rand(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> ProbeItem:
        pix = torch.zeros(2, 8, 8, dtype=torch.int64)
        if i % 4 == 0:
            pix[0, :3, :3] = 1
        if i % 5 == 0:
            pix[1, 4:, 4:] = 2
        img = torch.tensor([3] if i % 7 == 0 else [], dtype=torch.int64)
        return ProbeItem(self.images[i], pix, img, i)


def batches(probe: ProbeDataset, size: int, order: list[int] | None = None) -> list[ProbeBatch]:
    order = list(range(len(probe))) if order is None else order
    return [collate([probe[i] for i in order[s:s + size]]) for s in range(0, len(order), size)]


def corrupt_all(corruption, probe, size, order=None) -> dict[int, torch.Tensor]:
    """Dataset index → corrupted image."""
    out = {}
    for b in batches(probe, size, order):
        for i, x in zip(b.indices.tolist(), corruption(b), strict=True):
            out[i] = x
    return out


# --------------------------------------------------------------------------- distributions

def perturbation(cls, std, n=24, size=32, **kw) -> torch.Tensor:
    probe = TinyProbe(n, size, grey=True)
    c = cls(std, **kw)
    return torch.cat([c(b) - b.images for b in batches(probe, 8)])


def test_gaussian_mean_std():
    d = perturbation(GaussianNoise, 0.02)
    assert abs(d.mean().item()) < 1e-3
    assert d.std().item() == pytest.approx(0.02, rel=0.03)


def test_uniform_bounded_mean_std():
    d = perturbation(UniformNoise, 0.05)
    assert d.abs().max().item() <= 0.05 + 1e-6
    assert d.abs().max().item() > 0.049
    assert abs(d.mean().item()) < 2e-3
    assert d.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.03)


def test_bernoulli_values_are_plus_minus_std():
    std = 6 / 255
    probe = TinyProbe(24, 32, grey=True)
    c = BernoulliNoise(std)
    raw = torch.cat([c.noise(b) for b in batches(probe, 8)])
    s32 = torch.tensor(std, dtype=torch.float32)
    assert torch.equal(raw.unique(), torch.stack([-s32, s32]))
    assert torch.equal(raw.abs(), torch.full_like(raw, std))
    assert (raw > 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    d = perturbation(BernoulliNoise, std)
    assert torch.allclose(d.abs(), torch.full_like(d, std), atol=1e-6)


@pytest.mark.parametrize("cls", [GaussianNoise, UniformNoise, BernoulliNoise])
def test_clamped_to_unit_interval(cls):
    probe = TinyProbe(8, 16)
    probe.images[:4] = 0.0
    probe.images[4:] = 1.0
    c = cls(0.5)
    out = torch.cat([c(b) for b in batches(probe, 8)])
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:4] == 0).any() and (out[:4] > 0).any()
    assert (out[4:] == 1).any() and (out[4:] < 1).any()


def test_zero_std_is_identity_and_shape_device_dtype_kept():
    probe = TinyProbe(6)
    b = collate([probe[i] for i in range(6)])
    out = GaussianNoise(0.0)(b)
    assert torch.equal(out, b.images)
    assert out.shape == b.images.shape and out.dtype == b.images.dtype
    assert out.device == b.images.device and out.data_ptr() != b.images.data_ptr()


# --------------------------------------------------------------------------- selection

@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.33, 0.5, 1.0])
def test_random_selection_exact_count(fraction):
    probe = TinyProbe(40)
    c = GaussianNoise(0.1, fraction=fraction, seed=3).bind(probe)
    expected = int(math.floor(fraction * 40 + 0.5))
    idx = c.poisoned_indices(probe)
    assert len(idx) == expected and idx == sorted(idx)
    from_batches = [int(i) for b in batches(probe, 7) for i in b.indices[c.poisoned(b)]]
    assert sorted(from_batches) == idx


def test_unpoisoned_images_bit_identical():
    probe = TinyProbe(40)
    c = UniformNoise(0.1, fraction=0.3, seed=1).bind(probe)
    poisoned = set(c.poisoned_indices(probe))
    out = corrupt_all(c, probe, 9)
    for i, x in out.items():
        if i in poisoned:
            assert not torch.equal(x, probe.images[i])
        else:
            assert torch.equal(x, probe.images[i])


def test_fraction_needs_probe_length():
    probe = TinyProbe(10)
    b = collate([probe[i] for i in range(4)])
    with pytest.raises(SpecError, match="bind"):
        GaussianNoise(0.1, fraction=0.5)(b)
    # fraction 1 and 0 need no binding
    assert GaussianNoise(0.1).poisoned(b).all()
    assert not GaussianNoise(0.1, fraction=0.0).poisoned(b).any()


def test_index_outside_bound_probe_is_an_error():
    c = GaussianNoise(0.1, fraction=0.5).bind(5)
    probe = TinyProbe(10)
    with pytest.raises(SpecError, match="index 9"):
        c.poisoned(collate([probe[9]]))


def test_concept_selection_pixel_and_image_level():
    probe = TinyProbe(40)
    dogs = [i for i in range(40) if i % 4 == 0]
    parks = [i for i in range(40) if i % 7 == 0]
    c = GaussianNoise(0.1, select="concept:dog").bind(probe)
    assert c.poisoned_indices(probe) == dogs
    got = sorted(int(i) for b in batches(probe, 6) for i in b.indices[c.poisoned(b)])
    assert got == dogs
    c = GaussianNoise(0.1, select="concept:park").bind(probe)
    assert c.poisoned_indices(probe) == parks
    c = GaussianNoise(0.1, select={1, 3})
    assert c.poisoned_indices(probe) == sorted(set(dogs) | set(parks))
    c = GaussianNoise(0.1, select="concept:dog|park").bind(probe)
    assert c.poisoned_indices(probe) == sorted(set(dogs) | set(parks))


def test_concept_selection_fraction_is_exact_within_concept():
    probe = TinyProbe(40)
    dogs = {i for i in range(40) if i % 4 == 0}
    c = GaussianNoise(0.1, select="concept:dog", fraction=0.5, seed=2).bind(probe)
    idx = c.poisoned_indices(probe)
    assert len(idx) == 5 and set(idx) <= dogs
    got = sorted(int(i) for b in batches(probe, 6) for i in b.indices[c.poisoned(b)])
    assert got == idx
    # bound to the length only: poisoned_indices(probe) still applies the fraction
    c3 = GaussianNoise(0.1, select="concept:1", fraction=0.5, seed=2).bind(40)
    assert c3.poisoned_indices(probe) == idx
    # eligible indices given by the caller: no scan, same answer
    c2 = GaussianNoise(0.1, select="concept:1", fraction=0.5, seed=2).bind(40, eligible=dogs)
    assert c2.poisoned_indices(40) == idx


def test_concept_selection_unknown_name_and_unbound():
    probe = TinyProbe(8)
    with pytest.raises(SpecError, match="zebra"):
        GaussianNoise(0.1, select="concept:zebra").bind(probe)
    with pytest.raises(SpecError, match="bind"):
        GaussianNoise(0.1, select="concept:dog")(collate([probe[0]]))
    with pytest.raises(SpecError, match="select"):
        GaussianNoise(0.1, select="everything")


# --------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("cls", [GaussianNoise, UniformNoise, BernoulliNoise])
def test_same_seed_same_result_whatever_the_batching(cls):
    probe = TinyProbe(30)
    a = corrupt_all(cls(0.05, fraction=0.5, seed=7).bind(probe), probe, 4)
    order = list(range(30))[::-1]
    b = corrupt_all(cls(0.05, fraction=0.5, seed=7).bind(probe), probe, 11, order)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[i], b[i]) for i in a)


@pytest.mark.parametrize("cls", [GaussianNoise, UniformNoise, BernoulliNoise])
def test_different_seed_different_result(cls):
    probe = TinyProbe(30)
    a = corrupt_all(cls(0.05, seed=1), probe, 8)
    b = corrupt_all(cls(0.05, seed=2), probe, 8)
    assert not any(torch.equal(a[i], b[i]) for i in a)
    sa = cls(0.05, fraction=0.3, seed=1).poisoned_indices(30)
    sb = cls(0.05, fraction=0.3, seed=2).poisoned_indices(30)
    assert len(sa) == len(sb) == 9 and sa != sb


def test_kinds_use_independent_streams():
    probe = TinyProbe(4, grey=True)
    b = collate([probe[i] for i in range(4)])
    g, u = GaussianNoise(0.1, seed=0).noise(b), UniformNoise(0.1, seed=0).noise(b)
    assert torch.corrcoef(torch.stack([g.flatten(), u.flatten()]))[0, 1].abs() < 0.05


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), fraction=st.floats(0, 1), seed=st.integers(0, 2**31),
       size=st.integers(1, 16))
def test_selection_property(n, fraction, seed, size):
    """Exact count, and the same set from any batch size."""
    c = GaussianNoise(0.0, fraction=fraction, seed=seed).bind(n)
    idx = c.poisoned_indices(n)
    assert len(idx) == int(math.floor(fraction * n + 0.5 + 1e-9))
    got = []
    for s in range(0, n, size):
        ind = torch.arange(s, min(n, s + size))
        fake = ProbeBatch(torch.zeros(len(ind), 3, 2, 2), torch.zeros(len(ind), 0, 1, 1,
                                                                      dtype=torch.int64),
                          torch.zeros(len(ind), 0, dtype=torch.int64), ind,
                          torch.full((len(ind),), -1))
        got += ind[c.poisoned(fake)].tolist()
    assert got == idx


# --------------------------------------------------------------------------- settings

def test_describe_is_json_and_validation():
    c = BernoulliNoise(6 / 255, fraction=0.1, seed=4)
    d = c.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["kind"] == "bernoulli" and d["std"] == pytest.approx(6 / 255) and d["shared"]
    for bad in (dict(std=-0.1), dict(std=0.1, fraction=1.5), dict(std=0.1, fraction=-0.1),
                dict(std=float("nan"))):
        with pytest.raises(SpecError):
            GaussianNoise(**bad)


def test_jpeg_is_the_saved_file_read_back():
    """jpeg=Q reproduces the reference's storage: 8-bit JPEG at quality Q, decoded again."""
    import io

    import numpy as np
    from PIL import Image

    from nemaudit.corrupt import JPEGCompression
    from nemaudit.corrupt.noise import jpeg_roundtrip
    from nemaudit.corrupt.spec import parse_corruption

    probe = TinyProbe(6)
    b = batches(probe, 6)[0]
    out = jpeg_roundtrip(b.images, 75)
    arr = (b.images[2].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=75)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) / 255.0
    assert torch.allclose(out[2], torch.tensor(ref, dtype=torch.float32).permute(2, 0, 1))
    assert out.shape == b.images.shape and out.dtype == b.images.dtype
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert float((out - b.images).abs().max()) > 0  # lossy
    alone = JPEGCompression(75).bind(probe)(b)
    assert torch.equal(alone, out)
    noisy = GaussianNoise(0.02, jpeg=75, seed=3).bind(probe)(b)
    plain = GaussianNoise(0.02, seed=3).bind(probe)(b)
    assert torch.allclose(noisy, jpeg_roundtrip(plain, 75))
    c = parse_corruption("gaussian:std=0.02,jpeg=75,fraction=0.5")
    assert c.describe()["jpeg"] == 75 and parse_corruption(c.spec()).describe() == c.describe()
    for bad in ("jpeg:quality=0", "jpeg:quality=99", "gaussian:std=0.1,jpeg=2.5"):
        with pytest.raises(SpecError):
            parse_corruption(bad)
