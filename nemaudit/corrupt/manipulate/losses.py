"""The fooling penalties L_F and their per-image test losses (Heo, Joo & Moon 2019, §3–4.2).

Each penalty follows the paper's equation and, where the text leaves a choice open, the
authors' code (github.com/rmrisforbidden/Fooling_Neural_Network-Interpretations,
``module/sequential.py``), since the FSR thresholds are stated on its scales:

- **Location** (Eq. 3): mean over map pixels of (m − h)², m = 1 on a frame of width
  ⌊side/7⌋ and 0 inside. For LRP at the input (a signed map divided by its max) the inside
  of the mask is −1, as in the authors' code. Test loss: the same per image.
- **Top-k** (Eq. 4): on min-max normalised maps, the mean of h² over the pixels that were the
  original model's top k% (k = 10, the authors' ``l // 10``; the paper writes Σ|h|).
- **Center-mass** (Eq. 5): −‖C(h) − C(h₀)‖₁ for training; the test loss is the L2 distance
  of the centres divided by the map's diagonal, √2·(side − 1).
- **Active** (§3.2.2): ‖h_c1(x;w) − h_c2(x;w₀)‖² + ‖h_c2(x;w) − h_c1(x;w₀)‖² (means over
  pixels, halved); the test losses are Spearman's ρ(h_c1(x;w), h_c2(x;w₀)) and
  ρ(h_c2(x;w), h_c1(x;w₀)), one FSR per class.

:data:`FSR_INTERVALS` holds the paper's intervals R (§4.2): Location [0, 0.2] (also in the
text of Appendix C), Top-k [0, 0.3], Center-mass [0.1, 1], Active [0.5, 1] (ρ ≤ 1; the
paper writes [0.5, 2]). This plain-text copy of the paper loses the numbers of §4.2; they are
taken from its published version and can be overridden per audit (``fsr_low``/``fsr_high``).
"""

from __future__ import annotations

import torch

from nemaudit.explain.saliency.metrics import center_of_mass, min_max, spearman

#: fooling → its test-loss interval R for the Fooling Success Rate
FSR_INTERVALS: dict[str, tuple[float, float]] = {
    "location": (0.0, 0.2), "topk": (0.0, 0.3), "center": (0.1, 1.0), "active": (0.5, 1.0),
}
#: Top-k fooling: the share of the original's most relevant pixels that is suppressed
TOPK_SHARE = 0.1


def frame_mask(shape: tuple[int, int], *, inside: float = 0.0, device=None,
               dtype=torch.float32) -> torch.Tensor:
    """The Location target ``[h, w]``: 1 on a frame ⌊side/7⌋ wide, ``inside`` elsewhere."""
    h, w = shape
    kh, kw = max(1, h // 7), max(1, w // 7)
    m = torch.ones(h, w, device=device, dtype=dtype)
    m[kh:h - kh, kw:w - kw] = inside  # empty when a side is at most 2·⌊side/7⌋: all frame
    return m


def location_loss(h: torch.Tensor, signed_input_map: bool = False) -> torch.Tensor:
    """Per image ``[B]``: mean over pixels of (m − h)² (Eq. 3)."""
    m = frame_mask((int(h.shape[1]), int(h.shape[2])), inside=-1.0 if signed_input_map else 0.0,
                   device=h.device, dtype=h.dtype)
    return (m - h).square().flatten(1).mean(1)


def topk_loss(h: torch.Tensor, h0: torch.Tensor, share: float = TOPK_SHARE) -> torch.Tensor:
    """Per image ``[B]``: mean of h² (min-max normalised) over the original's top pixels."""
    n = h.flatten(1).shape[1]
    k = max(1, int(n * share))
    idx = min_max(h0).flatten(1).topk(k, dim=1).indices
    return min_max(h).flatten(1).gather(1, idx).square().mean(1)


def center_shift(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: ‖C(h) − C(h₀)‖₁, the quantity Center-mass fooling maximises."""
    return (center_of_mass(h) - center_of_mass(h0)).abs().sum(1)


def center_test_loss(h: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: ‖C(h) − C(h₀)‖₂ over the map's diagonal (√2·(side − 1))."""
    side = max(h.shape[1], h.shape[2])
    return (center_of_mass(h) - center_of_mass(h0)).norm(dim=1) / (2 ** 0.5 * max(side - 1, 1))


def active_loss(h1: torch.Tensor, h2: torch.Tensor, h1_0: torch.Tensor,
                h2_0: torch.Tensor) -> torch.Tensor:
    """Per image ``[B]``: the swap penalty, (‖h1 − h2₀‖² + ‖h2 − h1₀‖²)/2 (pixel means)."""
    return ((h1 - h2_0).square().flatten(1).mean(1)
            + (h2 - h1_0).square().flatten(1).mean(1)) / 2


def active_test_losses(h1: torch.Tensor, h2: torch.Tensor, h1_0: torch.Tensor,
                       h2_0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ρ(h_c1(x;w), h_c2(x;w₀)), ρ(h_c2(x;w), h_c1(x;w₀))), each ``[B]``."""
    return spearman(h1, h2_0), spearman(h2, h1_0)


def penalty(fooling: str, h: torch.Tensor, h0: torch.Tensor | None, *,
            signed_input_map: bool = False) -> torch.Tensor:
    """The passive penalty L_F per image ``[B]`` (minimised in training)."""
    if fooling == "location":
        return location_loss(h, signed_input_map)
    if h0 is None:
        raise ValueError(f"{fooling} fooling needs the original model's maps")
    if fooling == "topk":
        return topk_loss(h, h0)
    if fooling == "center":
        return -center_shift(h, h0)
    raise ValueError(f"{fooling!r} is no passive fooling")


def test_loss(fooling: str, h: torch.Tensor, h0: torch.Tensor, *,
              signed_input_map: bool = False) -> torch.Tensor:
    """The passive test loss t_i per image ``[B]`` (§4.2)."""
    if fooling == "location":
        return location_loss(h, signed_input_map)
    if fooling == "topk":
        return topk_loss(h, h0)
    if fooling == "center":
        return center_test_loss(h, h0)
    raise ValueError(f"{fooling!r} is no passive fooling")


def in_interval(t: torch.Tensor, interval: tuple[float, float]) -> torch.Tensor:
    """Per image: whether its test loss lies in R (closed), the FSR's indicator (Eq. 6)."""
    lo, hi = interval
    return (t >= lo) & (t <= hi)
