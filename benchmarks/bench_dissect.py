"""Dissection cost vs the bare forward pass, and peak memory at N vs 4N images.

    python benchmarks/bench_dissect.py [--n 2000] [--layer layer4] [--model nemaudit:conceptnet]

Both timings run in this process on the same in-memory probe (so image generation or
decoding is not counted on either side), after one warm-up batch. Peak memory is measured in
fresh subprocesses (ru_maxrss) that stream a lazily generated probe of N and 4N images.
Goals (issue 2): dissection / forward ≤ 1.5 on the CPU; peak memory growth N → 4N < 10%.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def _forward_time(model, probe, layer, batch_size, device, to_layer):
    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.model.layers import LayerRecorder

    loader = probe_loader(probe, batch_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        if to_layer:
            with LayerRecorder(model, [layer], stop_at_layer=True) as rec:
                for b in loader:
                    rec.run(b.images.to(device))
        else:
            for b in loader:
                model(b.images.to(device))
    return time.perf_counter() - t0


def timing(args) -> dict:
    from nemaudit.explain.netdissect import DissectConfig, dissect
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe import load_probe
    from nemaudit.probe.memory import InMemoryProbe

    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    t0 = time.perf_counter()
    probe = InMemoryProbe(load_probe(f"synthetic:n={args.n},seed=0"))
    gen = time.perf_counter() - t0
    cfg = DissectConfig(batch_size=args.batch_size)
    dissect(model, args.layer, InMemoryProbe(probe, n=args.batch_size), cfg, device=device)  # warm-up
    res = {"n": args.n, "layer": args.layer, "device": str(device), "threads": torch.get_num_threads(),
           "probe_materialise_s": gen}
    res["forward_full_s"] = min(_forward_time(model, probe, args.layer, args.batch_size, device, False)
                                for _ in range(args.repeat))
    res["forward_to_layer_s"] = min(_forward_time(model, probe, args.layer, args.batch_size, device, True)
                                    for _ in range(args.repeat))
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        d = dissect(model, args.layer, probe, cfg, device=device)
        times.append(time.perf_counter() - t0)
    res["dissect_s"] = min(times)
    res["detectors"] = d.detectors()["total"]
    res["ratio_vs_full_forward"] = res["dissect_s"] / res["forward_full_s"]
    res["ratio_vs_forward_to_layer"] = res["dissect_s"] / res["forward_to_layer_s"]
    return res


def peak_memory(args, n: int) -> float:
    """Peak RSS (MiB) of a fresh process that dissects a lazily generated probe of n images."""
    code = (
        "import resource, torch, json\n"
        "from nemaudit.explain.netdissect import dissect, DissectConfig\n"
        "from nemaudit.model import load_model\n"
        "from nemaudit.probe import load_probe\n"
        f"m = load_model({args.model!r}, device='cpu')\n"
        f"p = load_probe('synthetic:n={n},seed=0')\n"
        f"d = dissect(m, {args.layer!r}, p, DissectConfig(batch_size={args.batch_size}))\n"
        "print(json.dumps({'maxrss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kib"] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nemaudit:conceptnet")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    r = timing(args)
    print(f"probe: synthetic n={r['n']} (materialised in {r['probe_materialise_s']:.1f}s), "
          f"layer {r['layer']}, device {r['device']}, {r['threads']} threads")
    print(f"bare forward (full model):      {r['forward_full_s']:7.2f} s")
    print(f"bare forward (up to the layer): {r['forward_to_layer_s']:7.2f} s")
    print(f"full dissection:                {r['dissect_s']:7.2f} s  ({r['detectors']} detectors)")
    print(f"ratio dissection / full forward:     {r['ratio_vs_full_forward']:.2f}  (goal <= 1.5)")
    print(f"ratio dissection / forward-to-layer: {r['ratio_vs_forward_to_layer']:.2f}")
    if not args.no_memory:
        m1 = peak_memory(args, args.n)
        m4 = peak_memory(args, 4 * args.n)
        print(f"peak RSS, lazy probe: N={args.n}: {m1:.0f} MiB; 4N={4 * args.n}: {m4:.0f} MiB; "
              f"growth {100 * (m4 / m1 - 1):.1f}% (goal < 10%)")


if __name__ == "__main__":
    main()
