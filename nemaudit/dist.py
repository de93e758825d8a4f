"""Running on ``torch.distributed``: the process group, shards of the probe, and collectives
that fail with a message instead of hanging.

nemaudit builds no scheduler of its own. ``torchrun --nproc-per-node N -m nemaudit ...``
(gloo on CPUs, NCCL on GPUs) starts N processes; :func:`init_from_env` joins them into the
default group, and the explanation code asks :func:`active` for it. Work is split so that
every result is the single-process one:

- images go to ranks *by whole batches* (batch b to rank b mod N, :func:`shard_batches`): a
  batch holds the same images as in a one-process run, so its activations are bit-identical;
- integer tallies are summed (:func:`all_sum`); the exact top-η quantile state is merged
  by gathering each rank's top values (:func:`all_gather_rows`), after which every rank
  reads the same thresholds; per-unit work (designed attacks) is split by unit and the
  pieces gathered (:func:`all_gather_objects`).

Every collective has a timeout (``NEMAUDIT_DIST_TIMEOUT`` seconds, default 300). A rank that
raises posts its error to the group's store before it exits (:func:`report_failure`); a
rank whose collective then fails or times out raises :class:`DistributedError` quoting that
error — or, for a rank that was killed and posted nothing, saying which rank never arrived.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from nemaudit.errors import NemauditError

T = TypeVar("T")

#: seconds a collective may wait for the other ranks (env ``NEMAUDIT_DIST_TIMEOUT``)
DEFAULT_TIMEOUT = 300.0


class DistributedError(NemauditError):
    """A collective failed: another rank raised (its error is quoted), died or hung."""


@dataclass(frozen=True)
class Group:
    """The default process group as nemaudit uses it."""

    rank: int
    world: int
    backend: str
    timeout: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def timeout_from_env() -> float:
    text = os.environ.get("NEMAUDIT_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise NemauditError(f"NEMAUDIT_DIST_TIMEOUT={text!r}: expected seconds, e.g. 300") from None
    if not value > 0:
        raise NemauditError(f"NEMAUDIT_DIST_TIMEOUT={text!r}: must be > 0")
    return value


def launched() -> bool:
    """Was this process started by ``torchrun`` (or an equivalent launcher) with N > 1?"""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(backend: str = "auto", timeout: float | None = None) -> Group | None:
    """Join the process group a launcher described in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); None when not launched with N > 1.
    ``backend="auto"`` picks NCCL when every rank has a CUDA device, else gloo."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return active()
    if not launched():
        return None
    if not dist.is_available():
        raise NemauditError("this torch build has no torch.distributed")
    timeout = timeout_from_env() if timeout is None else timeout
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return active()


def active() -> Group | None:
    """The joined group when it has more than one rank, else None (one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Group(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()),
                 timeout_from_env())


def is_main() -> bool:
    """True on rank 0 and in a single process: the rank that prints, shows progress, writes."""
    g = active()
    return g is None or g.is_main


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- sharding


def shard_batches(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """The probe indices rank ``rank`` of ``world`` handles: whole batches b ≡ rank (mod
    world) of the single-process order, so each batch is the one a single process runs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[int] = []
    for start in range(rank * batch_size, n, world * batch_size):
        out.extend(range(start, min(start + batch_size, n)))
    return out


def shard_items(items: Sequence[T], rank: int, world: int, block: int = 1) -> list[T]:
    """Blocks of ``block`` consecutive items dealt round-robin: rank r gets blocks r, r+N, …"""
    return [x for i, x in enumerate(items) if (i // block) % world == rank]


# --------------------------------------------------------------------------- collectives


def _store():
    import torch.distributed as dist

    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: nothing to report through
        return None


def report_failure(exc: BaseException) -> None:
    """Post this rank's error where the other ranks look when their collective fails. A
    :class:`DistributedError` is not posted: it only repeats another rank's, the cause."""
    g = active()
    store = _store()
    if g is None or store is None or isinstance(exc, DistributedError):
        return
    try:
        store.set(f"nemaudit/error/{g.rank}", f"{type(exc).__name__}: {exc}"[:2000])
    except Exception:  # noqa: BLE001 - the store may be gone with rank 0
        pass


def peer_errors(group: Group) -> dict[int, str]:
    """Errors other ranks posted (rank → message)."""
    store = _store()
    out: dict[int, str] = {}
    if store is None:
        return out
    for r in range(group.world):
        if r == group.rank:
            continue
        key = f"nemaudit/error/{r}"
        try:
            if store.check([key]):
                out[r] = store.get(key).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            continue
    return out


#: seconds this process spent inside collectives (the benchmark's communication share)
COMM_SECONDS = [0.0]


def _guard(what: str, fn: Callable[[], T]) -> T:
    import time

    g = active()
    assert g is not None
    t0 = time.perf_counter()
    try:
        return fn()
    except Exception as e:  # the backends raise RuntimeError subclasses (DistBackendError …)
        if isinstance(e, DistributedError):
            raise
        time.sleep(0.5)  # let a failing peer finish posting its error
        errors = peer_errors(g)
        if errors:
            detail = "; ".join(f"rank {r} failed: {m}" for r, m in sorted(errors.items()))
        else:
            detail = (f"another rank died or did not arrive within {g.timeout:g} s "
                      f"(killed, out of memory, or hung); backend said: {str(e).splitlines()[0]}")
        raise DistributedError(f"rank {g.rank}/{g.world}: {what} failed — {detail}") from None
    finally:
        COMM_SECONDS[0] += time.perf_counter() - t0


def all_sum(t: torch.Tensor, what: str = "summing tallies") -> torch.Tensor:
    """Sum ``t`` over ranks, in place, and return it (integers add exactly)."""
    import torch.distributed as dist

    if active() is None:
        return t
    _guard(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM))
    return t


def all_max(value: int | float, what: str = "agreeing on a flag") -> float:
    import torch.distributed as dist

    if active() is None:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    _guard(what, lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return float(t.item())


def _device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: torch.Tensor, fill: float | int, what: str = "gathering rows"
                    ) -> list[torch.Tensor]:
    """Every rank's ``[R, w_rank]`` tensor (same R, widths may differ), padded with ``fill``
    to the widest and gathered: returns the list indexed by rank, each at its own width."""
    import torch.distributed as dist

    g = active()
    if g is None:
        return [t]
    dev = _device()
    width = torch.tensor([t.shape[1]], dtype=torch.int64, device=dev)
    widths = [torch.zeros_like(width) for _ in range(g.world)]
    _guard(what, lambda: dist.all_gather(widths, width))
    w = int(max(int(x) for x in widths))
    padded = torch.full((t.shape[0], w), fill, dtype=t.dtype, device=dev)
    padded[:, :t.shape[1]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(g.world)]
    _guard(what, lambda: dist.all_gather(parts, padded))
    return [p[:, :int(k)].to(t.device) for p, k in zip(parts, widths)]


def all_gather_objects(obj: Any, what: str = "gathering results") -> list[Any]:
    """Every rank's picklable ``obj`` (tensors move to the CPU first), indexed by rank."""
    import torch.distributed as dist

    g = active()
    if g is None:
        return [obj]
    out: list[Any] = [None] * g.world
    payload = _to_cpu(obj)
    _guard(what, lambda: dist.all_gather_object(out, payload))
    return out


def barrier(what: str = "waiting for the other ranks") -> None:
    import torch.distributed as dist

    if active() is None:
        return
    _guard(what, lambda: dist.monitored_barrier(timeout=datetime.timedelta(
        seconds=active().timeout)) if dist.get_backend() == "gloo"  # type: ignore[union-attr]
        else dist.barrier())


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
