"""A bank of real lesion shapes read from lesion mask files, for anomalies shaped like disease.

Each connected lesion of each mask becomes one shape: a tight binary crop stored in RAS+ axis
order with its voxel spacing. Drawing a shape reorients it to the target scan's axes, scales it
to the target spacing, optionally applies a random affine (rotation, shear, scale), and places
it in the box. Banks are saved as ``.npz`` files of packed bits (no pickles) with a sha256.

napari-medood ships a default bank (``synth/data/lesion_shapes.npz``) built by
``tools/make_lesion_bank.py`` from public stroke (SOOP) and multiple-sclerosis (Lesjak et al.)
lesion masks; see ``synth/data/README.md`` for the sources and licences.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_medood.errors import MedoodError
from napari_medood.io.atomic import file_sha256
from napari_medood.synth._common import Seed, as_rng, as_shape3, rotation_matrix
from napari_medood.synth.shapes import Shape

DEFAULT_BANK = Path(__file__).with_name("data") / "lesion_shapes.npz"
DEFAULT_BANK_SHA256 = "9fb5f682c299872d7dbe8152e9bcbc212b6a89fe961a294be2235d9bbe181309"


class LesionBankError(MedoodError, ValueError):
    """A lesion bank file is missing, damaged or not what its checksum says."""


class LesionShapeBank:
    """Binary lesion shapes (RAS+ axis order) with their voxel spacing and source file."""

    def __init__(
        self,
        masks: Sequence[np.ndarray],
        spacings: Sequence[Sequence[float]],
        sources: Sequence[str],
    ):
        if not masks:
            raise LesionBankError("a lesion bank needs at least one shape")
        if not len(masks) == len(spacings) == len(sources):
            raise ValueError("masks, spacings and sources must have the same length")
        self.masks = [np.ascontiguousarray(m, dtype=bool) for m in masks]
        self.spacings = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
        self.sources = [str(s) for s in sources]

    def __len__(self) -> int:
        return len(self.masks)

    def voxel_counts(self) -> np.ndarray:
        return np.array([int(m.sum()) for m in self.masks])

    # ------------------------------------------------------------------------ building
    @classmethod
    def from_mask_files(
        cls,
        paths: Iterable[str | os.PathLike],
        min_voxels: int = 50,
        max_voxels: int | None = None,
        max_extent: int | None = None,
    ) -> LesionShapeBank:
        """Split every mask file into its connected lesions (26-connectivity).

        Args:
            min_voxels, max_voxels: keep lesions within this size (in the file's voxels).
            max_extent: drop lesions longer than this (voxels) along any axis.

        Raises:
            VolumeError: a file cannot be read (the message names it).
            LesionBankError: no lesion in any file passes the filters.
        """
        from napari_medood.io.readers import read_volume

        masks, spacings, sources = [], [], []
        for path in paths:
            volume = read_volume(path)
            if not np.any(volume.data):
                continue
            for crop in _components(_to_ras(volume.data > 0, volume.affine)):
                count = int(crop.sum())
                if count < min_voxels or (max_voxels is not None and count > max_voxels):
                    continue
                if max_extent is not None and max(crop.shape) > max_extent:
                    continue
                masks.append(crop)
                spacings.append(_ras_spacing(volume.affine))
                sources.append(Path(path).name)
        if not masks:
            raise LesionBankError("no lesion in these mask files passes the size filters")
        return cls(masks, spacings, sources)

    # --------------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> str:
        """Write the bank (packed bits, no pickles) atomically; returns its sha256."""
        from napari_medood.io.atomic import write_atomic

        shapes = np.array([m.shape for m in self.masks], dtype=np.int32)
        bits = np.concatenate([np.packbits(m.ravel()) for m in self.masks])
        sizes = np.array([(int(np.prod(s)) + 7) // 8 for s in shapes], dtype=np.int64)
        arrays = {
            "shapes": shapes,
            "bits": bits,
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "spacings": self.spacings,
            "sources": np.array(json.dumps(self.sources)),
        }
        write_atomic(path, lambda temp: np.savez_compressed(temp, **arrays), suffix=".npz")
        return file_sha256(path)

    @classmethod
    def load(cls, path: str | os.PathLike, sha256: str | None = None) -> LesionShapeBank:
        """Read a bank written by :meth:`save`, checking its sha256 when one is given."""
        path = Path(path)
        if not path.exists():
            raise LesionBankError(f"{path}: no such lesion bank file")
        if sha256 is not None and file_sha256(path) != sha256:
            raise LesionBankError(
                f"{path}: sha256 mismatch: the lesion bank file was changed "
                "or damaged; rebuild it with tools/make_lesion_bank.py"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                shapes, bits, offsets = data["shapes"], data["bits"], data["offsets"]
                spacings, sources = data["spacings"], json.loads(str(data["sources"]))
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise LesionBankError(f"{path}: not a readable lesion bank ({exc})") from exc
        masks = [
            np.unpackbits(bits[offsets[i] : offsets[i + 1]], count=int(np.prod(shape)))
            .astype(bool)
            .reshape(shape)
            for i, shape in enumerate(shapes)
        ]
        return cls(masks, spacings, sources)

    @classmethod
    def default(cls) -> LesionShapeBank:
        """The bank shipped with napari-medood (checked against its sha256)."""
        return cls.load(DEFAULT_BANK, DEFAULT_BANK_SHA256)

    # ------------------------------------------------------------------------ sampling
    def sample(
        self,
        box_shape: int | Sequence[int],
        rng: Seed = None,
        spacing: float | Sequence[float] = 1.0,
        axcodes: Sequence[str] | None = None,
        affine_p: float = 0.5,
        rotate: float = 2.0,
        shear: float = 0.5,
        scale: float = 0.3,
        index: int | None = None,
    ) -> Shape:
        """Draw one lesion shape into a box of a scan with voxels of ``spacing`` mm.

        Args:
            axcodes: the scan's axis codes (``('P', 'S', 'R')``, ...); None keeps RAS order.
            affine_p: probability of a random affine: rotation in [-rotate, rotate] radians
                per axis, shear in [-shear, shear], scale in [1 - scale, 1 + scale] per axis.
            index: take this shape instead of a random one.

        A shape larger than the box is shrunk (keeping its proportions) until it fits.
        """
        from scipy import ndimage

        rng = as_rng(rng)
        box = np.asarray(as_shape3(box_shape, "box_shape"))
        index = int(rng.integers(len(self))) if index is None else int(index)
        crop, crop_spacing = _reorient(self.masks[index], self.spacings[index], axcodes)
        target = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
        matrix = np.diag(crop_spacing / target)  # source voxels -> target voxels
        if rng.random() < affine_p:
            shear_matrix = np.eye(3)
            shear_matrix[np.triu_indices(3, 1)] = rng.uniform(-shear, shear, 3)
            scales = rng.uniform(1 - scale, 1 + scale, 3)
            matrix = (
                rotation_matrix(rng.uniform(-rotate, rotate, 3))
                @ shear_matrix
                @ np.diag(scales)
                @ matrix
            )
        in_centre = (np.asarray(crop.shape) - 1) / 2.0
        corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in crop.shape], indexing="ij"))
        corners = corners.reshape(3, -1).T - in_centre
        extent = np.ptp(corners @ matrix.T, axis=0)
        shrink = min(1.0, float(np.min((box - 1) / np.maximum(extent, 1e-6))))
        matrix = matrix * shrink
        extent = extent * shrink
        out_shape = np.maximum(np.ceil(extent).astype(int), 1)
        out_centre = (out_shape - 1) / 2.0
        inverse = np.linalg.inv(matrix)
        warped = (
            ndimage.affine_transform(
                crop.astype(np.float32),
                inverse,
                offset=in_centre - inverse @ out_centre,
                output_shape=tuple(out_shape),
                order=1,
                mode="constant",
                cval=0.0,
            )
            >= 0.5
        )
        if not warped.any():  # a tiny lesion shrunk below one voxel: keep its centre voxel
            warped[tuple(out_shape // 2)] = True
        offset = [
            int(rng.integers(0, max(int(b) - int(n), 0) + 1))
            for b, n in zip(box, out_shape, strict=True)
        ]
        return Shape.from_crop(warped, offset, tuple(box), "lesion")


# ---------------------------------------------------------------------------- helpers
def _to_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation, io_orientation

    return apply_orientation(mask, io_orientation(affine))


def _ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    from nibabel.orientations import io_orientation

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    order = io_orientation(affine)[:, 0].astype(int)
    ras = np.empty(3)
    ras[order] = spacing
    return tuple(float(s) for s in ras)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    crops = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            crops.append(np.ascontiguousarray(labels[box] == label))
    return crops


def _reorient(
    crop: np.ndarray, spacing: np.ndarray, axcodes: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """A RAS-ordered crop and its spacing in the axis order of ``axcodes``."""
    if axcodes is None:
        return crop, np.asarray(spacing, dtype=np.float64)
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    # row a: where RAS axis a goes in the target order, and whether it flips
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(axcodes)))
    out_spacing = np.empty(3)
    out_spacing[transform[:, 0].astype(int)] = spacing
    return apply_orientation(crop, transform), out_spacing
