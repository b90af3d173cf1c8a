"""Slice-wise prediction: a 2D model over the slices of a 3D volume, in batches.

The inferer beside the sliding window, for 2D families (diffusion reconstructions, 2D
feature extractors). Slices are taken along one axis of the model-space array (the axial
axis of a RAS array is 2), slices without foreground are skipped (their output is 0), and
each batch is one call of the predictor. The predictor gets a float32 tensor ``(B, 1, H, W)``
on ``device`` and returns ``(B, C, H, W)`` values (C >= 1; e.g. several reconstructions);
the result is ``(C, *image.shape)`` float32 on the CPU. Cancellation is checked before every
batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report


def slicewise_predict(
    image: np.ndarray,
    predictor: Callable,
    axis: int = 2,
    foreground: np.ndarray | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> tuple[np.ndarray, dict]:
    """Run ``predictor`` on the slices of ``image`` along ``axis``.

    Returns:
        ``(values, stats)``: ``values`` of shape ``(C, *image.shape)``, zero on the slices
        without foreground; ``stats`` = slices in total, slices run, batches.
    """
    import torch

    if image.ndim != 3:
        raise ValueError(f"slice-wise prediction needs a 3D array, got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    slices = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    count = slices.shape[0]
    if foreground is not None:
        inside = np.moveaxis(np.asarray(foreground, dtype=bool), axis, 0)
        kept = [i for i in range(count) if inside[i].any()]
    else:
        kept = list(range(count))
    batches = [kept[i : i + batch_size] for i in range(0, len(kept), batch_size)]
    output: np.ndarray | None = None
    report(progress, 0, len(kept), "slices")
    done = 0
    with torch.inference_mode():
        for batch in batches:
            check_cancelled(cancelled)
            stacked = torch.from_numpy(np.ascontiguousarray(slices[batch])[:, None]).to(device)
            values = predictor(stacked).detach().float().cpu().numpy()
            if (
                values.ndim != 4
                or values.shape[0] != len(batch)
                or values.shape[2:] != slices.shape[1:]
            ):
                raise ValueError(
                    f"the predictor returned shape {values.shape} for a batch of "
                    f"{(len(batch), 1, *slices.shape[1:])}"
                )
            if output is None:
                output = np.zeros((values.shape[1], *slices.shape), np.float32)
            output[:, batch] = values.transpose(1, 0, 2, 3)
            done += len(batch)
            report(progress, done, len(kept), "slices")
    if output is None:  # no slice held foreground
        output = np.zeros((1, *slices.shape), np.float32)
    stats = {"slices": count, "slices_run": len(kept), "batches": len(batches)}
    return np.ascontiguousarray(np.moveaxis(output, 1, axis + 1)), stats
