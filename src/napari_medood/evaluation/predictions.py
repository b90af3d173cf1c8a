"""Where predictions come from: files in a folder (MOOD naming), or a detector run on the fly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medood.errors import MedoodError
from napari_medood.io.cohort import Case
from napari_medood.io.discovery import output_name


@dataclass
class Prediction:
    """A case's anomaly map (None: none given) and sample score, with notes on how they were
    read (missing files, wrong shapes)."""

    anomaly_map: np.ndarray | None = None
    score: float | None = None
    notes: list[str] = field(default_factory=list)


class FolderPredictions:
    """``<case file name>`` maps and ``<case file name>.txt`` scores, as ``medood-predict``
    and MOOD write them. A missing or unreadable file counts as zeros (MOOD's rule) and is
    noted."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MedoodError(f"{self.folder}: no such predictions folder")
        self.has_scores = any(self.folder.glob("*.txt"))
        self.has_maps = any(
            p for p in self.folder.iterdir() if p.name.endswith((".nii.gz", ".nii"))
        )

    def __call__(self, case: Case) -> Prediction:
        from napari_medood.errors import VolumeError
        from napari_medood.io.readers import read_volume

        prediction = Prediction()
        name = output_name(case.image)
        map_path = self.folder / name
        if self.has_maps:
            if map_path.exists():
                try:
                    prediction.anomaly_map = read_volume(map_path, nonfinite="zero").data
                except VolumeError as exc:
                    prediction.notes.append(f"unreadable map counted as zeros ({exc.problem})")
            else:
                prediction.notes.append(f"missing map {map_path.name} counted as zeros")
        if self.has_scores:
            score_path = self.folder / f"{name}.txt"
            try:
                prediction.score = float(score_path.read_text().strip())
            except (OSError, ValueError):
                prediction.score = 0.0
                prediction.notes.append(
                    f"missing or unreadable score {score_path.name} counted as 0"
                )
        return prediction


class DetectorPredictions:
    """Run a detector on each case's scan (with its brain mask when the case has one);
    optionally also write the maps and scores to ``save_to`` with MOOD names."""

    def __init__(self, detector, save_to: str | os.PathLike | None = None):
        self.detector = detector
        self.save_to = Path(save_to) if save_to is not None else None
        self.has_maps = True
        self.has_scores = True

    def __call__(self, case: Case) -> Prediction:
        from napari_medood.io.atomic import write_text_atomic
        from napari_medood.io.readers import read_volume
        from napari_medood.io.writers import write_nifti
        from napari_medood.preprocessing.masks import load_mask

        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid) if case.mask is not None else None
        result = self.detector.predict(volume, mask)
        if self.save_to is not None:
            name = output_name(case.image)
            if result.anomaly_map is not None:
                write_nifti(result.anomaly_map, self.save_to / name)
            if result.score is not None:
                write_text_atomic(self.save_to / f"{name}.txt", f"{result.score:.6f}\n")
        anomaly_map = None if result.anomaly_map is None else result.anomaly_map.data
        return Prediction(anomaly_map, result.score)
