"""F1-BERT offline with the packaged MiniLM, and threshold calibration."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from nemaudit.explain.milan.bertscore import (
    DEFAULT_THRESHOLD,
    Calibration,
    F1Bert,
    calibrate_threshold,
    default_scorer,
    minilm_path,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def scorer():
    """The shared MiniLM scorer."""
    return default_scorer()


def test_identical_strings_score_one_offline(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError("network access attempted by F1-BERT")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    scorer = F1Bert()  # a fresh load, with every connection refused
    texts = ["red cars", "the sky above grass", "striped surfaces", "wheels of cars"]
    f1 = scorer(texts, texts)
    assert torch.allclose(f1, torch.ones(4), atol=1e-5)
    assert scorer.describe()["num_layers"] == 6
    assert minilm_path().is_dir()


def test_paraphrases_score_higher_than_other_concepts(scorer):
    same = scorer(["sand in beach scenes", "red cars"], ["the sand in beaches", "red colored cars"])
    diff = scorer(["sand in beach scenes", "red cars"], ["wooden things", "striped surfaces"])
    assert (same > diff).all()
    assert (same > DEFAULT_THRESHOLD).all() and (diff <= DEFAULT_THRESHOLD).all()


def test_empty_and_multi_reference(scorer):
    f1 = scorer(["", "", "red cars"], ["", "red cars", ["blue sky", "red cars"]])
    assert f1[0] == 1.0 and f1[1] == 0.0
    assert abs(float(f1[2]) - 1.0) < 1e-5  # the best reference


def test_calibrate_threshold_separates():
    cal = calibrate_threshold([0.9, 0.95, 0.8], [0.3, 0.5, 0.6])
    assert isinstance(cal, Calibration)
    assert 0.6 < cal.threshold < 0.8 and cal.balanced_accuracy == 1.0
    assert float(cal) == cal.threshold and cal.n_same == 3 and cal.n_different == 3
    # an overlap: the best cut still beats chance, and "≤ threshold" means different
    cal = calibrate_threshold(torch.tensor([0.9, 0.7, 0.85, 0.4]), [0.3, 0.5, 0.75, 0.2])
    same = torch.tensor([0.9, 0.7, 0.85, 0.4])
    diff = torch.tensor([0.3, 0.5, 0.75, 0.2])
    acc = ((same > cal.threshold).double().mean() + (diff <= cal.threshold).double().mean()) / 2
    assert abs(float(acc) - cal.balanced_accuracy) < 1e-12 and cal.balanced_accuracy == 0.75
    with pytest.raises(ValueError):
        calibrate_threshold([], [0.1])


def test_calibrate_threshold_scores_text_pairs_with_the_scorer():
    def exact(c, r):
        return torch.tensor([1.0 if a == b else 0.2 for a, b in zip(c, r)])

    cal = calibrate_threshold([("a", "a"), ("b", "b")], [("a", "b"), ("c", "d")], scorer=exact)
    assert 0.2 < cal.threshold < 1.0 and cal.balanced_accuracy == 1.0


def test_missing_model_directory_is_an_error():
    with pytest.raises(FileNotFoundError, match="never downloads"):
        F1Bert("/nonexistent/roberta-large")
