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
from nemaudit.probe.memory import MemoProbe


def probe_loader(probe: ProbeDataset, batch_size: int = 64,
                 indices: Sequence[int] | None = None, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A deterministic, in-order loader over the probe (or a subset of it).

    ``num_workers`` > 0 decodes (or renders) images in worker processes, ahead of the
    forward pass — on a GPU decoding is the bottleneck; the order stays the same, so the
    result does too. A :class:`~nemaudit.probe.memory.MemoProbe` keeps what its workers
    decoded (and needs no worker once it holds every wanted item). ``pin_memory`` speeds up
    the copy to a CUDA device."""
    if len(probe) == 0:
        raise ValueError(f"the probe {getattr(probe, 'name', '')!r} has no images")
    workers = max(0, int(num_workers))
    if workers and isinstance(probe, MemoProbe):
        wanted = list(range(len(probe))) if indices is None else list(indices)
        if probe.missing(wanted):  # else every item is in memory: no worker to start
            return probe.worker_loader(wanted, batch_size, workers, pin_memory)  # type: ignore[return-value]
        workers = 0
    data = probe if indices is None else Subset(probe, list(indices))
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


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
                       | None = None, outputs: list[torch.Tensor] | None = None
                       ) -> Iterator[tuple[ProbeBatch, torch.Tensor]]:
    """Yield ``(batch on device, activations [B, U, h, w])`` for every batch of the loader.

    ``transform(batch) -> images`` replaces the images before the forward pass (a corruption
    applied on the fly; the yielded batch then carries the corrupted images). The pass stops
    at ``layer``, unless ``outputs`` is a list: then the model runs to its end and each
    batch's output is appended to it (the predictions of the same corrupted images, without
    corrupting and running them twice)."""
    model.eval()
    with LayerRecorder(model, [layer], stop_at_layer=outputs is None) as rec:
        for batch in loader:
            batch = batch.to(device)
            if transform is not None:
                with torch.enable_grad():
                    batch.images = transform(batch)
            out = rec.run(batch.images)
            if outputs is not None:
                outputs.append(out)
            acts = rec[layer]
            if acts.dim() != 4:
                raise ActivationError(f"layer {layer!r} outputs shape {tuple(acts.shape)}; "
                                      "dissection needs convolutional maps [B, units, h, w]")
            check_finite(acts, batch.indices, layer)
            yield batch, acts.float()
