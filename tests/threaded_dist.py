"""An in-process stand-in for ``torch.distributed``: N ranks as N threads of this process.

The real-transport tests (``tests/test_distributed.py``) start gloo processes, which mutation
testing cannot see (it measures the tests' reach in-process). This stand-in replaces only the
*transport* — ``torch.distributed``'s collectives, rank and world size, the default store — with
threads meeting at a rendezvous, with the collectives' exact semantics (sums and maxima over ranks,
gathers indexed by rank, objects pickled on the way). Everything above it, ``nemaudit.dist``
included, runs unchanged, so the group branches of the explanation code are checked in-process.

    results = run_ranks(3, lambda rank: dissect(...), monkeypatch)

Each rank must build its own model (forward hooks are per module) and probe.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as tdist


class _Store:
    """The default store's ``set``/``check``/``get``, shared by the ranks."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key: str, value: str) -> None:
        with self.lock:
            self.data[key] = value.encode()

    def check(self, keys: list[str]) -> bool:
        with self.lock:
            return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        with self.lock:
            return self.data[key]


class ThreadedGroup:
    """The collectives of one group of ``world`` thread-ranks."""

    def __init__(self, world: int, timeout: float = 60.0) -> None:
        self.world, self.timeout = world, timeout
        self.cond = threading.Condition()
        self.round = 0  # collectives completed
        self.slots: list[Any] = [None] * world
        self.arrived = 0
        self.done: dict[int, list[Any]] = {}  # a completed round's payloads
        self.broken = False
        self.local = threading.local()
        self.store = _Store()

    def rank(self) -> int:
        return self.local.rank

    def abort(self) -> None:
        """A rank left: collectives not yet completed fail (a completed one still returns)."""
        with self.cond:
            self.broken = True
            self.cond.notify_all()

    def _exchange(self, payload: Any) -> list[Any]:
        """Every rank's ``payload``, indexed by rank (all ranks must call it in step)."""
        with self.cond:
            if self.broken:
                raise RuntimeError("a peer rank left the group")
            r = self.round
            self.slots[self.rank()] = payload
            self.arrived += 1
            if self.arrived == self.world:
                self.done[r] = self.slots
                self.done.pop(r - 2, None)
                self.slots, self.arrived, self.round = [None] * self.world, 0, r + 1
                self.cond.notify_all()
            elif not self.cond.wait_for(lambda: self.round > r or self.broken, self.timeout):
                raise RuntimeError(f"timed out after {self.timeout} s")
            if self.round <= r:
                raise RuntimeError("a peer rank left the group")
            return list(self.done[r])

    def all_reduce(self, t: torch.Tensor, op=tdist.ReduceOp.SUM, **_: Any) -> None:
        parts = torch.stack([p.to(t.device) for p in self._exchange(t.clone())])
        if op == tdist.ReduceOp.SUM:
            t.copy_(parts.sum(0))
        elif op == tdist.ReduceOp.MAX:
            t.copy_(parts.amax(0))
        else:
            raise NotImplementedError(f"reduce op {op}")

    def all_gather(self, out: list[torch.Tensor], t: torch.Tensor, **_: Any) -> None:
        parts = self._exchange(t.clone())
        for o, p in zip(out, parts, strict=True):
            if o.shape != p.shape:  # gloo refuses tensors of different shapes
                raise RuntimeError(f"all_gather of shapes {tuple(o.shape)} and {tuple(p.shape)}")
            o.copy_(p)

    def all_gather_object(self, out: list[Any], obj: Any, **_: Any) -> None:
        parts = self._exchange(pickle.dumps(obj))
        for i, p in enumerate(parts):
            out[i] = pickle.loads(p)

    def barrier_(self, *_: Any, **__: Any) -> None:
        self._exchange(None)

    def patch(self, monkeypatch) -> None:
        """Point ``torch.distributed`` at this group (undone by ``monkeypatch``)."""
        for name, fn in {
            "is_initialized": lambda: True,
            "get_world_size": lambda *a, **k: self.world,
            "get_rank": lambda *a, **k: self.rank(),
            "get_backend": lambda *a, **k: "gloo",
            "all_reduce": self.all_reduce,
            "all_gather": self.all_gather,
            "all_gather_object": self.all_gather_object,
            "monitored_barrier": self.barrier_,
            "barrier": self.barrier_,
        }.items():
            monkeypatch.setattr(tdist, name, fn)
        monkeypatch.setattr(tdist.distributed_c10d, "_get_default_store", lambda: self.store)


def run_ranks(world: int, fn: Callable[[int], Any], monkeypatch, timeout: float = 60.0
              ) -> list[Any]:
    """``fn(rank)`` on each of ``world`` thread-ranks; the list of results, indexed by rank
    (a rank that raised gives its exception). A rank that raises posts its error, as a
    launched worker does (``nemaudit.dist.report_failure``), and leaves the group, so the
    others' collectives fail instead of waiting."""
    from nemaudit import dist

    group = ThreadedGroup(world, timeout)
    group.patch(monkeypatch)
    results: list[Any] = [None] * world

    def body(rank: int) -> None:
        group.local.rank = rank
        try:
            results[rank] = fn(rank)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            dist.report_failure(e)
            results[rank] = e
            group.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 4)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results
