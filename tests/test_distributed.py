"""Sharded runs on torch.distributed (gloo, 2–3 CPU processes) give the single-process
result exactly, and a failed or killed rank fails the run with its own error, never a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nemaudit import dist

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: str, world: int, out: Path, timeout: float = 20.0, n: int = 70
           ) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks of tests/dist_worker.py as torchrun would (env vars)."""
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   NEMAUDIT_DIST_TIMEOUT=str(timeout), NEMAUDIT_TEST_N=str(n),
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.dist_worker", job, str(out)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout + 120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def single(job: str, out: Path, n: int = 70) -> dict:
    """The same job in one process (world size 1: no group)."""
    res = launch(job, 1, out, n=n)
    assert res[0].returncode == 0, res[0].stderr
    return torch.load(out / "rank0.pt", weights_only=False)


def _equal(a, b, path=""):
    if torch.is_tensor(a):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_launched_reads_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dist.launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist.launched()
    assert dist.init_from_env() is None  # one process: no group, nothing to join


def test_shard_batches_partition_the_probe_in_whole_batches():
    n, b = 70, 16
    for world in (1, 2, 3, 5, 8):
        shards = [dist.shard_batches(n, b, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        for s in shards:  # every batch a rank runs is a batch of the one-process order
            for k in range(0, len(s), b):
                chunk = s[k:k + b]
                assert chunk[0] % b == 0 and chunk == list(range(chunk[0], chunk[0] + len(chunk)))
    assert dist.shard_batches(70, 16, 1, 2) == list(range(16, 32)) + list(range(48, 64))


def test_shard_items_deals_blocks_round_robin():
    assert dist.shard_items(list(range(10)), 1, 3, block=2) == [2, 3, 8, 9]
    assert [dist.shard_items("abcde", r, 2) for r in (0, 1)] == [list("ace"), list("bd")]


def test_timeout_env_is_checked(monkeypatch):
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "soon")
    with pytest.raises(Exception, match="NEMAUDIT_DIST_TIMEOUT"):
        dist.timeout_from_env()
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "12.5")
    assert dist.timeout_from_env() == 12.5


def assert_sharded_equals_single(job: str, world: int, tmp_path: Path, n: int = 70,
                                 timeout: float = 20.0) -> dict:
    """Run ``job`` in one process and on ``world`` ranks; every rank's result must equal the
    single-process one exactly. Returns that result."""
    ref = single(job, tmp_path / "one", n=n)
    res = launch(job, world, tmp_path / "many", timeout=timeout, n=n)
    assert all(r.returncode == 0 for r in res), [r.stderr[-2000:] for r in res]
    for rank in range(world):
        got = torch.load(tmp_path / "many" / f"rank{rank}.pt", weights_only=False)
        _equal(ref, got, f"rank{rank}")
    return ref


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_dissection_equals_single_process(tmp_path, world):
    assert_sharded_equals_single("dissect:state", world, tmp_path)


def test_a_rank_without_images_still_takes_part(tmp_path):
    """A probe of one batch over three ranks: ranks 1 and 2 have no shard."""
    assert_sharded_equals_single("dissect:", 3, tmp_path, n=10)


@pytest.mark.parametrize("corruption", ["gaussian:std=0.05,fraction=0.2,seed=1",
                                        "pgd:eps=0.0156863,steps=3,seed=0"])
def test_sharded_audit_equals_single_process(tmp_path, corruption):
    assert_sharded_equals_single(f"audit:{corruption}", 2, tmp_path)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_attack_recomputing_units_in_full_equals_single_process(tmp_path, world):
    """Each rank re-dissects the units it attacked (and recomputes in full those its kept
    state cannot read); the gathered rows, meta and probe-bootstrap intervals are one
    process's. With 3 ranks and 2 blocks of units one rank attacks nothing."""
    ref = assert_sharded_equals_single("audit-tight:pgd:eps=0.0313725,steps=3,seed=0", world,
                                       tmp_path)
    assert ref["corrupted_meta"]["recomputed_in_full"]  # the case exercises the recompute
    assert ref["meta"]["bootstrap"]


@pytest.mark.parametrize("corruption", ["gaussian:std=0.05,seed=1",
                                        "pgd:eps=0.0156863,steps=2,seed=0"])
def test_sharded_milan_descriptions_equal_single_process(tmp_path, corruption):
    """MILAN's beam searches are dealt over the ranks (units round-robin) and gathered."""
    ref = assert_sharded_equals_single(f"milan:{corruption}", 2, tmp_path, timeout=120.0)
    assert len(ref["rows"]) >= 4 and all(r["clean"] for r in ref["rows"])


@pytest.mark.parametrize(("fooling", "world"), [("location", 3), ("active", 2)])
def test_data_parallel_fooling_matches_single_process(tmp_path, fooling, world):
    """Each rank fine-tunes on its rows of every batch and the gradients are summed: the
    ranks end with identical weights (they apply the same summed gradient), equal to the
    one-process weights up to the order of the additions; the epoch history agrees."""
    ref = single(f"fool:{fooling}", tmp_path / "one")
    res = launch(f"fool:{fooling}", world, tmp_path / "many", timeout=60.0)
    assert all(r.returncode == 0 for r in res), [r.stderr[-2000:] for r in res]
    got = [torch.load(tmp_path / "many" / f"rank{r}.pt", weights_only=False)
           for r in range(world)]
    for g in got[1:]:  # the ranks agree bit for bit
        _equal(got[0], g)
    w, w1 = got[0]["weights"], ref["weights"]
    moved = max(float((w1[k].float() - v.float()).abs().max())
                for k, v in tiny_state().items() if k in w1)
    assert moved > 1e-4  # the fine-tuning did change the weights
    for k in w1:
        assert torch.allclose(w[k].float(), w1[k].float(), rtol=1e-4, atol=1e-5), k
    assert got[0]["best_epoch"] == ref["best_epoch"]
    for a, b in zip(got[0]["history"], ref["history"], strict=True):
        for key in ("top1", "fsr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        for key in ("ce", "lf"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key


def tiny_state() -> dict:
    from nemaudit.model.bundled import ConceptNet
    from nemaudit.model.load import NormalizedModel

    torch.manual_seed(0)
    return NormalizedModel(ConceptNet(num_classes=3, width=4), "imagenet").state_dict()


def test_a_failing_rank_fails_the_others_with_its_error(tmp_path):
    t0 = time.monotonic()
    res = launch("fail:raise", 2, tmp_path, timeout=8.0)
    assert time.monotonic() - t0 < 60
    assert res[1].returncode == 1
    err = (tmp_path / "rank0.err").read_text()
    assert "DistributedError" in err and "rank 1 failed" in err
    assert "probe image 7 is unreadable" in err


def test_a_killed_rank_fails_the_run_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    res = launch("fail:kill", 3, tmp_path, timeout=8.0)
    assert time.monotonic() - t0 < 60
    assert res[1].returncode == 9
    for rank in (0, 2):
        assert res[rank].returncode == 1
        err = (tmp_path / f"rank{rank}.err").read_text()
        assert "DistributedError" in err and "died or did not arrive" in err
