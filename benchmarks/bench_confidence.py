"""Coverage and cost of the rate intervals (a measurement, not a test).

For a layer of the embedded default under Gaussian noise: the "true" flip rate over the
corruption's randomness is estimated from many draws; then many independent R-draw
intervals (``repeats=R``, their own derived seeds) are built, and the share that contains
that rate is their measured coverage, printed beside the nominal level. Also prints the
cost of an R-draw audit against one plain audit.

With ``--probe-bootstrap``: the coverage of the probe bootstrap (``bootstrap=B``) instead.
The "true" flip rate is the mean over many fresh probes (``synthetic:n=N,seed=s``, seeds
the intervals never see); each interval comes from one probe of its own. Printed: the
measured coverage beside the nominal level for the probe-only interval (units held fixed,
the truth's own setting) and the default units+probe one, the exact binomial over units
for comparison, and the spread of the rate over probes beside the bootstrap's.

    python benchmarks/bench_confidence.py [--n 200] [--layer layer2] [--std 0.05]
    python benchmarks/bench_confidence.py --probe-bootstrap [--n 40] [--probes 20]
        [--truth-probes 20] [--resamples 500]
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
    p.add_argument("--probe-bootstrap", action="store_true",
                   help="measure the probe bootstrap's coverage over fresh probes")
    p.add_argument("--probes", type=int, default=20, help="probes that each give an interval")
    p.add_argument("--truth-probes", type=int, default=20,
                   help="fresh probes whose mean rate is the truth")
    p.add_argument("--resamples", type=int, default=500, help="bootstrap resamples")
    a = p.parse_args()
    if a.probe_bootstrap:
        probe_coverage(a)
        return

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


def probe_coverage(a: argparse.Namespace) -> None:
    import numpy as np

    from nemaudit.audit.confidence import binomial_interval
    from nemaudit.audit.netdissect.bootstrap import probe_interval
    from nemaudit.audit.netdissect.result import RATE_FLAGS
    from nemaudit.audit.request import AuditRequest
    from nemaudit.auditor import Auditor

    auditor = Auditor("cpu")
    metrics = ("flip_rate", "flip_rate_detectors")

    def run(seed: int, bootstrap: int = 0):
        return auditor.run(AuditRequest.build(
            "netdissect", model="nemaudit:conceptnet", probe=f"synthetic:n={a.n},seed={seed}",
            layer=a.layer, corruption=f"gaussian:std={a.std},seed=0", bootstrap=bootstrap))

    t0 = time.perf_counter()
    fresh = [run(10_000 + s).metrics for s in range(a.truth_probes)]
    t_plain = (time.perf_counter() - t0) / a.truth_probes
    truth = {m: float(np.mean([f[m] for f in fresh if f[m] is not None])) for m in metrics}
    spread = {m: float(np.std([f[m] for f in fresh if f[m] is not None], ddof=1))
              for m in metrics}
    kinds = ("probe", "units+probe", "units (binomial)")
    inside = {(m, k): 0 for m in metrics for k in kinds}
    width = {(m, k): [] for m in metrics for k in kinds}
    boot_sd = {m: [] for m in metrics}
    counted = {m: 0 for m in metrics}
    t0 = time.perf_counter()
    for s in range(a.probes):
        r = run(s, a.resamples)
        boot = r.probe_bootstrap
        for m in metrics:
            k, n = r.counts(m)
            if n == 0:
                continue
            counted[m] += 1
            hit_key, pool_key = RATE_FLAGS[m]
            hit = boot.flags[hit_key]
            pool = boot.flags[pool_key] if pool_key else np.ones_like(hit)
            some = pool.any(axis=1)  # the resample's rate, units held fixed
            boot_sd[m].append(float(np.std((hit & pool).sum(1)[some] / pool.sum(1)[some],
                                           ddof=1)))
            ivs = {"probe": probe_interval([boot], m, a.level, k, n, units=False),
                   "units+probe": r.interval(m, level=a.level),
                   "units (binomial)": binomial_interval(k, n, a.level)}
            for kind, iv in ivs.items():
                inside[(m, kind)] += iv.lo <= truth[m] <= iv.hi
                width[(m, kind)].append(iv.hi - iv.lo)
    t_boot = (time.perf_counter() - t0) / a.probes
    print(f"{a.layer}, gaussian σ={a.std}, probes of {a.n} images, {a.resamples} resamples, "
          f"level {a.level:.0%}")
    for m in metrics:
        print(f"{m}: truth (mean over {a.truth_probes} fresh probes) {truth[m]:.4f}, its sd "
              f"over probes {spread[m]:.4f}; the bootstrap's sd (mean over probes) "
              f"{np.mean(boot_sd[m]):.4f}")
        for kind in kinds:
            c = inside[(m, kind)] / max(counted[m], 1)
            print(f"  coverage {kind:<17} {c:6.0%} of {counted[m]} (nominal {a.level:.0%}), "
                  f"mean width {np.mean(width[(m, kind)]):.3f}")
    print(f"cost: one audit {t_plain:.2f} s, with bootstrap={a.resamples} {t_boot:.2f} s")


if __name__ == "__main__":
    main()
