"""The corruption contract: what every adversary of the probe set (noise, PGD, FGSM) shares.

A :class:`Corruption` maps a :class:`~nemaudit.probe.base.ProbeBatch` of clean [0, 1] images
to corrupted [0, 1] images of the same shape, on the fly: nothing is written to disk (the
ICCV'23 reference saved noisy probes as JPEG, whose quality-75 compression destroys a 4/255
perturbation).

Two rules make results reproducible and let an audit recompute only the poisoned images:

- **Randomness depends only on (seed, dataset index).** Each image draws from its own
  ``torch.Generator`` seeded by :func:`derive_seed` ``(seed, stream, index)`` on the CPU, so a
  result does not depend on the batch size, the batch order or the device.
- **Selection is a fixed set of dataset indices.** ``select="random"`` poisons *exactly*
  ``round(fraction·N)`` images: the first ones of a seeded permutation of all N indices (so the
  probe length must be known: :meth:`Corruption.bind`). ``select="concept:<name>"`` (or a set
  of concept ids) restricts poisoning to images whose pixel or image-level labels contain one
  of the concepts; ``fraction`` then applies within those, again as an exact count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch

from nemaudit.errors import SpecError
from nemaudit.model.layers import validate_units  # noqa: F401  (re-exported)
from nemaudit.probe.base import ProbeBatch, ProbeDataset

__all__ = [
    "Corruption",
    "UnitAttack",
    "UnitCorruption",
    "runner_up_concepts",
    "concept_maps",
    "contains_concepts",
    "derive_seed",
    "image_generator",
    "resolve_concept",
    "subset_batch",
    "validate_units",
]


# --------------------------------------------------------------------------- randomness

def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (e.g. ``(seed, "gaussian", index)``).

    A hash rather than ``seed + index`` so that neighbouring seeds do not share streams.
    """
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def image_generator(seed: int, stream: str, index: int,
                    generator: torch.Generator | None = None) -> torch.Generator:
    """A CPU generator for one image; pass ``generator`` to reseed an existing one."""
    g = generator if generator is not None else torch.Generator()
    g.manual_seed(derive_seed(int(seed), stream, int(index)))
    return g


# --------------------------------------------------------------------------- labels

def concept_maps(pixel_labels: torch.Tensor, image_labels: torch.Tensor,
                 concept: int) -> torch.Tensor:
    """L_c(x) for every image of a batch: bool ``[B, h, w]``.

    A pixel carries c when any of its stacked label maps does; an image-level label covers
    the whole image (as in Network Dissection).
    """
    b, h, w = pixel_labels.shape[0], *pixel_labels.shape[-2:]
    if concept <= 0:
        return torch.zeros(b, h, w, dtype=torch.bool, device=pixel_labels.device)
    if pixel_labels.shape[1]:
        maps = (pixel_labels == concept).any(dim=1)
    else:
        maps = torch.zeros(b, h, w, dtype=torch.bool, device=pixel_labels.device)
    if image_labels.numel():
        whole = (image_labels == concept).any(dim=1)
        maps = maps | whole[:, None, None]
    return maps


def contains_concepts(pixel_labels: torch.Tensor, image_labels: torch.Tensor,
                      concepts: Iterable[int] | torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: does each image carry any of ``concepts`` (pixel or image-level)?"""
    ids = torch.as_tensor(list(concepts) if not isinstance(concepts, torch.Tensor) else concepts,
                          dtype=torch.int64, device=pixel_labels.device)
    ids = ids[ids > 0]
    b = pixel_labels.shape[0]
    out = torch.zeros(b, dtype=torch.bool, device=pixel_labels.device)
    if ids.numel() == 0:
        return out
    if pixel_labels.numel():
        out |= torch.isin(pixel_labels.reshape(b, -1), ids).any(dim=1)
    if image_labels.numel():
        out |= torch.isin(image_labels.to(ids.device), ids).any(dim=1)
    return out


def subset_batch(batch: ProbeBatch, mask: torch.Tensor) -> ProbeBatch:
    """The rows of ``batch`` where ``mask`` is true."""
    return ProbeBatch(batch.images[mask], batch.pixel_labels[mask], batch.image_labels[mask],
                      batch.indices[mask], batch.targets[mask])


# --------------------------------------------------------------------------- validation

def check_fraction(value: Any, key: str = "fraction") -> float:
    v = _as_float(value, key)
    if not 0.0 <= v <= 1.0:
        raise SpecError(f"{key}={value!r} is outside [0, 1]")
    return v


def check_nonneg(value: Any, key: str, maximum: float = 1.0) -> float:
    """A budget in [0, maximum]: images live in [0, 1], so an L∞ size (``eps``, ``alpha``)
    above 1 means nothing, and noise (``std``) saturates every pixel long before 10."""
    v = _as_float(value, key)
    if v < 0:
        raise SpecError(f"{key}={value!r} must be >= 0")
    if v > maximum:
        raise SpecError(f"{key}={value!r} must be <= {maximum:g} (pixels lie in [0, 1])")
    return v


#: the stated maximum of step and copy counts (the cost grows linearly with them)
MAX_STEPS = 10_000


def check_steps(value: Any, key: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SpecError(f"{key}={value!r} must be an integer >= 1")
    if value < 1:
        raise SpecError(f"{key}={value!r} must be >= 1")
    if value > MAX_STEPS:
        raise SpecError(f"{key}={value!r} must be <= {MAX_STEPS} (the stated maximum)")
    return int(value)


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{key}={value!r} must be a number")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{key}={value!r} must be a number") from e
    if not math.isfinite(v):
        raise SpecError(f"{key}={value!r} must be finite")
    return v


def resolve_concept(probe: ProbeDataset, concept: str | int) -> int:
    """A concept id from a name (``"bus"``, ``"bus-object"``) or an id, as a :class:`SpecError`
    that names the value and lists the valid names on failure."""
    if isinstance(concept, int | torch.Tensor) and not isinstance(concept, bool):
        cid = int(concept)
        if not 0 < cid < probe.num_concepts:
            raise SpecError(f"concept id {cid} does not exist in probe "
                            f"{getattr(probe, 'name', 'probe')!r} (valid ids: 1.."
                            f"{probe.num_concepts - 1})")
        return cid
    name = str(concept).strip()
    if name.isdigit():
        return resolve_concept(probe, int(name))
    try:
        return probe.concept_id(name)
    except KeyError as e:
        raise SpecError(str(e.args[0]) if e.args else f"unknown concept {name!r}") from None


# --------------------------------------------------------------------------- the base class

def _exact_count(fraction: float, n: int) -> int:
    """round(fraction·n), halves rounded up (Python's round() rounds halves to even)."""
    return min(n, int(math.floor(fraction * n + 0.5 + 1e-9)))


class Corruption:
    """Base class of every probe corruption (Captum-style: a tiny object with ``__call__``).

    Subclasses implement :meth:`_corrupt` (the poisoned rows only) and list their own
    parameters in ``params`` (name → type) so :mod:`nemaudit.corrupt.spec` can parse them.
    """

    kind: ClassVar[str] = "corruption"
    #: True: one corrupted probe shared by all units (noise, FGSM). False: each attacked unit
    #: gets its own poisoned copy (the designed PGD attack).
    shared: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    #: kind-specific spec keys → their type (float, int, bool, str)
    params: ClassVar[dict[str, type]] = {}
    #: keys every kind accepts
    common: ClassVar[dict[str, type]] = {"fraction": float, "select": str, "seed": int}
    #: keys that must be given
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, fraction: float = 1.0, select: str | Iterable[int] = "random",
                 seed: int = 0) -> None:
        self.fraction = check_fraction(fraction)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SpecError(f"seed={seed!r} must be an integer")
        self.seed = int(seed)
        self.select_spec, self._select_names, self._select_ids = _parse_select(select)
        self.n: int | None = None
        self._ranks: torch.Tensor | None = None  # [N] position of each index in the permutation
        self._chosen: torch.Tensor | None = None  # [N] bool, concept rule with fraction < 1
        self._eligible: list[int] | None = None

    # -- selection
    @property
    def concept_rule(self) -> bool:
        return self.select_spec != "random"

    @property
    def select_ids(self) -> list[int] | None:
        """Concept ids of the selection rule (``None`` for random selection, or names not yet
        resolved: call :meth:`bind` with the probe)."""
        return self._select_ids

    def bind(self, probe: ProbeDataset | int, *, eligible: Iterable[int] | None = None
             ) -> Corruption:
        """Fix the probe this corruption poisons; returns ``self``.

        ``probe`` is the dataset (needed to resolve concept names) or just its length N.
        Exact-count selection needs N. The concept rule with ``0 < fraction < 1`` also needs
        the set of images carrying the concepts: pass ``eligible`` indices if you have them,
        otherwise the probe is scanned once (labels of every item).
        """
        n = len(probe) if isinstance(probe, ProbeDataset) else int(probe)
        if n < 0:
            raise SpecError(f"probe length {n} is negative")
        if isinstance(probe, ProbeDataset):
            if self._select_names is not None:
                self._select_ids = [resolve_concept(probe, c) for c in self._select_names]
            self._bind_probe(probe)
        if n != self.n:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "select"))
            perm = torch.randperm(n, generator=g)
            ranks = torch.empty(n, dtype=torch.int64)
            ranks[perm] = torch.arange(n)
            self.n, self._ranks = n, ranks
            self._chosen, self._eligible = None, None
        if self.concept_rule and 0.0 < self.fraction < 1.0:
            if eligible is None and isinstance(probe, ProbeDataset):
                eligible = self._scan_eligible(probe)
            if eligible is not None:
                self._set_eligible(eligible)
        elif eligible is not None:
            self._eligible = sorted({int(i) for i in eligible})
        return self

    def _bind_probe(self, probe: ProbeDataset) -> None:
        """Hook for subclasses that resolve names against the probe (e.g. a target concept)."""

    def _set_eligible(self, eligible: Iterable[int]) -> None:
        assert self._ranks is not None and self.n is not None
        idx = torch.as_tensor(sorted({int(i) for i in eligible}), dtype=torch.int64)
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n):
            raise SpecError(f"eligible indices must lie in 0..{self.n - 1}")
        self._eligible = idx.tolist()
        k = _exact_count(self.fraction, idx.numel())
        order = idx[torch.argsort(self._ranks[idx])]
        chosen = torch.zeros(self.n, dtype=torch.bool)
        chosen[order[:k]] = True
        self._chosen = chosen

    def _scan_eligible(self, probe: ProbeDataset) -> list[int]:
        ids = self._require_ids()
        out = []
        for i in range(len(probe)):
            item = probe[i]
            hit = contains_concepts(item.pixel_labels[None], item.image_labels[None], ids)
            if bool(hit[0]):
                out.append(i)
        return out

    def _require_ids(self) -> list[int]:
        if self._select_ids is None:
            raise SpecError(f"select={self.select_spec!r} names concepts; call "
                            ".bind(probe) so they can be looked up")
        return self._select_ids

    def poisoned(self, batch: ProbeBatch) -> torch.Tensor:
        """bool ``[B]`` (on the batch's device): which images of the batch this corruption
        poisons. Depends only on the dataset indices (and labels, for the concept rule)."""
        device = batch.images.device
        b = len(batch)
        if self.concept_rule:
            mask = contains_concepts(batch.pixel_labels, batch.image_labels, self._require_ids())
            if self.fraction >= 1.0 or not mask.any():
                return mask
            if self.fraction <= 0.0:
                return torch.zeros(b, dtype=torch.bool, device=device)
            if self._chosen is None:
                raise SpecError(f"{self.kind}: select={self.select_spec!r} with "
                                f"fraction={self.fraction} poisons an exact share of the images "
                                "carrying the concept(s); call .bind(probe) (or .bind(n, "
                                "eligible=indices)) first")
            return mask & self._chosen[self._check_indices(batch.indices)].to(device)
        if self.fraction >= 1.0:
            return torch.ones(b, dtype=torch.bool, device=device)
        if self.fraction <= 0.0:
            return torch.zeros(b, dtype=torch.bool, device=device)
        if self._ranks is None or self.n is None:
            raise SpecError(f"{self.kind}: fraction={self.fraction} poisons exactly "
                            "round(fraction·N) images, so the probe length N must be known: call "
                            ".bind(probe) or .bind(len(probe)) first")
        k = _exact_count(self.fraction, self.n)
        return (self._ranks[self._check_indices(batch.indices)] < k).to(device)

    def _check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.detach().cpu().long()
        assert self.n is not None
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n):
            bad = idx[(idx < 0) | (idx >= self.n)][0].item()
            raise SpecError(f"dataset index {bad} is outside the bound probe (N={self.n}); "
                            "bind the corruption to the probe the batches come from")
        return idx

    def poisoned_indices(self, probe: ProbeDataset | int) -> list[int]:
        """Sorted dataset indices of every poisoned image (the only ones an audit recomputes).

        For the concept rule this needs the probe (its labels are read unless ``bind`` was
        given ``eligible``)."""
        n = len(probe) if isinstance(probe, ProbeDataset) else int(probe)
        if self.n != n or (isinstance(probe, ProbeDataset) and self.concept_rule
                           and self._select_ids is None):
            self.bind(probe)
        assert self.n is not None and self._ranks is not None
        if not self.concept_rule:
            k = _exact_count(self.fraction, self.n)
            return sorted((self._ranks < k).nonzero().flatten().tolist())
        if self.fraction <= 0.0:
            return []
        if self.fraction < 1.0:
            if self._chosen is None:
                if not isinstance(probe, ProbeDataset):
                    raise SpecError(f"select={self.select_spec!r}: the poisoned images depend "
                                    "on the labels; pass the probe itself, not its length")
                self.bind(probe)
            assert self._chosen is not None
            return self._chosen.nonzero().flatten().tolist()
        if self._eligible is None:
            if not isinstance(probe, ProbeDataset):
                raise SpecError(f"select={self.select_spec!r}: the poisoned images depend on "
                                "the labels; pass the probe itself, not its length")
            self._eligible = self._scan_eligible(probe)
        return list(self._eligible)

    # -- corrupting
    def __call__(self, batch: ProbeBatch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Corrupted copies of ``batch.images`` (float, [0, 1], same shape and device);
        unpoisoned images are bit-identical copies of the clean ones."""
        if self.needs_model and model is None:
            raise SpecError(f"{self.kind} attacks a model: call it as corruption(batch, model)")
        mask = self.poisoned(batch)
        if mask.all() and len(batch):  # every row corrupted: no copy, subset or scatter
            out = self._corrupt(batch, model).to(batch.images.dtype)
            return out.clone() if out.data_ptr() == batch.images.data_ptr() else out
        out = batch.images.clone()
        if mask.any():
            sub = subset_batch(batch, mask)
            out[mask] = self._corrupt(sub, model).to(out.dtype)
        return out

    def _corrupt(self, batch: ProbeBatch, model: torch.nn.Module | None) -> torch.Tensor:
        """Corrupt every image of ``batch`` (already restricted to the poisoned rows)."""
        raise NotImplementedError

    # -- reporting
    def settings(self) -> dict[str, Any]:
        """Kind-specific settings (JSON-able); subclasses extend."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-able settings for reports (and to rebuild the spec string)."""
        return {"kind": self.kind, **self.settings(), "fraction": self.fraction,
                "select": self.select_spec, "seed": self.seed, "shared": self.shared}

    def spec(self) -> str:
        """The spec string that :func:`nemaudit.corrupt.spec.parse_corruption` parses back."""
        d = self.describe()
        fields = [f"{k}={_fmt(v)}" for k, v in d.items()
                  if k not in ("kind", "shared") and v is not None]
        return f"{self.kind}:" + ",".join(fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


def _fmt(v: Any) -> str:
    """Spec text for a value; a float that is exactly ``k/255`` and no short decimal reads
    as ``k/255`` (ε and noise budgets are written that way) and parses back the same."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and 0 < v < 1:
        k = round(v * 255)
        if k and v == k / 255 and str(v) != str(round(v, 4)):
            return f"{k}/255"
    return str(v)


def _parse_select(select: str | Iterable[int]
                  ) -> tuple[str, list[str] | None, list[int] | None]:
    """→ (canonical spec, concept names to resolve, concept ids)."""
    if isinstance(select, str):
        s = select.strip()
        if s in ("random", ""):
            return "random", None, None
        if s.startswith("concept:"):
            parts = [p.strip() for p in s[len("concept:"):].replace("+", "|").split("|")]
            parts = [p for p in parts if p]
            if not parts:
                raise SpecError(f"select={select!r} names no concept; use 'concept:<name>' "
                                "(several: 'concept:a|b')")
            if all(p.isdigit() for p in parts):
                ids = [int(p) for p in parts]
                if any(i <= 0 for i in ids):
                    raise SpecError(f"select={select!r}: concept ids are positive (0 = no label)")
                return "concept:" + "|".join(parts), None, ids
            return "concept:" + "|".join(parts), parts, None
        raise SpecError(f"select={select!r} is not valid; use 'random', 'concept:<name>' "
                        "or a set of concept ids")
    ids = sorted({int(i) for i in select})
    if not ids or any(i <= 0 for i in ids):
        raise SpecError(f"select={select!r}: give a non-empty set of positive concept ids")
    return "concept:" + "|".join(map(str, ids)), None, ids


def as_id_list(values: Sequence[int] | torch.Tensor) -> list[int]:
    return [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]


# --------------------------------------------------------------------------- per-unit adversaries

class UnitAttack(NamedTuple):
    """What :meth:`UnitCorruption.attack_units` returns for a batch of B images and U units."""

    images: torch.Tensor  #: [U, B, 3, H, W]: unit i's poisoned copy of the batch
    poisoned: torch.Tensor  #: [U, B] bool: which images were attacked for which unit
    objective_before: torch.Tensor  #: [U, B] the attack's objective on the clean images (NaN if not poisoned)
    objective_after: torch.Tensor  #: [U, B] the same after the attack (NaN if not poisoned)
    #: [U, B, h, w] each poisoned copy's final map of its unit at the attacked layer (the
    #: last forward pass gives it; a re-dissection reads it instead of running again), or
    #: None when the attack does not provide it
    maps: torch.Tensor | None = None


def runner_up_concepts(iou: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Each unit's runner-up concept: the highest clean IoU other than the unit's clean label
    (and other than the placeholder id 0) — the untargeted attack's target. ``iou [U, C]``."""
    labels_t = torch.as_tensor(labels, dtype=torch.int64, device=iou.device).reshape(-1)
    if iou.dim() != 2 or iou.shape[0] != labels_t.shape[0]:
        raise ValueError(f"iou must be [U, C] with U = len(labels); got {tuple(iou.shape)} and "
                         f"{labels_t.shape[0]} labels")
    if iou.shape[1] < 3:
        raise ValueError("an untargeted attack needs at least two concepts besides id 0")
    scores = iou.double().clone()
    scores[:, 0] = float("-inf")
    scores[torch.arange(scores.shape[0], device=iou.device), labels_t] = float("-inf")
    return scores.argmax(dim=1)


class UnitCorruption(Corruption):
    """Base of per-unit adversaries: each attacked unit gets its own poisoned copy of the
    probe (only the images its attack touches change), as the designed attack of ICCV'23
    Eq. 9. The audit layer talks to them only through this interface:

    - :meth:`unit_targets_for` picks each attacked unit's target concept (and which units
      can be attacked at all);
    - :meth:`attack_units` attacks a chunk of units on one batch, given their source
      concepts (Network Dissection) or their source masks (MILAN, Eq. 8), and returns a
      :class:`UnitAttack`.
    """

    shared = False
    needs_model = True
    #: a targeted attack pushes every unit to one named concept (:attr:`target_id`)
    targeted: bool = False
    target: str | int | None = None
    target_id: int | None = None

    def unit_targets_for(self, iou: torch.Tensor, labels: torch.Tensor,
                         units: Sequence[int]) -> dict[int, int]:
        """unit → target concept id for the ``units`` that can be attacked: the named target
        (a unit already detecting it has nothing to flip to and is left out), or, untargeted,
        the unit's runner-up concept. ``iou [U, C]`` and ``labels [U]`` of the clean run."""
        if self.targeted:
            if self.target_id is None:
                raise SpecError(f"target={self.target!r} is not resolved yet: call "
                                ".bind(probe) first")
            return {int(u): int(self.target_id) for u in units
                    if int(labels[u]) != int(self.target_id)}
        runner_up = runner_up_concepts(iou, labels)
        return {int(u): int(runner_up[u]) for u in units}

    def attack_units(self, model: torch.nn.Module, layer: str, batch: ProbeBatch,
                     units: Sequence[int], sources: Sequence[int] | torch.Tensor | None = None,
                     targets: Mapping[int, int] | Sequence[int | None] | torch.Tensor | None = None,
                     *, source_masks: torch.Tensor | None = None,
                     target_masks: torch.Tensor | None = None) -> UnitAttack:
        """Attack ``units`` of ``layer`` on ``batch``, each on its own copy of it."""
        raise NotImplementedError

    def _corrupt(self, batch: ProbeBatch, model: torch.nn.Module | None) -> torch.Tensor:
        raise SpecError(f"the {self.kind} corruption is per unit; use attack_units()")
