"""Audit costs, measured side by side in one run on the embedded default.

    python benchmarks/bench_audit.py [--n 1000] [--layer layer4]

1. Designed-attack throughput: our Eq.-9 PGD (many units per forward/backward) vs
   torchattacks' own PGD on cross-entropy, same model, same images, same steps — in
   image·steps per second.
2. The designed attack's cost per unit·image·step against a bare forward+backward of the
   model truncated at the layer (channels-last, the layout the attack runs in), and U units
   attacked together against U one-unit calls.
3. Gaussian noise per image against the truncated forward pass it feeds (goal ≤ 0.10).
   Incremental re-dissection: the corrupted side of a noise audit that poisons a fraction p,
   as a fraction of a full dissection (goal ≤ p + 0.05), and against a full-mode audit.
4. The sharded dissection at 1, 2 and 4 processes (``--procs``; benchmarks/bench_distributed.py).
"""

from __future__ import annotations

import argparse
import time

import torch


def pgd_throughput(model, probe, layer, args, device):
    import torchattacks

    from nemaudit.audit.netdissect.run import AuditConfig, clean_run
    from nemaudit.corrupt.pgd import attack_units, untargeted_targets
    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.explain.netdissect import DissectConfig

    base = clean_run(model, layer, probe, AuditConfig(dissect=DissectConfig()), device)
    labels, _ = base.dissection.best()
    units = (labels > 0).nonzero().flatten()[: args.units].tolist()
    targets = untargeted_targets(base.dissection.iou().cpu(), labels.cpu())
    batch = next(iter(probe_loader(probe, args.batch))).to(device)

    def ours():
        return attack_units(model, layer, batch, units, [int(labels[u]) for u in units],
                            [int(targets[u]) for u in units], eps=4 / 255, steps=args.steps,
                            max_copies=args.batch)

    ours()  # warm-up, as for torchattacks below
    t0 = time.perf_counter()
    res = ours()
    ours_s = time.perf_counter() - t0
    pairs = int(res.poisoned.sum())
    atk = torchattacks.PGD(model, eps=4 / 255, alpha=2 * (4 / 255) / args.steps, steps=args.steps,
                           random_start=False)
    with torch.no_grad():
        y = model(batch.images).argmax(1)
    # same number of image copies as our attack pushed through the network
    reps = max(1, round(pairs / len(batch)))
    imgs = batch.images.repeat(reps, 1, 1, 1)
    ys = y.repeat(reps)

    def theirs(images):
        atk(images[:args.batch], ys[:args.batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, images.shape[0], args.batch):
            atk(images[s:s + args.batch], ys[s:s + args.batch])
        return images.shape[0] * args.steps / (time.perf_counter() - t0)

    # as a user calls it (contiguous images), and handed channels-last images: our PGD runs
    # channels-last, which torchattacks keeps when given it (its clone preserves the layout)
    return {"units": len(units), "pairs": pairs, "ours_ips": pairs * args.steps / ours_s,
            "ta_ips": theirs(imgs),
            "ta_cl_ips": theirs(imgs.contiguous(memory_format=torch.channels_last))}


def attack_costs(model, probe, layer, args, device):
    """Cost per unit·image·step of the designed attack against a bare forward+backward of
    the same truncated model (up to ``layer``, nothing after it) on the same copies; and U
    units attacked in one call against U one-unit calls."""
    from nemaudit.audit.netdissect.run import AuditConfig, clean_run
    from nemaudit.corrupt.pgd import attack_units, untargeted_targets
    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.explain.netdissect import DissectConfig
    from nemaudit.model.layers import LayerRecorder

    base = clean_run(model, layer, probe, AuditConfig(dissect=DissectConfig()), device)
    labels, _ = base.dissection.best()
    units = (labels > 0).nonzero().flatten()[: args.units].tolist()
    targets = untargeted_targets(base.dissection.iou().cpu(), labels.cpu())
    batch = next(iter(probe_loader(probe, args.batch))).to(device)
    src = [int(labels[u]) for u in units]
    tgt = [int(targets[u]) for u in units]

    def together():
        return attack_units(model, layer, batch, units, src, tgt, eps=4 / 255, steps=args.steps,
                            max_copies=args.batch)

    together()  # warm-up
    t0 = time.perf_counter()
    res = together()
    t_all = time.perf_counter() - t0
    pu, pb = res.poisoned.nonzero(as_tuple=True)
    t0 = time.perf_counter()
    for i, u in enumerate(units):
        attack_units(model, layer, batch, [u], [src[i]], [tgt[i]], eps=4 / 255,
                     steps=args.steps, max_copies=args.batch)
    t_single = time.perf_counter() - t0
    # the bare truncated forward+backward over exactly the same copies, as many steps
    images = batch.images[pb].contiguous(memory_format=torch.channels_last)  # as the attack
    unit_t = torch.tensor(units, device=device)[pu]
    t0 = time.perf_counter()
    with torch.enable_grad(), LayerRecorder(model, [layer], keep_graph=True,
                                            stop_at_layer=True) as rec:
        for _ in range(args.steps):
            for s in range(0, images.shape[0], args.batch):
                x = images[s:s + args.batch].clone().requires_grad_(True)
                rec.run(x)
                f = rec[layer]
                out = f[torch.arange(f.shape[0], device=device), unit_t[s:s + args.batch]]
                torch.autograd.grad(out.sum(), x)
    t_bare = time.perf_counter() - t0
    copies = int(pu.numel())
    return {"units": len(units), "copies": copies, "together": t_all, "single": t_single,
            "bare": t_bare, "per_ustep_us": t_all / max(copies * args.steps, 1) * 1e6}


def noise_cost(model, probe, layer, args, device):
    """Gaussian noise on a batch (every image poisoned, per-image (seed, index) generators)
    against the forward pass it feeds (the model truncated at ``layer``, as the re-dissection
    runs it), per image; best of 5 for both."""
    from nemaudit.corrupt.noise import GaussianNoise
    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.model.layers import LayerRecorder

    batch = next(iter(probe_loader(probe, 64))).to(device)
    noise = GaussianNoise(0.02)

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad(), LayerRecorder(model, [layer], stop_at_layer=True) as rec:
        fwd = best(lambda: rec.run(batch.images))
    corrupt = best(lambda: noise(batch))
    return {"images": len(batch), "noise_ms": corrupt / len(batch) * 1e3,
            "forward_ms": fwd / len(batch) * 1e3}


def incremental(model, probe, layer, args, device):
    """Corrupted side only: the clean baseline is computed once and read from the on-disk
    cache (as in every audit after the first), so what differs is the re-dissection."""
    import tempfile

    from nemaudit.audit import AuditConfig, audit
    from nemaudit.explain.netdissect import dissect

    def best(fn):  # the least of --repeats timings, both sides alike (as timeit advises)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - t0)
        return min(times), value

    dissect(model, layer, probe, device=device)  # warm
    full_dissection_s, _ = best(lambda: dissect(model, layer, probe, device=device))
    out = []
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        audit(model, layer, probe, "gaussian:std=0.02,fraction=0.0", AuditConfig(), device,
              cache_dir=cache)
        clean_s = time.perf_counter() - t0
        for p in args.fractions:
            row = {"fraction": p}
            spec = f"gaussian:std=0.02,fraction={p}"
            for mode, inc in (("incremental", True), ("full", False)):
                cfg = AuditConfig(incremental=inc, incremental_max_share=1.0)
                audit(model, layer, probe, spec, cfg, device, cache_dir=cache)  # warm
                row[mode], r = best(lambda: audit(model, layer, probe, spec, cfg, device,  # noqa: B023
                                                  cache_dir=cache))
                row[mode + "_flip"] = r.flip_rate
            out.append(row)
    return clean_s, full_dissection_s, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nemaudit:conceptnet")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.25])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timings of each incremental-table entry; the least is printed")
    ap.add_argument("--procs", default="1,2,4",
                    help="also time the sharded dissection at these process counts ('' skips)")
    args = ap.parse_args()
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe
    from nemaudit.probe.memory import InMemoryProbe

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    probe = InMemoryProbe(load_probe(f"synthetic:n={args.n},seed=0"))
    r = pgd_throughput(model, probe, args.layer, args, device)
    print(f"designed PGD ({r['units']} units, {r['pairs']} poisoned unit×image copies, "
          f"{args.steps} steps): {r['ours_ips']:.0f} image·steps/s")
    print(f"torchattacks PGD on cross-entropy (same model, same copies): "
          f"{r['ta_ips']:.0f} image·steps/s  → ratio ours/torchattacks "
          f"{r['ours_ips'] / r['ta_ips']:.2f} (goal ≥ 1.0)")
    print(f"  torchattacks handed channels-last images (the layout ours runs in): "
          f"{r['ta_cl_ips']:.0f} image·steps/s → ratio {r['ours_ips'] / r['ta_cl_ips']:.2f}")
    c = attack_costs(model, probe, args.layer, args, device)
    print(f"designed attack, {c['units']} units × their images = {c['copies']} copies, "
          f"{args.steps} steps: {c['per_ustep_us']:.0f} µs per unit·image·step;")
    print(f"  against a bare forward+backward of the model truncated at {args.layer} on the "
          f"same copies: {c['together'] / c['bare']:.2f}× (goal ≤ 1.3)")
    print(f"  {c['units']} units in one call {c['together']:.2f} s vs {c['units']} one-unit "
          f"calls {c['single']:.2f} s ({c['single'] / c['together']:.2f}× faster together)")
    nz = noise_cost(model, probe, args.layer, args, device)
    print(f"gaussian noise σ=0.02: {nz['noise_ms']:.3f} ms per image vs the forward pass up to "
          f"{args.layer} {nz['forward_ms']:.3f} ms: {nz['noise_ms'] / nz['forward_ms']:.3f} of "
          f"it (goal ≤ 0.10)")
    clean_s, full_s, rows = incremental(model, probe, args.layer, args, device)
    print(f"\nnoise audit on {args.n} images, layer {args.layer}: the clean baseline took "
          f"{clean_s:.2f} s once (then cached); a full dissection (no state kept) "
          f"{full_s:.2f} s;\ntime of the corrupted side by poisoned fraction p (incremental: "
          "changed images' forward pass, threshold update, re-tally, their predictions)")
    print(f"{'p':>6} {'incremental s':>14} {'/ full dissection':>18} {'goal ≤ p+0.05':>14} "
          f"{'full-mode audit s':>18}  same flip rate")
    for row in rows:
        frac = row["incremental"] / full_s
        print(f"{row['fraction']:>6.2f} {row['incremental']:>14.3f} {frac:>18.3f} "
              f"{'yes' if frac <= row['fraction'] + 0.05 else 'NO':>14} {row['full']:>18.2f}  "
              f"{row['incremental_flip'] == row['full_flip']}")
    if args.procs:
        import os
        import sys

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_distributed

        dargs = argparse.Namespace(n=args.n, layer=args.layer, model=args.model,
                                   batch_size=64)
        print(f"\nsharded dissection ({args.n} images, {args.layer}, gloo, "
              f"{os.cpu_count()} cores):")
        base = None
        for n in [int(x) for x in args.procs.split(",")]:
            r = bench_distributed.run(n, dargs)
            base = base or r["wall"]
            print(f"  {n} process(es): {r['wall']:.2f} s (speed-up {base / r['wall']:.2f}, comm "
                  f"{r['comm']:.2f} s)")

if __name__ == "__main__":
    main()
