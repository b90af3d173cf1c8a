"""Builders of test files in every supported format, from real scans."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about world axis ``axis``."""
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def sitk_world_ras(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """RAS+ world coordinates SimpleITK gives for voxel indices (i, j, k)."""
    points = [image.TransformContinuousIndexToPhysicalPoint([float(v) for v in p]) for p in ijk]
    return np.asarray(points) * np.array([-1.0, -1.0, 1.0])


def sitk_image_from_nifti(path: Path, tilt_degrees: float = 0.0, origin=(12.5, -40.25, 7.0)):
    """A SimpleITK image with a real scan's voxels, its spacing, and an optional oblique tilt."""
    image = sitk.ReadImage(str(path))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if tilt_degrees:
        direction = rotation(0, tilt_degrees) @ rotation(2, tilt_degrees / 2) @ direction
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin)
    return image


def write_dicom_series(
    volume: np.ndarray,
    folder: Path,
    spacing=(0.8, 0.8, 2.5),
    origin=(-100.0, -120.0, 30.0),
    direction=None,
    series_uid="1.2.826.0.1.3680043.2.1125.1.42",
    description="test",
):
    """Write a (k, j, i) int16 array as a DICOM CT series, one file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    direction = np.eye(3) if direction is None else np.asarray(direction)
    image.SetDirection(direction.ravel().tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    row, col = direction[:, 0], direction[:, 1]
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.7",
            "0020|000e": series_uid,
            "0008|103e": description,
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0013": str(k + 1),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{spacing[2]:.6f}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, value in tags.items():
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    return folder


def nifti_like(path: Path, data: np.ndarray, reference: nib.Nifti1Image) -> Path:
    """Save ``data`` with ``reference``'s affine and header codes."""
    image = nib.Nifti1Image(data, reference.affine, reference.header.copy())
    image.set_data_dtype(data.dtype)
    nib.save(image, path)
    return path


class TickingClock:
    """A training budget's clock (``training.spine.budget_clock``) that moves on ``tick``
    seconds each time it is read, whatever the wall clock does: a run reads it a few times a
    step, so a 15 s budget lasts some tens of steps however fast or slow this machine is."""

    def __init__(self, tick: float = 0.25):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def after_steps(out: Path, steps: int):
    """A ``cancelled`` predicate for a training run in ``out``: true once its log holds
    ``steps`` rows (the run stops during the step after)."""

    def cancelled() -> bool:
        log = out / "train_log.csv"
        return log.exists() and len(log.read_text().splitlines()) - 1 >= steps

    return cancelled


def medood_train_under_torchrun(method: str, settings: list[str], processes: int = 2):
    """``torchrun --standalone --nproc_per_node N medood-train METHOD --set ...`` with one
    thread per process (gloo on the CPU); the finished process."""
    import os
    import subprocess
    import sys

    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(Path(sys.executable).with_name("medood-train")),
        method,
        *sum((["--set", item] for item in settings), []),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def controls_without_a_tooltip(panel) -> list[str]:
    """Every button, slider, spin box, check box and combo box under ``panel`` that has no
    tooltip, by its text or class."""
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractSlider,
        QAbstractSpinBox,
        QComboBox,
        QScrollBar,
    )

    kinds = (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox)
    return [
        getattr(control, "text", lambda: "")() or type(control).__name__
        for kind in kinds
        for control in panel.findChildren(kind)
        # the panel's own scroll bars are Qt's, not actions of the panel
        if not isinstance(control, QScrollBar) and not control.toolTip().strip()
    ]
