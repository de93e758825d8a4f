"""Beam search and MILAN's reranking: d* = argmax over the final beam of log p(d|E) − λ·log p(d).

Beam search follows the AllenNLP search MILAN calls: every unit keeps ``beam_size``
sequences; a sequence that emits ``<eos>`` is finished and stays in the beam with its score
frozen (its only continuation is ``<pad>`` at no cost), so finished and live sequences
compete for the slots; after ``max_length`` steps (the end token counts as a step) the beam
holds the candidates, including sequences cut at ``max_length`` words. Scores are summed
log-probabilities, without length normalisation, as in MILAN. ``<pad>``, ``<bos>`` and
``<unk>`` are never generated (a description with an unknown word is useless).

Reranking (MILAN's ``strategy="rerank"``): each candidate's captioner score minus λ times its
language-model log-probability (with ``<eos>`` when it ended); λ = 0 is plain captioning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

__all__ = ["Beam", "beam_search", "caption", "rerank"]

StepFn = Callable[[torch.Tensor, tuple[torch.Tensor, ...]],
                  tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


class Beam(NamedTuple):
    """The final beam of N searches."""

    tokens: torch.Tensor  #: [N, B, T] ids; ``pad`` after ``<eos>``
    scores: torch.Tensor  #: [N, B] summed log-probs, descending; −inf for empty slots
    finished: torch.Tensor  #: [N, B] whether the sequence ended with ``<eos>``


def beam_search(step: StepFn, state: tuple[torch.Tensor, ...], n: int, *, bos: int, eos: int,
                pad: int, beam_size: int = 50, max_length: int = 15,
                banned: Sequence[int] = ()) -> Beam:
    """Search N sequences at once.

    ``step(tokens [M], state) -> (log-probs [M, V], state)`` with M = N·beam_size rows; the
    given ``state`` has N rows (one per search) and is expanded here. ``banned`` ids are
    never generated (``pad`` and ``bos`` always are).
    """
    b = int(beam_size)
    if b < 1 or max_length < 1:
        raise ValueError("beam_size and max_length must be >= 1")
    state = tuple(s.repeat_interleave(b, dim=0) for s in state)
    ref = state[0] if state else torch.zeros(())
    device = ref.device
    scores = torch.full((n, b), -torch.inf, device=device)
    scores[:, 0] = 0.0
    tokens = torch.empty(n, b, 0, dtype=torch.int64, device=device)
    finished = torch.zeros(n, b, dtype=torch.bool, device=device)
    last = torch.full((n * b,), bos, dtype=torch.int64, device=device)
    base = (torch.arange(n, device=device) * b)[:, None]
    never = sorted({pad, bos, *banned} - {eos})
    for _ in range(max_length):
        logp, new_state = step(last, state)
        v = logp.shape[-1]
        logp = logp.reshape(n, b, v).float().clone()
        logp[..., never] = -torch.inf
        done_row = torch.full((v,), -torch.inf, device=device)
        done_row[pad] = 0.0
        logp = torch.where(finished[..., None], done_row, logp)
        cand = (scores[..., None] + logp).reshape(n, b * v)
        top, pos = cand.topk(b, dim=1)
        parent, tok = pos // v, pos % v
        tokens = torch.cat([tokens.gather(1, parent[..., None].expand(-1, -1, tokens.shape[2])),
                            tok[..., None]], dim=2)
        finished = finished.gather(1, parent) | (tok == eos)
        scores = top
        rows = (base + parent).reshape(-1)
        state = tuple(s.index_select(0, rows) for s in new_state)
        last = tok.reshape(-1)
        if bool((finished | ~torch.isfinite(scores)).all()):
            break
    return Beam(tokens, scores, finished)


def rerank(beam: Beam, lm_logp: torch.Tensor | None, lam: float) -> torch.Tensor:
    """Index ``[N]`` of the best candidate by ``score − lam·lm_logp`` (empty slots excluded).

    ``lm_logp [N, B]`` is log p(d) of each candidate; with ``lam == 0`` it is not needed and
    the result is the beam's best (plain captioning)."""
    total = beam.scores.clone()
    if lam != 0.0:
        if lm_logp is None:
            raise ValueError("reranking with lam != 0 needs the language model's log p(d)")
        total = total - lam * lm_logp.to(total.device)
    total = torch.where(torch.isfinite(beam.scores), total, torch.full_like(total, -torch.inf))
    return total.argmax(dim=1)


@torch.no_grad()
def caption(captioner, lm, features: torch.Tensor, vocab, *, beam_size: int = 50,
            max_length: int = 15, lam: float = 0.2, chunk: int = 16,
            return_beams: bool = False):
    """Describe each unit from its exemplar features ``[U, k, F]``: beam search with the
    captioner, rerank with the LM. Returns the descriptions (and, with ``return_beams``,
    per unit the candidates as ``(text, log p(d|E), log p(d))`` sorted by reranked score)."""
    captioner.eval()
    if lm is not None:
        lm.eval()
    device = next(captioner.parameters()).device
    out: list[str] = []
    beams: list[list[tuple[str, float, float]]] = []
    for s in range(0, features.shape[0], chunk):
        f = features[s:s + chunk].to(device)
        n = f.shape[0]
        fx = f.repeat_interleave(beam_size, dim=0)
        px = captioner.project(fx)

        def step(tokens, state, fx=fx, px=px):
            lp, _, (h, c) = captioner.step(fx, tokens, state, px)
            return lp, (h, c)

        beam = beam_search(step, captioner.init_state(f), n, bos=vocab.bos, eos=vocab.eos,
                           pad=vocab.pad, beam_size=beam_size, max_length=max_length,
                           banned=(vocab.unk,))
        lm_lp = None
        if lm is not None and (lam != 0.0 or return_beams):
            flat = beam.tokens.reshape(n * beam.tokens.shape[1], -1)
            lm_lp = lm.sequence_logp(flat, vocab.bos, vocab.pad).reshape(n, -1)
        best = rerank(beam, lm_lp, lam)
        for i in range(n):
            out.append(vocab.decode(beam.tokens[i, int(best[i])].tolist()))
            if return_beams:
                lmv = lm_lp[i] if lm_lp is not None else torch.zeros_like(beam.scores[i])
                cands = [(vocab.decode(beam.tokens[i, j].tolist()), float(beam.scores[i, j]),
                          float(lmv[j])) for j in range(beam.scores.shape[1])
                         if torch.isfinite(beam.scores[i, j])]
                cands.sort(key=lambda c: -(c[1] - lam * c[2]))
                beams.append(cands)
    return (out, beams) if return_beams else out
