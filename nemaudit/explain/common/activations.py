"""Streaming a layer's activations over a probe, batch by batch, with NaN/inf reported.

Nothing here holds more than one batch of features: callers reduce each batch (quantile
buffers, tallies) before the next one arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from nemaudit.errors import ActivationError
from nemaudit.model.layers import LayerRecorder
from nemaudit.probe.base import ProbeBatch, ProbeDataset, collate


def probe_loader(probe: ProbeDataset, batch_size: int = 64,
                 indices: Sequence[int] | None = None, num_workers: int = 0) -> DataLoader:
    """A deterministic, in-order loader over the probe (or a subset of it)."""
    if len(probe) == 0:
        raise ValueError(f"the probe {getattr(probe, 'name', '')!r} has no images")
    data = probe if indices is None else Subset(probe, list(indices))
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers)


def check_finite(acts: torch.Tensor, indices: torch.Tensor, layer: str) -> None:
    """Raise naming the units and probe images whose activations are NaN or infinite."""
    bad = ~torch.isfinite(acts)
    if not bad.any():
        return
    per = bad.flatten(2).any(dim=2)  # [B, U]
    units = per.any(dim=0).nonzero().flatten().tolist()
    images = indices[per.any(dim=1).cpu()].tolist()
    raise ActivationError(
        f"layer {layer!r}: non-finite activations (NaN/inf) in unit(s) {units[:10]}"
        f"{' …' if len(units) > 10 else ''} on probe image(s) {images[:10]}"
        f"{' …' if len(images) > 10 else ''}; nemaudit does not drop them silently — check the "
        "model's weights and inputs")


@torch.no_grad()
def stream_activations(model: torch.nn.Module, layer: str, loader: DataLoader,
                       device: torch.device, transform: Callable[[ProbeBatch], torch.Tensor]
                       | None = None) -> Iterator[tuple[ProbeBatch, torch.Tensor]]:
    """Yield ``(batch on device, activations [B, U, h, w])`` for every batch of the loader.

    ``transform(batch) -> images`` replaces the images before the forward pass (a corruption
    applied on the fly; the yielded batch then carries the corrupted images)."""
    model.eval()
    with LayerRecorder(model, [layer], stop_at_layer=True) as rec:
        for batch in loader:
            batch = batch.to(device)
            if transform is not None:
                with torch.enable_grad():
                    batch.images = transform(batch)
            rec.run(batch.images)
            acts = rec[layer]
            if acts.dim() != 4:
                raise ActivationError(f"layer {layer!r} outputs shape {tuple(acts.shape)}; "
                                      "dissection needs convolutional maps [B, units, h, w]")
            check_finite(acts, batch.indices, layer)
            yield batch, acts.float()
