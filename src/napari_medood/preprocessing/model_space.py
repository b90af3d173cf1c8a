"""Model space: the voxel grid, orientation and intensities a network was trained in.

One :class:`ModelSpace` is built from a checkpoint card's ``preprocessing`` entry (or from a
training configuration) and does both directions: :meth:`ModelSpace.prepare` takes a scan
and its mask into model space (reorient to RAS by transposing and flipping only, resample
to the model's spacing when it differs, normalise inside the mask, zero outside it), and
:meth:`ModelSpace.to_input_grid` brings a model-space map back onto the scan's own grid and
voxel order. Training prepares its scans with the same object and writes the card's
``preprocessing`` from :meth:`ModelSpace.to_card`, so training and inference cannot drift
apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood._progress import ProgressCallback, report
from napari_medood.io.volume import Grid, Volume

ORIENTATION = "RAS (stored axes transposed/flipped, no resampling)"
MASK_NOTE = "brain mask (given, else an Otsu head mask); intensities set to 0 outside"


@dataclass(frozen=True)
class Prepared:
    """A scan in model space, and what is needed to map results back."""

    image: np.ndarray  # float32, model grid
    mask: np.ndarray  # bool, model grid
    ras_grid: Grid  # the scan's grid, reoriented to RAS (no resampling)
    model_grid: Grid  # ras_grid resampled to the model's spacing (or ras_grid itself)
    transform: np.ndarray  # nibabel orientation: stored axes -> RAS


@dataclass(frozen=True)
class ModelSpace:
    """How scans are put in front of a model.

    Attributes:
        spacing: model voxel size in mm (None: keep the scan's).
        normalisation: ``{"method": name, **options}`` for ``preprocessing.normalise``.
        zero_outside_mask: set intensities outside the mask to 0.
    """

    spacing: tuple[float, float, float] | None = (2.0, 2.0, 2.0)
    normalisation: Mapping[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "lower": 1.0, "upper": 99.0}
    )
    zero_outside_mask: bool = True

    @classmethod
    def from_card(cls, preprocessing: Mapping[str, Any]) -> ModelSpace:
        spacing = preprocessing.get("spacing")
        return cls(
            tuple(float(s) for s in spacing) if spacing is not None else None,
            dict(preprocessing.get("normalisation", {"method": "percentile"})),
            bool(preprocessing.get("zero_outside_mask", True)),
        )

    def to_card(self) -> dict[str, Any]:
        """The card's ``preprocessing`` entry for this model space."""
        return {
            "orientation": ORIENTATION,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "normalisation": dict(self.normalisation),
            "mask": MASK_NOTE,
            "zero_outside_mask": self.zero_outside_mask,
        }

    def prepare(
        self, volume: Volume, mask: np.ndarray, progress: ProgressCallback | None = None
    ) -> Prepared:
        """``volume`` and its bool ``mask`` (on the volume's grid) in model space."""
        from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

        from napari_medood.preprocessing.intensity import normalise
        from napari_medood.preprocessing.resample import grid_with_spacing, resample_to_grid

        report(progress, 0, 3, "reorienting")
        transform = io_orientation(volume.affine)  # stored axes -> RAS
        ras_affine = volume.affine @ inv_ornt_aff(transform, volume.shape)
        image = np.ascontiguousarray(apply_orientation(volume.data, transform))
        model_mask = np.ascontiguousarray(apply_orientation(mask, transform))
        ras_grid = Grid(image.shape, ras_affine)
        model_grid = ras_grid
        report(progress, 1, 3, "resampling")
        if self.spacing is not None and not np.allclose(ras_grid.spacing, self.spacing, atol=1e-3):
            model_grid = grid_with_spacing(ras_grid, self.spacing)
            image = resample_to_grid(Volume(image, ras_affine), model_grid, "linear").data
            model_mask = (
                resample_to_grid(
                    Volume(model_mask.astype(np.uint8), ras_affine), model_grid, "nearest"
                ).data
                > 0
            )
        report(progress, 2, 3, "normalising")
        options = {k: v for k, v in self.normalisation.items() if k != "method"}
        image = normalise(
            image, self.normalisation.get("method", "percentile"), model_mask, **options
        ).astype(np.float32, copy=False)
        if self.zero_outside_mask:
            image[~model_mask] = 0.0
        report(progress, 3, 3, "preprocessed")
        return Prepared(image, model_mask, ras_grid, model_grid, transform)

    def labels_to_model(self, labels: np.ndarray, prepared: Prepared) -> np.ndarray:
        """A label map on the scan's grid (a parcellation, say) in model space, as
        :meth:`prepare` put the scan there: the same reorientation, nearest-neighbour
        resampling (labels are never blended)."""
        from nibabel.orientations import apply_orientation

        from napari_medood.preprocessing.resample import resample_to_grid

        labels = np.ascontiguousarray(apply_orientation(np.asarray(labels), prepared.transform))
        if prepared.model_grid is not prepared.ras_grid:
            labels = resample_to_grid(
                Volume(labels, prepared.ras_grid.affine), prepared.model_grid, "nearest"
            ).data
        return np.ascontiguousarray(labels).astype(np.int32)

    def to_input_grid(self, values: np.ndarray, prepared: Prepared) -> np.ndarray:
        """A model-space map back on the scan's own grid and voxel order."""
        from nibabel.orientations import apply_orientation

        from napari_medood.preprocessing.resample import resample_to_grid

        if prepared.model_grid is not prepared.ras_grid:
            values = resample_to_grid(
                Volume(values, prepared.model_grid.affine), prepared.ras_grid, "linear"
            ).data
        return np.ascontiguousarray(
            apply_orientation(values, inverse_orientation(prepared.transform))
        )


def inverse_orientation(transform: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform that undoes ``transform``."""
    inverse = np.zeros_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return inverse


def axial_axis(affine: np.ndarray) -> int:
    """The stored array axis that runs closest to inferior-superior (the axial slice axis)."""
    from nibabel.orientations import io_orientation

    transform = io_orientation(np.asarray(affine))
    return int(np.flatnonzero(transform[:, 0] == 2)[0])
