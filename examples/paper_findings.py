"""The ICCV'23 and Xie findings, measured on nemaudit's embedded default.

    python examples/paper_findings.py [--n 2000] [--pgd-n 1000] [--max-units 32] [--out reports/findings]

Writes figures (PNG), ``findings.json`` and ``findings.md`` (the table the README quotes):

1. flip rate vs Gaussian noise σ ∈ {0.01 … 0.05}, every image noised, per layer;
2. flip rate vs poisoned fraction p (Gaussian σ = 0.05), layer4;
3. designed PGD (Eq. 9), untargeted and targeted, ε ∈ {2, 4, 6}/255, per layer;
4. designed PGD vs Bernoulli noise at equal ε = 6/255, layer4, same units;
5. detector share per category clean vs FGSM (ε = 2/255) — the Xie table;
6. MILAN descriptions per layer under noise (σ = 0.02, 0.05) and the per-unit designed attack
   (Eq. 9 with Eq. 8 masks, ε ∈ {2, 4, 6}/255): F1-BERT mean ± std, share manipulated;
7. the reference's storage artifact: its noisy probes were saved as JPEG (quality 75), so its
   "noise" was noise + JPEG. JPEG alone and σ = 0.02 + JPEG, per layer.

``--sections noise,fraction,pgd,bernoulli,fgsm,milan,jpeg`` runs some of them; ``--merge``
adds them to an existing ``findings.json`` (the tables are written from everything in it).

Flip rates are reported over all units and over clean detectors (units at IoU ≥ 0.04):
over all units they mostly count near-ties among non-detectors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nemaudit.audit import AuditConfig, audit
from nemaudit.model import load_model, resolve_device
from nemaudit.probe import load_probe
from nemaudit.probe.memory import InMemoryProbe
from nemaudit.report.plots import save_detector_share_png, save_sweep_png

LAYERS = ["layer2", "layer3", "layer4"]
SECTIONS = ("noise", "fraction", "pgd", "bernoulli", "fgsm", "milan", "jpeg")


def point(r, x, series):
    return {"x": x, "series": series, "layer": r.layer, "flip_rate": r.metrics["flip_rate"],
            "flip_rate_detectors": r.metrics["flip_rate_detectors"],
            "targeted_success_rate": r.metrics.get("targeted_success_rate"),
            "units": r.metrics["units"], "detectors": r.metrics["detectors"],
            "accuracy_clean": r.metrics.get("accuracy_clean"),
            "accuracy_corrupted": r.metrics.get("accuracy_corrupted"),
            "mean_source_iou_drop": r.metrics.get("mean_source_iou_drop"),
            "seconds": r.meta["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nemaudit:conceptnet")
    ap.add_argument("--n", type=int, default=2000, help="probe images for noise/FGSM sweeps")
    ap.add_argument("--pgd-n", type=int, default=1000, help="probe images for PGD sweeps")
    ap.add_argument("--max-units", type=int, default=32, help="units attacked per layer by PGD")
    ap.add_argument("--target", default="car", help="target concept of the targeted PGD")
    ap.add_argument("--out", default="reports/findings")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--milan-units", type=int, default=16,
                    help="units attacked per layer by the MILAN designed attack")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--merge", action="store_true",
                    help="add the results to the existing findings.json in --out")
    args = ap.parse_args()
    todo = [x.strip() for x in args.sections.split(",") if x.strip()]
    bad = [x for x in todo if x not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    probe = InMemoryProbe(load_probe(f"synthetic:n={args.n},seed=0"))
    pgd_probe = InMemoryProbe(probe, n=args.pgd_n)
    cfg = AuditConfig()
    pgd_cfg = AuditConfig(max_units=args.max_units)
    cache = ".nemaudit-cache"
    res: dict = {}
    if args.merge and (out / "findings.json").is_file():
        res = json.loads((out / "findings.json").read_text())
    res.setdefault("runs", []).append(vars(args) | {"device": str(device),
                                                    "torch": torch.__version__})
    t0 = time.perf_counter()

    def save() -> None:  # after every section: a long run that stops keeps what it measured
        (out / "findings.json").write_text(json.dumps(res, indent=1))

    def run(p, layer, spec, c=cfg):
        r = audit(model, layer, p, spec, c, device=device, cache_dir=cache, progress=True)
        print(f"{layer} {spec}: flip {r.metrics['flip_rate']:.3f} "
              f"(detectors {r.metrics['flip_rate_detectors']}) in {r.meta['seconds']:.1f}s")
        return r

    if "noise" in todo:
        pts = [point(run(probe, layer, f"gaussian:std={s},fraction=1.0"), s, layer)
               for layer in LAYERS for s in (0.01, 0.02, 0.03, 0.04, 0.05)]
        res["noise_sigma"] = {"x": "sigma", "points": pts}
        save()
        save_sweep_png(out / "flip_vs_sigma.png", res["noise_sigma"],
                       "Gaussian noise on every image")

    if "fraction" in todo:
        pts = [point(run(probe, "layer4", f"gaussian:std=0.05,fraction={p}"), p, "layer4")
               for p in (0.05, 0.1, 0.25, 0.5, 1.0)]
        res["noise_fraction"] = {"x": "fraction", "points": pts}
        save()
        save_sweep_png(out / "flip_vs_fraction.png", res["noise_fraction"],
                       "Gaussian σ=0.05 on a poisoned fraction of the probe (layer4)")

    if "pgd" in todo:
        pgd_section(res, run, pgd_probe, pgd_cfg, args, out)
        save()
    if "bernoulli" in todo:
        pgd6 = run(pgd_probe, "layer4", "pgd:eps=6/255,steps=10", pgd_cfg)
        attacked = [r["unit"] for r in pgd6.rows]
        bern = audit(model, "layer4", pgd_probe, "bernoulli:std=6/255,fraction=1.0", cfg,
                     device=device, cache_dir=cache, units=attacked)
        res["pgd_vs_bernoulli"] = {"units": attacked, "pgd": point(pgd6, 6 / 255, "pgd"),
                                   "bernoulli": point(bern, 6 / 255, "bernoulli")}
        save()
    if "fgsm" in todo:
        res["fgsm"] = {}
        for layer in LAYERS:
            r = run(probe, layer, "fgsm:eps=2/255,fraction=1.0")
            res["fgsm"][layer] = {"xie_table": r.metrics["xie_table"],
                                  "detector_share": r.metrics["detector_share"],
                                  **point(r, 2 / 255, layer)}
            save_detector_share_png(out / f"fgsm_detector_share_{layer}.png", r.metrics,
                                    f"Detector share clean vs FGSM ε=2/255 ({layer})")
        save()
    if "milan" in todo:
        res["milan"] = milan_findings(model, probe, pgd_probe, args, device, out)
        save()
    if "jpeg" in todo:
        res["jpeg"] = {"points": [point(run(probe, layer, spec), 75, f"{layer} {name}")
                                  for layer in LAYERS
                                  for name, spec in (("jpeg", "jpeg:quality=75"),
                                                     ("gaussian+jpeg",
                                                      "gaussian:std=0.02,jpeg=75"))]}
        save()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    (out / "findings.md").write_text(markdown(res))
    print(markdown(res))


def pgd_section(res, run, pgd_probe, pgd_cfg, args, out):
    pts = []
    for layer in LAYERS:
        for k in (2, 4, 6):
            pts.append(point(run(pgd_probe, layer, f"pgd:eps={k}/255,steps=10", pgd_cfg),
                             k / 255, f"{layer} untargeted"))
            pts.append(point(run(pgd_probe, layer,
                                 f"pgd:eps={k}/255,steps=10,targeted=true,target={args.target}",
                                 pgd_cfg), k / 255, f"{layer} targeted"))
    res["pgd_eps"] = {"x": "eps", "points": pts}
    save_sweep_png(out / "flip_vs_eps.png", res["pgd_eps"], "Designed PGD (Eq. 9) per unit")


def milan_findings(model, probe, pgd_probe, args, device, out):
    """MILAN (bundled, offline) clean vs corrupted, per layer: noise on the whole probe, and
    the designed attack on each unit's own exemplars."""
    from nemaudit.audit.milan import MilanAuditConfig, audit_milan

    pts = []
    for layer in LAYERS:
        runs = [(probe, f"gaussian:std={s},fraction=1.0", None) for s in (0.02, 0.05)]
        runs += [(pgd_probe, f"pgd:eps={k}/255,steps=10", args.milan_units) for k in (2, 4, 6)]
        for p, spec, cap in runs:
            r = audit_milan(model, layer, p, spec, config=MilanAuditConfig(max_units=cap),
                            device=device, progress=True)
            m = r.metrics
            kind = spec.split(":")[0]
            x = float(spec.split("=")[1].split(",")[0].split("/")[0]) / (255 if kind == "pgd"
                                                                          else 1)
            print(f"MILAN {layer} {spec}: manipulated {m['manipulated_rate']:.3f}, F1 "
                  f"{m['f1_mean']:.3f} ± {m['f1_std']:.3f} in {r.meta['seconds']:.1f}s")
            pts.append({"x": x, "series": f"{layer} {kind}", "layer": layer, "spec": spec,
                        "flip_rate": m["manipulated_rate"], "units": m["units"],
                        "f1_mean": m["f1_mean"], "f1_std": m["f1_std"],
                        "description_change_rate": m["description_change_rate"],
                        "exemplar_overlap_mean": m["exemplar_overlap_mean"],
                        "threshold": m["threshold"], "seconds": r.meta["seconds"]})
    attack = {"x": "eps", "points": [p for p in pts if p["spec"].startswith("pgd")]}
    save_sweep_png(out / "milan_manipulated_vs_eps.png", attack,
                   "MILAN: share of descriptions manipulated by the designed attack")
    return {"points": pts}


def pct(v):
    return "—" if v is None else f"{100 * v:.1f}%"


def markdown(res: dict) -> str:
    """The tables the README quotes, from whatever sections ``res`` holds."""
    lines = ["| corruption | layer | flip rate (all units) | flip rate (detectors) | other |",
             "|---|---|---|---|---|"]
    for p in res.get("noise_sigma", {}).get("points", []):
        lines.append(f"| Gaussian σ={p['x']} (all images) | {p['layer']} | {pct(p['flip_rate'])} | "
                     f"{pct(p['flip_rate_detectors'])} | accuracy {pct(p['accuracy_clean'])} → "
                     f"{pct(p['accuracy_corrupted'])} |")
    for p in res.get("jpeg", {}).get("points", []):
        what = ("JPEG q75 alone" if p["series"].endswith(" jpeg")
                else "Gaussian σ=0.02 + JPEG q75 (the reference's noisy probe)")
        lines.append(f"| {what} | {p['layer']} | {pct(p['flip_rate'])} | "
                     f"{pct(p['flip_rate_detectors'])} | accuracy {pct(p['accuracy_clean'])} → "
                     f"{pct(p['accuracy_corrupted'])} |")
    for p in res.get("noise_fraction", {}).get("points", []):
        lines.append(f"| Gaussian σ=0.05 on p={p['x']} | layer4 | {pct(p['flip_rate'])} | "
                     f"{pct(p['flip_rate_detectors'])} | |")
    for p in res.get("pgd_eps", {}).get("points", []):
        extra = (f"target hit {pct(p['targeted_success_rate'])}, "
                 if p["targeted_success_rate"] is not None else "")
        lines.append(f"| PGD {p['series'].split()[1]} ε={round(p['x'] * 255)}/255 "
                     f"({p['units']} units) | {p['layer']} | {pct(p['flip_rate'])} | "
                     f"{pct(p['flip_rate_detectors'])} | {extra}source IoU drop "
                     f"{p['mean_source_iou_drop']:.3f} |")
    pv = res.get("pgd_vs_bernoulli")
    if pv:
        lines.append(f"| PGD untargeted ε=6/255 vs Bernoulli ±6/255 (same {len(pv['units'])} "
                     f"units) | layer4 | {pct(pv['pgd']['flip_rate'])} vs "
                     f"{pct(pv['bernoulli']['flip_rate'])} | "
                     f"{pct(pv['pgd']['flip_rate_detectors'])} vs "
                     f"{pct(pv['bernoulli']['flip_rate_detectors'])} | |")
    if res.get("fgsm"):
        lines += ["", "Detector share per category, clean → FGSM ε=2/255 (Xie table):", "",
                  "| layer | " + " | ".join(["C", "T", "S", "M", "P", "O", "All"]) +
                  " | accuracy |", "|---" * 9 + "|"]
    for layer, f in res.get("fgsm", {}).items():
        x = f["xie_table"]
        cells = [f"{pct(x['clean'].get(k))} → {pct(x['corrupted'].get(k))}"
                 for k in ("C", "T", "S", "M", "P", "O", "All")]
        lines.append(f"| {layer} | " + " | ".join(cells) +
                     f" | {pct(f['accuracy_clean'])} → {pct(f['accuracy_corrupted'])} |")
    if res.get("milan"):
        lines += ["", "MILAN descriptions, clean vs corrupted (manipulated: F1-BERT ≤ "
                  f"{res['milan']['points'][0]['threshold']:.3f}, MiniLM):", "",
                  "| corruption | layer | units | manipulated | F1-BERT mean ± std | "
                  "words changed | exemplars kept |", "|---|---|---:|---:|---:|---:|---:|"]
        for p in res["milan"]["points"]:
            lines.append(f"| {p['spec']} | {p['layer']} | {p['units']} | {pct(p['flip_rate'])} | "
                         f"{p['f1_mean']:.3f} ± {p['f1_std']:.3f} | "
                         f"{pct(p['description_change_rate'])} | "
                         f"{pct(p['exemplar_overlap_mean'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
