"""napari writer: Image and Labels layers to NIfTI with the source scan's exact geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_medood.io.formats import volume_suffix


def _nifti_path(path: str) -> Path:
    target = Path(path)
    if volume_suffix(target) in (".nii.gz", ".nii"):
        return target
    return target.with_name(target.name + ".nii.gz")


def _write(path: str, data: Any, meta: dict, kind: str) -> list[str]:
    from napari_medood._napari._layers import layer_data_to_volume
    from napari_medood.io.writers import write_nifti

    volume = layer_data_to_volume(data, meta)
    return [str(write_nifti(volume, _nifti_path(path), kind=kind))]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write an Image layer to ``path`` (.nii.gz added when missing)."""
    return _write(path, data, meta, "image")


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer to ``path`` as an integer label map (.nii.gz added when missing)."""
    return _write(path, data, meta, "labels")
