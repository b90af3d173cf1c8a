"""Labelled validation outliers in the style of FPI's MOOD notebook (methods.md section 6.2).

Five kinds, each inside a random ball: ``uniform_noise`` (one offset added), ``local_noise``
(per-voxel offsets of one sign), ``deformation`` (the ball's content magnified or squeezed
radially), ``shift`` (content displaced by a few voxels), ``reflection`` (content replaced by
the mirror image across an axis, by default the left-right one). Labels are always binary (the
ball, cut to the foreground when a mask is given): FPI's notebook saved the additive field as
the label of the noise kinds, which MOOD's evaluator then rounds to zero.

``edges="smooth"`` fades the change in over the ball's outer ``edge_width`` voxels, so the
transition is soft but nothing outside the label changes. All work is done on the ball's box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medood.errors import look_up_option
from napari_medood.synth._common import Seed, as_rng, open_grid

OUTLIER_KINDS = ("uniform_noise", "local_noise", "deformation", "shift", "reflection")
EDGE_MODES = ("hard", "smooth")
#: radius as a fraction of the image's smallest side (FPI: of dims[0])
RADIUS_FRACTIONS = {
    "uniform_noise": (0.05, 0.10),
    "local_noise": (0.05, 0.10),
    "deformation": (0.08, 0.13),
    "shift": (0.08, 0.13),
    "reflection": (0.08, 0.13),
}


def _centre(rng: np.random.Generator, shape: np.ndarray, foreground: np.ndarray | None):
    """A centre in the middle half of the image (FPI), on the foreground when one is given."""
    low, high = shape // 4, (3 * shape) // 4
    if foreground is not None:
        core = foreground[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
        candidates = np.argwhere(core)
        if candidates.size == 0:
            candidates = np.argwhere(foreground)
            if candidates.size == 0:
                raise ValueError("the foreground mask is empty: nowhere to put an outlier")
            return candidates[int(rng.integers(len(candidates)))].astype(float)
        return (candidates[int(rng.integers(len(candidates)))] + low).astype(float)
    return np.array(
        [rng.integers(a, max(b, a + 1)) for a, b in zip(low, high, strict=True)], dtype=float
    )


def make_outlier(
    volume: np.ndarray,
    kind: str,
    rng: Seed = None,
    foreground: np.ndarray | None = None,
    edges: str = "hard",
    edge_width: float = 2.0,
    reflect_axis: int = 0,
    radius: float | None = None,
    centre: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One validation outlier.

    Args:
        volume: the normal scan (any intensity scale; not modified).
        kind: one of ``OUTLIER_KINDS``.
        foreground: optional bool mask (brain); the centre is drawn inside it and the label
            and change are cut to it.
        edges: ``"hard"`` or ``"smooth"``.
        reflect_axis: array axis mirrored by ``reflection`` (pass the left-right axis).
        radius, centre: override the random draws (voxels).

    Returns:
        ``(outlier_volume float32, label bool, params)``.
    """
    look_up_option(kind, OUTLIER_KINDS, "outlier kind")
    look_up_option(edges, EDGE_MODES, "edge mode")
    rng = as_rng(rng)
    volume = np.asarray(volume)
    shape = np.asarray(volume.shape)
    if foreground is not None:
        foreground = np.asarray(foreground, dtype=bool)
        if foreground.shape != volume.shape:
            raise ValueError(f"foreground mask has shape {foreground.shape}, volume {volume.shape}")
    if radius is None:
        low, high = RADIUS_FRACTIONS[kind]
        side = int(shape.min())
        radius = float(
            rng.integers(round(low * side), max(round(high * side), round(low * side) + 1))
        )
    radius = max(float(radius), 1.0)
    centre = _centre(rng, shape, foreground) if centre is None else np.asarray(centre, float)

    start = np.maximum(np.floor(centre - radius).astype(int), 0)
    stop = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    z, y, x = open_grid(stop - start, start - centre)
    distance = np.sqrt(z * z + y * y + x * x)
    ball = distance < radius
    if foreground is not None:
        ball &= foreground[region]
    if edges == "smooth":
        weight = np.clip((radius - distance) / np.float32(edge_width), 0.0, 1.0) * ball
    else:
        weight = ball.astype(np.float32)

    local = volume[region].astype(np.float32)
    finite = volume[np.isfinite(volume)]
    value_range = float(finite.max() - finite.min()) if finite.size else 1.0
    params: dict[str, Any] = {
        "kind": kind,
        "edges": edges,
        "radius": radius,
        "centre": [float(c) for c in centre],
    }
    if kind == "uniform_noise":
        sign = float(rng.choice([-1.0, 1.0]))
        value = sign * float(rng.uniform(0.2, 0.3)) * value_range
        changed = local + np.float32(value)
        params["offset"] = value
    elif kind == "local_noise":
        sign = float(rng.choice([-1.0, 1.0]))
        field = rng.uniform(0.05, 0.3, local.shape).astype(np.float32) * np.float32(value_range)
        changed = local + np.float32(sign) * field
        params["sign"] = sign
    elif kind == "deformation":
        polarity = float(rng.choice([-1.0, 1.0]))
        changed = _deform(volume, centre, radius, start, stop, distance, polarity)
        params["polarity"] = "push" if polarity > 0 else "pull"
    elif kind == "shift":
        side = int(shape.min())
        low, high = int(0.02 * side), max(int(0.05 * side), int(0.02 * side) + 1)
        offset = rng.integers(max(low, 1), max(high, 2), 3) * rng.choice([-1, 1], 3)
        index = [
            np.clip(np.arange(a, b) - o, 0, n - 1)
            for a, b, o, n in zip(start, stop, offset, shape, strict=True)
        ]
        changed = volume[np.ix_(*index)].astype(np.float32)
        params["offset"] = [int(o) for o in offset]
    else:  # reflection
        index = [np.arange(a, b) for a, b in zip(start, stop, strict=True)]
        index[reflect_axis] = shape[reflect_axis] - 1 - index[reflect_axis]
        changed = volume[np.ix_(*index)].astype(np.float32)
        params["axis"] = int(reflect_axis)

    out = np.array(volume, dtype=np.float32)
    out[region] = local + (changed - local) * weight
    label = np.zeros(volume.shape, dtype=bool)
    label[region] = ball
    params["voxels"] = int(ball.sum())
    return out, label, params


def _deform(volume, centre, radius, start, stop, distance, polarity) -> np.ndarray:
    """FPI's radial deformation: push (+1) samples at c + (p - c) s, pull (-1) at
    p + (p - c)(1 - s), with s = (d / r)^2, trilinear, coordinates clamped to the volume."""
    from scipy import ndimage

    grid = np.stack(
        np.meshgrid(
            *[np.arange(a, b, dtype=np.float32) for a, b in zip(start, stop, strict=True)],
            indexing="ij",
        )
    )
    offset = grid - np.asarray(centre, np.float32).reshape(3, 1, 1, 1)
    scale = np.minimum((distance / np.float32(radius)) ** 2, 1.0)[None]
    if polarity > 0:
        source = np.asarray(centre, np.float32).reshape(3, 1, 1, 1) + offset * scale
    else:
        source = grid + offset * (1.0 - scale)
    limit = (np.asarray(volume.shape, np.float32) - 1).reshape(3, 1, 1, 1)
    source = np.clip(source, 0.0, limit)
    return ndimage.map_coordinates(np.asarray(volume, np.float32), source, order=1, mode="nearest")
