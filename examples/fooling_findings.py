"""Heo, Joo & Moon (NeurIPS'19) on nemaudit's embedded default: fool the bundled classifier's
Grad-CAM and LRP_T with each fooling, and measure what the paper's Tables 1–3 measure.

    python examples/fooling_findings.py [--train 800] [--held 160] [--out reports/fooling]
        [--foolings location,topk,center,active] [--interpreters gradcam,lrp_t]

For every (fooling, interpreter) pair the bundled ``nemaudit:conceptnet`` is fine-tuned on
the concept world's training images (seed 1, never the audit probe) through the same audit
the ``fooling`` method runs in tests (:func:`nemaudit.audit.saliency.run.run_fooling`), then
measured on held-out images (the audit probe, seed 0): the FSR of every interpreter (the
transfer table), top-1/top-5 of both models, Spearman ρ of the maps, AOPC, and a
re-dissection of ``layer4`` (how many units changed concept). Writes ``findings.md`` (the
table the README quotes), ``findings.json``, and each pair's charts and heatmaps (PNG/WebP)
under ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from nemaudit.audit.request import AuditRequest
from nemaudit.audit.saliency.pictures import saliency_payload
from nemaudit.auditor import Auditor

#: the paper's ResNet50 numbers (its Tables 1–3): FSR of the matched interpreter (Table 1;
#: active: Table 2, c1 / c2) and top-1 of the fooled model (Table 3; baseline 76.1)
PAPER = {("location", "gradcam"): ("97.3", "74.2"), ("location", "lrp_t"): ("83.2", "73.0"),
         ("topk", "gradcam"): ("99.9", "74.7"), ("topk", "lrp_t"): ("61.5", "73.7"),
         ("center", "gradcam"): ("67.3", "74.7"), ("center", "lrp_t"): ("63.3", "73.4"),
         ("active", "gradcam"): ("76.0 / 87.5", "75.9"), ("active", "lrp_t"): ("34.0 / 31.5", "74.7")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nemaudit:conceptnet")
    ap.add_argument("--train", type=int, default=800, help="training images (concept world)")
    ap.add_argument("--held", type=int, default=160, help="held-out images measured")
    ap.add_argument("--foolings", default="location,topk,center,active")
    ap.add_argument("--interpreters", default="gradcam,lrp_t")
    ap.add_argument("--also", default="", help="extra fooling:interpreter pairs, e.g. "
                                               "location:lrp_t")
    ap.add_argument("--measure", default="gradcam,lrp_t,lrp,simplegrad_t,simplegrad",
                    help="interpreters every fooled model is measured with (transfer)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="reports/fooling")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    auditor = Auditor(args.device, cache_dir=".nemaudit-cache", progress=sys.stderr.isatty())
    rows = []
    t_all = time.perf_counter()
    pairs = [(f, i) for f in args.foolings.split(",") for i in args.interpreters.split(",")]
    pairs += [tuple(p.split(":")) for p in args.also.split(",") if p]  # type: ignore[misc]
    for fooling, interp in pairs:
        t0 = time.perf_counter()
        req = AuditRequest.build(
            "fooling", model=args.model, probe=f"synthetic:n={args.held},seed=0",
            layer="layer4", train_probe=f"synthetic:n={args.train},seed=1",
            fooling=fooling, interpreter=interp, fool_epochs=args.epochs,
            images=args.held, interpreters=args.measure,
            save_weights=str(out / f"{fooling}_{interp}.pt"))
        r = auditor.run(req)
        m = r.metrics
        doc = saliency_payload(r, max_images=6)
        for name, png in (doc.get("charts") or {}).items():
            (out / f"{fooling}_{interp}_{name}.png").write_bytes(base64.b64decode(png))
        row = {"fooling": fooling, "interpreter": interp,
               "fsr": m["fsr"], "fsr_c1": m.get("fsr_c1"), "fsr_c2": m.get("fsr_c2"),
               "transfer": {i: m[f"fsr_{i}"] for i in r.meta["interpreters"]},
               "top1_original": m["top1_original"], "top1": m["top1"],
               "top5_original": m["top5_original"], "top5": m["top5"],
               "spearman": m.get(f"spearman_{interp}"), "nd_changed": m["nd_changed"],
               "nd_units": m["nd_units"], "nd_flip_rate_detectors": m.get(
                   "nd_flip_rate_detectors"),
               "aopc": m.get(f"aopc_{interp}"), "aopc_original": m.get(
                   f"aopc_reference_{interp}"), "aopc_random": m.get("aopc_random"),
               "epochs_run": r.meta["epochs_run"], "best_epoch": r.meta["best_epoch"],
               "classes": r.meta.get("classes"),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("fooling", "interpreter", "fsr", "top1",
                                              "top1_original", "nd_changed", "seconds")}),
              flush=True)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    seconds = round(time.perf_counter() - t_all, 1)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    (out / "findings.json").write_text(json.dumps({"command": command, "seconds": seconds,
                                                   "device": str(auditor.device),
                                                   "rows": rows}, indent=1) + "\n")
    measure = args.measure.split(",")
    lines = [f"Command: `{command}` ({seconds:.0f} s on {auditor.device}, "
             f"{torch.get_num_threads()} threads).", "",
             "| fooling | fooled via | FSR | paper FSR (ResNet50) | " + " | ".join(
                 f"FSR {i}" for i in measure) + " | top-1 orig → fooled | top-5 orig → fooled"
             " | paper top-1 (76.1 →) | ND units changed (layer4) | AOPC orig / fooled / random |",
             "|---" * (9 + len(measure)) + "|"]
    for r in rows:
        fsr = f"{100 * r['fsr']:.1f}%"
        if r["fooling"] == "active":
            fsr += f" ({100 * r['fsr_c1']:.0f}/{100 * r['fsr_c2']:.0f})"
        lines.append(
            f"| {r['fooling']} | {r['interpreter']} | {fsr} | "
            f"{PAPER.get((r['fooling'], r['interpreter']), ('—', ''))[0]} | "
            + " | ".join(f"{100 * r['transfer'].get(i, float('nan')):.0f}%" for i in measure)
            + f" | {100 * r['top1_original']:.1f} → {100 * r['top1']:.1f} | "
              f"{100 * r['top5_original']:.1f} → {100 * r['top5']:.1f} | "
              f"{PAPER.get((r['fooling'], r['interpreter']), ('', '—'))[1]} | "
              f"{r['nd_changed']}/{r['nd_units']} | {r['aopc_original']:.2f} / "
              f"{r['aopc']:.2f} / {r['aopc_random']:.2f} |")
    (out / "findings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
