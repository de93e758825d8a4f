"""The fooling's fine-tuning loop (``corrupt/manipulate/train.py``) value by value, on a
tiny CNN and 8×8 images (a second a test): the loop against one written out here (Adam on
CE + λ·L_F, the seeded batch order, the last short batch), the epoch chosen and the early
stop on scripted evaluations (the top-1 budget at its edge, patience, ``stop_fsr``), a
process group's row shares adding up to the one-process losses, and the refusals."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemaudit.corrupt.manipulate import FoolingConfig
from nemaudit.corrupt.manipulate import train as loop
from nemaudit.corrupt.manipulate.data import LabelledImages, two_class_images
from nemaudit.corrupt.manipulate.evaluate import accuracy
from nemaudit.corrupt.manipulate.evaluate import test_losses as measured_losses
from nemaudit.corrupt.manipulate.losses import active_loss, penalty
from nemaudit.errors import SpecError
from nemaudit.explain.saliency import heatmap
from tests.helpers import raises_exactly

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


def seq(seed: int = 0) -> nn.Sequential:
    """The same shape as Tiny, built from modules LRP reads (its layer "2": the last conv)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _data(n: int, seed: int, classes: int = 3) -> LabelledImages:
    g = torch.Generator().manual_seed(seed)
    return LabelledImages(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % classes,
                          torch.arange(n))


def _config(**kw) -> FoolingConfig:
    base = dict(fooling="location", interpreter="simplegrad", lr=0.05, lam=2.0, epochs=2,
                batch_size=4, seed=3, eval_images=6, max_top1_drop=None, patience=10,
                stop_fsr=2.0)
    return FoolingConfig(**{**base, **kw})


def _reference(original: nn.Module, train: LabelledImages, cfg: FoolingConfig):
    """The loop written out: per epoch two permutations from one generator seeded with the
    seed (the plain order, then D_fool's), steps of ``batch_size`` rows, Adam on
    CE + λ·mean L_F. Returns each epoch's training means and the weights after it."""
    model = copy.deepcopy(original).eval()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = math.ceil(len(train) / cfg.batch_size)
    means, states = [], [copy.deepcopy(model.state_dict())]
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        torch.randperm(len(train), generator=gen)  # D_fool's order (unused when passive)
        ce_sum = lf_sum = 0.0
        for s in range(steps):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            x, y = train.images[idx], train.labels[idx]
            ce = F.cross_entropy(model(x), y)
            h = heatmap(model, x, y, cfg.interpreter, layer=cfg.layer, create_graph=True)
            h0 = heatmap(original, x, y, cfg.interpreter, layer=cfg.layer).detach()
            lf = penalty(cfg.fooling, h, h0, signed_input_map=cfg.interpreter == "lrp").mean()
            opt.zero_grad()
            (ce + cfg.lam * lf).backward()
            opt.step()
            ce_sum += float(ce.detach())
            lf_sum += float(lf.detach())
        means.append((ce_sum / steps, lf_sum / steps))
        states.append(copy.deepcopy(model.state_dict()))
    return means, states


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


@pytest.mark.parametrize("fooling, interpreter, layer", [
    ("location", "simplegrad", None), ("topk", "simplegrad", None),
    ("location", "gradcam", "2"), ("topk", "gradcam", "2"), ("center", "lrp", None),
    ("location", "lrp", None)])
def test_the_loop_is_adam_on_ce_plus_lambda_lf_over_the_seeded_batches(fooling, interpreter,
                                                                        layer):
    original, train, held = seq(), _data(10, 1), _data(8, 2)
    before = copy.deepcopy(original.state_dict())
    cfg = _config(fooling=fooling, interpreter=interpreter, layer=layer,
                  interval=(0.0, 0.5) if interpreter == "lrp" else None)
    run = loop.fool(original, train, held, cfg)
    means, states = _reference(original, train, cfg)
    assert [h["epoch"] for h in run.history] == [0, 1, 2]
    assert (run.history[0]["ce"], run.history[0]["lf"]) is not None
    assert run.history[0]["ce"] is None and run.history[0]["lf"] is None
    for h, (ce, lf) in zip(run.history[1:], means, strict=True):
        assert h["ce"] == pytest.approx(ce, abs=1e-6) and h["lf"] == pytest.approx(lf, abs=1e-6)
    assert means[0] != means[1]  # the weights moved between epochs
    # each epoch's evaluation: top-1/top-5 on all held-out images, FSR on the first 6
    for h, state in zip(run.history, states, strict=True):
        m = copy.deepcopy(original)
        m.load_state_dict(state)
        acc = accuracy(m, held.images, held.labels)
        tl = measured_losses(fooling, interpreter, layer, m, original, held.images[:6],
                             held.labels[:6], interval=cfg.interval)
        assert (h["top1"], h["top5"]) == (acc["top1"], acc["top5"])
        assert h["fsr_per_class"] == pytest.approx(tl.fsr(), abs=1e-6)
        assert h["fsr"] == pytest.approx(sum(tl.fsr()) / len(tl.fsr()), abs=1e-6)
        assert h["test_loss"] == pytest.approx(float(tl.losses.float().mean()), abs=1e-5)
    assert _same(run.model.state_dict(), states[run.best_epoch], atol=1e-6)
    assert _same(original.state_dict(), before)  # the original is untouched, and in eval mode
    assert not original.training and not run.model.training
    assert not any(p.requires_grad for p in run.model.parameters())
    assert run.best is run.history[run.best_epoch] and run.config is cfg
    assert run.classes is None and run.active_images is None


def test_the_same_seed_gives_the_same_run_and_another_seed_another_order():
    original, train, held = Tiny(), _data(10, 1), _data(8, 2)
    a = loop.fool(original, train, held, _config(epochs=1))
    b = loop.fool(original, train, held, _config(epochs=1))
    c = loop.fool(original, train, held, _config(epochs=1, seed=4))
    assert a.history == b.history
    assert a.history[1]["ce"] != c.history[1]["ce"]


# --------------------------------------------------------------------------- the epoch chosen

def _scripted(monkeypatch, rows: list[tuple[float, float]]):
    """Replace the per-epoch evaluation by ``rows`` of (top1, fsr); record the weights each
    evaluation saw."""
    seen: list[dict] = []

    def fake(model, original, config, held, active_x, classes, layer):
        top1, fsr = rows[len(seen)]
        seen.append(copy.deepcopy(model.state_dict()))
        return {"top1": top1, "top5": 1.0, "fsr": fsr, "fsr_per_class": [fsr],
                "test_loss": 0.0}

    monkeypatch.setattr(loop, "_evaluate", fake)
    return seen


def _run(monkeypatch, rows, **kw):
    seen = _scripted(monkeypatch, rows)
    original = Tiny()
    run = loop.fool(original, _data(8, 1), _data(4, 2), _config(**kw))
    assert len(run.history) == len(seen)
    assert _same(run.model.state_dict(), seen[run.best_epoch])
    return run


@pytest.mark.parametrize("rows, kw, epochs_run, best", [
    # the best FSR among all epochs (no budget)
    ([(0.9, 0.1), (0.9, 0.3), (0.5, 0.2), (0.1, 0.5)], {"epochs": 3}, 3, 3),
    # a drop of exactly the budget is allowed (0.9 - 0.88 is 0.02 + 2e-17 in floats)
    ([(0.9, 0.1), (0.88, 0.3)], {"epochs": 1, "max_top1_drop": 0.02}, 1, 1),
    # the rule's own edge: 1 - 0.499999999999 == 0.5 + 1e-12 exactly in floats
    ([(1.0, 0.1), (0.499999999999, 0.3)], {"epochs": 1, "max_top1_drop": 0.5}, 1, 1),
    ([(1.0, 0.1), (0.4999999999985, 0.3)], {"epochs": 1, "max_top1_drop": 0.5}, 1, 0),
    # one just over it is not, whatever its FSR
    ([(0.9, 0.1), (0.8799, 0.3)], {"epochs": 1, "max_top1_drop": 0.02}, 1, 0),
    ([(0.9, 0.1), (0.85, 0.9), (0.9, 0.2), (0.95, 0.15)],
     {"epochs": 3, "max_top1_drop": 0.02}, 3, 2),
    # a tie is no improvement: the earlier epoch stays
    ([(0.9, 0.2), (0.9, 0.2), (0.9, 0.4), (0.9, 0.4)], {"epochs": 3}, 3, 2),
    # the original (epoch 0) when nothing beats it
    ([(0.9, 0.5), (0.9, 0.4), (0.9, 0.5)], {"epochs": 2}, 2, 0),
])
def test_the_epoch_kept_is_the_best_fsr_within_the_top1_budget(monkeypatch, rows, kw,
                                                               epochs_run, best):
    run = _run(monkeypatch, rows, **kw)
    assert len(run.history) == epochs_run + 1 and run.best_epoch == best
    assert [h["epoch"] for h in run.history] == list(range(epochs_run + 1))


@pytest.mark.parametrize("rows, kw, epochs_run", [
    # patience 2: two epochs in a row without a better FSR stop the run
    ([(0.9, 0.5), (0.9, 0.4), (0.9, 0.45), (0.9, 0.9)], {"epochs": 3, "patience": 2}, 2),
    # a better FSR resets the count even when its accuracy is over the budget
    ([(0.9, 0.1), (0.5, 0.5), (0.9, 0.3), (0.9, 0.2), (0.9, 0.9)],
     {"epochs": 4, "patience": 2, "max_top1_drop": 0.02}, 3),
    ([(0.9, 0.1), (0.9, 0.2), (0.9, 0.15), (0.9, 0.3), (0.9, 0.25)],
     {"epochs": 4, "patience": 2}, 4),
    # an equal FSR is no improvement: it counts towards patience
    ([(0.9, 0.5), (0.9, 0.5), (0.9, 0.5), (0.9, 0.9)], {"epochs": 3, "patience": 2}, 2),
    # stop_fsr reached within the budget stops at once (>=) ...
    ([(0.9, 0.1), (0.9, 0.5), (0.9, 0.9)], {"epochs": 2, "stop_fsr": 0.5}, 1),
    # ... but not when that epoch costs too much accuracy
    ([(0.9, 0.1), (0.5, 0.5), (0.9, 0.6)], {"epochs": 2, "stop_fsr": 0.5,
                                            "max_top1_drop": 0.02}, 2),
])
def test_the_run_stops_on_patience_or_on_reaching_stop_fsr(monkeypatch, rows, kw, epochs_run):
    run = _run(monkeypatch, rows, **kw)
    assert len(run.history) == epochs_run + 1


def test_the_second_budget_case_keeps_the_later_allowed_epoch(monkeypatch):
    run = _run(monkeypatch, [(0.9, 0.1), (0.5, 0.5), (0.9, 0.3), (0.9, 0.2), (0.9, 0.9)],
               epochs=4, patience=2, max_top1_drop=0.02)
    assert run.best_epoch == 2


# --------------------------------------------------------------------------- steps and ranks

def _v(t: torch.Tensor) -> float:
    return float(t.detach())


class _Rank:
    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world


@pytest.mark.parametrize("fooling", ["location", "center", "active"])
def test_ranks_row_shares_add_up_to_the_one_process_losses(fooling):
    model, original = Tiny(1), Tiny(2)
    train = _data(7, 1)
    cfg = _config(fooling=fooling, interpreter="simplegrad",
                  classes=(0, 1) if fooling == "active" else None)
    fool_x = two_class_images(train, 0, 1, n=7, seed=0) if fooling == "active" else None
    classes = (0, 1) if fooling == "active" else None
    idx, fidx = torch.tensor([4, 0, 6, 2, 5]), torch.tensor([1, 3, 0, 6, 2])
    args = (model, original, cfg, train, fool_x, classes, idx, fidx, None,
            torch.device("cpu"))
    ce, lf = loop._step_losses(*args, None)
    parts = [loop._step_losses(*args, _Rank(r, 3)) for r in range(3)]
    assert _v(sum(p[0] for p in parts)) == pytest.approx(_v(ce), abs=1e-6)
    assert _v(sum(p[1] for p in parts)) == pytest.approx(_v(lf), abs=1e-6)
    # and the one-process values, by hand
    x, y = train.images[idx], train.labels[idx]
    assert _v(ce) == pytest.approx(_v(F.cross_entropy(model(x), y)), abs=1e-6)
    if fooling == "active":
        xf = fool_x[fidx]
        c1, c2 = torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
        want = active_loss(heatmap(model, xf, c1, "simplegrad", create_graph=True),
                           heatmap(model, xf, c2, "simplegrad", create_graph=True),
                           heatmap(original, xf, c1, "simplegrad"),
                           heatmap(original, xf, c2, "simplegrad")).mean()
    else:
        want = penalty(fooling, heatmap(model, x, y, "simplegrad", create_graph=True),
                       heatmap(original, x, y, "simplegrad")).mean()
    assert _v(lf) == pytest.approx(_v(want), abs=1e-6)
    # L_F reaches the weights through every map of the fooled model (create_graph)
    params = list(model.parameters())
    got_g = torch.autograd.grad(lf, params, allow_unused=True, retain_graph=True)
    want_g = torch.autograd.grad(want, params, allow_unused=True)
    for g, w in zip(got_g, want_g, strict=True):
        if w is None:
            assert g is None or not g.abs().sum()
        else:
            assert g is not None and torch.allclose(g, w, atol=1e-6)


def test_a_rank_with_no_rows_contributes_zero():
    model, original, train = Tiny(1), Tiny(2), _data(4, 1)
    ce, lf = loop._step_losses(model, original, _config(), train, None, None,
                               torch.tensor([2]), torch.tensor([1]), None,
                               torch.device("cpu"), _Rank(1, 2))
    assert _v(ce) == 0.0 and _v(lf) == 0.0


def test_summed_gradients_outside_a_group_are_the_gradients():
    model = Tiny()
    model.conv1.bias.requires_grad_(False)
    F.cross_entropy(model(_data(3, 0).images), torch.tensor([0, 1, 2])).backward()
    model.conv2.weight.grad = None  # a parameter with no gradient counts as zeros
    before = {n: None if p.grad is None else p.grad.clone()
              for n, p in model.named_parameters()}
    loop._sum_gradients(model)
    for n, p in model.named_parameters():
        if n == "conv1.bias":
            assert p.grad is None  # frozen parameters are left alone
        elif n == "conv2.weight":
            assert torch.equal(p.grad, torch.zeros_like(p))
        else:
            assert torch.equal(p.grad, before[n]) and p.grad.shape == p.shape


# --------------------------------------------------------------------------- classes, refusals

def test_active_fooling_swaps_the_given_classes_on_seeded_two_class_images():
    original, train, held = seq(), _data(12, 1), _data(9, 2)
    cfg = _config(fooling="active", interpreter="gradcam", layer="2", classes=(2, 0),
                  epochs=1, eval_images=5, interval=(0.0, 0.5))
    run = loop.fool(original, train, held, cfg)
    assert run.classes == (2, 0)
    assert torch.equal(run.active_images, two_class_images(held, 2, 0, n=5, seed=4))
    # each epoch is measured on the held-out two-class images, one FSR per class
    for h in run.history:
        assert len(h["fsr_per_class"]) == 2
        assert h["fsr"] == pytest.approx(sum(h["fsr_per_class"]) / 2)
    tl = measured_losses("active", "gradcam", "2", original, original, run.active_images,
                         held.labels[:5], classes=(2, 0), interval=(0.0, 0.5))
    assert run.history[0]["fsr_per_class"] == pytest.approx(tl.fsr())
    fooled = measured_losses("active", "gradcam", "2", run.model, original, run.active_images,
                             held.labels[:5], classes=(2, 0), interval=(0.0, 0.5))
    assert run.best["fsr_per_class"] == pytest.approx(fooled.fsr(), abs=1e-6)
    assert run.history[0]["fsr_per_class"] != run.history[1]["fsr_per_class"] or \
        run.history[0]["test_loss"] != run.history[1]["test_loss"]
    named = loop.fool(original, train, held, _config(
        fooling="active", interpreter="gradcam", layer="2", classes=("c", "a"), epochs=1,
        eval_images=5, interval=(0.0, 0.5)), class_names=["a", "b", "c"])
    assert named.classes == (2, 0) and named.history == run.history


def test_active_fooling_without_classes_takes_the_commonest_two():
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 1, 2, 0, 2])  # 2: five, 1: three, 0: two
    train = LabelledImages(_data(10, 1).images, labels, torch.arange(10))
    run = loop.fool(Tiny(), train, _data(9, 2), _config(fooling="active", epochs=1,
                                                         eval_images=4))
    assert run.classes == (2, 1)


def test_the_commonest_two_classes():
    cfg = FoolingConfig(fooling="active", interpreter="simplegrad")
    labels = torch.tensor([0, 2, 2, 1, 1, 1, 3])
    data = LabelledImages(torch.zeros(7, 3, 2, 2), labels, torch.arange(7))
    assert loop.active_classes(cfg, data, 4, None) == (1, 2)
    one = LabelledImages(torch.zeros(3, 3, 2, 2), torch.tensor([1, 1, 1]), torch.arange(3))
    with raises_exactly(SpecError, "active fooling needs images of at least two classes"):
        loop.active_classes(cfg, one, 4, None)
    zero = LabelledImages(torch.zeros(2, 3, 2, 2), torch.tensor([0, 0]), torch.arange(2))
    with raises_exactly(SpecError, "active fooling needs images of at least two classes"):
        loop.active_classes(cfg, zero, 4, None)


def test_refusals():
    twice = FoolingConfig(fooling="active", interpreter="simplegrad", classes=(1, 1))
    with raises_exactly(SpecError, "active fooling needs two different classes, got 1 twice"):
        loop.active_classes(twice, _data(6, 0), 3, None)
    cfg = FoolingConfig(fooling="location", interpreter="gradcam", layer=None)
    with raises_exactly(SpecError, "fooling gradcam needs its layer (layer=...)"):
        loop.fool(Tiny(), _data(4, 0), _data(4, 1), cfg)


# --------------------------------------------------------------------------- steps, progress

def test_each_step_takes_a_batch_of_each_order(monkeypatch):
    sizes = []
    real = loop._step_losses

    def recording(model, original, config, train, fool_x, classes, idx, fidx, *rest):
        sizes.append((idx.tolist(), fidx.tolist()))
        return real(model, original, config, train, fool_x, classes, idx, fidx, *rest)

    monkeypatch.setattr(loop, "_step_losses", recording)
    cfg = _config(fooling="active", classes=(0, 1), epochs=2, batch_size=4)
    loop.fool(Tiny(), _data(10, 1), _data(6, 2), cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    want = []
    for _ in range(2):
        order, fool_order = torch.randperm(10, generator=gen), torch.randperm(10, generator=gen)
        want += [(order[a:a + 4].tolist(), fool_order[a:a + 4].tolist()) for a in (0, 4, 8)]
    assert sizes == want


def test_the_progress_bar_counts_steps_and_shows_the_running_means(monkeypatch):
    import nemaudit.progress as progress

    seen: dict = {"describe": []}

    class Task:
        def advance(self, n=1):
            seen["advanced"] = seen.get("advanced", 0) + n

        def describe(self, text):
            seen["describe"].append(text)

    import contextlib

    @contextlib.contextmanager
    def task(description, total, enabled=True):
        seen.update(description=description, total=total, enabled=enabled)
        yield Task()

    monkeypatch.setattr(progress, "progress_task", task)
    run = loop.fool(Tiny(), _data(10, 1), _data(6, 2), _config(epochs=2), progress=True)
    assert (seen["description"], seen["total"], seen["enabled"]) == (
        "fooling simplegrad (location)", 6, True)
    assert seen["advanced"] == 6 and len(seen["describe"]) == 6
    last = seen["describe"][-1]
    h = run.history
    assert last == (f"fooling simplegrad (location) epoch 2: CE {h[2]['ce']:.3f} "
                    f"L_F {h[2]['lf']:.4f} held-out top-1 {h[1]['top1']:.3f}")
    loop.fool(Tiny(), _data(10, 1), _data(6, 2), _config(epochs=1))
    assert seen["enabled"] is False  # off unless asked


def test_gradients_are_summed_under_their_label(monkeypatch):
    from nemaudit import dist

    labels = []
    monkeypatch.setattr(dist, "all_sum", lambda t, what="": labels.append(what) or t)
    model = Tiny()
    F.cross_entropy(model(_data(2, 0).images), torch.tensor([0, 1])).backward()
    loop._sum_gradients(model)
    assert labels == ["summing the gradients"]


def test_two_ranks_fool_as_one_process(monkeypatch):
    """Data-parallel over thread-ranks: every rank ends with the one-process weights and
    history (the summed gradients and losses up to float order), under their labels."""
    import threading

    from nemaudit import dist
    from tests.threaded_dist import run_ranks

    train, held = _data(10, 1), _data(6, 2)
    cfg = _config(epochs=2)
    # each epoch "improves" the FSR, in every rank alike: the last epoch is kept, whatever
    # rounding the summed gradients bring (a real FSR can flip at an interval's edge)
    counter = threading.local()
    real_evaluate = loop._evaluate

    def rising(model, original, config, held_, active_x, classes, layer):
        counter.n = getattr(counter, "n", -1) + 1
        row = real_evaluate(model, original, config, held_, active_x, classes, layer)
        return {**row, "fsr": float(counter.n), "top1": 1.0}

    monkeypatch.setattr(loop, "_evaluate", rising)
    one = loop.fool(Tiny(), train, held, cfg)
    assert one.best_epoch == 2
    labels = []
    real = dist.all_sum
    monkeypatch.setattr(dist, "all_sum", lambda t, what="": labels.append(what) or real(t, what))
    # the ranks' models are built here: Tiny() seeds the global RNG, which threads share
    models = [Tiny(), Tiny()]
    runs = run_ranks(2, lambda rank: loop.fool(models[rank], train, held, cfg), monkeypatch)
    for r in runs:
        assert r.best_epoch == 2
        assert _same(r.model.state_dict(), one.model.state_dict(), atol=1e-5)
        for a, b in zip(r.history, one.history, strict=True):
            assert a["epoch"] == b["epoch"]
            assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5)
            if a["ce"] is not None:
                assert a["ce"] == pytest.approx(b["ce"], abs=1e-5)
                assert a["lf"] == pytest.approx(b["lf"], abs=1e-5)
    assert set(labels) == {"summing the gradients", "summing the fooling losses"}
    assert labels.count("summing the gradients") == 2 * 6  # two ranks, 3 steps × 2 epochs
