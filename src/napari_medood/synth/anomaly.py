"""Training anomalies (mood22 foreign-patch method) and the implant step they share with the
playground.

:func:`implant` puts one shape into an image: alpha times the shape, cut to the foreground,
blurred at the edges, blended with foreign content. It only touches the shape's box grown by
the blur radius, so its cost follows the anomaly's size, not the image's.

:class:`SyntheticAnomaly3D` is the training transform: for each image it feeds the
foreign-patch bank, then (with probability ``p_anomaly``) draws a box, a shape, alpha and an
edge kernel and implants a patch of an earlier image. It returns the corrupted image and the
soft target (the alpha map), and is deterministic for a given generator state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood.errors import look_up_option
from napari_medood.synth._common import Seed, as_rng, as_shape3, crop_clamped
from napari_medood.synth.blending import blend
from napari_medood.synth.patches import ForeignPatchBank, PatchTexture
from napari_medood.synth.shapes import SHAPE_KINDS, Shape, brush_mask, cuboid_mask, sphere_mask
from napari_medood.synth.smoothing import (
    KERNEL_SIZES,
    KERNEL_WEIGHTS,
    sample_kernel_size,
    smooth_alpha,
)

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Implant:
    """Where an anomaly went: the region it changed and its soft alpha map there."""

    region: tuple[slice, slice, slice]
    alpha_map: np.ndarray  # float32, shape of the region
    params: dict[str, Any]

    @property
    def label(self) -> np.ndarray:
        """Binary label over the region: where the opacity reaches half its peak (with hard
        edges, exactly the shape cut to the foreground)."""
        peak = float(self.params.get("alpha", 0.0))
        return self.alpha_map >= 0.5 * peak if peak > 0 else np.zeros(self.alpha_map.shape, bool)


def implant(
    image: np.ndarray,
    shape: Shape,
    position: Sequence[int],
    alpha: float,
    texture: Texture,
    kernel_size: int = 1,
    foreground: np.ndarray | None = None,
    sigma: float = 1.0,
    legacy_sigma: bool = False,
    out: np.ndarray | None = None,
) -> Implant:
    """Blend ``texture`` into ``image`` through ``alpha * shape`` with blurred edges.

    Args:
        image: the scan (not modified unless it is also ``out``).
        shape: the shape; its crop is placed with the box corner at ``position``
            (image voxel indices of the box's first voxel).
        alpha: opacity in [0, 1].
        texture: foreign values over a box of the image, ``texture(start, stop)`` -> array
            of shape ``stop - start``.
        kernel_size: edge blur kernel (1 = hard edges).
        foreground: bool mask of the image; the anomaly is cut to it before and after blurring.
        out: array to write the result into (default: a float32 copy of ``image``).

    Returns:
        The changed region and its alpha map; the corrupted image is ``out``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    halo = kernel_size // 2
    crop_start = np.asarray(position) + np.asarray(shape.offset)
    start = np.maximum(crop_start - halo, 0)
    stop = np.minimum(crop_start + np.asarray(shape.mask.shape) + halo, image.shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    alpha_map = np.zeros(tuple(stop - start), dtype=np.float32)
    # the shape crop inside the region (it may stick out of the image)
    inner_start = np.maximum(crop_start, 0)
    inner_stop = np.minimum(crop_start + np.asarray(shape.mask.shape), image.shape)
    if np.any(inner_stop <= inner_start):
        return Implant(region, alpha_map, {"voxels": 0})
    source = tuple(
        slice(int(a - c), int(b - c))
        for a, b, c in zip(inner_start, inner_stop, crop_start, strict=True)
    )
    target = tuple(
        slice(int(a - s), int(b - s))
        for a, b, s in zip(inner_start, inner_stop, start, strict=True)
    )
    alpha_map[target] = shape.mask[source] * np.float32(alpha)
    inside = None if foreground is None else np.asarray(foreground[region], dtype=bool)
    if inside is not None:
        alpha_map *= inside
    if kernel_size > 1:
        alpha_map = smooth_alpha(alpha_map, kernel_size, sigma, legacy_sigma)
        if inside is not None:
            alpha_map *= inside
    if out is None:
        out = np.array(image, dtype=np.float32)
    changed = int(np.count_nonzero(alpha_map))
    if changed:
        # Dense over the region: where alpha is 0 the blend returns the image exactly.
        out[region] = blend(out[region], texture(start, stop), alpha_map)
    params = {
        "kind": shape.kind,
        "alpha": float(alpha),
        "kernel_size": int(kernel_size),
        "region_start": [int(a) for a in start],
        "region_stop": [int(b) for b in stop],
        "voxels": changed,
    }
    return Implant(region, alpha_map, params)


def uniform_noise_texture(rng: Seed = None, low: float = 0.0, high: float = 1.0) -> Texture:
    """Foreign values drawn uniformly from [low, high] per voxel."""
    rng = as_rng(rng)

    def values(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        size = tuple(int(n) for n in np.asarray(stop) - np.asarray(start))
        return rng.uniform(low, high, size).astype(np.float32)

    return values


def image_texture(source: np.ndarray, shift: Sequence[int]) -> Texture:
    """Foreign values read from ``source`` at each voxel displaced by ``shift`` (edges
    repeated where the displaced box leaves ``source``)."""
    source = np.asarray(source)
    offset = np.asarray(shift)

    def values(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        return crop_clamped(source, np.asarray(start) + offset, np.asarray(stop) + offset)

    return values


class _Positive:
    """``image > 0``, computed on demand for the indexed region only."""

    def __init__(self, image: np.ndarray):
        self.image = image

    def __getitem__(self, region) -> np.ndarray:
        return self.image[region] > 0


@dataclass(frozen=True, eq=False)
class SyntheticResult:
    """A training sample: the corrupted image, its soft target, and what was drawn."""

    image: np.ndarray
    target: np.ndarray
    params: dict[str, Any]


@dataclass(eq=False)
class SyntheticAnomaly3D:
    """The mood22 training transform (defaults from the reference, see methods.md R1-R5).

    Attributes:
        p_anomaly: probability that an image gets an anomaly (else target is all zero).
        alpha_range: opacity drawn uniformly from this range.
        fp_size: size of the foreign-patch box (clipped to the image); shapes live inside it.
        shape_weights: relative odds of ``cuboid``, ``sphere``, ``brush`` and ``lesion``.
        lesion_bank: real lesion shapes (default: the bank shipped with napari-medood).
        spacing, axcodes: the images' voxel size (mm) and axis codes, to scale and orient
            real lesion shapes; None means 1 mm and RAS.
        kernel_sizes, kernel_weights: edge-blur kernel draw (1 = hard edges).
        sigma, legacy_sigma: blur width (see :mod:`~napari_medood.synth.smoothing`).
        foreground_only: cut anomalies to the foreground (given mask, else voxels > 0) and
            place them where at least ``min_foreground`` of the shape is foreground.
        binary_target: target = 1 where the anomaly changed the image instead of the alpha map.
        bank_capacity, max_push_per_call: foreign-patch bank settings.
        patch_augment: mood22's shift/noise/rotation augmentation of foreign patches.
        value_range: foreign values are clipped to this range (images normalised to [0, 1]).
    """

    p_anomaly: float = 0.9
    alpha_range: tuple[float, float] = (0.3, 1.0)
    fp_size: int | Sequence[int] = 128
    shape_weights: Mapping[str, float] = field(
        default_factory=lambda: {"cuboid": 1.0, "sphere": 1.0, "brush": 0.5, "lesion": 0.5}
    )
    lesion_bank: Any = None
    spacing: float | Sequence[float] | None = None
    axcodes: Sequence[str] | None = None
    kernel_sizes: Sequence[int] = KERNEL_SIZES
    kernel_weights: Sequence[float] = KERNEL_WEIGHTS
    sigma: float = 1.0
    legacy_sigma: bool = False
    foreground_only: bool = True
    min_foreground: float = 0.5
    binary_target: bool = False
    bank_capacity: int = 50
    max_push_per_call: int = 5
    patch_augment: bool = True
    value_range: tuple[float, float] | None = (0.0, 1.0)
    max_tries: int = 10

    def __post_init__(self) -> None:
        low, high = self.alpha_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"alpha_range must lie within [0, 1], got {self.alpha_range}")
        for kind in self.shape_weights:
            look_up_option(kind, SHAPE_KINDS, "shape kind")
        if sum(self.shape_weights.values()) <= 0:
            raise ValueError("at least one shape kind needs a positive weight")
        self.fp_size = as_shape3(self.fp_size, "fp_size")
        self.bank = ForeignPatchBank(self.bank_capacity, self.max_push_per_call, self.fp_size)

    def __call__(
        self, image: np.ndarray, rng: Seed = None, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(corrupted, target)`` for one 3D image (float32 arrays of the image's shape)."""
        result = self.generate(image, rng, foreground)
        return result.image, result.target

    def generate(
        self, image: np.ndarray, rng: Seed = None, foreground: np.ndarray | None = None
    ) -> SyntheticResult:
        """Like calling the transform, and also report what was drawn."""
        rng = as_rng(rng)
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"expected a 3D image, got shape {image.shape}")
        if foreground is not None and foreground.shape != image.shape:
            raise ValueError(f"foreground mask has shape {foreground.shape}, image {image.shape}")
        self.bank.push_from(image, rng)
        corrupted = np.array(image, dtype=np.float32)
        target = np.zeros(image.shape, dtype=np.float32)
        if rng.random() >= self.p_anomaly:
            return SyntheticResult(corrupted, target, {"kind": "none"})
        if self.foreground_only and foreground is None:
            foreground = _Positive(image)  # evaluated only on the anomaly's region
        box = np.minimum(np.asarray(self.fp_size), image.shape)
        for attempt in range(self.max_tries):  # noqa: B007 - reported below
            position = [
                int(rng.integers(0, n - b + 1)) for n, b in zip(image.shape, box, strict=True)
            ]
            shape = self._draw_shape(tuple(box), rng)
            if self._enough_foreground(shape, position, foreground):
                break
        else:
            return SyntheticResult(corrupted, target, {"kind": "none", "reason": "no foreground"})
        alpha = float(rng.uniform(*self.alpha_range))
        kernel = sample_kernel_size(rng, self.kernel_sizes, self.kernel_weights)
        texture = PatchTexture(
            self.bank.pop(rng), position, rng, augment=self.patch_augment, clip=self.value_range
        )
        done = implant(
            image,
            shape,
            position,
            alpha,
            texture,
            kernel,
            foreground if self.foreground_only else None,
            self.sigma,
            self.legacy_sigma,
            out=corrupted,
        )
        target[done.region] = (done.alpha_map > 0) if self.binary_target else done.alpha_map
        params = {
            **done.params,
            "box_start": position,
            "box_size": [int(b) for b in box],
            "attempts": attempt + 1,
            **texture.params(),
        }
        return SyntheticResult(corrupted, target, params)

    def _draw_shape(self, box: tuple[int, int, int], rng: np.random.Generator) -> Shape:
        kinds = list(self.shape_weights)
        weights = np.array([self.shape_weights[k] for k in kinds], dtype=np.float64)
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        if kind == "cuboid":
            return cuboid_mask(box, rng)
        if kind == "sphere":
            return sphere_mask(box, rng)
        if kind == "brush":
            return brush_mask(box, rng)
        if self.lesion_bank is None:
            from napari_medood.synth.lesions import LesionShapeBank

            self.lesion_bank = LesionShapeBank.default()
        return self.lesion_bank.sample(box, rng, spacing=self.spacing or 1.0, axcodes=self.axcodes)

    def _enough_foreground(
        self, shape: Shape, position: Sequence[int], foreground: np.ndarray | None
    ) -> bool:
        if not self.foreground_only or foreground is None:
            return True
        start = np.asarray(position) + np.asarray(shape.offset)
        region = tuple(
            slice(int(a), int(a + n)) for a, n in zip(start, shape.mask.shape, strict=True)
        )
        inside = np.count_nonzero(foreground[region] & shape.mask)
        return inside >= self.min_foreground * max(shape.voxels, 1)
