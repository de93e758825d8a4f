"""Beam search's edges value by value: MILAN's defaults (50 beams, 15 steps), the smallest
beam and length, states of any arity, the early stop, the finished flags, and reranking's
arithmetic on a hand case."""

from __future__ import annotations

import pytest
import torch

from nemaudit.explain.milan.decode import Beam, beam_search, rerank
from tests.helpers import raises_exactly

PAD, BOS, EOS = 0, 1, 2
V = 6


def _never_ends(tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
    """Log-probs that never emit <eos>, favouring word 3 then 4 then 5."""
    lp = torch.tensor([0.0, 0.0, -torch.inf, -0.5, -1.0, -2.0]).expand(len(tokens), V)
    return lp, state


def _ends_at(step_no: int):
    """A step function whose every sequence must end at step ``step_no`` (1-based)."""
    calls = {"n": 0}

    def step(tokens, state):
        calls["n"] += 1
        lp = torch.full((len(tokens), V), -torch.inf)
        if calls["n"] >= step_no:
            lp[:, EOS] = 0.0
        else:
            lp[:, 3], lp[:, 4] = -0.1, -0.3
        return lp, state

    return step, calls


def test_defaults_are_milans_50_beams_and_15_steps():
    beam = beam_search(_never_ends, (), 2, bos=BOS, eos=EOS, pad=PAD)
    assert beam.tokens.shape == (2, 50, 15) and beam.scores.shape == (2, 50)
    # the best sequence repeats the best word for every one of the 15 steps
    assert beam.tokens[0, 0].tolist() == [3] * 15
    assert float(beam.scores[0, 0]) == pytest.approx(-7.5)
    assert not beam.finished.any()


@pytest.mark.parametrize("kw", [{"beam_size": 0}, {"max_length": 0}, {"beam_size": -1}])
def test_an_empty_beam_or_length_is_refused(kw):
    with raises_exactly(ValueError, "beam_size and max_length must be >= 1"):
        beam_search(_never_ends, (), 1, bos=BOS, eos=EOS, pad=PAD, **kw)


def test_one_beam_of_one_step_is_greedy():
    beam = beam_search(_never_ends, (), 3, bos=BOS, eos=EOS, pad=PAD, beam_size=1,
                       max_length=1)
    assert beam.tokens.tolist() == [[[3]]] * 3
    assert beam.scores.tolist() == [[-0.5]] * 3
    two = beam_search(_never_ends, (), 1, bos=BOS, eos=EOS, pad=PAD, beam_size=1, max_length=2)
    assert two.tokens.tolist() == [[[3, 3]]] and two.scores.tolist() == [[-1.0]]


@pytest.mark.parametrize("state", [(), (torch.arange(2.0)[:, None],),
                                   (torch.zeros(2, 3), torch.ones(2, 1))])
def test_states_of_any_arity_are_expanded_per_beam(state):
    seen = []

    def step(tokens, st):
        seen.append([s.shape[0] for s in st])
        return _never_ends(tokens, st)

    beam = beam_search(step, state, 2, bos=BOS, eos=EOS, pad=PAD, beam_size=3, max_length=2)
    assert beam.tokens.shape == (2, 3, 2)
    assert all(rows == [6] * len(state) for rows in seen)


@pytest.mark.parametrize("end", [1, 2, 4])
def test_the_search_stops_when_every_sequence_has_ended(end):
    step, calls = _ends_at(end)
    beam = beam_search(step, (), 2, bos=BOS, eos=EOS, pad=PAD, beam_size=3, max_length=6)
    assert calls["n"] == end and beam.tokens.shape[2] == end
    live = torch.isfinite(beam.scores)
    assert beam.finished[live].all()
    assert beam.tokens[0, 0].tolist() == [3] * (end - 1) + [EOS]


def test_finished_flags_mark_only_sequences_that_emitted_eos():
    """A cut sequence (max_length reached without <eos>) is not finished."""
    def step(tokens, state):
        lp = torch.tensor([0.0, 0.0, -0.2, -0.1, -torch.inf, -torch.inf]).expand(len(tokens), V)
        return lp, state

    beam = beam_search(step, (), 1, bos=BOS, eos=EOS, pad=PAD, beam_size=2, max_length=2)
    # [3, 3] (-0.2), [3, eos] (-0.3) / [eos, pad] (-0.2): ties keep the earlier candidate
    got = {tuple(t): (float(s), bool(f)) for t, s, f in
           zip(beam.tokens[0].tolist(), beam.scores[0].tolist(), beam.finished[0].tolist())}
    for seq, (score, done) in got.items():
        assert done == (EOS in seq)
        assert score == pytest.approx(-0.1 * sum(t == 3 for t in seq) - 0.2 * (EOS in seq))
    assert isinstance(beam, Beam) and beam.finished.dtype == torch.bool


def test_rerank_subtracts_lambda_times_the_language_model():
    beam = Beam(torch.zeros(2, 3, 1, dtype=torch.int64),
                torch.tensor([[-1.0, -1.5, -torch.inf], [-2.0, -1.0, -3.0]]),
                torch.ones(2, 3, dtype=torch.bool))
    lm = torch.tensor([[-1.0, -4.0, 0.0], [-0.5, -0.5, -20.0]])
    # row 0: -1 + 0.5·1 = -0.5, -1.5 + 0.5·4 = 0.5 (best), the empty slot excluded
    # row 1: -1.75, -0.75, 7.0 (best: a long, unlikely description)
    assert rerank(beam, lm, 0.5).tolist() == [1, 2]
    assert rerank(beam, lm, 0.0).tolist() == [0, 1]
    assert rerank(beam, None, 0.0).tolist() == [0, 1]
    with raises_exactly(ValueError, "reranking with lam != 0 needs the language model's log p(d)"):
        rerank(beam, None, 0.2)
