"""The top-η quantile state on hand cases: NetDissect-Lite's level rule, the lower bound before
and after the buffer fills, merging (with image ids) and every refusal's message."""

from __future__ import annotations

import math

import pytest
import torch

from nemaudit.explain.common.quantile import (
    TopQuantile,
    buffer_size,
    read_quantile,
    reference_level,
)


def test_reference_level_is_netdissect_lites_readout_index():
    assert reference_level(0.005) == 994 / 999
    assert reference_level(0.0004) == 998 / 999  # int(999.6 − 1): the 1000 levels matter
    assert reference_level(0.5) == 499 / 999
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^eta must be in \(0, 1\), got {bad}$"):
            reference_level(bad)


def test_buffer_size_and_read_quantile_by_hand():
    assert buffer_size(10, 0.5) == 10 - math.floor(0.5 * 9)  # ranks 4 and 5 of 0..9: top 6
    assert buffer_size(1, 0.9) == 1
    with pytest.raises(ValueError, match="^cannot take a quantile of an empty set$"):
        buffer_size(0, 0.5)
    values = torch.tensor([[3.0, 9.0, 1.0, 7.0, 5.0]])  # sorted: 1 3 5 7 9
    assert read_quantile(values, 5, 0.5).tolist() == [5.0]
    assert read_quantile(values, 5, 0.6).tolist() == pytest.approx([5.8])  # 5 + 0.4·2
    assert read_quantile(values[:, [1, 3]], 5, 0.9).tolist() == pytest.approx([8.2])
    with pytest.raises(ValueError, match="^no activations seen: the probe is empty$"):
        read_quantile(values, 0, 0.5)


def test_lower_bound_is_minus_infinity_until_the_buffer_is_full():
    q = TopQuantile.empty(2, 100, 0.9)  # needs the top 100 − ⌊0.9·99⌋ = 11 values
    assert q.needed == 11 and q.capacity == 11
    q.update(torch.arange(10, dtype=torch.float32).reshape(1, 2, 5))  # 5 values a unit
    assert q.lower_bound().tolist() == [-math.inf, -math.inf]
    q.update(torch.arange(10, 30, dtype=torch.float32).reshape(1, 2, 10))  # 15 a unit
    assert q.values.shape == (2, 11)
    assert q.lower_bound().tolist() == [4.0, 9.0]  # the smallest kept of each unit
    slack = TopQuantile.empty(1, 100, 0.9, slack=1.5)
    assert slack.capacity == math.ceil(1.5 * 11)


def test_merge_is_the_state_of_the_union_with_its_image_ids():
    g = torch.Generator().manual_seed(0)
    a_vals, b_vals = torch.rand(3, 2, 4, generator=g), torch.rand(2, 2, 4, generator=g)
    whole = TopQuantile.empty(2, 20, 0.8, track_ids=True)
    whole.update(torch.cat([a_vals, b_vals]), torch.arange(5))
    a = TopQuantile.empty(2, 20, 0.8, track_ids=True)
    a.update(a_vals, torch.arange(3))
    b = TopQuantile.empty(2, 20, 0.8, track_ids=True)
    b.update(b_vals, torch.arange(3, 5))
    m = a.merge(b)
    assert m.count == whole.count == 20 and m.slack == whole.slack
    assert torch.equal(m.readout(), whole.readout())
    for u in range(2):  # the same (value, image) pairs are kept
        got = sorted(zip(m.values[u].tolist(), m.ids[u].tolist()))
        want = sorted(zip(whole.values[u].tolist(), whole.ids[u].tolist()))
        assert got == want
    roomy = [TopQuantile.empty(1, 20, 0.8, slack=2.0) for _ in range(2)]
    roomy[0].update(a_vals[:, :1])
    roomy[1].update(b_vals[:, :1])
    both = roomy[0].merge(roomy[1])
    assert both.slack == 2.0 and both.values.shape[1] == both.capacity == 10  # 2 × top 5
    plain = TopQuantile.empty(2, 20, 0.8)
    plain.update(a_vals)
    assert plain.merge(TopQuantile.empty(2, 20, 0.8)).ids is None


def test_merge_refusals_say_why():
    a = TopQuantile.empty(1, 10, 0.5)
    with pytest.raises(ValueError, match="^can only merge quantile states with the same level, "
                                         "total size and slack$"):
        a.merge(TopQuantile.empty(1, 10, 0.6))
    with pytest.raises(ValueError, match="^cannot merge a state that tracks image ids with one "
                                         "that does not$"):
        a.merge(TopQuantile.empty(1, 10, 0.5, track_ids=True))
    a.update(torch.zeros(1, 1, 6))
    b = TopQuantile.empty(1, 10, 0.5)
    b.update(torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="^merged count 11 exceeds the declared total 10$"):
        a.merge(b)


def test_update_refusals_say_why():
    q = TopQuantile.empty(1, 4, 0.5, track_ids=True)
    with pytest.raises(ValueError, match="^this quantile state tracks image ids: pass indices$"):
        q.update(torch.zeros(1, 1, 2))
    q = TopQuantile.empty(1, 4, 0.5)
    with pytest.raises(ValueError, match="^saw 6 values per unit but was sized for 4$"):
        q.update(torch.zeros(1, 1, 6))
    with pytest.raises(ValueError, match=r"^quantile level must be in \[0, 1\], got 1.5$"):
        TopQuantile.empty(1, 4, 1.5)
    with pytest.raises(ValueError, match="^slack must be >= 1, got 0.5$"):
        TopQuantile.empty(1, 4, 0.5, slack=0.5)


def test_level_zero_is_the_minimum():
    q = TopQuantile.empty(1, 4, 0.0)
    q.update(torch.tensor([[[3.0, -2.0, 5.0, 1.0]]]))
    assert q.readout().tolist() == [-2.0]
