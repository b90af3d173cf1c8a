"""Where predictions come from: files in a folder (MOOD naming), or a detector run on the fly.

A prediction that cannot be used as it is (a missing, empty, truncated or unreadable map, a
map with NaN voxels, an unreadable score) is counted as MOOD's evaluator counts it (zeros,
or a score of 0) and noted, so that reports say how many cases were affected and which.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medood.errors import MedoodError
from napari_medood.io.cohort import Case
from napari_medood.io.mood import output_name, read_score


@dataclass
class Prediction:
    """A case's anomaly map (None: none given) and sample score, with notes on how they were
    read (missing files, wrong shapes, NaN voxels). ``problems`` are the notes that changed
    what is scored; ``notes`` also holds the detector's remarks on the scan."""

    anomaly_map: np.ndarray | None = None
    score: float | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.notes.append(text)


class FolderPredictions:
    """``<case file name>`` maps and ``<case file name>.txt`` scores, as ``medood-predict``
    and MOOD write them. A missing or unreadable file counts as zeros (MOOD's rule) and is
    noted as a problem."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MedoodError(f"{self.folder}: no such predictions folder")
        self.has_scores = any(self.folder.glob("*.txt"))
        self.has_maps = any(
            p for p in self.folder.iterdir() if p.name.endswith((".nii.gz", ".nii"))
        )
        if not (self.has_scores or self.has_maps):
            raise MedoodError(
                f"{self.folder}: holds no predictions (<case>.nii.gz maps or <case>.nii.gz.txt "
                "scores, as medood-predict writes them)"
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
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        prediction.anomaly_map = read_volume(map_path, nonfinite="zero").data
                    for warning in caught:
                        text = str(warning.message).removeprefix(f"{map_path}: ")
                        prediction.problem(f"map {map_path.name}: {text}")
                except VolumeError as exc:
                    prediction.problem(
                        f"unreadable map {map_path.name} counted as zeros ({exc.problem})"
                    )
            else:
                prediction.problem(f"missing map {map_path.name} counted as zeros")
        if self.has_scores:
            score_path = self.folder / f"{name}.txt"
            try:
                prediction.score = read_score(score_path)
            except (OSError, ValueError):
                prediction.score = 0.0
                what = "missing" if not score_path.exists() else "unreadable"
                prediction.problem(f"{what} score {score_path.name} counted as 0")
        return prediction


class DetectorPredictions:
    """Run a detector on each case's scan (with its brain mask when the case has one);
    optionally also write the maps and scores to ``save_to`` with MOOD names (the same
    reading and writing as ``medood-predict``)."""

    def __init__(
        self, detector, save_to: str | os.PathLike | None = None, score: str | None = None
    ):
        self.detector = detector
        self.save_to = Path(save_to) if save_to is not None else None
        #: which sample score to evaluate: None for the detector's own, else one of the
        #: result's ``extras["scores"]`` (``topk_mean``, ``uncalibrated``, ...)
        self.score = score
        outputs = tuple(getattr(detector, "outputs", ("map", "score")))
        self.has_maps = "map" in outputs
        self.has_scores = "score" in outputs

    def record(self) -> dict:
        """What made these predictions (``batch.run_record``: the detector, device,
        precision, test-time augmentation) and which of its sample scores is evaluated."""
        from napari_medood.batch import run_record

        record = run_record(self.detector, "pixel and sample")
        # which of its scores was evaluated (the written score files keep its own)
        record["sample_score"] = self.score or "its own"
        return record

    def __call__(self, case: Case) -> Prediction:
        from napari_medood.batch import predict_case, write_result

        result = predict_case(case, self.detector)
        if self.save_to is not None:
            write_result(result, self.save_to, case.image, ("pixel", "sample"))
        anomaly_map = None if result.anomaly_map is None else result.anomaly_map.data
        score = result.score
        if self.score is not None:
            scores = result.extras.get("scores", {})
            if self.score not in scores:
                given = ", ".join(map(repr, scores)) or "none besides its own"
                raise MedoodError(
                    f"{getattr(self.detector, 'name', 'the detector')} gives no sample score "
                    f"{self.score!r} (it gives: {given})"
                )
            score = float(scores[self.score])
        return Prediction(anomaly_map, score, list(result.notes))
