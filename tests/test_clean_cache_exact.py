"""The clean-run cache value by value: what its key depends on (and what it must not), a
dissection with its incremental state through disk unchanged, the in-memory memo, and how a
bad entry or folder is handled."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from nemaudit.audit.netdissect import cache as mod
from nemaudit.audit.netdissect.cache import CACHEDIR_TAG, CleanRunCache, clean_run_key
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.model.load import NormalizedModel
from tests.toys import ToyNet, ToyProbe

CFG = DissectConfig(eta=0.05, batch_size=5)


@pytest.fixture(autouse=True)
def empty_memo(monkeypatch):
    monkeypatch.setattr(mod, "_MEMO", type(mod._MEMO)())


@pytest.fixture(scope="module")
def kept():
    probe, model = ToyProbe(12), NormalizedModel(ToyNet(), "none")
    d = dissect(model, "layer2", probe, CFG, keep_state=True)
    assert d.state.pixels is not None and d.state.quant.ids is not None
    return d


# --------------------------------------------------------------------------- the key

def test_the_key_changes_with_everything_that_changes_the_clean_run():
    base = clean_run_key("m", "layer2", "p", CFG, {"slack": 2.0})
    assert len(base) == 24 and int(base, 16) >= 0
    assert clean_run_key("m", "layer2", "p", CFG, {"slack": 2.0}) == base
    variants = [
        clean_run_key("m2", "layer2", "p", CFG, {"slack": 2.0}),
        clean_run_key("m", "layer3", "p", CFG, {"slack": 2.0}),
        clean_run_key("m", "layer2", "p2", CFG, {"slack": 2.0}),
        clean_run_key("m", "layer2", "p", CFG, {"slack": 3.0}),
        clean_run_key("m", "layer2", "p", CFG, None),
        *(clean_run_key("m", "layer2", "p", dataclasses.replace(CFG, **change), {"slack": 2.0})
          for change in ({"eta": 0.01}, {"quantile_level": 0.9}, {"iou_threshold": 0.1},
                         {"top_k": 3}, {"batch_size": 6})),
    ]
    assert len(set(variants)) == len(variants) and base not in variants


def test_the_key_ignores_what_does_not_change_the_result():
    base = clean_run_key("m", "l", "p", CFG)
    assert clean_run_key("m", "l", "p", dataclasses.replace(CFG, cache_budget_mb=1.0)) == base
    assert clean_run_key("m", "l", "p", dataclasses.replace(CFG, num_workers=3)) == base
    assert clean_run_key("m", "l", "p", CFG, {}) == base


def test_the_key_changes_with_the_version_and_the_format(monkeypatch):
    base = clean_run_key("m", "l", "p", CFG)
    monkeypatch.setattr(mod.nemaudit, "__version__", "9.9.9")
    other_version = clean_run_key("m", "l", "p", CFG)
    monkeypatch.setattr(mod, "FORMAT", mod.FORMAT + 1)
    other_format = clean_run_key("m", "l", "p", CFG)
    assert len({base, other_version, other_format}) == 3


# --------------------------------------------------------------------------- disk

def _same(a, b):
    assert a.layer == b.layer and a.meta == b.meta and a.categories == b.categories
    assert [(c.id, c.name, c.category) for c in a.concepts] == \
        [(c.id, c.name, c.category) for c in b.concepts]
    assert dataclasses.asdict(a.config) == dataclasses.asdict(b.config)
    assert torch.equal(a.thresholds, b.thresholds)
    for k, v in a.tally.state_dict().items():
        w = b.tally.state_dict()[k]
        assert (torch.equal(v, w) if torch.is_tensor(v) else v == w), k
    sa, sb = a.state, b.state
    for k in ("level", "n_total", "count", "slack"):
        assert getattr(sa.quant, k) == getattr(sb.quant, k), k
    assert torch.equal(sa.quant.values, sb.quant.values)
    assert torch.equal(sa.quant.ids, sb.quant.ids)
    for k in ("cut", "maps", "units", "images", "maxes"):
        assert torch.equal(getattr(sa, k), getattr(sb, k)), k
    for k, v in sa.pixels.to_dict().items():
        assert torch.equal(v, getattr(sb.pixels, k)), k


def test_a_dissection_and_its_state_come_back_from_disk_unchanged(kept, tmp_path):
    c = CleanRunCache(tmp_path / "c")
    extras = {"predictions": torch.tensor([1, 0, 1])}
    path = c.save("k1", kept, extras)
    assert path == tmp_path / "c" / "clean-k1.pt" == c.path("k1") and path.is_file()
    assert (tmp_path / "c" / "CACHEDIR.TAG").read_text() == CACHEDIR_TAG
    mod._MEMO.clear()  # read from disk, not from this process's memo
    d, ex = c.load("k1")
    assert d is not kept
    _same(kept, d)
    assert ex.keys() == {"predictions"} and torch.equal(ex["predictions"], extras["predictions"])
    assert d.thresholds.device.type == "cpu"


def test_a_dissection_without_state_or_pixels_comes_back_without(kept, tmp_path):
    bare = dataclasses.replace(kept, state=None)
    c = CleanRunCache(tmp_path)
    c.save("bare", bare)
    mod._MEMO.clear()
    d, ex = c.load("bare")
    assert d.state is None and ex == {}
    no_px = dataclasses.replace(kept, state=dataclasses.replace(kept.state, pixels=None,
                                                                maps=None))
    c.save("nopx", no_px)
    mod._MEMO.clear()
    d, _ = c.load("nopx")
    assert d.state.pixels is None and d.state.maps is None
    assert torch.equal(d.state.quant.values, kept.state.quant.values)


def test_the_memo_returns_what_was_written_until_the_file_changes(kept, tmp_path):
    c = CleanRunCache(tmp_path)
    c.save("k", kept)
    d1, _ = c.load("k")
    assert d1 is kept  # written by this process: no read at all
    assert c.load("k")[0] is kept
    other = dataclasses.replace(kept, meta={**kept.meta, "probe": "other"})
    path = c.save("k", other)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten: a new identity
    d2, _ = c.load("k")
    assert d2 is not kept and d2.meta["probe"] == "other"


def test_the_memo_holds_the_last_two_entries(kept, tmp_path):
    c = CleanRunCache(tmp_path)
    for k in ("a", "b", "c"):
        c.save(k, kept)
    assert len(mod._MEMO) == mod.MEMO_ENTRIES == 2
    names = [os.path.basename(key[0]) for key in mod._MEMO]
    assert names == ["clean-b.pt", "clean-c.pt"]
    c.load("b")  # read: moves to the newest end
    assert [os.path.basename(key[0]) for key in mod._MEMO] == ["clean-c.pt", "clean-b.pt"]
    assert c.load("a")[0] is not kept  # evicted: read from disk


def test_an_unreadable_entry_is_reported_deleted_and_missed(tmp_path):
    c = CleanRunCache(tmp_path)
    bad = c.path("bad")
    bad.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match=r"(?s)ignoring unreadable clean-run cache .*clean-bad\.pt"
                                         r" \(.*\); recomputing"):
        assert c.load("bad") is None
    assert not bad.exists()
    assert c.load("missing") is None


def test_a_folder_that_cannot_be_written_means_no_cache(kept, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    c = CleanRunCache(blocker / "sub")
    with pytest.warns(UserWarning, match=r"the clean-run cache .* cannot be written .*going on "
                                         r"without it"):
        assert c.save("k", kept) is None
    assert c.dir is None and c.path("k") is None and c.load("k") is None
    assert c.lock("k").__class__.__name__ == "nullcontext"


def test_no_folder_means_no_cache(kept):
    c = CleanRunCache(None)
    assert c.path("k") is None and c.save("k", kept) is None and c.load("k") is None
    assert c.lock("k").__class__.__name__ == "nullcontext"


def test_the_lock_is_a_file_lock_beside_the_entry(tmp_path):
    lock = CleanRunCache(tmp_path).lock("k")
    assert lock.lock_file == str(tmp_path / "clean-k.pt") + ".lock"
    assert lock.timeout == mod.LOCK_TIMEOUT_S == 3600
    with lock:
        assert os.path.exists(lock.lock_file)


def test_a_nested_cache_folder_is_created_with_its_parents(kept, tmp_path):
    c = CleanRunCache(tmp_path / "a" / "b" / "c")
    path = c.save("k", kept)
    assert path is not None and path.is_file()


def test_an_unwritable_folder_warns_once(kept, tmp_path):
    import warnings

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert CleanRunCache(blocker / "sub").save("k", kept) is None
    assert len(seen) == 1


def test_an_entry_that_cannot_be_written_is_a_warning(kept, tmp_path):
    c = CleanRunCache(tmp_path)
    c.path("k").mkdir()  # a folder where the file should go
    with pytest.warns(UserWarning, match=r"^nemaudit: could not write the clean-run cache .*"
                                         r"clean-k\.pt \(.*\); going on without it$"):
        assert c.save("k", kept) is None


class _Evil:
    """Not a tensor, not a plain container: ``weights_only`` loading refuses it."""


def test_an_entry_with_arbitrary_objects_is_never_unpickled(kept, tmp_path):
    """A cache file is read with ``weights_only=True``: an entry carrying an arbitrary
    object (what a planted file would use to run code) is refused and deleted."""
    c = CleanRunCache(tmp_path)
    path = c.save("k", kept, {"x": torch.zeros(1)})
    payload = torch.load(path, weights_only=True)
    payload["extras"] = {"x": _Evil()}
    torch.save(payload, path)
    mod._MEMO.clear()
    with pytest.warns(UserWarning, match="ignoring unreadable clean-run cache"):
        assert c.load("k") is None
    assert not path.exists()


def test_an_entry_read_from_disk_is_remembered(kept, tmp_path):
    c = CleanRunCache(tmp_path)
    c.save("k", kept)
    mod._MEMO.clear()
    first, _ = c.load("k")
    assert first is not kept
    again, _ = c.load("k")
    assert again is first  # from memory, not read again
