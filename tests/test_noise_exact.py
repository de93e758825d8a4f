"""Noise corruptions, value for value: the corrupted image is clamp(x + δ) with δ from the
image's own (seed, kind, index) generator; JPEG is PIL's codec at the stated quality; the
settings' bounds and names are the documented ones (the mutants that survived
tests/test_corrupt_noise.py's statistical checks)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from nemaudit.corrupt import BernoulliNoise, GaussianNoise, UniformNoise
from nemaudit.corrupt.base import derive_seed
from nemaudit.corrupt.noise import JPEGCompression, check_quality, jpeg_roundtrip
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeBatch


def _batch(n: int = 3, size: int = 8, seed: int = 0) -> ProbeBatch:
    g = torch.Generator().manual_seed(seed)
    return ProbeBatch(torch.rand(n, 3, size, size, generator=g),
                      torch.zeros(n, 0, 4, 4, dtype=torch.int64),
                      torch.zeros(n, 0, dtype=torch.int64),
                      torch.tensor([5, 2, 9][:n]), torch.full((n,), -1))


@pytest.mark.parametrize("cls, draw", [
    (GaussianNoise, lambda g, s: torch.randn(s, generator=g) * 0.1),
    (UniformNoise, lambda g, s: (torch.rand(s, generator=g) * 2.0 - 1.0) * 0.1),
    (BernoulliNoise, lambda g, s: (torch.randint(0, 2, s, generator=g) * 2 - 1).float() * 0.1),
])
def test_noise_is_the_images_own_draw_added_then_clamped(cls, draw):
    b = _batch()
    c = cls(0.1, seed=4)
    out = c(b)
    for row, index in enumerate(b.indices.tolist()):
        g = torch.Generator().manual_seed(derive_seed(4, c.kind, index))
        delta = draw(g, b.images.shape[1:])
        assert torch.equal(c.noise(b)[row], delta)
        assert torch.equal(out[row], (b.images[row] + delta).clamp(0.0, 1.0))


def test_default_seed_is_zero_and_settings_reach_the_base():
    b = _batch()
    assert torch.equal(GaussianNoise(0.1)(b), GaussianNoise(0.1, seed=0)(b))
    c = GaussianNoise(0.1, fraction=0.5, select="random", seed=3)
    assert (c.fraction, c.select_spec, c.seed) == (0.5, "random", 3)
    j = JPEGCompression(50, fraction=0.25, seed=2)
    assert (j.fraction, j.seed, j.settings()) == (0.25, 2, {"quality": 50})


def test_quality_bounds_and_messages():
    assert check_quality(1) == 1 and check_quality(95) == 95 and check_quality(None) is None
    for bad in (0, 96, True, 50.0):
        with pytest.raises(SpecError, match=re.escape(
                f"quality={bad!r} must be a JPEG quality, an integer in 1..95")):
            check_quality(bad)
    with pytest.raises(SpecError, match=r"^jpeg=96 must be a JPEG quality"):
        GaussianNoise(0.1, jpeg=96)


def test_std_bounds_and_messages():
    assert GaussianNoise(10.0).std == 10.0
    with pytest.raises(SpecError, match=re.escape("std=10.5 must be <= 10 (pixels lie in [0, 1])")):
        GaussianNoise(10.5)
    with pytest.raises(SpecError, match=re.escape("std=-0.1 must be >= 0")):
        UniformNoise(-0.1)


def test_jpeg_roundtrip_is_pils_codec_at_that_quality():
    b = _batch(2, 16)
    x = b.images.clone()
    x[0, :, 0, 0] = 1.7  # out of range: clamped to 1 before encoding
    x[1, :, 0, 0] = -0.3
    for q in (10, 90):
        got = jpeg_roundtrip(x, q)
        for k in range(2):
            arr = (x[k].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            want = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
            assert torch.equal(got[k], torch.from_numpy(want.copy()).permute(2, 0, 1))
        assert got.dtype == x.dtype and got.shape == x.shape
    assert not torch.equal(jpeg_roundtrip(x, 10), jpeg_roundtrip(x, 90))
    assert JPEGCompression(30)(b).dtype == torch.float32


def test_dtype_follows_the_images_and_an_empty_batch_gets_no_noise():
    b = _batch()
    b64 = ProbeBatch(b.images.double(), b.pixel_labels, b.image_labels, b.indices, b.targets)
    assert GaussianNoise(0.1).noise(b64).dtype == torch.float64
    assert jpeg_roundtrip(b64.images, 50).dtype == torch.float64
    empty = ProbeBatch(b.images[:0], b.pixel_labels[:0], b.image_labels[:0], b.indices[:0],
                       b.targets[:0])
    z = GaussianNoise(0.1).noise(empty)
    assert z.shape == (0, 3, 8, 8) and z.dtype == torch.float32


def test_jpeg_defaults_and_selection_reach_the_base():
    j = JPEGCompression(50)
    assert (j.seed, j.fraction, j.select_spec) == (0, 1.0, "random")
    assert JPEGCompression(50, select=[1, 2]).select_spec != "random"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_noise_drawn_over_threads_equals_drawn_image_by_image(threads, monkeypatch):
    """The threaded draw splits the batch over threads; each image's δ must still be its own
    generator's draw, whatever the thread count (1 draws in order; 3 does not divide 8)."""
    g = torch.Generator().manual_seed(1)
    b = ProbeBatch(torch.rand(8, 3, 8, 8, generator=g), torch.zeros(8, 0, 4, 4, dtype=torch.int64),
                   torch.zeros(8, 0, dtype=torch.int64), torch.tensor([7, 0, 3, 11, 2, 5, 9, 4]),
                   torch.full((8,), -1))
    c = GaussianNoise(0.1, seed=6)
    expect = torch.stack([torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(
        derive_seed(6, "gaussian", i))) * 0.1 for i in b.indices.tolist()])
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert torch.equal(c.noise(b), expect)


def test_an_error_while_drawing_on_a_thread_reaches_the_caller(monkeypatch):
    class Broken(GaussianNoise):
        def sample_into(self, out, generator):
            raise RuntimeError("draw failed")

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with pytest.raises(RuntimeError, match="draw failed"):
        Broken(0.1).noise(_batch())
