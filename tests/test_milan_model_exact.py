"""MILAN's model parts value by value: the settings and their dict form, the vocabulary
(tokens, ids, padding, decoding), mask pooling against hand cases, the pyramid encoder's
shared-image path against the plain one, attention, one captioner step and the language
model's sequence log-probability written out here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.explain.milan.model import (
    PYRAMID_LAYERS,
    SPECIALS,
    Attention,
    Captioner,
    LanguageModel,
    MilanSettings,
    PyramidEncoder,
    Vocabulary,
    pool_grouped,
    pool_pyramid,
    sequence_loss,
)
from tests.helpers import raises_exactly
from tests.toys import ToyNet

torch.set_num_threads(1)

# --------------------------------------------------------------------------- settings


def test_settings_are_milans_defaults_and_round_trip():
    s = MilanSettings()
    assert (s.k, s.eta, s.embedding_size, s.hidden_size, s.attention_hidden_size, s.dropout,
            s.lm_embedding_size, s.lm_hidden_size, s.lm_layers, s.lm_dropout, s.beam_size,
            s.max_length, s.lam) == (15, 0.01, 128, 512, None, 0.5, 128, 512, 2, 0.5, 50, 15,
                                     0.2)
    assert s.encoder_layers == PYRAMID_LAYERS == ("conv1", "layer1", "layer2", "layer3",
                                                  "layer4")
    d = MilanSettings(k=3, encoder_layers=("a", "b")).to_dict()
    assert d["encoder_layers"] == ["a", "b"] and d["k"] == 3 and len(d) == 14
    back = MilanSettings.from_dict({**d, "unknown": 1})
    assert back == MilanSettings(k=3, encoder_layers=("a", "b"))
    assert isinstance(back.encoder_layers, tuple)
    assert MilanSettings.from_dict({"lam": 0.5}) == MilanSettings(lam=0.5)


# --------------------------------------------------------------------------- vocabulary

def test_vocabulary_ids_start_with_the_specials_then_words_in_order():
    v = Vocabulary(["sky", "<eos>", "red", "sky", "<unk>", "cars"])
    assert SPECIALS == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "sky", "red", "cars"]
    assert v.stoi == {w: i for i, w in enumerate(v.itos)} and len(v) == 7
    assert (v.pad, v.bos, v.eos, v.unk) == (0, 1, 2, 3)
    assert v.to_json() == v.itos and v.to_json() is not v.itos
    assert Vocabulary.from_json(v.to_json()).itos == v.itos
    with raises_exactly(ValueError, "a MILAN vocabulary starts with ('<pad>', '<bos>', "
                                    "'<eos>', '<unk>'), got ['sky', 'red']"):
        Vocabulary.from_json(["sky", "red"])
    with raises_exactly(ValueError, "a MILAN vocabulary starts with ('<pad>', '<bos>', "
                                    "'<eos>', '<unk>'), got ['a', 'b', 'c', 'd']"):
        Vocabulary.from_json(["a", "b", "c", "d", "e", "f"])


@pytest.mark.parametrize("text, tokens", [
    ("Red-ish cars, the SKY's edge!", ["red-ish", "cars", "the", "sky's", "edge"]),
    ("-dash 'quote 3d", ["dash", "quote", "3d"]),
    ("", []), ("...", []), ("a_b", ["a", "b"]),
])
def test_tokenize(text, tokens):
    assert Vocabulary.tokenize(text) == tokens


def test_build_keeps_words_seen_often_enough_sorted():
    v = Vocabulary.build(["the red sky", "the blue sky", "The sky"], min_count=2)
    assert v.itos[4:] == ["sky", "the"]
    assert Vocabulary.build(["b a", "a"]).itos[4:] == ["a", "b"]


def test_encode_decode_and_padding():
    v = Vocabulary(["red", "sky"])
    assert v.encode("Red sky") == [4, 5, 2]
    assert v.encode("red cat", bos=True) == [1, 4, 3, 2]
    assert v.encode("red", eos=False) == [4]
    assert v.encode("red", bos=True, eos=False) == [1, 4]
    batch = v.encode_batch(["red sky", "sky", ""])
    assert batch.dtype == torch.int64
    assert batch.tolist() == [[4, 5, 2], [5, 2, 0], [2, 0, 0]]
    assert v.encode_batch(["red sky red", "sky"], bos=True, length=3).tolist() == [
        [1, 4, 5], [1, 5, 2]]
    assert v.encode_batch(["red"], length=4).tolist() == [[4, 2, 0, 0]]
    assert v.encode_batch([]).shape == (0, 0)
    assert v.encode_batch(["red sky", "sky"], eos=False).tolist() == [[4, 5], [5, 0]]
    assert v.decode([1, 4, 3, 0, 5, 2, 4]) == "red sky"  # specials skipped, stop at <eos>
    assert v.decode(torch.tensor([5, 4])) == "sky red"
    assert v.decode([]) == ""


# --------------------------------------------------------------------------- pooling

def test_pooling_is_the_mask_weighted_average_at_each_level():
    f = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0 1 / 2 3, channel 1: 4 5 / 6 7
    diag = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert pool_pyramid([f], diag).tolist() == [[1.5, 5.5]]
    weighted = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
    assert pool_pyramid([f], weighted).tolist() == [[0.25, 4.25]]
    assert pool_pyramid([f], torch.zeros(1, 2, 2)).tolist() == [[0.0, 0.0]]
    # a 4x4 mask on a 2x2 level: bilinear halving averages each 2x2 block
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, 2:] = 1.0  # the top-right block: the level's cell (0, 1)
    coarse = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert pool_pyramid([f, coarse], mask).tolist() == [[1.0, 5.0, 1.0]]
    assert pool_pyramid([f], mask.bool()).tolist() == [[1.0, 5.0]]
    # masses in two cells: the block (0, 1) weighs 1, one pixel of block (1, 0) a quarter
    # (bilinear, half-pixel centres: align_corners=False), normalised to 0.8 and 0.2
    two = mask.clone()
    two[0, 2, 0] = 1.0
    assert pool_pyramid([coarse], two).tolist() == [[pytest.approx(0.8 * 1 + 0.2 * 2)]]
    # a level where the mask's mass is below 1 is normalised all the same
    one = torch.zeros(1, 4, 4)
    one[0, 3, 3] = 1.0
    assert pool_pyramid([coarse], one).tolist() == [[3.0]]


def test_grouped_pooling_is_pooling_with_each_images_maps_repeated():
    torch.manual_seed(0)
    maps = [torch.rand(4, 2, 4, 4), torch.rand(4, 3, 2, 2)]
    counts = [2, 0, 1, 3]
    masks = (torch.rand(6, 8, 8) > 0.6).float()
    masks[1] = 0.0  # an empty mask among them
    rep = [torch.repeat_interleave(f, torch.tensor(counts), dim=0) for f in maps]
    got = pool_grouped(maps, masks, counts)
    assert got.shape == (6, 5)
    assert torch.allclose(got, pool_pyramid(rep, masks), atol=1e-6)
    assert got[1].abs().sum() == 0
    none = pool_grouped(maps, masks[:0], [0, 0, 0, 0])
    assert none.shape == (0, 5)


# --------------------------------------------------------------------------- encoder

LAYERS = ("conv1", "layer1", "layer2")


@pytest.fixture
def encoder():
    return PyramidEncoder(ToyNet(), LAYERS, probe_size=16)


def test_the_encoder_is_a_frozen_copy_with_the_levels_sizes():
    net = ToyNet()
    encoder = PyramidEncoder(net, LAYERS, probe_size=16)
    assert encoder.net is not net and encoder.net.conv1 is not net.conv1
    assert encoder.sizes == (8, 8, 16) and encoder.feature_size == 32
    assert encoder.layers == LAYERS
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the model itself is untouched
    assert encoder.train() is encoder and not encoder.training and not encoder.net.training
    x, m = torch.rand(2, 3, 16, 16), (torch.rand(2, 8, 8) > 0.5).float()
    feats = encoder(x, m)
    rec = {}
    hooks = [getattr(net, n).register_forward_hook(
        lambda mod, i, o, n=n: rec.__setitem__(n, o)) for n in LAYERS]
    net(x)
    for h in hooks:
        h.remove()
    assert torch.allclose(feats, pool_pyramid([rec[n] for n in LAYERS], m), atol=1e-6)


def test_encoding_shared_images_once_equals_encoding_each_pair(encoder):
    torch.manual_seed(1)
    images = torch.rand(6, 3, 16, 16)
    indices = torch.tensor([[4, 1, 4], [1, 0, 5]])
    masks = (torch.rand(2, 3, 16, 16) > 0.5).float()
    loads = []

    def load(idx):
        loads.append(idx.tolist())
        return images[idx]

    ex = SimpleNamespace(indices=indices, masks=masks, pixels=None, load=load)
    got = encoder.encode(ex, batch_size=2)
    want = encoder(images[indices.flatten()], masks.flatten(0, 1)).reshape(2, 3, -1)
    assert got.shape == (2, 3, 32) and torch.allclose(got, want, atol=1e-6)
    assert loads == [[0, 1], [4, 5]]  # each distinct image once, in batches of 2
    # per-unit pixels: each pair's own image, no loading
    pixels = torch.rand(2, 3, 3, 16, 16)
    own = SimpleNamespace(indices=indices, masks=masks, pixels=pixels,
                          load=lambda idx: pytest.fail("loaded"))
    want = encoder(pixels.flatten(0, 1), masks.flatten(0, 1)).reshape(2, 3, -1)
    assert torch.allclose(encoder.encode(own, batch_size=4), want, atol=1e-6)
    empty = SimpleNamespace(indices=torch.zeros(0, 3, dtype=torch.long),
                            masks=torch.zeros(0, 3, 16, 16), pixels=None, load=load)
    assert encoder.encode(empty).shape == (0, 3, 32)


# --------------------------------------------------------------------------- captioner, LM

def test_attention_is_additive_and_sums_to_one():
    torch.manual_seed(2)
    att = Attention(4, 3, 5)
    q, keys = torch.rand(2, 4), torch.rand(2, 6, 3)
    w = att(q, keys)
    hand = att.score(torch.tanh(att.query(q)[:, None] + att.key(keys))).squeeze(-1)
    assert torch.allclose(w, hand.softmax(1), atol=1e-6)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert torch.allclose(att(q, keys, att.key(keys)), w)
    # keys projected to one point score alike: uniform weights
    assert torch.allclose(att(q, keys, torch.zeros(2, 6, 5)), torch.full((2, 6), 1 / 6))


def test_the_attention_width_defaults_to_the_smaller_of_hidden_and_feature_size():
    assert Captioner(10, 5, hidden_size=8).attend.query.out_features == 5
    assert Captioner(10, 12, hidden_size=8).attend.query.out_features == 8
    assert Captioner(10, 12, hidden_size=8, attention_hidden_size=3).attend.key.out_features == 3


def test_a_captioner_step_written_out():
    torch.manual_seed(3)
    cap = Captioner(7, 5, embedding_size=4, hidden_size=6).eval()
    feats, tokens = torch.rand(2, 3, 5), torch.tensor([1, 4])
    h0, c0 = cap.init_state(feats)
    assert torch.allclose(h0, torch.tanh(cap.init_h[0](feats.mean(1))))
    assert torch.allclose(c0, torch.tanh(cap.init_c[0](feats.mean(1))))
    lp, att, (h, c) = cap.step(feats, tokens, (h0, c0))
    a = cap.attend(h0, feats)
    ctx = (a[..., None] * feats).sum(1) * torch.sigmoid(cap.gate[0](h0))
    hh, cc = cap.lstm(torch.cat([cap.embedding(tokens), ctx], 1), (h0, c0))
    assert torch.allclose(att, a) and torch.allclose(h, hh) and torch.allclose(c, cc)
    assert torch.allclose(lp, F.log_softmax(cap.output(hh), -1), atol=1e-6)
    # teacher forcing is the steps in order
    inputs = torch.tensor([[1, 4, 5], [1, 6, 2]])
    logps, atts = cap(feats, inputs)
    assert logps.shape == (2, 3, 7) and atts.shape == (2, 3, 3)
    state = cap.init_state(feats)
    for t in range(3):
        lp_t, att_t, state = cap.step(feats, inputs[:, t], state)
        assert torch.allclose(logps[:, t], lp_t, atol=1e-6)
        assert torch.allclose(atts[:, t], att_t, atol=1e-6)
    assert (cap.vocab_size, cap.feature_size, cap.hidden_size) == (7, 5, 6)
    assert cap.dropout.p == 0.5


def test_language_model_sequence_logp_written_out():
    torch.manual_seed(4)
    lm = LanguageModel(6, embedding_size=4, hidden_size=5, layers=2, dropout=0.25).eval()
    assert lm.lstm.dropout == 0.25 and lm.lstm.num_layers == 2
    assert lm.embedding.padding_idx == 0
    assert LanguageModel(6, layers=1, dropout=0.5).lstm.dropout == 0.0
    tokens = torch.tensor([[4, 5, 2, 0], [5, 4, 4, 3]])  # "w w <eos> <pad>", cut at 4 words
    got = lm.sequence_logp(tokens, bos=1, pad=0)
    want = []
    for row in tokens.tolist():
        total, prefix = 0.0, [1]
        for tok in row:
            if tok == 0:
                break
            with torch.no_grad():
                lp = lm(torch.tensor([prefix]))[0, -1]
            total += float(lp[tok])
            prefix.append(tok)
        want.append(total)
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert lm.sequence_logp(torch.zeros(3, 0, dtype=torch.long), 1, 0).tolist() == [0.0] * 3
    out = lm(torch.tensor([[1, 4]]))
    assert torch.allclose(out.exp().sum(-1), torch.ones(1, 2), atol=1e-5)


def test_sequence_loss_is_the_mean_nll_of_non_pad_targets():
    logps = torch.log_softmax(torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]],
                                            [[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]]), -1)
    targets = torch.tensor([[2, 0], [1, 2]])  # one pad (0)
    want = -(logps[0, 0, 2] + logps[1, 0, 1] + logps[1, 1, 2]) / 3
    assert float(sequence_loss(logps, targets, pad=0)) == pytest.approx(float(want))
    assert math.isnan(float(sequence_loss(logps, torch.zeros(2, 2, dtype=torch.long), 0)))


def test_captioner_modules_layout():
    cap = Captioner(9, 5, embedding_size=4, hidden_size=6, dropout=0.1)
    assert isinstance(cap.init_h[1], nn.Tanh) and isinstance(cap.gate[1], nn.Sigmoid)
    assert cap.lstm.input_size == 4 + 5 and cap.lstm.hidden_size == 6
    assert cap.output.out_features == 9 and cap.embedding.num_embeddings == 9
    assert cap.dropout.p == 0.1


def test_the_model_defaults_are_milans_settings():
    """The modules' own defaults agree with MilanSettings (one set of MILAN sizes)."""
    s = MilanSettings()
    cap = Captioner(10, 5)
    assert (cap.embedding.embedding_dim, cap.hidden_size, cap.dropout.p) == (
        s.embedding_size, s.hidden_size, s.dropout)
    lm = LanguageModel(10)
    assert (lm.embedding.embedding_dim, lm.lstm.hidden_size, lm.lstm.num_layers,
            lm.lstm.dropout) == (s.lm_embedding_size, s.lm_hidden_size, s.lm_layers,
                                 s.lm_dropout)
