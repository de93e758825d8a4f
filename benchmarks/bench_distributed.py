"""Sharded Network Dissection at 1, 2 and 4 processes (gloo on this machine's CPUs): wall
time, speed-up, efficiency, and the compute / communication split (a measurement, not a test).

    python benchmarks/bench_distributed.py [--n 1000] [--layer layer4] [--procs 1,2,4]

Each run starts N processes as ``torchrun`` would (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
environment), each with ``OMP_NUM_THREADS = cores // N`` so the machine is never
oversubscribed. Every rank builds the probe lazily (the concept world renders an image when
it is read), so image generation is sharded too; it is reported apart from the dissection.
The dissection's wall time is rank 0's, from after the group is joined to the result;
"comm" is the time spent inside collectives (:data:`nemaudit.dist.COMM_SECONDS`), which
includes waiting for the slowest rank. Results are checked identical to the 1-process run.

A projection for more processes (or GPUs) from the measured split: with compute C at 1
process and communication K(N) at N, wall(N) ≈ C/N + K(N); it stops paying once K(N) is
of the order of C/N.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def worker(args) -> None:
    import torch

    from nemaudit import dist
    from nemaudit.explain.netdissect import DissectConfig, dissect
    from nemaudit.model import load_model
    from nemaudit.probe import load_probe

    dist.init_from_env("gloo")
    model = load_model(args.model, device="cpu")
    probe = load_probe(f"synthetic:n={args.n},seed=0")
    dist.barrier()
    dist.COMM_SECONDS[0] = 0.0
    t0 = time.perf_counter()
    d = dissect(model, args.layer, probe, DissectConfig(batch_size=args.batch_size))
    wall = time.perf_counter() - t0
    g = dist.active()
    rank = 0 if g is None else g.rank
    if rank == 0:
        out = {"wall": wall, "comm": dist.COMM_SECONDS[0],
               "thresholds": d.thresholds.tolist(),
               "both": int(d.tally.both.sum()), "digest": float(torch.sum(d.iou()))}
        with open(args.result, "w") as f:
            json.dump(out, f)
    dist.shutdown()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, args) -> dict:
    cores = os.cpu_count() or 1
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "r.json")
        ps = []
        for r in range(procs):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(procs), LOCAL_RANK=str(r),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                       OMP_NUM_THREADS=str(max(1, cores // procs)))
            ps.append(subprocess.Popen([sys.executable, __file__, "--worker", "--result", result,
                                        "--n", str(args.n), "--layer", args.layer,
                                        "--model", args.model,
                                        "--batch-size", str(args.batch_size)], env=env))
        for p in ps:
            if p.wait() != 0:
                raise SystemExit(f"a rank failed at {procs} processes")
        with open(result) as f:
            return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--layer", default="layer4")
    p.add_argument("--model", default="nemaudit:conceptnet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--procs", default="1,2,4")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--result", default="")
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    rows = []
    for n in [int(x) for x in a.procs.split(",")]:
        t0 = time.perf_counter()
        r = run(n, a)
        r["total"] = time.perf_counter() - t0
        r["procs"] = n
        rows.append(r)
    base = rows[0]
    print(f"sharded Network Dissection: {a.model} {a.layer}, {a.n} concept-world images, "
          f"{os.cpu_count()} cores, gloo")
    print(f"{'procs':>5} {'wall s':>8} {'speed-up':>9} {'efficiency':>10} {'compute s':>10} "
          f"{'comm s':>7} {'comm %':>7} {'identical':>9}")
    for r in rows:
        same = r["thresholds"] == base["thresholds"] and r["both"] == base["both"] \
            and r["digest"] == base["digest"]
        sp = base["wall"] / r["wall"]
        print(f"{r['procs']:>5} {r['wall']:>8.2f} {sp:>9.2f} {sp / r['procs']:>10.0%} "
              f"{r['wall'] - r['comm']:>10.2f} {r['comm']:>7.2f} {r['comm'] / r['wall']:>7.0%} "
              f"{str(same):>9}")
    c1 = base["wall"]
    last = rows[-1]
    k = last["comm"]
    print(f"projection: compute {c1:.2f} s at 1 process; at N processes ≈ {c1:.2f}/N + "
          f"comm (measured {k:.2f} s at {last['procs']}, mostly waiting for the slowest rank); "
          f"N = 8 → ≈ {c1 / 8 + k:.2f} s if comm stays at that level")


if __name__ == "__main__":
    main()
