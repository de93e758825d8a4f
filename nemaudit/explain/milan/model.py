"""MILAN's model (Hernandez et al., ICLR 2022): encoder, captioner p(d|E) and language model p(d).

The structure and default sizes follow the authors' code (``evandez/neuron-descriptions``):

- :class:`PyramidEncoder`: a *frozen* CNN whose feature maps at several depths are each
  pooled by the exemplar's mask (bilinearly resized to the level, normalised to sum 1: a
  masked average) and concatenated into one vector per exemplar. MILAN uses an ImageNet
  ResNet; offline, nemaudit uses a frozen copy of the bundled ConceptNet (conv1, layer1..4:
  16+16+32+64+128 = 256 features), whose features know the concept world. A randomly
  initialised network would make the captioner guess from colours alone.
- :class:`Captioner`: Show-Attend-Tell LSTM (hidden 512, word embedding 128) initialised from
  the mean exemplar vector, attending over the k exemplar vectors at every step with a
  sigmoid gate on the attended vector, dropout 0.5 before the output layer.
- :class:`LanguageModel`: a 2-layer LSTM (embedding 128, hidden 512, dropout 0.5) over the
  same vocabulary, used to rerank beams by log p(d|E) − λ·log p(d) (:mod:`.decode`).
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.model.layers import LayerRecorder

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "Captioner",
    "LanguageModel",
    "MilanSettings",
    "PyramidEncoder",
    "Vocabulary",
]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PYRAMID_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")


@dataclass
class MilanSettings:
    """Every size and decoding setting, with MILAN's defaults."""

    k: int = 15  # exemplars per unit
    eta: float = 0.01  # top-η masks
    embedding_size: int = 128
    hidden_size: int = 512
    attention_hidden_size: int | None = None  # None: min(hidden, feature size), as MILAN
    dropout: float = 0.5
    lm_embedding_size: int = 128
    lm_hidden_size: int = 512
    lm_layers: int = 2
    lm_dropout: float = 0.5
    beam_size: int = 50
    max_length: int = 15  # decoding steps, the end token included
    lam: float = 0.2  # reranking weight λ (MILAN's "temperature")
    encoder_layers: tuple[str, ...] = PYRAMID_LAYERS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_layers"] = list(self.encoder_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MilanSettings:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "encoder_layers" in kw:
            kw["encoder_layers"] = tuple(kw["encoder_layers"])
        return cls(**kw)


# --------------------------------------------------------------------------- vocabulary

class Vocabulary:
    """Word ↔ id, with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3."""

    def __init__(self, words: Iterable[str]) -> None:
        seen = [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.itos: list[str] = list(SPECIALS) + seen
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.bos, self.eos, self.unk = range(4)

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """Lower-case words; punctuation other than hyphens and apostrophes is dropped."""
        return re.findall(r"[a-z0-9][a-z0-9'-]*", text.lower())

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for t in texts for w in cls.tokenize(t))
        return cls(sorted(w for w, c in counts.items() if c >= min_count))

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = True) -> list[int]:
        ids = [self.stoi.get(w, self.unk) for w in self.tokenize(text)]
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = True,
                     length: int | None = None) -> torch.Tensor:
        """``[N, T]`` ids padded with ``<pad>`` (and cut to ``length`` when given)."""
        rows = [self.encode(t, bos, eos) for t in texts]
        t = max((len(r) for r in rows), default=0) if length is None else length
        out = torch.full((len(rows), t), self.pad, dtype=torch.int64)
        for i, r in enumerate(rows):
            r = r[:t]
            out[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first ``<eos>``, special tokens skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i >= len(SPECIALS):
                words.append(self.itos[i])
        return " ".join(words)

    def to_json(self) -> list[str]:
        return list(self.itos)

    @classmethod
    def from_json(cls, itos: Sequence[str]) -> Vocabulary:
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"a MILAN vocabulary starts with {SPECIALS}, got {list(itos[:4])}")
        return cls(itos[4:])


# --------------------------------------------------------------------------- encoder

class PyramidEncoder(nn.Module):
    """A frozen copy of ``model`` whose ``layers`` maps are mask-pooled and concatenated.

    ``model`` takes [0, 1] images (e.g. a :class:`~nemaudit.model.load.NormalizedModel`).
    Pooling follows MILAN: the float mask is bilinearly resized to each level and divided by
    its sum, so the vector is the mask-weighted average of the level's features (all zeros
    for an empty mask).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] = PYRAMID_LAYERS,
                 probe_size: int = 64) -> None:
        super().__init__()
        self.net = copy.deepcopy(model).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.layers = tuple(layers)
        device = next(self.net.parameters(), torch.zeros(())).device
        with torch.no_grad(), LayerRecorder(self.net, self.layers) as rec:
            rec.run(torch.zeros(1, 3, probe_size, probe_size, device=device))
            self.sizes = tuple(int(rec[n].shape[1]) for n in self.layers)

    @property
    def feature_size(self) -> int:
        return sum(self.sizes)

    def train(self, mode: bool = True) -> PyramidEncoder:
        """Always stays in eval mode: the encoder is frozen (BatchNorm statistics too)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``images [n, 3, H, W]`` in [0, 1], ``masks [n, h, w]`` → features ``[n, F]``."""
        device = next(self.net.parameters()).device
        with LayerRecorder(self.net, self.layers, stop_at_layer=True) as rec:
            rec.run(images.to(device))
            maps = [rec[n].float() for n in self.layers]
        return pool_pyramid(maps, masks.to(device))

    @torch.no_grad()
    def encode(self, exemplars, batch_size: int = 64) -> torch.Tensor:
        """Features ``[U, k, F]`` of an :class:`~.exemplars.Exemplars` set.

        Each distinct probe image goes through the network once, however many units share it
        (unless the exemplars carry their own per-unit ``pixels``).
        """
        u, k = exemplars.indices.shape
        masks = exemplars.masks.reshape(u * k, *exemplars.masks.shape[2:])
        out = torch.zeros(u * k, self.feature_size)
        if u * k == 0:
            return out.reshape(u, k, self.feature_size)
        if exemplars.pixels is not None:
            pix = exemplars.pixels.reshape(u * k, *exemplars.pixels.shape[2:])
            for s in range(0, u * k, batch_size):
                out[s:s + batch_size] = self(pix[s:s + batch_size], masks[s:s + batch_size]).cpu()
            return out.reshape(u, k, self.feature_size)
        uniq, inv = torch.unique(exemplars.indices.flatten(), return_inverse=True)
        device = next(self.net.parameters()).device
        order = torch.argsort(inv, stable=True)
        bounds = torch.searchsorted(inv[order], torch.arange(uniq.numel() + 1))
        for s in range(0, uniq.numel(), batch_size):
            images = exemplars.load(uniq[s:s + batch_size])
            with LayerRecorder(self.net, self.layers, stop_at_layer=True) as rec:
                rec.run(images.to(device))
                maps = [rec[n].float() for n in self.layers]
            e = min(s + batch_size, uniq.numel())
            pairs = order[int(bounds[s]):int(bounds[e])]
            counts = (bounds[s + 1:e + 1] - bounds[s:e]).tolist()
            out[pairs] = pool_grouped(maps, masks[pairs].to(device), counts).cpu()
        return out.reshape(u, k, self.feature_size)


def pool_grouped(maps: Sequence[torch.Tensor], masks: torch.Tensor, counts: Sequence[int]
                 ) -> torch.Tensor:
    """:func:`pool_pyramid` when image i of ``maps`` serves the next ``counts[i]`` masks: one
    matrix product per image instead of copying its maps for every mask."""
    weights = _level_weights(maps, masks)
    out = []
    for f, wts in zip(maps, weights):
        parts, a = [], 0
        for i, c in enumerate(counts):
            if c:
                parts.append(wts[a:a + c] @ f[i].flatten(1).t())
                a += c
        out.append(torch.cat(parts) if parts else f.new_zeros(0, f.shape[1]))
    return torch.cat(out, dim=1)


def _level_weights(maps: Sequence[torch.Tensor], masks: torch.Tensor) -> list[torch.Tensor]:
    """Per level, each mask resized (bilinear) and normalised to sum 1: ``[n, h_l·w_l]``."""
    m = masks.float()[:, None]
    out = []
    for f in maps:
        ms = F.interpolate(m, size=f.shape[-2:], mode="bilinear", align_corners=False)
        total = ms.sum(dim=(2, 3), keepdim=True)
        ms = torch.where(total > 0, ms / total.clamp(min=1e-12), torch.zeros_like(ms))
        out.append(ms.flatten(1))
    return out


def pool_pyramid(maps: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """Masked average of each level ``[n, C_l, h_l, w_l]`` by ``masks [n, h, w]``, concatenated
    (MILAN: the mask is bilinearly resized to the level and divided by its sum; an empty mask
    gives zeros)."""
    return torch.cat([torch.einsum("nch,nh->nc", f.flatten(2), w)
                      for f, w in zip(maps, _level_weights(maps, masks))], dim=1)


# --------------------------------------------------------------------------- captioner

class Attention(nn.Module):
    """Additive attention of Show, Attend and Tell (Xu et al., 2015)."""

    def __init__(self, query_size: int, key_size: int, hidden_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, hidden_size)
        self.key = nn.Linear(key_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor,
                projected: torch.Tensor | None = None) -> torch.Tensor:
        """``query [N, q]``, ``keys [N, k, f]`` → weights ``[N, k]`` summing to 1.
        ``projected`` is ``self.key(keys)``, which a caller decoding many steps computes once."""
        kh = self.key(keys) if projected is None else projected
        hidden = torch.tanh(self.query(query)[:, None] + kh)
        return self.score(hidden).squeeze(-1).softmax(dim=1)


class Captioner(nn.Module):
    """p(d | E): an attention LSTM over the k exemplar vectors (MILAN's ``Decoder``)."""

    def __init__(self, vocab_size: int, feature_size: int, embedding_size: int = 128,
                 hidden_size: int = 512, attention_hidden_size: int | None = None,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.vocab_size, self.feature_size = vocab_size, feature_size
        self.hidden_size = hidden_size
        self.init_h = nn.Sequential(nn.Linear(feature_size, hidden_size), nn.Tanh())
        self.init_c = nn.Sequential(nn.Linear(feature_size, hidden_size), nn.Tanh())
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.attend = Attention(hidden_size, feature_size,
                                attention_hidden_size or min(hidden_size, feature_size))
        self.gate = nn.Sequential(nn.Linear(hidden_size, feature_size), nn.Sigmoid())
        self.lstm = nn.LSTMCell(embedding_size + feature_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = features.mean(dim=1)
        return self.init_h(pooled), self.init_c(pooled)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The attention's key projection of ``features``: constant over a decoding."""
        return self.attend.key(features)

    def step(self, features: torch.Tensor, tokens: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor], projected: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One word: → (log-probs ``[N, V]``, attention ``[N, k]``, new state)."""
        h, c = state
        att = self.attend(h, features, projected)
        ctx = (att[..., None] * features).sum(dim=1) * self.gate(h)
        h, c = self.lstm(torch.cat([self.embedding(tokens), ctx], dim=1), (h, c))
        return F.log_softmax(self.output(self.dropout(h)), dim=-1), att, (h, c)

    def forward(self, features: torch.Tensor, inputs: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``inputs [N, T]`` (``<bos>`` first) → log-probs ``[N, T, V]`` and
        attention ``[N, T, k]``."""
        state = self.init_state(features)
        projected = self.project(features)
        logps, atts = [], []
        for t in range(inputs.shape[1]):
            lp, att, state = self.step(features, inputs[:, t], state, projected)
            logps.append(lp)
            atts.append(att)
        return torch.stack(logps, 1), torch.stack(atts, 1)


class LanguageModel(nn.Module):
    """p(d): a 2-layer LSTM language model over the captioner's vocabulary."""

    def __init__(self, vocab_size: int, embedding_size: int = 128, hidden_size: int = 512,
                 layers: int = 2, dropout: float = 0.5, pad_index: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=pad_index)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers=layers,
                            dropout=dropout if layers > 1 else 0.0, batch_first=True)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs [N, T]`` (``<bos>`` first) → next-word log-probs ``[N, T, V]``."""
        hidden, _ = self.lstm(self.embedding(inputs))
        return F.log_softmax(self.output(hidden), dim=-1)

    @torch.no_grad()
    def sequence_logp(self, tokens: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
        """log p(d) ``[N]`` of generated ``tokens [N, T]`` (words then ``<eos>``, padded with
        ``pad`` after it; a sequence cut at T words has no ``<eos>`` and scores its words)."""
        n = tokens.shape[0]
        if tokens.shape[1] == 0:
            return torch.zeros(n, device=tokens.device)
        inputs = torch.cat([torch.full((n, 1), bos, dtype=tokens.dtype, device=tokens.device),
                            tokens[:, :-1]], dim=1)
        lp = self(inputs).gather(2, tokens[..., None]).squeeze(-1)
        return (lp * (tokens != pad)).sum(dim=1)


def sequence_loss(logps: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    """Mean NLL over non-pad targets (MILAN's ``NLLLoss(ignore_index=pad)``)."""
    return F.nll_loss(logps.reshape(-1, logps.shape[-1]), targets.reshape(-1), ignore_index=pad)
