"""Beam search and reranking against exhaustive enumeration."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from nemaudit.explain.milan.decode import Beam, beam_search, caption, rerank
from nemaudit.explain.milan.model import Captioner, LanguageModel, Vocabulary

PAD, BOS, EOS, UNK = 0, 1, 2, 3
WORDS = (4, 5, 6)
V = 7


class ToyLM(nn.Module):
    """A deterministic next-token distribution that depends on the whole prefix (an LSTM)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, 8)
        self.cell = nn.LSTMCell(8, 8)
        self.out = nn.Linear(8, V)

    def init(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(n, 8), torch.zeros(n, 8)

    def step(self, tokens, state):
        h, c = self.cell(self.emb(tokens), state)
        return torch.log_softmax(self.out(h) * 3, dim=-1), (h, c)

    @torch.no_grad()
    def score(self, seq: list[int]) -> float:
        state, last, total = self.init(1), torch.tensor([BOS]), 0.0
        for t in seq:
            lp, state = self.step(last, state)
            total += float(lp[0, t])
            last = torch.tensor([t])
        return total


def all_sequences(max_len: int) -> list[list[int]]:
    """Every output of ≤ max_len steps: words then <eos>, or max_len words without it."""
    out = []
    for n in range(max_len):
        out += [list(w) + [EOS] for w in itertools.product(WORDS, repeat=n)]
    out += [list(w) for w in itertools.product(WORDS, repeat=max_len)]
    return out


def strip(tokens: list[int]) -> list[int]:
    return [t for t in tokens if t != PAD]


@torch.no_grad()
def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    max_len = 3
    for seed in range(4):
        lm = ToyLM(seed)
        seqs = all_sequences(max_len)
        scores = torch.tensor([lm.score(s) for s in seqs])
        beam = beam_search(lm.step, lm.init(1), 1, bos=BOS, eos=EOS, pad=PAD,
                           beam_size=len(seqs), max_length=max_len, banned=(UNK,))
        finite = torch.isfinite(beam.scores[0])
        assert int(finite.sum()) == len(seqs)  # every sequence is in the final beam
        got = strip(beam.tokens[0, 0].tolist())
        assert got == seqs[int(scores.argmax())]  # the true argmax
        assert torch.allclose(beam.scores[0, 0], scores.max(), atol=1e-5)
        # and the whole beam is the enumeration, sorted
        ranked = sorted(zip(scores.tolist(), map(tuple, seqs)), reverse=True)
        assert [tuple(strip(t)) for t in beam.tokens[0][finite].tolist()] == [s for _, s in ranked]


@torch.no_grad()
def test_small_beam_keeps_top_and_batches_independently():
    lm = ToyLM(7)
    one = [beam_search(lm.step, lm.init(1), 1, bos=BOS, eos=EOS, pad=PAD, beam_size=4,
                       max_length=4, banned=(UNK,)) for _ in range(2)]
    two = beam_search(lm.step, lm.init(2), 2, bos=BOS, eos=EOS, pad=PAD, beam_size=4,
                      max_length=4, banned=(UNK,))
    assert torch.equal(two.tokens[0], one[0].tokens[0])
    assert torch.equal(two.tokens[1], one[1].tokens[0])
    assert (two.scores[:, :-1] >= two.scores[:, 1:]).all()  # sorted
    assert not (two.tokens == UNK).any() and not (two.tokens == BOS).any()


def test_rerank_lambda_zero_is_plain_captioning():
    scores = torch.tensor([[-1.0, -2.0, -3.0, -torch.inf]])
    beam = Beam(torch.zeros(1, 4, 2, dtype=torch.long), scores,
                torch.ones(1, 4, dtype=torch.bool))
    lm = torch.tensor([[-9.0, -1.0, -0.5, 10.0]])
    assert int(rerank(beam, None, 0.0)[0]) == 0
    assert int(rerank(beam, lm, 0.0)[0]) == 0
    # λ = 0.2: -1 + 1.8 = 0.8 beats -2 + 0.2 and -3 + 0.1; the empty slot never wins
    assert int(rerank(beam, lm, 0.2)[0]) == 0
    # λ = 1 with a language model that finds slot 1 rare: -2 + 5 = 3 beats -1 and -3
    assert int(rerank(beam, torch.tensor([[0.0, -5.0, 0.0, 0.0]]), 1.0)[0]) == 1


@torch.no_grad()
def test_caption_reranks_the_final_beam():
    torch.manual_seed(0)
    vocab = Vocabulary(["red", "blue", "cars", "sky", "the"])
    cap = Captioner(len(vocab), 6, embedding_size=8, hidden_size=16, dropout=0.0).eval()
    lm = LanguageModel(len(vocab), 8, 16, 2, 0.0).eval()
    feats = torch.randn(3, 4, 6)
    plain = caption(cap, lm, feats, vocab, beam_size=8, max_length=5, lam=0.0)
    # λ = 0 is the beam's best sequence
    for i in range(3):
        f = feats[i:i + 1].repeat_interleave(8, 0)
        p = cap.project(f)

        def step(tokens, state, f=f, p=p):
            lp, _, st = cap.step(f, tokens, state, p)
            return lp, st

        beam = beam_search(step, cap.init_state(feats[i:i + 1]), 1, bos=vocab.bos,
                           eos=vocab.eos, pad=vocab.pad, beam_size=8, max_length=5,
                           banned=(vocab.unk,))
        assert plain[i] == vocab.decode(beam.tokens[0, 0].tolist())
    texts, beams = caption(cap, lm, feats, vocab, beam_size=8, max_length=5, lam=0.2,
                           return_beams=True)
    for text, cands in zip(texts, beams):
        best = max(cands, key=lambda c: c[1] - 0.2 * c[2])
        assert text == best[0] == cands[0][0]
