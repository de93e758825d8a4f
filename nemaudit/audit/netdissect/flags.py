"""The per-unit flags a Network Dissection audit's rows and rates are made of, in one place:
the audit (:mod:`.result`) and the probe bootstrap (:mod:`.bootstrap`) count them alike."""

from __future__ import annotations

import torch

#: the rates that are a share of one per-unit flag (hit) among the units with another (pool;
#: None: every unit), keyless: the audit's rows and rates (:mod:`.result`) and the probe
#: bootstrap (:mod:`.bootstrap`) both read them from here
RATE_FLAGS: dict[str, tuple[str, str | None]] = {
    "flip_rate": ("changed", None),
    "flip_rate_detectors": ("changed", "clean_detector"),
    "targeted_success_rate": ("target_hit", "target"),
    "detector_share_clean": ("clean_detector", None),
    "detector_share_corrupted": ("corrupted_detector", None),
}


def unit_flags(c_lab: torch.Tensor, c_iou: torch.Tensor, k_lab: torch.Tensor,
               k_iou: torch.Tensor, iou_threshold: float, targets: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
    """The per-unit flags that rows and rates are made of, from the clean and corrupted best
    concept and IoU (tensors ``[..., U]``: one dissection, or ``[B, U]`` resampled probes):
    ``changed`` (the concept differs), ``clean_detector`` / ``corrupted_detector`` (best IoU
    ≥ ``iou_threshold`` on a real concept) and, with ``targets [U]`` (target id, 0 = none),
    ``target`` (the unit has one) and ``target_hit`` (its corrupted concept is it)."""
    flags = {"changed": c_lab != k_lab,
             "clean_detector": (c_iou >= iou_threshold) & (c_lab > 0),
             "corrupted_detector": (k_iou >= iou_threshold) & (k_lab > 0)}
    if targets is not None:
        flags["target"] = (targets > 0).expand_as(c_lab)
        flags["target_hit"] = flags["target"] & (k_lab == targets)
    return flags
