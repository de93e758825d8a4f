"""``nemaudit.dist`` in-process: joining a group from the launcher's environment (with
torch.distributed's own calls recorded), the collectives over thread-ranks
(:mod:`tests.threaded_dist`), how a rank that never arrives is reported, and the helpers."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as tdist

from nemaudit import dist
from nemaudit.errors import NemauditError
from tests.threaded_dist import run_ranks

# --------------------------------------------------------------------------- joining

@pytest.fixture
def launcher(monkeypatch):
    """torch.distributed before a group exists: ``init_process_group`` is recorded and then
    makes this process rank 1 of 2."""
    calls: dict = {"init": [], "device": []}
    state = {"on": False}

    def init(backend, timeout=None, **kw):
        calls["init"].append((backend, timeout))
        state["on"] = True

    monkeypatch.setattr(tdist, "is_initialized", lambda: state["on"])
    monkeypatch.setattr(tdist, "init_process_group", init)
    monkeypatch.setattr(tdist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(tdist, "get_rank", lambda *a: 1)
    monkeypatch.setattr(tdist, "get_backend", lambda *a: calls["init"][-1][0])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["device"].append(d))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("NEMAUDIT_DIST_TIMEOUT", raising=False)
    return calls, state


def test_joining_a_launched_group_on_the_cpu(launcher, monkeypatch):
    calls, _ = launcher
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    g = dist.init_from_env()
    assert g == dist.Group(1, 2, "gloo", dist.DEFAULT_TIMEOUT) and not g.is_main
    assert calls["init"] == [("gloo", datetime.timedelta(seconds=300))]
    assert calls["device"] == [] and dist.DEFAULT_TIMEOUT == 300.0
    assert dist.init_from_env() == g and len(calls["init"]) == 1  # joined once
    assert dist.is_main() is False


def test_joining_with_cuda_picks_nccl_and_the_local_device(launcher, monkeypatch):
    calls, _ = launcher
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tdist, "is_nccl_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "12.5")
    g = dist.init_from_env()
    assert calls["init"] == [("nccl", datetime.timedelta(seconds=12.5))]
    assert calls["device"] == [3] and g.backend == "nccl" and g.timeout == 12.5


def test_joining_with_cuda_but_no_nccl_is_gloo(launcher, monkeypatch):
    calls, _ = launcher
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tdist, "is_nccl_available", lambda: False)
    dist.init_from_env()
    assert calls["init"][0][0] == "gloo" and calls["device"] == []


def test_an_explicit_backend_and_timeout_win(launcher, monkeypatch):
    calls, _ = launcher
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "12.5")
    dist.init_from_env("gloo", timeout=7.0)
    assert calls["init"] == [("gloo", datetime.timedelta(seconds=7.0))]


def test_nccl_without_local_rank_uses_device_0(launcher, monkeypatch):
    calls, _ = launcher
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    dist.init_from_env("nccl")
    assert calls["device"] == [0]


def test_not_launched_joins_nothing(launcher, monkeypatch):
    calls, _ = launcher
    for ws in ("1", "0", "many"):
        monkeypatch.setenv("WORLD_SIZE", ws)
        assert dist.init_from_env() is None
    monkeypatch.delenv("WORLD_SIZE")
    assert not dist.launched() and dist.init_from_env() is None
    assert calls["init"] == []


def test_a_torch_without_distributed_is_a_clear_error(launcher, monkeypatch):
    monkeypatch.setattr(tdist, "is_available", lambda: False)
    with pytest.raises(NemauditError, match="^this torch build has no torch.distributed$"):
        dist.init_from_env()


@pytest.mark.parametrize("text", ["0", "-5", "nan", "soon"])
def test_bad_timeouts_are_refused(text, monkeypatch):
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", text)
    with pytest.raises(NemauditError, match=f"^NEMAUDIT_DIST_TIMEOUT='{text}': "):
        dist.timeout_from_env()


def test_an_empty_timeout_is_the_default(monkeypatch):
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "")
    assert dist.timeout_from_env() == 300.0


def test_a_group_of_one_is_no_group(monkeypatch):
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda *a: 1)
    assert dist.active() is None and dist.is_main()


def test_shutdown_destroys_only_a_joined_group(monkeypatch):
    destroyed = []
    monkeypatch.setattr(tdist, "destroy_process_group", lambda: destroyed.append(1))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    dist.shutdown()
    assert destroyed == []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    dist.shutdown()
    assert destroyed == [1]


# --------------------------------------------------------------------------- collectives

def test_collectives_over_three_ranks(monkeypatch):
    def job(rank):
        g = dist.active()
        t = torch.tensor([rank, 10 * rank], dtype=torch.int64)
        summed = dist.all_sum(t, "s")
        rows = dist.all_gather_rows(torch.full((2, rank + 1), float(rank)), -1.0, "r")
        objs = dist.all_gather_objects({"rank": rank, "t": torch.tensor([rank])}, "o")
        dist.barrier("b")
        return (g, summed is t, t.tolist(), dist.all_max(rank * 1.5, "m"),
                [r.tolist() for r in rows], objs, dist.is_main())

    res = run_ranks(3, job, monkeypatch)
    for rank, (g, in_place, total, mx, rows, objs, main) in enumerate(res):
        assert g == dist.Group(rank, 3, "gloo", dist.timeout_from_env())
        assert in_place and total == [3, 30] and mx == 3.0 and main == (rank == 0)
        assert rows == [[[0.0], [0.0]], [[1.0, 1.0], [1.0, 1.0]], [[2.0] * 3, [2.0] * 3]]
        assert [o["rank"] for o in objs] == [0, 1, 2]
        assert [o["t"].tolist() for o in objs] == [[0], [1], [2]]


def test_outside_a_group_the_collectives_are_identities():
    t = torch.tensor([1, 2])
    assert dist.all_sum(t) is t and dist.all_max(2.5) == 2.5
    row = t[None]
    assert [x is row for x in dist.all_gather_rows(row, 0)] == [True]
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.barrier() is None


def test_gathered_objects_travel_on_the_cpu():
    nested = {"a": [torch.ones(2, requires_grad=True)], "b": (torch.zeros(1), 3), "c": "x"}
    out = dist._to_cpu(nested)
    assert out["a"][0].device.type == "cpu" and not out["a"][0].requires_grad
    assert isinstance(out["b"], tuple) and out["b"][1] == 3 and out["c"] == "x"


def test_a_rank_that_never_arrives_is_named_with_the_timeout(monkeypatch):
    """Rank 1 leaves without an error and without joining the collective: rank 0 gives up
    after the timeout and says so (nothing was posted to quote)."""
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "1.5")
    before = dist.COMM_SECONDS[0]

    def job(rank):
        if rank == 1:
            return "left"
        return dist.all_sum(torch.zeros(1), "summing the tallies")

    res = run_ranks(2, job, monkeypatch, timeout=1.0)
    assert res[1] == "left"
    assert isinstance(res[0], dist.DistributedError)
    assert str(res[0]) == ("rank 0/2: summing the tallies failed — another rank died or did "
                           "not arrive within 1.5 s (killed, out of memory, or hung); backend "
                           "said: timed out after 1.0 s")
    assert dist.COMM_SECONDS[0] - before >= 1.0  # the wait counts as communication


def test_posted_errors_are_read_from_the_other_ranks_only(monkeypatch):
    def job(rank):
        dist.report_failure(ValueError(f"rank {rank} says " + "x" * 3000))
        dist.barrier()
        return dist.peer_errors(dist.active())

    res = run_ranks(3, job, monkeypatch)
    for rank, errors in enumerate(res):
        assert sorted(errors) == [r for r in range(3) if r != rank]
        for r, msg in errors.items():
            assert msg.startswith(f"ValueError: rank {r} says xxx") and len(msg) == 2000


def test_without_a_store_nothing_is_posted_or_read(monkeypatch):
    monkeypatch.setattr(tdist.distributed_c10d, "_get_default_store",
                        lambda: (_ for _ in ()).throw(RuntimeError("no store")))
    assert dist._store() is None
    dist.report_failure(ValueError("x"))  # no group, no store: silently nothing
    assert dist.peer_errors(dist.Group(0, 2, "gloo", 1.0)) == {}


def test_batches_of_one_are_allowed_and_of_none_refused():
    assert dist.shard_batches(5, 1, 1, 2) == [1, 3]
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        dist.shard_batches(5, 0, 0, 2)


def test_a_timeout_under_a_second_is_allowed(monkeypatch):
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "0.5")
    assert dist.timeout_from_env() == 0.5


def test_every_failing_rank_is_quoted(monkeypatch):
    def job(rank):
        if rank:
            raise ValueError(f"problem {rank}")
        return dist.all_sum(torch.zeros(1), "summing")

    res = run_ranks(3, job, monkeypatch)
    assert str(res[0]) == ("rank 0/3: summing failed — rank 1 failed: ValueError: problem 1; "
                           "rank 2 failed: ValueError: problem 2")


@pytest.mark.parametrize("backend, called", [("gloo", "monitored"), ("nccl", "plain")])
def test_the_barrier_is_monitored_on_gloo(backend, called, monkeypatch):
    seen = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(tdist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(tdist, "get_backend", lambda *a: backend)
    monkeypatch.setattr(tdist, "monitored_barrier",
                        lambda timeout=None: seen.append(("monitored", timeout)))
    monkeypatch.setattr(tdist, "barrier", lambda: seen.append(("plain", None)))
    monkeypatch.setenv("NEMAUDIT_DIST_TIMEOUT", "9")
    dist.barrier()
    want = datetime.timedelta(seconds=9) if called == "monitored" else None
    assert seen == [(called, want)]


def test_communication_time_adds_up(monkeypatch):
    import time

    monkeypatch.setattr(dist, "COMM_SECONDS", [0.0])

    def job(rank):
        for i in range(4):
            dist.all_sum(torch.zeros(1))
            if rank == 0 and i < 2:
                time.sleep(0.2)  # rank 1 waits for rank 0 in collectives 1 and 2, not 3
        return dist.COMM_SECONDS[0]

    run_ranks(2, job, monkeypatch)
    # the waits summed, not the last collective's; durations, not clock readings
    assert 0.35 <= dist.COMM_SECONDS[0] < 60


def test_each_collective_names_what_it_does_in_its_failures(monkeypatch):
    """The label a collective hands its guard is what a failure report quotes: each
    collective's own default, or the caller's."""
    seen: list[str] = []
    guard = dist._guard

    def recording(what, fn):
        seen.append(what)
        return guard(what, fn)

    monkeypatch.setattr(dist, "_guard", recording)

    def job(rank):
        dist.all_sum(torch.tensor([rank]))
        dist.all_max(float(rank))
        dist.all_gather_rows(torch.zeros(1, 1), 0.0)
        dist.all_gather_objects(rank)
        dist.barrier()
        dist.all_sum(torch.tensor([rank]), "mine")

    run_ranks(2, job, monkeypatch)
    want = ["summing tallies", "agreeing on a flag", "gathering rows", "gathering rows",
            "gathering results", "waiting for the other ranks", "mine"]
    assert sorted(seen) == sorted(want * 2)


def test_an_nccl_group_exchanges_on_the_current_cuda_device(monkeypatch):
    monkeypatch.setattr(tdist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert dist._device() == torch.device("cuda", 2)
    monkeypatch.setattr(tdist, "get_backend", lambda *a: "gloo")
    assert dist._device() == torch.device("cpu")


def test_items_are_dealt_one_by_one_unless_blocks_are_asked_for():
    assert dist.shard_items(list(range(7)), 0, 3) == [0, 3, 6]
    assert dist.shard_items(list(range(7)), 2, 3) == [2, 5]
    assert dist.shard_items(list(range(7)), 1, 2, block=2) == [2, 3, 6]
