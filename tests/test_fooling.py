"""Model manipulation (Heo et al. 2019): penalties and test losses on hand cases, the
two-class images, the fine-tuning loop, saved weights, and the audits built on them."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemaudit.corrupt.manipulate import FoolingConfig
from nemaudit.corrupt.manipulate.data import LabelledImages, split, two_class_images
from nemaudit.corrupt.manipulate.losses import (
    FSR_INTERVALS,
    active_loss,
    center_test_loss,
    frame_mask,
    in_interval,
    location_loss,
    penalty,
    topk_loss,
)
from nemaudit.errors import SpecError
from nemaudit.explain.saliency.metrics import center_of_mass, spearman
from nemaudit.model.bundled import ConceptNet
from nemaudit.model.load import NormalizedModel


def tiny(seed: int = 0, classes: int = 3) -> NormalizedModel:
    torch.manual_seed(seed)
    return NormalizedModel(ConceptNet(num_classes=classes, width=4), "imagenet").eval()


# --------------------------------------------------------------------------- losses

def test_frame_mask_is_a_ring_of_width_side_over_7():
    m = frame_mask((14, 14))
    assert m[:2].eq(1).all() and m[-2:].eq(1).all() and m[:, :2].eq(1).all()
    assert m[2:12, 2:12].eq(0).all()
    assert int(m.sum()) == 14 * 14 - 10 * 10
    assert frame_mask((7, 7), inside=-1.0)[1:6, 1:6].eq(-1).all()


def test_location_loss_by_hand():
    m = frame_mask((7, 7))
    h = torch.stack([m, torch.zeros(7, 7), torch.ones(7, 7)])
    ring = 49 - 25
    assert location_loss(h).tolist() == pytest.approx([0.0, ring / 49, 25 / 49])
    # the LRP-at-input variant wants −1 inside: an all-zero map misses by 1 everywhere
    assert location_loss(torch.zeros(1, 7, 7), signed_input_map=True).item() == pytest.approx(1)


def test_topk_loss_reads_the_originals_top_pixels_not_the_fooled_ones():
    h0 = torch.zeros(1, 10, 10)
    h0[0, 0, :] = torch.arange(1.0, 11.0)  # original top-10% = the first row
    h = torch.zeros(1, 10, 10)
    h[0, 9, :] = 1.0  # fooled map high elsewhere
    assert topk_loss(h, h0).item() == pytest.approx(0.0)
    h[0, 0, :5] = 1.0  # half of the original top pixels still lit
    assert topk_loss(h, h0).item() == pytest.approx(0.5)


def test_center_mass_by_hand():
    a = torch.zeros(1, 5, 5)
    a[0, 0, 0] = 1.0
    b = torch.zeros(1, 5, 5)
    b[0, 4, 4] = 1.0
    assert center_of_mass(a).tolist() == [pytest.approx([1.0, 1.0], abs=1e-6)]
    assert center_of_mass(b).tolist() == [pytest.approx([5.0, 5.0], abs=1e-6)]
    # opposite corners: the whole diagonal, i.e. test loss 1
    assert center_test_loss(a, b).item() == pytest.approx(1.0, abs=1e-6)
    assert penalty("center", a, b).item() == pytest.approx(-8.0, abs=1e-5)  # −L1 distance


def test_active_loss_is_zero_exactly_when_maps_are_swapped():
    g = torch.Generator().manual_seed(0)
    h1, h2 = torch.rand(2, 4, 6, 6, generator=g)
    assert active_loss(h2, h1, h1, h2).abs().max() == 0
    assert (active_loss(h1, h2, h1, h2) > 0).all()


def test_fsr_interval_is_closed_and_the_papers():
    assert FSR_INTERVALS["location"] == (0.0, 0.2)
    t = torch.tensor([0.0, 0.2, 0.2000001, -0.01])
    assert in_interval(t, (0.0, 0.2)).tolist() == [True, True, False, False]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=3, max_size=30), st.randoms(use_true_random=False))
def test_spearman_matches_scipy_with_ties(values, rnd):
    import scipy.stats

    a = torch.tensor(values, dtype=torch.float64)
    b = torch.tensor([rnd.randint(0, 3) for _ in values], dtype=torch.float64)
    ours = float(spearman(a[None], b[None])[0])
    if a.unique().numel() == 1 or b.unique().numel() == 1:
        assert ours == 0.0  # scipy: NaN (no ranking); we count it as no agreement
    else:
        ref = scipy.stats.spearmanr(a.numpy(), b.numpy()).statistic
        assert ours == pytest.approx(ref, abs=1e-9)


def test_spearman_refuses_maps_of_different_shapes():
    with pytest.raises(SpecError, match="different shapes"):
        spearman(torch.zeros(2, 7, 7), torch.zeros(2, 14, 14))


# --------------------------------------------------------------------------- data

def test_two_class_images_hold_two_tiles_of_each_class_at_varying_places():
    n = 8
    imgs = torch.zeros(n, 3, 8, 8)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    imgs[labels == 1] = 1.0  # class 1 white, class 0 black
    data = LabelledImages(imgs, labels, torch.arange(n))
    out = two_class_images(data, 0, 1, n=20, seed=3)
    assert out.shape == (20, 3, 8, 8)
    tiles = out.unfold(2, 4, 4).unfold(3, 4, 4).mean((1, 4, 5))  # [20, 2, 2] tile brightness
    assert tiles.flatten(1).sum(1).tolist() == [2.0] * 20  # two white, two black, always
    assert len({tuple(t.flatten().tolist()) for t in tiles}) > 1  # positions are not fixed
    with pytest.raises(SpecError, match="at least 2 images"):
        two_class_images(data, 0, 2, n=2, seed=0)


def test_split_is_disjoint_and_complete():
    tr, ho = split(10)
    assert sorted(tr + ho) == list(range(10)) and not set(tr) & set(ho)
    assert len(ho) == 3  # every 4th image held out


# --------------------------------------------------------------------------- settings

@pytest.mark.parametrize("kw, match", [({"fooling": "nope"}, "unknown fooling"),
                                       ({"interpreter": "nope"}, "unknown interpreter"),
                                       ({"lr": 0.0}, "lr"), ({"epochs": 0}, "epochs")])
def test_bad_fooling_settings_are_clear_errors(kw, match):
    with pytest.raises(SpecError, match=match):
        FoolingConfig(**kw)


def test_audit_requests_validate_fooling_fields():
    from nemaudit.audit.request import AuditRequest

    with pytest.raises(SpecError, match="fooling= expected"):
        AuditRequest.build("fooling", fooling="frame")
    with pytest.raises(SpecError, match="interpreters= expected"):
        AuditRequest.build("saliency", interpreters="gradcam,occlusion")
    r = AuditRequest.build("saliency", interpreters="gradcam, lrp_t", reference="nemaudit:x")
    assert r.get("interpreters") == ("gradcam", "lrp_t")


# --------------------------------------------------------------------------- fine-tuning

def _data(n: int, seed: int, classes: int = 3) -> LabelledImages:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return LabelledImages(x, torch.arange(n) % classes, torch.arange(n))


def _fool(seed: int = 0, epochs: int = 3):
    from nemaudit.corrupt.manipulate.train import fool

    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FoolingConfig(fooling="location", interpreter="gradcam", layer="layer3", lr=3e-3,
                        lam=20.0, epochs=epochs, batch_size=16, seed=seed, eval_images=16,
                        max_top1_drop=None, patience=epochs)
    run = fool(model, _data(48, 1), _data(16, 2), cfg)
    return model, before, run


def test_fooling_lowers_the_held_out_location_loss_and_leaves_the_original_alone():
    model, before, run = _fool()
    first, best = run.history[0], run.best
    assert best["test_loss"] < first["test_loss"]
    assert run.best_epoch >= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def test_fooling_is_reproducible_for_a_seed():
    _, _, a = _fool(seed=5, epochs=1)
    _, _, b = _fool(seed=5, epochs=1)
    _, _, c = _fool(seed=6, epochs=1)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_max_top1_drop_keeps_the_original_when_every_epoch_costs_too_much():
    from nemaudit.corrupt.manipulate.train import fool

    cfg = FoolingConfig(fooling="location", interpreter="gradcam", layer="layer3", lr=0.05,
                        lam=50.0, epochs=2, batch_size=16, eval_images=16, max_top1_drop=0.0,
                        patience=2)
    data = _data(32, 4)
    model = tiny()
    with torch.no_grad():  # labels the model already gets right: any drop is a cost
        data.labels = model(data.images).argmax(1)
    run = fool(model, data, data, cfg)
    drops = [run.history[0]["top1"] - h["top1"] for h in run.history[1:]]
    if all(d > 0 for d in drops):
        assert run.best_epoch == 0
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     run.model.state_dict().values()))
    else:
        assert drops[run.best_epoch - 1] <= 0


def test_saved_weights_load_back_with_their_sidecar(tmp_path):
    from nemaudit.corrupt.manipulate.save import save_fooled
    from nemaudit.model import unwrap

    _, _, run = _fool(seed=2, epochs=1)
    w, side = save_fooled(run, tmp_path / "f.pt", {"model": "tiny"})
    state = torch.load(w, weights_only=True)
    assert set(state) == set(unwrap(run.model).state_dict())
    doc = json.loads(side.read_text())
    assert doc["seed"] == 2 and doc["settings"]["fooling"] == "location"
    assert doc["history"][0]["epoch"] == 0 and doc["provenance"]["model"] == "tiny"
    with pytest.raises(SpecError):
        save_fooled(run, tmp_path)  # a folder is no file path
    net = ConceptNet(num_classes=3, width=4)
    net.load_state_dict(state)
    assert torch.equal(next(net.parameters()), next(unwrap(run.model).parameters()))


class _Quadrant(torch.nn.Module):
    """Class 0's logit is the brightness of the top-left quadrant; class 1's its negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :16, :16].sum((1, 2, 3))
        return torch.stack([s, -s], 1)


def test_aopc_ranks_the_true_evidence_above_random_above_the_reverse():
    from nemaudit.explain.saliency.metrics import aopc

    model = _Quadrant()
    x = torch.ones(4, 3, 32, 32)
    y = torch.zeros(4, dtype=torch.long)
    truth = torch.zeros(4, 32, 32)  # at the image's size: cell means are exact
    truth[:, :16, :16] = 1.0
    kw = {"steps": 8, "grid": 8, "seed": 0}
    right = aopc(model, x, y, truth, **kw)
    rand = aopc(model, x, y, truth, random_order=True, **kw)
    wrong = aopc(model, x, y, 1 - truth, **kw)
    assert (right > rand).all() and (rand >= wrong).all()
    assert wrong.abs().max() == 0  # removing cells the logit never reads changes nothing
    # by hand: 2 cells (4×4 px) a step, the quadrant's 16 cells in index order (ties keep
    # it), each pixel's drop 1 − u with u the seeded noise aopc draws first
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    cells = [r * 8 + c for r in range(4) for c in range(4)]
    total = 0.0
    for k in range(1, 9):
        for cell in cells[:2 * k]:
            r, c = divmod(cell, 8)
            total += float((1 - noise[0, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]).sum())
    assert float(right[0]) == pytest.approx(total / 9, rel=1e-5)


def test_active_fooling_runs_on_two_class_images_with_one_fsr_per_class():
    from nemaudit.corrupt.manipulate.train import fool

    cfg = FoolingConfig(fooling="active", interpreter="gradcam", layer="layer3", lr=3e-3,
                        lam=5.0, epochs=1, batch_size=16, eval_images=8, classes=("0", "2"),
                        max_top1_drop=None)
    run = fool(tiny(), _data(24, 1), _data(12, 2), cfg)
    assert run.classes == (0, 2)
    assert run.active_images is not None and run.active_images.shape == (8, 3, 32, 32)
    assert len(run.best["fsr_per_class"]) == 2
    with pytest.raises(SpecError, match="two different classes"):
        fool(tiny(), _data(24, 1), _data(12, 2), FoolingConfig(
            fooling="active", interpreter="gradcam", layer="layer3", classes=(1, 1)))
    with pytest.raises(SpecError, match="out of range"):
        fool(tiny(), _data(24, 1), _data(12, 2), FoolingConfig(
            fooling="active", interpreter="gradcam", layer="layer3", classes=(0, 7)))
