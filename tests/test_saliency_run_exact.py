"""The saliency and fooling runners value by value on tiny models (fast enough for mutation
testing): every row and metric against an independent recomputation — maps from
:func:`heatmap`, ρ from SciPy, accuracy from argmax, test losses from the fooled model the
run returns — and every setting and error of the runners."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from nemaudit.audit.netdissect.result import compare
from nemaudit.audit.request import AuditRequest, Resolved
from nemaudit.audit.saliency.run import (
    DEFAULT_THRESHOLD,
    FoolingResult,
    SaliencyResult,
    fooling_config,
    run_fooling,
    run_saliency,
)
from nemaudit.corrupt.manipulate import evaluate
from nemaudit.corrupt.manipulate.losses import FSR_INTERVALS
from nemaudit.errors import SpecError
from nemaudit.explain.netdissect import DissectConfig, dissect
from nemaudit.explain.saliency import heatmap
from nemaudit.explain.saliency.metrics import aopc
from nemaudit.model.load import NormalizedModel
from tests.toys import ToyNet, ToyProbe

LAYER = "model.layer2"
INTERP = ("gradcam", "simplegrad")
RESOLVED: list = []  # (kind, spec, options) of every resolve() call


def net(seed: int) -> torch.nn.Module:
    return NormalizedModel(ToyNet(seed=seed), "none").eval()


def resolved(model, probe, *, batch_size=4, models=None, probes=None, corruption=None,
             cache_dir=None) -> Resolved:
    def resolve(kind, spec, **kw):
        table = models if kind == "model" else probes
        if spec not in (table or {}):
            raise KeyError(f"no {kind} named {spec}")
        RESOLVED.append((kind, spec, kw))
        return table[spec]

    return Resolved(model, probe, LAYER, corruption, torch.device("cpu"), cache_dir=cache_dir,
                    batch_size=batch_size, resolve=resolve)


def maps_of(model, images, labels, interp):
    return torch.cat([heatmap(model, images[i:i + 1], labels[i:i + 1], interp,
                              layer=LAYER if interp == "gradcam" else None).detach()
                      for i in range(len(images))])


def rho(a, b):
    out = []
    for x, y in zip(a, b, strict=True):
        r = scipy.stats.spearmanr(x.flatten().double(), y.flatten().double()).statistic
        out.append(0.0 if math.isnan(r) else r)
    return torch.tensor(out, dtype=torch.float64)


def aopc_batched(model, images, labels, maps, bs, steps, seed, random_order=False):
    return torch.cat([aopc(model, images[i:i + bs], labels[i:i + bs], maps[i:i + bs],
                           steps=steps, seed=seed + i, random_order=random_order)
                      for i in range(0, len(images), bs)])


def probe_data(probe, idx):
    items = [probe[i] for i in idx]
    return (torch.stack([it.image for it in items]),
            torch.tensor([it.target for it in items]))


# --------------------------------------------------------------------------- saliency

@pytest.fixture(scope="module")
def saliency():
    cand, ref, probe = net(0), net(1), ToyProbe(10)
    req = AuditRequest.build("saliency", reference="ref", interpreters=INTERP, images=7,
                             aopc_steps=3, spearman_threshold=0.3)
    r = run_saliency(req, resolved(cand, probe, batch_size=3, models={"ref": ref}))
    return r, cand, ref, probe


def test_saliency_rows_and_metrics_are_the_recomputed_ones(saliency):
    r, cand, ref, probe = saliency
    x, y = probe_data(probe, range(7))
    assert isinstance(r, SaliencyResult) and r.layer == LAYER
    assert [row["index"] for row in r.rows] == list(range(7))
    assert [row["label"] for row in r.rows] == y.tolist()
    assert r.metrics["images"] == 7
    for interp in INTERP:
        mr, mc = maps_of(ref, x, y, interp), maps_of(cand, x, y, interp)
        want = rho(mr, mc)
        got = torch.tensor([row["spearman"][interp] for row in r.rows], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-5), interp
        assert r.metrics[f"spearman_{interp}"] == pytest.approx(float(want.mean()), abs=1e-5)
        assert r.metrics[f"changed_rate_{interp}"] == pytest.approx(
            float((want < 0.3).double().mean()))
        assert r.metrics[f"aopc_{interp}"] == pytest.approx(
            float(aopc_batched(cand, x, y, mc, 3, 3, 0).mean()), abs=1e-5)
        assert r.metrics[f"aopc_reference_{interp}"] == pytest.approx(
            float(aopc_batched(ref, x, y, mr, 3, 3, 0).mean()), abs=1e-5)
        assert torch.allclose(r.context["maps"][interp][0], mr, atol=1e-6)
        assert torch.allclose(r.context["maps"][interp][1], mc, atol=1e-6)
    first = torch.tensor([row["spearman"]["gradcam"] for row in r.rows])
    assert [row["changed"] for row in r.rows] == (first < 0.3).tolist()
    mc = maps_of(cand, x, y, "gradcam")
    assert r.metrics["aopc_random"] == pytest.approx(
        float(aopc_batched(cand, x, y, mc, 3, 3, 0, random_order=True).mean()), abs=1e-5)
    pc, pr = cand(x).argmax(1), ref(x).argmax(1)
    assert [row["candidate_pred"] for row in r.rows] == pc.tolist()
    assert [row["reference_pred"] for row in r.rows] == pr.tolist()
    top1c, top1r = float((pc == y).double().mean()), float((pr == y).double().mean())
    assert r.metrics["top1"] == pytest.approx(top1c)
    assert r.metrics["top1_reference"] == pytest.approx(top1r)
    assert r.metrics["top1_drop"] == pytest.approx(top1r - top1c)
    assert r.metrics["top5"] == r.metrics["top5_reference"] == 1.0  # two classes
    assert r.metrics["top5_drop"] == 0.0


def test_saliency_meta_and_context(saliency):
    r = saliency[0]
    assert r.corruption == {"kind": "model", "reference": "ref"}
    assert r.meta["interpreters"] == list(INTERP) and r.meta["saliency_layer"] == LAYER
    assert r.meta["spearman_threshold"] == 0.3 and r.meta["reference"] == "ref"
    assert r.meta["label_source"] == "probe" and r.meta["seconds"] >= 0
    assert r.context["order"] == "spearman" and r.context["images"].shape == (7, 3, 32, 32)


def test_saliency_of_a_model_against_itself_changes_nothing():
    m, probe = net(0), ToyProbe(6)
    req = AuditRequest.build("saliency", reference="same", interpreters=("gradcam",), images=6,
                             aopc_steps=2)
    r = run_saliency(req, resolved(m, probe, models={"same": m}))
    assert r.metrics["spearman_gradcam"] == pytest.approx(1.0)
    assert r.metrics["changed_rate_gradcam"] == 0.0 and r.metrics["top1_drop"] == 0.0
    assert r.meta["spearman_threshold"] == DEFAULT_THRESHOLD == 0.5
    assert not any(row["changed"] for row in r.rows)


def test_saliency_defaults_measure_every_interpreter_on_up_to_64_images():
    from nemaudit.audit.saliency.run import _interpreters

    assert _interpreters(AuditRequest.build("saliency")) == (
        "gradcam", "simplegrad", "simplegrad_t", "lrp", "lrp_t")
    assert _interpreters(AuditRequest.build("saliency", interpreters=("lrp",))) == ("lrp",)
    m, probe = net(0), ToyProbe(66)
    r = run_saliency(AuditRequest.build("saliency", reference="m", aopc_steps=1,
                                        interpreters=("simplegrad",)),
                     resolved(m, probe, batch_size=32, models={"m": m}))
    assert r.metrics["images"] == 64 and [row["index"] for row in r.rows] == list(range(64))


def test_the_saliency_layer_setting_moves_gradcam():
    m, probe = net(0), ToyProbe(4)
    req = AuditRequest.build("saliency", reference="m", interpreters=("gradcam",),
                             saliency_layer="model.layer1", aopc_steps=1)
    r = run_saliency(req, resolved(m, probe, models={"m": m}))
    assert r.meta["saliency_layer"] == "model.layer1"
    x, y = probe_data(probe, range(4))
    want = torch.cat([heatmap(m, x[i:i + 1], y[i:i + 1], "gradcam", layer="model.layer1")
                      .detach() for i in range(4)])
    assert torch.allclose(r.context["maps"]["gradcam"][1], want, atol=1e-6)


@pytest.mark.parametrize("values, extra, message", [
    ({}, {}, "a saliency audit needs reference=<the trusted model's spec>"),
    ({"reference": "nowhere"}, {}, "reference 'nowhere': 'no model named nowhere'"),
    ({"reference": "m"}, {"corruption": "gaussian"}, "takes no corruption; to corrupt the "
                                                     "model use method 'fooling'"),
    ({"reference": "m", "saliency_layer": "model.nope"}, {}, "saliency_layer: "),
])
def test_saliency_errors_say_what_is_wrong(values, extra, message):
    m = net(0)
    req = AuditRequest.build("saliency", **values)
    with pytest.raises(SpecError) as e:
        run_saliency(req, resolved(m, ToyProbe(3), models={"m": m}, **extra))
    assert message in str(e.value)
    if not values:
        assert str(e.value) == message


def test_saliency_without_images_is_refused():
    from nemaudit.audit.saliency.run import _held_out

    with pytest.raises(SpecError, match="^no held-out images to measure the maps on$"):
        _held_out(resolved(net(0), ToyProbe(3)), net(0), None, indices=[])
    held = _held_out(resolved(net(0), ToyProbe(6)), net(0), 2, indices=[5, 1, 3])
    assert held.indices.tolist() == [5, 1]


# --------------------------------------------------------------------------- result views

def test_saliency_result_views():
    rows = [{"index": 3, "label": 1, "spearman": {"gradcam": 0.25, "lrp": -0.5},
             "reference_pred": 1, "candidate_pred": 0, "changed": True},
            {"index": 12, "label": 0, "spearman": {"gradcam": 0.75}, "reference_pred": 0,
             "candidate_pred": 0, "changed": False}]
    r = SaliencyResult("l", {}, rows, {}, {"interpreters": ["lrp", "gradcam"],
                                           "spearman_threshold": 0.5})
    assert r.diff_order(rows[0]) == -0.5 and r.diff_order(rows[1]) == 1.0
    assert r.diff_line(rows[0]) == ("image     3 (class 1): ρ gradcam +0.250 lrp -0.500; "
                                    "pred 1→0")
    assert r.indicators("changed_rate_gradcam") == [(True, True), (False, True)]
    assert r.indicators("changed_rate_lrp") == [(True, True)]
    assert r.indicators("spearman_gradcam") is None


def test_fooling_result_views():
    rows = [{"index": 4, "label": 2, "test_loss": {"gradcam": 0.125, "lrp": [0.5, 0.25]},
             "hit": {"gradcam": True, "lrp": [True, False]}, "spearman": {"gradcam": -0.5}},
            {"index": 9, "label": 0, "test_loss": {"gradcam": 0.5, "lrp": [0.0, 1.0]},
             "hit": {"gradcam": False, "lrp": [False, True]}, "spearman": {}}]
    meta = {"interpreter": "gradcam", "fooling": "location", "interval": [0.0, 0.2],
            "nd_rows": [{"changed": True, "clean_detector": False},
                        {"changed": False, "clean_detector": True}]}
    r = FoolingResult("l", {}, rows, {}, meta)
    assert [r.diff_order(x) for x in rows] == [0.125, 0.5]
    assert r.diff_line(rows[0]) == ("image     4 (class 2): test loss gradcam 0.125 in R "
                                    "[0.0, 0.2]; ρ vs original -0.500")
    assert r.diff_line(rows[1]).endswith("ρ vs original +0.000")
    assert r.indicators("fsr") == [(True, True), (False, True)]
    assert r.indicators("fsr_lrp") == [(True, True), (False, True), (False, True), (True, True)]
    assert r.indicators("nd_flip_rate") == [(True, True), (False, True)]
    assert r.indicators("nd_flip_rate_detectors") == [(True, False), (False, True)]
    assert r.indicators("top1") is None
    act = FoolingResult("l", {}, rows, {}, {**meta, "interpreter": "lrp", "fooling": "active"})
    assert [act.diff_order(x) for x in rows] == [-0.375, -0.5]  # an upper range: highest first
    assert act.indicators("fsr_c1") == [(True, True), (False, True)]
    assert act.indicators("fsr_c2") == [(False, True), (True, True)]
    assert act.indicators("fsr") == [(True, True), (False, True), (False, True), (True, True)]
    assert act.diff_line(rows[0]).startswith("image     4 (class 2): test loss lrp 0.500 in R")
    center = FoolingResult("l", {}, rows, {}, {**meta, "fooling": "center"})
    assert [center.diff_order(x) for x in rows] == [-0.125, -0.5]
    assert FoolingResult("l", {}, rows, {}, {**meta, "nd_rows": None}).indicators(
        "nd_flip_rate") == []
    no_hit = FoolingResult("l", {}, [{"hit": {}}], {}, meta)
    assert no_hit.indicators("fsr") == []
    assert FoolingResult("l", {}, [], {}, {**meta, "interpreter": "x"}).diff_order(
        {"test_loss": {}}) == 0.0


# --------------------------------------------------------------------------- fooling config

def test_fooling_config_maps_every_setting():
    req = AuditRequest.build("fooling", fooling="topk", interpreter="simplegrad", fool_lr=0.5,
                             fool_lambda=2.5, fool_epochs=3, fool_batch_size=7, fool_seed=11,
                             max_top1_drop=0.25)
    c = fooling_config(req, "L")
    assert (c.fooling, c.interpreter, c.layer, c.lr, c.lam, c.epochs, c.batch_size, c.seed,
            c.max_top1_drop, c.interval) == ("topk", "simplegrad", "L", 0.5, 2.5, 3, 7, 11,
                                             0.25, None)
    d = fooling_config(AuditRequest.build("fooling"), "L")
    assert (d.fooling, d.interpreter, d.max_top1_drop, d.lr, d.epochs) == (
        "location", "gradcam", 0.02, 1e-3, 5)
    a = fooling_config(AuditRequest.build("fooling", fooling="active",
                                          active_classes=("box", "disc")), "L")
    assert a.classes == ("box", "disc")


@pytest.mark.parametrize("lo, hi, want", [(0.1, None, "lo"), (None, 0.9, "hi"),
                                          (0.125, 0.25, "both")])
def test_fsr_interval_settings_fill_in_from_the_papers(lo, hi, want):
    d_lo, d_hi = FSR_INTERVALS["location"]
    c = fooling_config(AuditRequest.build("fooling", fsr_low=lo, fsr_high=hi), "L")
    assert c.interval == (d_lo if lo is None else lo, d_hi if hi is None else hi)
    assert c.interval != (d_lo, d_hi)


def test_an_empty_fsr_interval_is_refused():
    with pytest.raises(SpecError, match=r"fsr_low 0\.75 is above fsr_high 0\.5"):
        fooling_config(AuditRequest.build("fooling", fsr_low=0.75, fsr_high=0.5), "L")
    ok = fooling_config(AuditRequest.build("fooling", fsr_low=0.5, fsr_high=0.5), "L")
    assert ok.interval == (0.5, 0.5)


# --------------------------------------------------------------------------- fooling

FOOL = dict(fool_epochs=1, fool_batch_size=6, fool_lr=0.05, fool_lambda=1.0,
            max_top1_drop=1.0, aopc_steps=2)


@pytest.fixture(scope="module")
def fooled(tmp_path_factory):
    orig, probe = net(0), ToyProbe(16)
    req = AuditRequest.build("fooling", interpreter="gradcam", interpreters=("simplegrad",),
                             images=3, save_weights=str(tmp_path_factory.mktemp("w") / "f.pt"),
                             fool_seed=3, **{k: v for k, v in FOOL.items() if k != "aopc_steps"})
    req = req.but(model="toy-model", probe="toy-probe")  # the specs the sidecar records
    r = run_fooling(req, resolved(orig, probe, batch_size=4))
    return r, orig, probe


def test_fooling_rows_and_metrics_are_the_fooled_model_s(fooled):
    r, orig, probe = fooled
    fooled_model = r.context["fooled"]
    assert fooled_model is r.context["run"].model and fooled_model is not orig
    held = [0, 4, 8]  # every 4th image is held out; images=3 keeps the first three
    x, y = probe_data(probe, held)
    assert [row["index"] for row in r.rows] == held and [row["label"] for row in r.rows] == \
        y.tolist()
    interp = ("gradcam", "simplegrad")  # the fooled interpreter first, then the listed ones
    assert r.meta["interpreters"] == list(interp)
    for i in interp:
        tl = evaluate.test_losses("location", i, LAYER, fooled_model, orig, x, y,
                         interval=FSR_INTERVALS["location"])
        assert [row["test_loss"][i] for row in r.rows] == pytest.approx(tl.losses.tolist())
        assert [row["hit"][i] for row in r.rows] == tl.hits.tolist()
        assert r.metrics[f"fsr_{i}"] == pytest.approx(float(tl.hits.double().mean()))
        want = rho(maps_of(orig, x, y, i), maps_of(fooled_model, x, y, i))
        got = torch.tensor([row["spearman"][i] for row in r.rows], dtype=torch.float64)
        assert torch.allclose(got, want, atol=1e-5), i
        assert r.metrics[f"spearman_{i}"] == pytest.approx(float(want.mean()), abs=1e-5)
        assert r.metrics[f"changed_rate_{i}"] == pytest.approx(
            float((want < DEFAULT_THRESHOLD).double().mean()))
    own = evaluate.test_losses("location", "gradcam", LAYER, fooled_model, orig, x, y)
    assert r.metrics["fsr"] == r.metrics["fsr_gradcam"]
    assert r.metrics["test_loss_mean"] == pytest.approx(float(own.losses.mean()))
    assert [row["fooled"] for row in r.rows] == own.hits.tolist()
    assert "fsr_c1" not in r.metrics and r.metrics["images"] == 3
    run = r.context["run"]
    assert r.metrics["epochs"] == len(run.history) - 1 == r.meta["epochs_run"] == 1
    assert r.metrics["best_epoch"] == run.best_epoch == r.meta["best_epoch"]
    pf, po = fooled_model(x).argmax(1), orig(x).argmax(1)
    assert r.metrics["top1"] == pytest.approx(float((pf == y).double().mean()))
    assert r.metrics["top1_original"] == pytest.approx(float((po == y).double().mean()))
    assert r.metrics["top1_drop"] == pytest.approx(r.metrics["top1_original"] - r.metrics["top1"])
    assert r.layer == LAYER and set(r.context["maps"]) == {"gradcam", "simplegrad"}
    assert all(type(row["hit"][i]) is bool for row in r.rows for i in interp)
    assert all(type(row["test_loss"][i]) is float for row in r.rows for i in interp)
    assert r.metrics["aopc_gradcam"] == pytest.approx(float(aopc_batched(
        fooled_model, x, y, maps_of(fooled_model, x, y, "gradcam"), 4, 8, 3).mean()), abs=1e-5)
    # (AOPC's default 8 steps, seeded with the fooling's seed)


def test_fooling_meta_settings_and_saved_weights(fooled):
    r, orig, probe = fooled
    m = r.meta
    assert (m["fooling"], m["interpreter"], m["lr"], m["lam"]) == ("location", "gradcam", 0.05,
                                                                   1.0)
    assert m["interval"] == list(FSR_INTERVALS["location"]) and m["saliency_layer"] == LAYER
    assert m["train_images"] == 12 and m["label_source"] == "probe" and m["classes"] is None
    assert m["settings"]["epochs"] == 1 and m["settings"]["batch_size"] == 6
    assert m["history"] == r.context["run"].history
    assert r.corruption == {"kind": "fooling", "fooling": "location", "interpreter": "gradcam",
                            "lr": 0.05, "lam": 1.0}
    saved = torch.load(m["weights"], weights_only=True)
    inner = r.context["fooled"].model.state_dict()
    assert saved.keys() == inner.keys() and all(torch.equal(saved[k], inner[k]) for k in saved)
    assert m["sidecar"].endswith(".json") and m["seconds"] >= 0
    import json

    side = json.loads(open(m["sidecar"]).read())
    assert side["provenance"] == {"model": "toy-model", "layer": LAYER, "probe": "toy-probe",
                                  "metrics": json.loads(json.dumps(r.metrics))}
    assert side["weights"] == "f.pt" and side["settings"] == m["settings"]


def test_fooling_dissects_the_layer_before_and_after(fooled):
    r, orig, probe = fooled
    cfg = DissectConfig(batch_size=4)
    base = dissect(orig, LAYER, probe, cfg)
    after = dissect(r.context["fooled"], LAYER, probe, cfg)
    rows, m = compare(base, after)
    assert r.meta["nd_layer"] == LAYER
    assert [x["unit"] for x in r.meta["nd_rows"]] == [x["unit"] for x in rows]
    for got, want in zip(r.meta["nd_rows"], rows, strict=True):
        assert got == {k: want[k] for k in ("unit", "clean_label", "corrupted_label", "changed",
                                           "clean_detector", "clean_iou", "corrupted_iou")}
    assert (r.metrics["nd_units"], r.metrics["nd_changed"], r.metrics["nd_flip_rate"]) == (
        m["units"], m["changed"], m["flip_rate"])
    assert r.metrics["nd_flip_rate_detectors"] == m.get("flip_rate_detectors")


def test_fooling_with_its_own_training_probe_and_no_dissection():
    orig, probe, train = net(0), ToyProbe(6), ToyProbe(20, seed=3)
    req = AuditRequest.build("fooling", train_probe="train", train_images=7, images=5,
                             interpreters=("gradcam",), dissect=False, **FOOL)
    r = run_fooling(req, resolved(orig, probe, probes={"train": train}))
    assert r.meta["train_images"] == 7
    assert [row["index"] for row in r.rows] == [0, 1, 2, 3, 4]  # the whole probe is held out
    assert "nd_units" not in r.metrics and "nd_rows" not in r.meta
    assert "weights" not in r.meta


def test_fooling_measures_on_64_held_out_images_by_default():
    """Without ``images=`` a fooling audit measures the first 64 held-out images (here the
    whole probe is held out: it has its own training probe)."""
    orig, probe = net(0), ToyProbe(70)
    req = AuditRequest.build("fooling", train_probe="train", interpreters=("gradcam",),
                             dissect=False, **FOOL)
    r = run_fooling(req, resolved(orig, probe, batch_size=35,
                                  probes={"train": ToyProbe(6, seed=3)}))
    assert [row["index"] for row in r.rows] == list(range(64)) and r.metrics["images"] == 64


def test_active_fooling_reports_both_classes():
    orig, probe = net(0), ToyProbe(8)  # classes alternate: four images of each
    req = AuditRequest.build("fooling", fooling="active", active_classes=(0, 1),
                             train_probe="train", interpreters=("gradcam",), dissect=False,
                             **FOOL)
    r = run_fooling(req, resolved(orig, probe, probes={"train": ToyProbe(16, seed=2)}))
    run = r.context["run"]
    assert r.meta["classes"] == [0, 1] == list(run.classes)
    x = run.active_images
    assert r.context["images"] is x and r.metrics["images"] == len(x) == len(r.rows)
    tl = evaluate.test_losses("active", "gradcam", LAYER, r.context["fooled"], orig, x,
                     probe_data(probe, range(8))[1][:len(x)], classes=(0, 1))
    c1, c2 = tl.fsr()
    assert (r.metrics["fsr_c1"], r.metrics["fsr_c2"]) == (pytest.approx(c1), pytest.approx(c2))
    assert r.metrics["fsr"] == pytest.approx((c1 + c2) / 2)
    assert [row["hit"]["gradcam"] for row in r.rows] == tl.hits.tolist()
    assert [row["fooled"] for row in r.rows] == tl.hits.all(1).tolist()


@pytest.mark.parametrize("values, extra, message", [
    ({}, {"corruption": "gaussian"}, "a fooling audit corrupts the model itself and takes no "
                                     "probe corruption"),
    ({"train_probe": "elsewhere"}, {}, "train_probe 'elsewhere': 'no probe named elsewhere'"),
    ({"saliency_layer": "model.nope"}, {}, "saliency_layer: "),
])
def test_fooling_errors_say_what_is_wrong(values, extra, message):
    req = AuditRequest.build("fooling", **values, **FOOL)
    with pytest.raises(SpecError) as e:
        run_fooling(req, resolved(net(0), ToyProbe(8), **extra))
    assert message in str(e.value)


def test_active_fooling_reads_class_names_from_the_model():
    """The model names its classes (``meta["class_names"]``): active fooling takes them by
    name, the probe's labels stay indices."""
    orig, probe = net(0), ToyProbe(8)
    orig.meta = {"class_names": ["box", "disc"]}
    req = AuditRequest.build("fooling", fooling="active", active_classes=("disc", "box"),
                             train_probe="train", interpreters=("gradcam",), dissect=False,
                             **FOOL)
    r = run_fooling(req, resolved(orig, probe, probes={"train": ToyProbe(16, seed=2)}))
    assert r.meta["classes"] == [1, 0]
    plain = net(0)
    with pytest.raises(SpecError):
        run_fooling(req, resolved(plain, probe, probes={"train": ToyProbe(16, seed=2)}))


def test_the_saliency_threshold_is_strict():
    """An image whose ρ equals the threshold has not changed (ρ < threshold changes)."""
    m, probe = net(0), ToyProbe(4)
    req = AuditRequest.build("saliency", reference="m", interpreters=("gradcam",),
                             spearman_threshold=1.0, aopc_steps=1)
    r = run_saliency(req, resolved(m, probe, models={"m": m}))
    assert [row["spearman"]["gradcam"] for row in r.rows] == [1.0] * 4  # exactly
    assert [row["changed"] for row in r.rows] == [False] * 4
    assert r.metrics["changed_rate_gradcam"] == 0.0
    assert r.indicators("changed_rate_gradcam") == [(False, True)] * 4


def test_the_reference_s_weights_reach_its_resolver():
    m, probe = net(0), ToyProbe(3)
    RESOLVED.clear()
    req = AuditRequest.build("saliency", reference="m", reference_weights="ref.pt",
                             interpreters=("simplegrad",), aopc_steps=1)
    run_saliency(req, resolved(m, probe, models={"m": m}))
    assert RESOLVED == [("model", "m", {"weights": "ref.pt"})]
    RESOLVED.clear()
    run_saliency(req.but(reference_weights=None), resolved(m, probe, models={"m": m}))
    assert RESOLVED == [("model", "m", {"weights": None})]


def test_aopc_takes_eight_steps_by_default():
    cand, ref, probe = net(0), net(1), ToyProbe(3)
    r = run_saliency(AuditRequest.build("saliency", reference="r", interpreters=("simplegrad",)),
                     resolved(cand, probe, batch_size=4, models={"r": ref}))
    x, y = probe_data(probe, range(3))
    want = aopc_batched(cand, x, y, maps_of(cand, x, y, "simplegrad"), 4, 8, 0)
    assert r.metrics["aopc_simplegrad"] == pytest.approx(float(want.mean()), abs=1e-5)


def test_fooling_measures_with_its_own_fsr_interval():
    """An interval that holds every loss: every image is a hit, fooled, in every column."""
    orig, probe = net(0), ToyProbe(8)
    req = AuditRequest.build("fooling", interpreters=("simplegrad",), fsr_low=-1e9,
                             fsr_high=1e9, dissect=False, **{**FOOL, "aopc_steps": 1})
    r = run_fooling(req, resolved(orig, probe))
    assert r.meta["interval"] == [-1e9, 1e9]
    assert all(row["hit"][i] is True for row in r.rows for i in ("gradcam", "simplegrad"))
    assert all(row["fooled"] is True for row in r.rows)
    assert r.metrics["fsr"] == r.metrics["fsr_simplegrad"] == 1.0
    rho = [row["spearman"] for row in r.rows]
    assert all(set(x) == {"gradcam", "simplegrad"} for x in rho)


def test_fooling_result_lines_and_pools_without_a_hit():
    rows = [{"index": 1, "label": 0, "test_loss": {}, "hit": {}, "spearman": {}},
            {"index": 2, "label": 1, "test_loss": {"gradcam": 0.5}, "hit": {"gradcam": True},
             "spearman": {}}]
    meta = {"interpreter": "gradcam", "fooling": "location", "interval": [0.0, 0.2]}
    r = FoolingResult("l", {}, rows, {}, meta)
    assert r.diff_line(rows[0]) == ("image     1 (class 0): test loss gradcam 0.000 in R "
                                    "[0.0, 0.2]; ρ vs original +0.000")
    assert r.indicators("fsr") == [(True, True)]  # the row without a hit is skipped, not the end
