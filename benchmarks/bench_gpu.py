"""Network Dissection of a torchvision ResNet-50's layer4 over a Broden-format probe, in
images/s, against a bare forward pass of the same model on the same device and loader
(a measurement, not a test; ``benchmarks/gpu.sh`` runs it on a GPU machine).

    python benchmarks/bench_gpu.py [--n 10000] [--root /tmp/nemaudit-broden] [--device auto]

The probe is the concept world exported once in Broden's on-disk format (224-px PNGs,
112-px label maps, as broden1_224) and reused when ``--root`` already holds it; both sides
read it through the same DataLoader (``--workers`` decoding processes, pinned memory on
CUDA), so decoding costs them alike. The model has random weights (nothing can be
downloaded here; the cost does not depend on the weights). Prints both rates and their
ratio; the dissection's share of a forward pass is what the implementation adds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def export(root: Path, n: int) -> float:
    """Write the concept world as a Broden folder (once); returns seconds spent."""
    from nemaudit.probe.broden_write import export_probe
    from nemaudit.probe.synthetic import SyntheticProbe

    done = root / ".complete"
    if done.exists() and done.read_text() == str(n):
        return 0.0
    t0 = time.perf_counter()
    export_probe(SyntheticProbe(n, seed=0, image_size=224, seg_size=112), root)
    done.write_text(str(n))
    return time.perf_counter() - t0


def bare_forward(model, loader, device) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            model(batch.images.to(device, non_blocking=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--root", default=os.environ.get("NEMAUDIT_BRODEN", "/tmp/nemaudit-broden"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--layer", default="layer4")
    a = p.parse_args()

    from nemaudit.explain.common.activations import probe_loader
    from nemaudit.explain.netdissect import DissectConfig, dissect
    from nemaudit.model import load_model, resolve_device
    from nemaudit.probe.broden import BrodenProbe

    root = Path(a.root)
    t_export = export(root, a.n)
    device = resolve_device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = load_model("torchvision:resnet50", weights="random", device=device)
    probe = BrodenProbe(root, keep_unlabelled=True)
    cfg = DissectConfig(batch_size=a.batch_size, num_workers=a.workers)
    loader = probe_loader(probe, a.batch_size, num_workers=a.workers,
                          pin_memory=device.type == "cuda")
    warm = probe_loader(probe, a.batch_size, indices=range(min(len(probe), a.batch_size)))
    bare_forward(model, warm, device)  # warm-up (cudnn autotune, allocator)
    t_fwd = bare_forward(model, loader, device)
    t0 = time.perf_counter()
    d = dissect(model, a.layer, probe, cfg, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_dis = time.perf_counter() - t0
    n = len(probe)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; ResNet-50 {a.layer}, {d.units} units; "
          f"{n} Broden-format images (224 px, labels 112 px); batch {a.batch_size}, "
          f"{a.workers} loader workers")
    if t_export:
        print(f"probe export (once): {t_export:.1f} s")
    print(f"bare forward:       {n / t_fwd:8.1f} images/s ({t_fwd:.1f} s)")
    print(f"Network Dissection: {n / t_dis:8.1f} images/s ({t_dis:.1f} s)")
    print(f"dissection / forward time: {t_dis / t_fwd:.2f}; detectors "
          f"{d.detectors()['total']}/{d.units}; candidate cache overflowed: "
          f"{d.meta['cache_overflow']}")


if __name__ == "__main__":
    main()
