"""The designed corruption of ICCV'23 (Srivastava, Oikarinen, Weng), their Eq. 9, in torch.

For unit u, source concept s (u's clean label) and target concept t, PGD in an L∞ ball of
radius ε minimises

    act_avg(u, s)(x) − act_avg(u, t)(x),   act_avg(u, c)(x) = Σ_k B(f_u(x))_k·L_c(x)_k / Σ_k L_c(x)_k

where B bilinearly upsamples the unit's map to the label resolution (the same
:func:`~nemaudit.explain.common.masks.upsample` the dissection uses) and L_c(x) is the binary map of
c (an image-level label covers the whole image; a concept absent from x contributes 0). When
the probe has no segmentation, L_c comes from the clean run's masks (their Eq. 8,
L_{c*}(x) = M_u(x)): pass ``source_masks``/``target_masks``.

Settings follow the authors' code: step α = 2ε/steps, 10 steps, signed gradient, projection
onto the ε-ball then clamping to [0, 1], and **no random start** (their attack initialises the
perturbation with ``zero_()``); ``random_start=True`` is available and seeded per (image,
unit). Only images that contain s or t are poisoned.

The attack is per unit: every attacked unit gets its own poisoned copy of the probe. To pay
for one forward/backward per PGD step for *many* units, :func:`attack_units` replicates each
poisoned (unit, image) pair into one batch of copies. Each copy's loss depends only on its own
input and its own unit, so the gradient of the summed loss w.r.t. a copy is exactly that
copy's own gradient (the model runs in eval mode: no batch statistics couple the copies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from nemaudit.corrupt.base import (
    UnitAttack,
    UnitCorruption,
    check_nonneg,
    check_steps,
    concept_maps,
    derive_seed,
    resolve_concept,
    runner_up_concepts,
)
from nemaudit.errors import SpecError
from nemaudit.explain.common.masks import upsample
from nemaudit.probe.base import ProbeBatch, ProbeDataset

__all__ = [
    "ConceptAttack",
    "ConceptPGD",
    "UnitAttack",
    "act_avg",
    "attack_units",
    "untargeted_targets",
]


def act_avg(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """act_avg for ``maps [N, fh, fw]`` (a unit's raw map per row) and binary ``labels
    [N, h, w]``: the mean of the upsampled map over the labelled pixels, 0 where a row's label
    map is empty."""
    up = upsample(maps, tuple(labels.shape[-2:]))  # type: ignore[arg-type]
    lab = labels.to(up.dtype)
    area = lab.sum(dim=(1, 2))
    total = (up * lab).sum(dim=(1, 2))
    return torch.where(area > 0, total / area.clamp(min=1.0), torch.zeros_like(total))


def _objective(maps: torch.Tensor, source_maps: torch.Tensor,
               target_maps: torch.Tensor | None) -> torch.Tensor:
    """Eq. 9 per row from the unit maps: act_avg(source) − act_avg(target)."""
    loss = act_avg(maps, source_maps)
    if target_maps is not None:
        loss = loss - act_avg(maps, target_maps)
    return loss


def _objective_weights(maps: torch.Tensor, source_maps: torch.Tensor,
                       target_maps: torch.Tensor | None) -> torch.Tensor:
    """Eq. 9's objective as a weight per feature-map cell ``[N, fh, fw]``.

    The objective is linear in the unit map (upsampling and the masked means are linear), so
    its gradient with respect to the map does not depend on the map: computed once per
    attack, ``(maps * weights).sum()`` gives every PGD step exactly the gradient the
    upsampled objective would (the same backward ops on the same values), without upsampling
    the maps to the label resolution and back at each step."""
    z = torch.zeros(maps.shape, dtype=torch.float32, device=maps.device, requires_grad=True)
    with torch.enable_grad():
        return torch.autograd.grad(_objective(z, source_maps, target_maps).sum(), z)[0]


class ConceptPGD:
    """Eq. 9 on one layer of ``model`` (which takes [0, 1] images), in plain torch.

    Called like a torchattacks attack, ``atk(images, labels)``, with the *unit* of each row as
    its label, plus the source and target label maps (bool ``[N, h, w]``) per row:

    >>> atk = ConceptPGD(model, "layer4", eps=4/255)
    >>> adv = atk(images, units, source_maps, target_maps)      # [N, 3, H, W]

    Rows are independent: row n is attacked for unit ``units[n]``. Use :meth:`run` to also
    get the objective before and after. The model is attacked in eval mode and handed back in
    the mode it came in (as torchattacks does). Torch-native so that the core needs no
    torchattacks (whose 3.5.1 pins ``requests~=2.25``);
    :class:`nemaudit.corrupt.torchattacks_adapter.ConceptPGDAttack` is the same attack as a
    real torchattacks ``Attack``.
    """

    def __init__(self, model: torch.nn.Module, layer: str, eps: float = 4 / 255,
                 alpha: float | None = None, steps: int = 10, random_start: bool = False,
                 seed: int = 0) -> None:
        self.model = model
        self.layer = layer
        self.eps = check_nonneg(eps, "eps")
        self.steps = check_steps(steps)
        self.alpha = 2.0 * self.eps / self.steps if alpha is None else check_nonneg(alpha, "alpha")
        self.random_start = bool(random_start)
        self.seed = int(seed)

    # -- model access
    def _unit_maps(self, rec: Any, images: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Each row's unit map ``[N, fh, fw]``, with the graph kept."""
        rec.run(images)
        feats = rec[self.layer]
        if feats.dim() != 4:
            raise SpecError(f"layer {self.layer!r} outputs shape {tuple(feats.shape)}; the "
                            "concept attack needs convolutional maps [B, units, h, w]")
        if units.numel() and int(units.max()) >= feats.shape[1]:
            raise SpecError(f"unit {int(units.max())} is out of range: layer {self.layer!r} "
                            f"has {feats.shape[1]} units (valid: 0..{feats.shape[1] - 1})")
        return feats[torch.arange(feats.shape[0], device=feats.device), units]

    def _recorder(self) -> Any:
        from nemaudit.model.layers import LayerRecorder

        return LayerRecorder(self.model, [self.layer], keep_graph=True, stop_at_layer=True)

    def objective(self, images: torch.Tensor, units: torch.Tensor, source_maps: torch.Tensor,
                  target_maps: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 9's objective per row ``[N]`` (no gradient), in the model's current mode."""
        with torch.no_grad(), self._recorder() as rec:
            return self._loss(rec, images, units, source_maps, target_maps)

    def _loss(self, rec: Any, images: torch.Tensor, units: torch.Tensor,
              source_maps: torch.Tensor, target_maps: torch.Tensor | None) -> torch.Tensor:
        return _objective(self._unit_maps(rec, images, units), source_maps, target_maps)

    # -- entry points
    def __call__(self, images: torch.Tensor, labels: torch.Tensor, source_maps: torch.Tensor,
                 target_maps: torch.Tensor | None = None,
                 keys: Sequence[Any] | None = None) -> torch.Tensor:
        """The adversarial images; ``labels`` are the unit indices of the rows."""
        return self.run(images, labels, source_maps, target_maps, keys)[0]

    forward = __call__

    def run(self, images: torch.Tensor, units: torch.Tensor, source_maps: torch.Tensor,
            target_maps: torch.Tensor | None = None, keys: Sequence[Any] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(adv_images, objective_before, objective_after)``, the model in eval mode
        meanwhile. ``keys`` (one per row, e.g. ``(dataset index, unit)``) seed the random
        start when it is on."""
        given = self.model.training
        self.model.eval()
        try:
            return self._pgd(images, units, source_maps, target_maps, keys)
        finally:
            self.model.train(given)

    def _pgd(self, images: torch.Tensor, units: torch.Tensor, source_maps: torch.Tensor,
             target_maps: torch.Tensor | None, keys: Sequence[Any] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else images.device
        images = images.clone().detach().to(device)
        units = torch.as_tensor(units, dtype=torch.int64).to(device)
        source_maps = source_maps.detach().to(device)
        target_maps = None if target_maps is None else target_maps.detach().to(device)
        if not (images.shape[0] == units.shape[0] == source_maps.shape[0]) or (
                target_maps is not None and target_maps.shape[0] != images.shape[0]):
            raise ValueError("images, units and label maps must have the same number of rows")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("ConceptPGD takes images in [0, 1] (normalisation is the model "
                             "wrapper's job)")
        if images.dim() == 4:
            # channels-last convolutions run ~25% faster forward+backward on CPU (oneDNN's
            # native layout); every op below is elementwise, so the layout is kept throughout
            images = images.contiguous(memory_format=torch.channels_last)
        adv = images.clone()
        if self.random_start and self.eps > 0:
            adv = (adv + self._start(images, keys)).clamp(0.0, 1.0)
        before = torch.zeros(images.shape[0], device=device)
        weights: torch.Tensor | None = None
        with torch.enable_grad(), self._recorder() as rec:
            for _step in range(self.steps):
                adv.requires_grad_(True)
                maps = self._unit_maps(rec, adv, units)
                if weights is None:
                    weights = _objective_weights(maps, source_maps, target_maps)
                    if not self.random_start:
                        before = _objective(maps.detach(), source_maps, target_maps)
                loss = (maps.to(weights.dtype) * weights).sum()
                grad = torch.autograd.grad(loss, adv)[0]
                adv = adv.detach() - self.alpha * grad.sign()  # minimise
                delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
                adv = torch.clamp(images + delta, min=0.0, max=1.0).detach()
            with torch.no_grad():
                if self.random_start:
                    before = self._loss(rec, images, units, source_maps, target_maps)
                # the final maps give the objective after the attack and are kept
                # (:attr:`last_maps`): a re-dissection needs them, and need not run again
                self.last_maps = self._unit_maps(rec, adv, units).detach()
                after = _objective(self.last_maps, source_maps, target_maps)
        return adv.contiguous(), before.detach(), after.detach()

    def _start(self, images: torch.Tensor, keys: Sequence[Any] | None) -> torch.Tensor:
        if keys is None:
            raise ValueError("random_start=True needs one key per row (e.g. (index, unit)) so "
                             "the start does not depend on the batch")
        g = torch.Generator()
        noise = []
        for k in keys:
            parts = tuple(int(p) for p in k) if isinstance(k, Sequence) else (int(k),)
            g.manual_seed(derive_seed(self.seed, "pgd-start", *parts))
            noise.append(torch.rand(images.shape[1:], generator=g) * 2.0 - 1.0)
        return torch.stack(noise).to(images.device, images.dtype) * self.eps


def _per_unit_maps(batch: ProbeBatch, concepts: Sequence[int | None] | None,
                   masks: torch.Tensor | None, n_units: int, what: str
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """→ (stacked bool maps [K, B, h, w], row of each unit in that stack [U]) or None.

    Concept maps are built once per distinct concept (units often share sources/targets)."""
    b = len(batch)
    if masks is not None:
        if concepts is not None:
            raise ValueError(f"give either {what} concepts or {what}_masks, not both")
        m = masks.to(batch.images.device).bool()
        if m.dim() == 3:  # [B, h, w]: the same masks for every unit
            m = m.unsqueeze(0)
            rows = torch.zeros(n_units, dtype=torch.int64)
        elif m.dim() == 4 and m.shape[0] == n_units:
            rows = torch.arange(n_units)
        else:
            raise ValueError(f"{what}_masks must be [B, h, w] or [U={n_units}, B, h, w], got "
                             f"{tuple(m.shape)}")
        if m.shape[1] != b:
            raise ValueError(f"{what}_masks cover {m.shape[1]} images, the batch has {b}")
        return m, rows
    if concepts is None:
        return None
    if len(concepts) != n_units:
        raise ValueError(f"{len(concepts)} {what} concepts for {n_units} units")
    ids = [(-1 if c is None else int(c)) for c in concepts]
    distinct = sorted(set(ids))
    stack = torch.stack([concept_maps(batch.pixel_labels, batch.image_labels, c)
                         for c in distinct])
    pos = {c: i for i, c in enumerate(distinct)}
    return stack, torch.tensor([pos[c] for c in ids], dtype=torch.int64)


def attack_units(model: torch.nn.Module, layer: str, batch: ProbeBatch,
                 units: Sequence[int] | torch.Tensor,
                 sources: Sequence[int] | torch.Tensor | None = None,
                 targets: Sequence[int | None] | torch.Tensor | None = None,
                 eps: float = 4 / 255, steps: int = 10, *, alpha: float | None = None,
                 source_masks: torch.Tensor | None = None,
                 target_masks: torch.Tensor | None = None,
                 select: torch.Tensor | None = None, max_copies: int = 64,
                 random_start: bool = False, seed: int = 0) -> UnitAttack:
    """Attack ``units`` of ``layer`` on one batch, each unit on its own copy of the batch.

    ``sources[i]``/``targets[i]`` are unit ``units[i]``'s concept ids (a target of ``None`` or
    ≤ 0 drops the target term); or, for a probe without segmentation, per-image masks
    ``source_masks``/``target_masks`` of shape ``[B, h, w]`` (shared) or ``[U, B, h, w]``.
    Image b is attacked for unit i iff ``select[b]`` (the corruption's selection; all if None)
    and it contains unit i's source or target. Poisoned (unit, image) pairs are stacked into
    batches of at most ``max_copies`` copies, one forward/backward per PGD step each.

    The returned images hold U·B·3·H·W floats (U copies of the batch): pick ``len(units)`` so
    that fits; images that are not poisoned for a unit are plain copies of the clean ones.
    """
    unit_list = [int(u) for u in (units.tolist() if isinstance(units, torch.Tensor) else units)]
    n_u, b = len(unit_list), len(batch)
    step = check_steps(max_copies, "max_copies")  # copies per forward/backward
    src = _per_unit_maps(batch, _ids(sources), source_masks, n_u, "source")
    if src is None:
        raise ValueError("attack_units needs source concepts or source_masks")
    tgt = _per_unit_maps(batch, _ids(targets), target_masks, n_u, "target")
    device = batch.images.device
    src_any = src[0].flatten(2).any(dim=2)[src[1].to(device)]  # [U, B]
    poisoned = src_any.clone()
    if tgt is not None:
        poisoned |= tgt[0].flatten(2).any(dim=2)[tgt[1].to(device)]
    if select is not None:
        poisoned &= select.to(device).bool()[None, :]

    out = batch.images.unsqueeze(0).repeat(n_u, 1, 1, 1, 1)
    before = torch.full((n_u, b), float("nan"), device=device)
    after = torch.full((n_u, b), float("nan"), device=device)
    maps: torch.Tensor | None = None
    pu, pb = poisoned.nonzero(as_tuple=True)
    if pu.numel():
        atk = ConceptPGD(model, layer, eps=eps, alpha=alpha, steps=steps,
                         random_start=random_start, seed=seed)
        unit_t = torch.tensor(unit_list, dtype=torch.int64, device=device)
        src_rows, tgt_rows = src[1].to(device), None if tgt is None else tgt[1].to(device)
        for s in range(0, pu.numel(), step):
            cu, cb = pu[s:s + step], pb[s:s + step]
            smaps = src[0][src_rows[cu], cb]
            tmaps = None if tgt is None else tgt[0][tgt_rows[cu], cb]
            keys = list(zip(batch.indices[cb].tolist(), unit_t[cu].tolist(), strict=True))
            adv, ob, oa = atk.run(batch.images[cb], unit_t[cu], smaps, tmaps, keys)
            out[cu, cb] = adv.to(out.dtype)
            before[cu, cb] = ob.to(device)
            after[cu, cb] = oa.to(device)
            if maps is None:
                maps = torch.zeros(n_u, b, *atk.last_maps.shape[1:], device=device)
            maps[cu, cb] = atk.last_maps.to(device, maps.dtype)
    return UnitAttack(out, poisoned, before, after, maps)


def _ids(values: Sequence[int | None] | torch.Tensor | None) -> list[int | None] | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.tolist()]
    return [None if v is None else int(v) for v in values]


#: the untargeted attack's targets (kept under its first name)
untargeted_targets = runner_up_concepts


class ConceptAttack(UnitCorruption):
    """The designed corruption as a :class:`Corruption` (spec kind ``pgd``): per unit.

    ``fraction``/``select`` pick the candidate images as for every corruption; a candidate is
    attacked for unit u only if it contains u's source or target concept (the paper attacks
    every such image: ``fraction=1``). Targeted: ``target`` names the concept every unit is
    pushed to. Untargeted: the caller passes each unit's target, normally
    :func:`untargeted_targets` of the clean dissection (the runner-up concept).
    """

    kind = "pgd"
    params = {"eps": float, "steps": int, "alpha": float, "targeted": bool, "target": str,
              "random_start": bool, "max_copies": int}
    required = ("eps",)

    def __init__(self, eps: float, steps: int = 10, *, alpha: float | None = None,
                 targeted: bool = False, target: str | int | None = None,
                 random_start: bool = False, max_copies: int = 64, fraction: float = 1.0,
                 select: str | Iterable[int] = "random", seed: int = 0) -> None:
        super().__init__(fraction=fraction, select=select, seed=seed)
        self.eps = check_nonneg(eps, "eps")
        self.steps = check_steps(steps)
        self.alpha = None if alpha is None else check_nonneg(alpha, "alpha")
        self.targeted = bool(targeted)
        if self.targeted and target is None:
            raise SpecError("targeted=true needs target=<concept name>")
        if not self.targeted and target is not None:
            raise SpecError(f"target={target!r} is only used with targeted=true")
        self.target = target
        self.target_id: int | None = None
        if isinstance(target, int) and not isinstance(target, bool):
            self.target_id = target
        self.random_start = bool(random_start)
        self.max_copies = check_steps(max_copies, "max_copies")

    def _bind_probe(self, probe: ProbeDataset) -> None:
        if self.target is not None:
            self.target_id = resolve_concept(probe, self.target)

    def unit_targets(self, units: Sequence[int],
                     targets: Mapping[int, int] | Sequence[int | None] | torch.Tensor | None
                     ) -> list[int | None]:
        """Each unit's target id: the named target (targeted) or the caller's ``targets``
        (a mapping unit → concept id, or a sequence aligned with ``units``)."""
        if self.targeted:
            if targets is not None:
                raise SpecError("a targeted attack takes its target from the spec; do not pass "
                                "per-unit targets")
            if self.target_id is None:
                raise SpecError(f"target={self.target!r} is not resolved yet: call "
                                ".bind(probe) first")
            return [self.target_id] * len(units)
        if targets is None:
            raise SpecError("an untargeted attack needs each unit's target (the runner-up "
                            "concept: see untargeted_targets)")
        if isinstance(targets, Mapping):
            missing = [u for u in units if u not in targets]
            if missing:
                raise SpecError(f"no target given for unit(s) {missing[:10]}")
            return [int(targets[u]) for u in units]
        return _ids(targets)  # type: ignore[return-value]

    def attack_units(self, model: torch.nn.Module, layer: str, batch: ProbeBatch,
                     units: Sequence[int], sources: Sequence[int] | torch.Tensor | None = None,
                     targets: Mapping[int, int] | Sequence[int | None] | torch.Tensor | None = None,
                     *, source_masks: torch.Tensor | None = None,
                     target_masks: torch.Tensor | None = None) -> UnitAttack:
        """:func:`attack_units` with this corruption's settings and selection."""
        units = [int(u) for u in units]
        if target_masks is not None:
            tgts = None
        elif source_masks is not None and targets is None and not self.targeted:
            tgts = None  # Eq. 8 mode without a target: push the source activation down only
        else:
            tgts = self.unit_targets(units, targets)
        return attack_units(model, layer, batch, units, sources, tgts, self.eps, self.steps,
                            alpha=self.alpha, source_masks=source_masks,
                            target_masks=target_masks, select=self.poisoned(batch),
                            max_copies=self.max_copies, random_start=self.random_start,
                            seed=self.seed)

    def __call__(self, batch: ProbeBatch, model: torch.nn.Module | None = None, *,
                 layer: str | None = None, unit: int | None = None, source: int | None = None,
                 target: int | None = None, source_mask: torch.Tensor | None = None,
                 target_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One unit's poisoned copy of ``batch.images`` (the designed corruption is per unit,
        so the unit, its layer and its source concept or masks are required)."""
        if model is None or layer is None or unit is None or (source is None and
                                                               source_mask is None):
            raise SpecError("the pgd corruption is per unit: call it as corruption(batch, "
                            "model, layer=..., unit=..., source=...) or use attack_units()")
        res = self.attack_units(model, layer, batch, [unit],
                                None if source is None else [source],
                                None if (target is None or self.targeted) else [target],
                                source_masks=source_mask, target_masks=target_mask)
        return res.images[0]

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "alpha": self.alpha,
                "targeted": self.targeted, "target": self.target,
                "random_start": self.random_start, "max_copies": self.max_copies}

