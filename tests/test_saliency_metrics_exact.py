"""The heatmap metrics and fooling losses, value by value against loops written out here
(Heo et al. 2019, Eqs. 3–6; scipy for ranks). Cases are asymmetric on purpose — rectangular
maps, distinct values, arguments that differ — so that a swapped argument, a wrong axis or an
inverted rule gives a different number, not the same one."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import rankdata, spearmanr

from nemaudit.corrupt.manipulate.losses import (
    FSR_INTERVALS,
    TOPK_SHARE,
    active_loss,
    active_test_losses,
    center_shift,
    center_test_loss,
    frame_mask,
    in_interval,
    location_loss,
    penalty,
    topk_loss,
)
from nemaudit.corrupt.manipulate.losses import test_loss as passive_test_loss
from nemaudit.errors import SpecError
from nemaudit.explain.saliency.metrics import (
    average_ranks,
    center_of_mass,
    min_max,
    spearman,
)


def maps(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- by hand

def frame_by_hand(h: int, w: int, inside: float) -> list[list[float]]:
    kh, kw = max(1, h // 7), max(1, w // 7)
    out = [[1.0] * w for _ in range(h)]
    if h > 2 * kh and w > 2 * kw:
        for r in range(kh, h - kh):
            for c in range(kw, w - kw):
                out[r][c] = inside
    return out


def min_max_by_hand(m: list[list[float]]) -> list[list[float]]:
    lo = min(min(r) for r in m)
    hi = max(max(r) for r in m)
    return [[(v - lo) / (hi - lo + 1e-8) for v in r] for r in m]


def center_by_hand(m: list[list[float]]) -> tuple[float, float]:
    m = min_max_by_hand(m)
    total = sum(sum(r) for r in m) + 1e-8
    row = sum((i + 1) * v for i, r in enumerate(m) for v in r) / total
    col = sum((j + 1) * v for r in m for j, v in enumerate(r)) / total
    return row, col


# --------------------------------------------------------------------------- frame, location

@pytest.mark.parametrize(("h", "w"), [(14, 21), (21, 14), (7, 8), (3, 3), (2, 10), (10, 2),
                                      (1, 1), (16, 16)])
@pytest.mark.parametrize("inside", [0.0, -1.0])
def test_frame_mask_is_a_ring_of_width_side_over_7(h, w, inside):
    got = frame_mask((h, w), inside=inside, dtype=torch.float64)
    assert got.shape == (h, w) and got.dtype == torch.float64
    assert got.tolist() == frame_by_hand(h, w, inside)


def test_frame_of_14_by_21_by_hand():
    m = frame_mask((14, 21))
    assert m[:2].eq(1).all() and m[-2:].eq(1).all()  # ⌊14/7⌋ = 2 rows each side
    assert m[:, :3].eq(1).all() and m[:, -3:].eq(1).all()  # ⌊21/7⌋ = 3 columns each side
    assert m[2:12, 3:18].eq(0).all() and int(m.sum()) == 14 * 21 - 10 * 15


@pytest.mark.parametrize("signed", [False, True])
def test_location_loss_is_the_mean_squared_distance_to_the_frame(signed):
    h = maps(3, 14, 9, seed=1) * 2 - 1
    got = location_loss(h, signed_input_map=signed)
    for i in range(3):
        target = frame_by_hand(14, 9, -1.0 if signed else 0.0)
        want = sum((target[r][c] - float(h[i, r, c])) ** 2
                   for r in range(14) for c in range(9)) / (14 * 9)
        assert float(got[i]) == pytest.approx(want, rel=1e-12)
    assert penalty("location", h, None, signed_input_map=signed).tolist() == got.tolist()
    if not signed:  # the default: a map in [0, 1], the inside of the frame 0
        assert penalty("location", h, None).tolist() == got.tolist()
        assert passive_test_loss("location", h, h).tolist() == got.tolist()
    assert passive_test_loss("location", h, h, signed_input_map=signed).tolist() == got.tolist()


# --------------------------------------------------------------------------- top-k

@pytest.mark.parametrize("share", [TOPK_SHARE, 0.25, 0.01])
def test_topk_loss_reads_the_originals_top_share_of_the_normalised_map(share):
    h, h0 = maps(2, 5, 8, seed=2), maps(2, 5, 8, seed=3)  # 40 pixels, distinct values
    got = topk_loss(h, h0, share)
    k = max(1, int(40 * share))
    for i in range(2):
        flat0 = [float(v) for v in h0[i].flatten()]
        top = sorted(range(40), key=lambda j: -flat0[j])[:k]
        norm = [v for r in min_max_by_hand(h[i].tolist()) for v in r]
        want = sum(norm[j] ** 2 for j in top) / k
        assert float(got[i]) == pytest.approx(want, rel=1e-9)
    assert TOPK_SHARE == 0.1  # the authors' l // 10


def test_topk_loss_keeps_one_pixel_when_the_share_rounds_to_none():
    h = torch.tensor([[[0.0, 0.5, 1.0, 0.25]]], dtype=torch.float64)
    h0 = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]], dtype=torch.float64)  # top pixel: index 1
    assert float(topk_loss(h, h0, 0.1)) == pytest.approx(0.25, rel=1e-6)  # (0.5)² of h's scale


def test_topk_penalty_and_test_loss_are_the_topk_loss():
    h, h0 = maps(2, 10, 10, seed=4), maps(2, 10, 10, seed=5)
    assert penalty("topk", h, h0).tolist() == topk_loss(h, h0).tolist()
    assert passive_test_loss("topk", h, h0).tolist() == topk_loss(h, h0).tolist()


# --------------------------------------------------------------------------- centre of mass

@pytest.mark.parametrize(("h", "w"), [(5, 9), (9, 5), (4, 4)])
def test_center_of_mass_of_the_normalised_map_indices_from_one(h, w):
    m = maps(3, h, w, seed=h * 10 + w) ** 3  # skewed: the centre is off the middle
    got = center_of_mass(m)
    for i in range(3):
        r, c = center_by_hand(m[i].tolist())
        assert got[i].tolist() == pytest.approx([r, c], rel=1e-9)


def test_center_of_mass_of_one_hot_maps():
    m = torch.zeros(2, 3, 6, dtype=torch.float64)
    m[0, 2, 1] = 1.0  # row 3, column 2 (indices from 1)
    m[1, 0, 5] = 4.0  # row 1, column 6
    assert center_of_mass(m).flatten().tolist() == pytest.approx([3.0, 2.0, 1.0, 6.0], rel=1e-7)


def test_center_shift_is_l1_and_the_test_loss_l2_over_the_diagonal():
    h = torch.zeros(1, 4, 7, dtype=torch.float64)
    h0 = torch.zeros(1, 4, 7, dtype=torch.float64)
    h[0, 3, 6] = 1.0  # centre (4, 7)
    h0[0, 1, 2] = 1.0  # centre (2, 3): shift (2, 4)
    assert float(center_shift(h, h0)) == pytest.approx(6.0, rel=1e-7)
    diag = math.sqrt(2) * (7 - 1)  # the longer side: 7
    assert float(center_test_loss(h, h0)) == pytest.approx(math.sqrt(20) / diag, rel=1e-7)
    assert float(penalty("center", h, h0)) == pytest.approx(-6.0, rel=1e-7)  # maximised
    assert float(passive_test_loss("center", h, h0)) == pytest.approx(math.sqrt(20) / diag, rel=1e-7)


@pytest.mark.parametrize(("h", "w"), [(2, 2), (2, 5), (5, 2), (3, 8)])
def test_center_losses_per_image_by_hand(h, w):
    a, b = maps(3, h, w, seed=30) ** 2, maps(3, h, w, seed=31) ** 2
    shift, test = center_shift(a, b), center_test_loss(a, b)
    assert shift.shape == (3,) and test.shape == (3,)
    for i in range(3):
        (r1, c1), (r0, c0) = center_by_hand(a[i].tolist()), center_by_hand(b[i].tolist())
        assert float(shift[i]) == pytest.approx(abs(r1 - r0) + abs(c1 - c0), rel=1e-9)
        diag = math.sqrt(2) * (max(h, w) - 1)
        assert float(test[i]) == pytest.approx(math.hypot(r1 - r0, c1 - c0) / diag, rel=1e-9)


def test_center_test_loss_of_a_one_pixel_map_divides_by_one():
    h = torch.ones(2, 1, 1, dtype=torch.float64)
    assert center_test_loss(h, h).tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- active

def test_active_loss_pairs_each_new_map_with_the_other_classes_original():
    h1, h2, h1_0, h2_0 = (maps(2, 3, 4, seed=s) for s in (10, 11, 12, 13))
    got = active_loss(h1, h2, h1_0, h2_0)
    for i in range(2):
        a = sum((float(x) - float(y)) ** 2 for x, y in zip(h1[i].flatten(), h2_0[i].flatten()))
        b = sum((float(x) - float(y)) ** 2 for x, y in zip(h2[i].flatten(), h1_0[i].flatten()))
        assert float(got[i]) == pytest.approx((a / 12 + b / 12) / 2, rel=1e-12)


def test_active_test_losses_are_the_two_cross_correlations_in_order():
    h1, h2, h1_0, h2_0 = (maps(1, 6, 5, seed=s) for s in (20, 21, 22, 23))
    r1, r2 = active_test_losses(h1, h2, h1_0, h2_0)
    want1 = spearmanr(h1.flatten().numpy(), h2_0.flatten().numpy()).statistic
    want2 = spearmanr(h2.flatten().numpy(), h1_0.flatten().numpy()).statistic
    assert want1 != pytest.approx(want2, abs=1e-3)  # the case tells them apart
    assert float(r1[0]) == pytest.approx(want1, abs=1e-12)
    assert float(r2[0]) == pytest.approx(want2, abs=1e-12)


# --------------------------------------------------------------------------- penalties' errors

def test_penalties_that_need_the_original_say_so():
    h = maps(1, 4, 4, seed=0)
    for fooling in ("topk", "center"):
        with pytest.raises(ValueError, match=f"{fooling} fooling needs the original"):
            penalty(fooling, h, None)
    with pytest.raises(ValueError, match="'active' is no passive fooling"):
        penalty("active", h, h)
    with pytest.raises(ValueError, match="'sideways' is no passive fooling"):
        passive_test_loss("sideways", h, h)


# --------------------------------------------------------------------------- FSR interval

@pytest.mark.parametrize("fooling", sorted(FSR_INTERVALS))
def test_fsr_interval_is_closed_at_both_ends(fooling):
    lo, hi = FSR_INTERVALS[fooling]
    t = torch.tensor([lo, hi, math.nextafter(lo, -1), math.nextafter(hi, 2), (lo + hi) / 2],
                     dtype=torch.float64)
    assert in_interval(t, (lo, hi)).tolist() == [True, True, False, False, True]


def test_the_papers_intervals():
    assert FSR_INTERVALS == {"location": (0.0, 0.2), "topk": (0.0, 0.3),
                             "center": (0.1, 1.0), "active": (0.5, 1.0)}


# --------------------------------------------------------------------------- ranks, ρ

def test_average_ranks_match_scipy_with_ties():
    x = torch.tensor([[3.0, 1.0, 3.0, 0.0, 1.0, 3.0, 7.0],
                      [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    got = average_ranks(x)
    for i in range(2):
        assert got[i].tolist() == rankdata(x[i].numpy()).tolist()


def test_spearman_of_a_constant_map_is_zero_and_keeps_the_dtype():
    a = torch.ones(2, 3, 3)
    b = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    got = spearman(a, b)
    assert got.tolist() == [0.0, 0.0] and got.dtype == torch.float32
    assert spearman(b, b).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert spearman(b, -b).tolist() == pytest.approx([-1.0, -1.0], abs=1e-6)


def test_spearman_of_two_pixel_maps():
    """The smallest rankings: Σ(r − r̄)² = ½, so ρ is ±1 without any floor on the norm."""
    a = torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[2.0, 2.0]]])
    b = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    assert spearman(a, b).tolist() == [1.0, -1.0, 0.0]


def test_spearman_refuses_maps_of_different_shapes_naming_both():
    with pytest.raises(SpecError, match=r"\(1, 2, 3\) vs \(1, 3, 2\); compare maps of the "
                                        r"same interpreter and layer"):
        spearman(torch.zeros(1, 2, 3), torch.zeros(1, 3, 2))


def test_min_max_scales_each_map_on_its_own():
    m = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[-2.0, -2.0], [-2.0, -2.0]]],
                     dtype=torch.float64)
    got = min_max(m)
    assert got[0].flatten().tolist() == pytest.approx([0.0, 0.5, 0.25, 1.0], rel=1e-7)
    assert got[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # constant: 0 (ε keeps it finite)


# --------------------------------------------------------------------------- AOPC's cell order

def bilinear_by_hand(m: list[list[float]], out_h: int, out_w: int) -> list[list[float]]:
    """Bilinear upsampling with half-pixel centres (``align_corners=False``, the rule of
    PIL and of torch's default): source coordinate (d + ½)·in/out − ½, clamped at 0."""
    in_h, in_w = len(m), len(m[0])

    def src(d: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        x = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(x)), n_in - 1)
        return lo, min(lo + 1, n_in - 1), x - lo

    out = []
    for y in range(out_h):
        y0, y1, wy = src(y, in_h, out_h)
        row = []
        for x in range(out_w):
            x0, x1, wx = src(x, in_w, out_w)
            top = m[y0][x0] * (1 - wx) + m[y0][x1] * wx
            bot = m[y1][x0] * (1 - wx) + m[y1][x1] * wx
            row.append(top * (1 - wy) + bot * wy)
        out.append(row)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aopc_cell_order_upsamples_with_half_pixel_centres(seed):
    from nemaudit.explain.saliency.metrics import _cell_order

    small = maps(2, 3, 5, seed=40 + seed) ** 4  # a map coarser than the image, skewed
    got = _cell_order(small, 4, (16, 16))
    for i in range(2):
        up = bilinear_by_hand(small[i].tolist(), 16, 16)
        cells = [sum(up[r][c] for r in range(4 * cy, 4 * cy + 4) for c in range(4 * cx, 4 * cx + 4))
                 / 16 for cy in range(4) for cx in range(4)]
        want = sorted(range(16), key=lambda j: -cells[j])  # stable: ties keep index order
        assert got[i].tolist() == want
