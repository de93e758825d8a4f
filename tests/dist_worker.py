"""One rank of a distributed test run (started by tests/test_distributed.py with the
launcher's environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    python -m tests.dist_worker JOB OUT_DIR

Each rank writes ``OUT_DIR/rank<R>.pt`` with what it computed; the test compares every
rank's result with a single-process run.
"""

from __future__ import annotations

import os
import sys

import torch


def _setup():
    from nemaudit.model.load import load_model
    from nemaudit.probe.synthetic import SyntheticProbe

    torch.manual_seed(0)
    model = load_model("nemaudit:conceptnet", device="cpu")
    probe = SyntheticProbe(int(os.environ.get("NEMAUDIT_TEST_N", "70")), seed=0)
    return model, probe


def job_dissect(keep_state: bool) -> dict:
    from nemaudit.explain.netdissect import DissectConfig, dissect

    model, probe = _setup()
    d = dissect(model, "layer2", probe, DissectConfig(batch_size=16), keep_state=keep_state)
    out = {"thresholds": d.thresholds, "tally": d.tally.state_dict(), "images": d.tally.images,
           "rows": d.rows()}
    if keep_state and d.state is not None:
        st = d.state
        order = torch.argsort(st.images * 10_000 + st.units)
        out["state"] = {"cut": st.cut, "maps": st.maps[order], "units": st.units[order],
                        "images": st.images[order],
                        "quant": torch.sort(st.quant.values, dim=1).values,
                        "count": st.quant.count}
    return out


def _steady(meta):
    """``meta`` without what differs between runs: wall times and how many ranks took part."""
    if isinstance(meta, dict):
        return {k: _steady(v) for k, v in meta.items() if k not in ("seconds", "ranks")}
    return meta


def job_audit(corruption: str, **kw) -> dict:
    from nemaudit.audit.netdissect.run import AuditConfig, audit
    from nemaudit.explain.netdissect import DissectConfig

    model, probe = _setup()
    r = audit(model, "layer2", probe, corruption,
              AuditConfig(dissect=DissectConfig(batch_size=16), unit_chunk=4, max_units=6, **kw))
    return {"rows": r.rows, "metrics": r.metrics, "meta": _steady(r.meta),
            "corrupted_meta": _steady(r.corrupted.meta),
            "thresholds": r.corrupted.thresholds, "tally": r.corrupted.tally.state_dict()}


def job_milan(corruption: str) -> dict:
    """The bundled MILAN describer on 8 units of layer3; a plain equality scorer (the test is
    about who describes which unit, not about F1-BERT)."""
    from nemaudit.audit.milan import MilanAuditConfig, audit_milan

    model, probe = _setup()

    def same(candidates, references):
        return torch.tensor([float(c == r) for c, r in zip(candidates, references)])

    r = audit_milan(model, "layer3", probe, corruption, scorer=same,
                    config=MilanAuditConfig(threshold=0.5, max_units=4),
                    units=list(range(0, 64, 8)))
    return {"rows": r.rows, "metrics": r.metrics}


def job_fool(fooling: str) -> dict:
    """Data-parallel fine-tuning of a tiny ConceptNet (a batch of 10 does not divide by 3)."""
    from nemaudit.corrupt.manipulate import FoolingConfig
    from nemaudit.corrupt.manipulate.data import LabelledImages
    from nemaudit.corrupt.manipulate.train import fool
    from nemaudit.model.bundled import ConceptNet
    from nemaudit.model.load import NormalizedModel

    torch.manual_seed(0)
    model = NormalizedModel(ConceptNet(num_classes=3, width=4), "imagenet").eval()

    def data(n: int, seed: int) -> LabelledImages:
        g = torch.Generator().manual_seed(seed)
        return LabelledImages(torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 3,
                              torch.arange(n))

    cfg = FoolingConfig(fooling=fooling, interpreter="gradcam", layer="layer3", lr=3e-3,
                        lam=20.0, epochs=2, batch_size=10, seed=0, eval_images=12,
                        max_top1_drop=None, patience=2)
    run = fool(model, data(30, 1), data(12, 2), cfg)
    return {"weights": run.model.state_dict(), "history": run.history,
            "best_epoch": run.best_epoch}


def job_fail(mode: str) -> dict:
    """Rank 1 raises (or is killed) before the first collective; the others wait in it."""
    from nemaudit import dist

    if dist.active().rank == 1:  # type: ignore[union-attr]
        if mode == "kill":
            os._exit(9)
        raise ValueError("rank one's own problem: probe image 7 is unreadable")
    return job_dissect(False)


def main() -> int:
    from nemaudit import dist

    job, out_dir = sys.argv[1], sys.argv[2]
    dist.init_from_env("gloo")
    rank = 0 if dist.active() is None else dist.active().rank  # type: ignore[union-attr]
    try:
        name, _, arg = job.partition(":")
        res = {"dissect": lambda: job_dissect(arg == "state"),
               "audit": lambda: job_audit(arg),
               # a quantile buffer with no slack: units recomputed in full, and a bootstrap
               "audit-tight": lambda: job_audit(arg, slack=1.0, bootstrap=20),
               "milan": lambda: job_milan(arg),
               "fool": lambda: job_fool(arg),
               "fail": lambda: job_fail(arg)}[name]()
    except Exception as e:
        dist.report_failure(e)
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(f"{type(e).__name__}: {e}")
        return 1
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
