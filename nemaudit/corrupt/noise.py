"""Random noise on the probe images (ICCV'23, "random corruptions").

Noise is added in [0, 1] pixel space, *before* the model's normalisation, and the result is
clamped to [0, 1], as in the paper's code. Each poisoned image draws its noise from a CPU
generator seeded by (seed, kind, dataset index): the same image gets the same noise whatever
the batch, the order or the device.

nemaudit never saves a corrupted image lossily. The reference pipeline did: it wrote its noisy
probes as 8-bit JPEG (quality 75) and dissected those files. ``jpeg=Q`` on a noise kind, or the
``jpeg:quality=Q`` kind alone, reproduces that on purpose, so its share of a measured flip rate
can be told apart from the noise's.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from nemaudit.corrupt.base import Corruption, check_nonneg, image_generator
from nemaudit.errors import SpecError
from nemaudit.probe.base import ProbeBatch

__all__ = ["BernoulliNoise", "GaussianNoise", "JPEGCompression", "NoiseCorruption",
           "UniformNoise", "jpeg_roundtrip"]


@lru_cache(maxsize=8)
def _draw_pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """One pool per (size, process): a pool inherited through ``fork`` has no threads, so
    a forked DataLoader worker gets its own (keyed by pid) instead of waiting forever."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nemaudit-noise")


def check_quality(q: int | None, key: str = "quality") -> int | None:
    if q is None:
        return None
    if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 95:
        raise SpecError(f"{key}={q!r} must be a JPEG quality, an integer in 1..95")
    return int(q)


def jpeg_roundtrip(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] → what saving each as an 8-bit JPEG at ``quality`` and
    reading it back gives (PIL's encoder, 4:2:0 chroma subsampling, as the reference's)."""
    from PIL import Image

    out = []
    for img in images.detach().clamp(0.0, 1.0).cpu():  # one codec call per image
        arr = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        back = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(back.copy()).permute(2, 0, 1))
    if not out:
        return images.clone()
    return torch.stack(out).to(device=images.device, dtype=images.dtype)


class JPEGCompression(Corruption):
    """x' = the 8-bit JPEG of x at ``quality``, read back: the reference's storage artifact."""

    kind = "jpeg"
    params = {"quality": int}
    required = ("quality",)

    def __init__(self, quality: int, *, fraction: float = 1.0,
                 select: str | Iterable[int] = "random", seed: int = 0) -> None:
        super().__init__(fraction=fraction, select=select, seed=seed)
        self.quality = check_quality(quality)

    def _corrupt(self, batch: ProbeBatch, model: torch.nn.Module | None) -> torch.Tensor:
        return jpeg_roundtrip(batch.images, self.quality)  # type: ignore[arg-type]

    def settings(self) -> dict[str, Any]:
        return {"quality": self.quality}


class NoiseCorruption(Corruption):
    """x' = clamp(x + δ, 0, 1), δ drawn per image; subclasses define :meth:`sample_into`."""

    params = {"std": float, "jpeg": int}
    required = ("std",)

    def __init__(self, std: float, *, jpeg: int | None = None, fraction: float = 1.0,
                 select: str | Iterable[int] = "random", seed: int = 0) -> None:
        super().__init__(fraction=fraction, select=select, seed=seed)
        self.std = check_nonneg(std, "std", maximum=10.0)
        self.jpeg = check_quality(jpeg, "jpeg")  # None: the noisy image stays float

    def sample_into(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw one image's perturbation δ into ``out`` (float32, CPU, contiguous) in place,
        before clamping; returns ``out``. In place so that a batch is drawn into one buffer."""
        raise NotImplementedError

    def sample(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        """One image's perturbation δ (float32, CPU), before clamping."""
        return self.sample_into(torch.empty(shape, dtype=torch.float32), generator)

    def _draw_rows(self, out: torch.Tensor, indices: Sequence[int]) -> None:
        g = torch.Generator()
        for row, i in zip(out, indices, strict=True):
            self.sample_into(row, image_generator(self.seed, self.kind, int(i), g))

    def noise(self, batch: ProbeBatch) -> torch.Tensor:
        """The unclamped perturbation of every image of ``batch`` (poisoned or not), drawn
        image by image into one buffer (each image's own generator: batch-independent).

        A CPU generator fills one tensor on one core, so the images are split over
        ``torch.get_num_threads()`` threads (torch releases the GIL while drawing), each with
        its own generator; every image is still seeded by its (seed, kind, index) alone, so
        the values are the same as drawn one after another."""
        out = torch.empty(batch.images.shape, dtype=torch.float32)
        indices = batch.indices.tolist()
        k = min(torch.get_num_threads(), len(indices))
        if k <= 1:
            self._draw_rows(out, indices)
        else:
            pool = _draw_pool(k, os.getpid())
            for done in [pool.submit(self._draw_rows, out[j::k], indices[j::k])
                         for j in range(k)]:
                done.result()  # re-raises a worker's error here
        return out.to(device=batch.images.device, dtype=batch.images.dtype)

    def _corrupt(self, batch: ProbeBatch, model: torch.nn.Module | None) -> torch.Tensor:
        noisy = self.noise(batch).add_(batch.images).clamp_(0.0, 1.0)  # δ + x == x + δ
        return noisy if self.jpeg is None else jpeg_roundtrip(noisy, self.jpeg)

    def settings(self) -> dict[str, Any]:
        return {"std": self.std, "jpeg": self.jpeg}


class GaussianNoise(NoiseCorruption):
    """δ = std·N(0, 1) per pixel and channel."""

    kind = "gaussian"

    def sample_into(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return out.normal_(generator=generator).mul_(self.std)  # == torch.randn(...) * std


class UniformNoise(NoiseCorruption):
    """δ ~ U(−std, std) per pixel and channel."""

    kind = "uniform"

    def sample_into(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return out.uniform_(generator=generator).mul_(2.0).sub_(1.0).mul_(self.std)


class BernoulliNoise(NoiseCorruption):
    """δ = ±std with probability ½ each, per pixel and channel."""

    kind = "bernoulli"

    def sample_into(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        signs = torch.randint(0, 2, out.shape, generator=generator, dtype=torch.int64) * 2 - 1
        return out.copy_(signs).mul_(self.std)
