"""Anomalies placed by hand: the headless state behind the napari anomaly playground.

A :class:`Playground` holds a healthy scan (never modified), the corrupted copy and the label
map built from the anomalies placed so far. :meth:`Playground.preview` computes one anomaly
(shape, size in mm, opacity, soft edges, texture) at a voxel or a random place on the
foreground without changing anything; :meth:`Playground.commit` applies it; :meth:`undo` and
:meth:`clear` take anomalies back. Each anomaly gets its own label value (1, 2, ...), so they
can be told apart and undone one by one; any label > 0 is abnormal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_medood.errors import GridMismatchError, PreprocessingError, look_up_option
from napari_medood.synth._common import Seed, as_rng
from napari_medood.synth.anomaly import image_texture, implant, uniform_noise_texture
from napari_medood.synth.shapes import SHAPE_KINDS, Shape, brush_mask, cuboid_mask, sphere_mask

TEXTURES = ("scan", "layer", "noise")
TEXTURE_LABELS = {"scan": "this scan, elsewhere", "layer": "another scan", "noise": "noise"}


@dataclass(frozen=True)
class AnomalySettings:
    """What one anomaly looks like.

    Attributes:
        kind: ``cuboid``, ``sphere``, ``brush`` or ``lesion`` (a real lesion shape).
        size_mm: the anomaly's size (diameter, side, or the box a brush/lesion fits in).
        alpha: opacity in [0, 1]; 1 replaces the tissue.
        kernel_size: edge blur (1 = hard edges, 3/5/7 = softer).
        texture: ``scan`` (a patch of this scan from elsewhere), ``layer`` (another scan,
            intensities matched to this one) or ``noise`` (uniform within this scan's range).
        seed: drives every random choice of the anomaly.
    """

    kind: str = "sphere"
    size_mm: float = 20.0
    alpha: float = 0.8
    kernel_size: int = 3
    texture: str = "scan"
    seed: int = 0

    def __post_init__(self) -> None:
        look_up_option(self.kind, SHAPE_KINDS, "shape kind")
        look_up_option(self.texture, TEXTURES, "texture")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {self.alpha}")
        if self.size_mm <= 0:
            raise ValueError(f"size must be positive, got {self.size_mm} mm")
        if self.kernel_size not in (1, 3, 5, 7):
            raise ValueError(f"edge kernel must be 1, 3, 5 or 7, got {self.kernel_size}")


@dataclass(frozen=True, eq=False)
class Placement:
    """A computed anomaly, not yet applied: the box it changes and the new values there."""

    region: tuple[slice, slice, slice]
    values: np.ndarray
    label: np.ndarray  # bool over the region
    centre: tuple[int, int, int]
    settings: AnomalySettings
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Applied:
    placement: Placement
    label_value: int
    previous_values: np.ndarray
    previous_labels: np.ndarray


class Playground:
    """Place, preview, commit, undo and clear anomalies on a copy of a healthy scan.

    Args:
        image: the healthy scan (kept by reference and never written).
        spacing: voxel size (mm) along each array axis.
        foreground: bool mask on the same grid (brain); anomalies are cut to it and random
            places are drawn in it. Default: voxels > 0.
        axcodes: anatomical directions of the array axes, to orient real lesion shapes.
        lesion_bank: real lesion shapes (default: the bank shipped with napari-medood).
    """

    def __init__(
        self,
        image: np.ndarray,
        spacing: Sequence[float],
        foreground: np.ndarray | None = None,
        axcodes: Sequence[str] | None = None,
        lesion_bank: Any = None,
    ):
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"the playground needs a 3D scan, got shape {image.shape}")
        if foreground is None:
            foreground = image > 0
        else:
            foreground = np.asarray(foreground)
            if foreground.shape != image.shape:
                raise GridMismatchError(
                    None,
                    f"the mask has shape {foreground.shape} but the "
                    f"scan has {image.shape}: pick a mask made for it",
                )
            foreground = foreground > 0
        if not foreground.any():
            raise PreprocessingError("the foreground mask is empty: nowhere to put an anomaly")
        self.image = image
        self.spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
        self.foreground = foreground
        self.axcodes = tuple(axcodes) if axcodes is not None else None
        self.lesion_bank = lesion_bank
        self.low, self.high = (float(v) for v in np.percentile(image[foreground], [1, 99]))
        self.result = np.array(image, dtype=np.float32)
        self.labels = np.zeros(image.shape, dtype=np.uint16)
        self._history: list[_Applied] = []

    @property
    def count(self) -> int:
        """How many anomalies are applied."""
        return len(self._history)

    # ------------------------------------------------------------------------ placing
    def size_voxels(self, size_mm: float) -> np.ndarray:
        return np.maximum(np.round(size_mm / self.spacing).astype(int), 1)

    def shape_for(self, settings: AnomalySettings, rng: np.random.Generator) -> Shape:
        """The anomaly's shape, filling a box of ``settings.size_mm``."""
        box = self.size_voxels(settings.size_mm)
        if np.any(box > np.asarray(self.image.shape)):
            extent = np.asarray(self.image.shape) * self.spacing
            raise ValueError(
                f"a {settings.size_mm:g} mm anomaly is larger than the scan "
                f"({' x '.join(f'{e:.0f}' for e in extent)} mm); choose a smaller size"
            )
        box = tuple(int(b) for b in box)
        if settings.kind == "sphere":
            return sphere_mask(box, rng, min_diameter=min(box), max_diameter=min(box))
        if settings.kind == "cuboid":
            return cuboid_mask(box, rng, min_size=box, max_size=box, rotate_p=1.0)
        if settings.kind == "brush":
            return brush_mask(box, rng)
        if self.lesion_bank is None:
            from napari_medood.synth.lesions import LesionShapeBank

            self.lesion_bank = LesionShapeBank.default()
        return self._fit_lesion(box, rng)

    def _fit_lesion(self, box: tuple[int, int, int], rng: np.random.Generator) -> Shape:
        """A real lesion shape grown or shrunk so that its longest side spans the box."""
        index = int(rng.integers(len(self.lesion_bank)))
        spacing = np.asarray(self.lesion_bank.spacings[index])
        native = np.asarray(self.lesion_bank.masks[index].shape) * spacing  # mm, RAS order
        zoom = float(np.min(np.asarray(box) * self.spacing) / max(native.max(), 1e-6))
        return self.lesion_bank.sample(
            box, rng, spacing=self.spacing / zoom, axcodes=self.axcodes, affine_p=0.5, index=index
        )

    def random_centre(self, rng: Seed = None) -> tuple[int, int, int]:
        """A foreground voxel, drawn uniformly."""
        candidates = np.flatnonzero(self.foreground)
        flat = int(candidates[int(as_rng(rng).integers(len(candidates)))])
        return tuple(int(i) for i in np.unravel_index(flat, self.image.shape))

    def preview(
        self,
        settings: AnomalySettings,
        centre: Sequence[int] | None = None,
        other: np.ndarray | None = None,
    ) -> Placement:
        """Compute an anomaly centred at voxel ``centre`` (None: a random foreground voxel)
        on the current result; nothing changes until :meth:`commit`.

        Args:
            other: the scan to take the texture from when ``settings.texture == "layer"``.
        """
        if settings.alpha == 0:
            raise ValueError("alpha is 0: the anomaly would leave the scan unchanged")
        rng = np.random.default_rng(settings.seed)
        if centre is None:
            centre = self.random_centre(rng)
        centre = np.asarray([int(round(c)) for c in centre])
        if np.any(centre < 0) or np.any(centre >= np.asarray(self.image.shape)):
            raise ValueError(f"voxel {centre.tolist()} is outside the scan {self.image.shape}")
        shape = self.shape_for(settings, rng)
        position = centre - np.asarray(shape.box_shape) // 2
        texture = self._texture(settings, shape, position, rng, other)
        halo = settings.kernel_size // 2
        start = np.maximum(position + np.asarray(shape.offset) - halo, 0)
        stop = np.minimum(
            position + np.asarray(shape.offset) + np.asarray(shape.mask.shape) + halo,
            self.image.shape,
        )
        if np.any(stop <= start):
            raise ValueError("the anomaly falls outside the scan; place it closer to the middle")
        work = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))

        def texture_in_work(local_start, local_stop):
            return texture(np.asarray(local_start) + start, np.asarray(local_stop) + start)

        out = np.array(self.result[work], dtype=np.float32)
        done = implant(
            self.result[work],
            shape,
            position - start,
            settings.alpha,
            texture_in_work,
            settings.kernel_size,
            self.foreground[work],
            out=out,
        )
        if done.params["voxels"] == 0:
            raise ValueError(
                "the anomaly would not touch the foreground here; place it on "
                "the scan (inside the mask)"
            )
        region = tuple(
            slice(w.start + r.start, w.start + r.stop)
            for w, r in zip(work, done.region, strict=True)
        )
        params = {**done.params, "centre": centre.tolist(), "size_voxels": list(shape.box_shape)}
        return Placement(
            region, out[done.region], done.label, tuple(int(c) for c in centre), settings, params
        )

    def _texture(self, settings, shape, position, rng, other):
        """Foreign values in this scan's intensity units."""
        if settings.texture == "noise":
            source = uniform_noise_texture(rng, self.low, self.high)
        elif settings.texture == "scan":
            source = image_texture(self.image, self._donor_shift(shape, position, rng))
        else:
            if other is None:
                raise ValueError("choose the other scan to take the texture from")
            other = np.asarray(other, dtype=np.float32)
            if other.shape != self.image.shape:
                raise ValueError(
                    f"the texture scan has shape {other.shape} but the scan has "
                    f"{self.image.shape}; choose a scan on the same grid"
                )
            inside = other[other > 0] if np.any(other > 0) else other.ravel()
            low, high = np.percentile(inside, [1, 99])
            scale = (self.high - self.low) / max(float(high - low), 1e-6)
            matched = (other - np.float32(low)) * np.float32(scale) + np.float32(self.low)
            source = image_texture(matched, (0, 0, 0))

        return source

    def _donor_shift(self, shape: Shape, position: np.ndarray, rng: np.random.Generator):
        """A displacement to foreground tissue at least one anomaly size away."""
        size = np.asarray(shape.box_shape)
        centre = position + size // 2
        for _ in range(50):
            donor = np.asarray(self.random_centre(rng))
            if (
                np.all(np.abs(donor - centre) >= size // 2)
                or np.linalg.norm(donor - centre) >= size.max()
            ):
                return donor - centre
        return np.asarray(self.random_centre(rng)) - centre

    # ------------------------------------------------------------------ applying state
    def commit(self, placement: Placement) -> int:
        """Apply a previewed anomaly; returns its label value."""
        value = (max(a.label_value for a in self._history) + 1) if self._history else 1
        previous_values = self.result[placement.region].copy()
        previous_labels = self.labels[placement.region].copy()
        self.result[placement.region] = placement.values
        self.labels[placement.region][placement.label] = value
        self._history.append(_Applied(placement, value, previous_values, previous_labels))
        return value

    def undo(self) -> bool:
        """Take back the last anomaly; False when there is none."""
        if not self._history:
            return False
        last = self._history.pop()
        self.result[last.placement.region] = last.previous_values
        self.labels[last.placement.region] = last.previous_labels
        return True

    def clear(self) -> None:
        """Take back every anomaly."""
        while self.undo():
            pass

    def placements(self) -> list[dict[str, Any]]:
        """What was applied, in order: label value, centre, settings and parameters."""
        return [
            {
                "label": a.label_value,
                "centre": list(a.placement.centre),
                "settings": asdict(a.placement.settings),
                "params": a.placement.params,
            }
            for a in self._history
        ]
