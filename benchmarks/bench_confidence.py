"""Coverage and cost of the rate intervals (a measurement, not a test).

For a layer of the embedded default under Gaussian noise: the "true" flip rate over the
corruption's randomness is estimated from many draws; then many independent R-draw
intervals (``repeats=R``, their own derived seeds) are built, and the share that contains
that rate is their measured coverage, printed beside the nominal level. Also prints the
cost of an R-draw audit against one plain audit.

    python benchmarks/bench_confidence.py [--n 200] [--layer layer2] [--std 0.05]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--layer", default="layer2")
    p.add_argument("--std", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--intervals", type=int, default=30)
    p.add_argument("--reference-draws", type=int, default=100)
    p.add_argument("--level", type=float, default=0.9)
    a = p.parse_args()

    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor

    auditor = Auditor("cpu")
    base = {"model": "nemaudit:conceptnet", "probe": f"synthetic:n={a.n},seed=0",
            "layer": a.layer}

    def request(seed: int, repeats: int = 1) -> AuditRequest:
        return AuditRequest.build("netdissect", corruption=f"gaussian:std={a.std},seed={seed}",
                                  repeats=repeats, **base)

    t0 = time.perf_counter()
    plain = auditor.run(request(10**6))
    t_plain = time.perf_counter() - t0
    ref = auditor.run(request(10**6 + 1, a.reference_draws))
    truth = ref.metrics["flip_rate"]
    inside = 0
    t0 = time.perf_counter()
    for i in range(a.intervals):
        r = auditor.run(request(i, a.repeats))
        iv = r.interval("flip_rate", level=a.level)
        inside += iv.lo <= truth <= iv.hi
    t_rep = (time.perf_counter() - t0) / a.intervals
    print(f"{a.layer}, gaussian σ={a.std}, {plain.metrics['units']} units, {a.n} images")
    print(f"flip rate over {a.reference_draws} draws: {truth:.4f}")
    print(f"coverage of {a.intervals} intervals of {a.repeats} draws at {a.level:.0%}: "
          f"{inside / a.intervals:.0%} (nominal {a.level:.0%}; the interval also resamples "
          "units, so it may cover more)")
    print(f"cost: one audit {t_plain:.2f} s, an audit with repeats={a.repeats} {t_rep:.2f} s "
          f"(ratio {t_rep / t_plain:.1f})")


if __name__ == "__main__":
    main()
