"""Lesions counted as lesions (``evaluation.lesions``): findings and lesions as connected
components, the one-tenth rule, FROC points, lesion F1 and false findings per healthy scan,
on exact toy arrays and on a real scan with a known number of implanted lesions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_findings_and_lesions_are_counted_as_a_reader_counts_them():
    from napari_medood.evaluation.lesions import lesion_counts

    shape = (40, 40, 40)
    label = np.zeros(shape, np.uint8)
    for centre in ((10, 10, 10), (10, 30, 10), (30, 20, 30)):
        label |= ball(shape, centre, 3)
    anomaly = np.where(label > 0, 0.9, 0.0).astype(np.float32)
    anomaly[ball(shape, (30, 30, 8), 3)] = 0.7  # a false finding
    counts = lesion_counts(anomaly, label, thresholds=(0.5, 0.8, 0.95))
    assert counts.lesions == 3
    # at 0.5: three lesions found and one false finding; at 0.8 the false one is gone
    assert list(counts.findings) == [4, 3, 0]
    assert list(counts.true_findings) == [3, 3, 0]
    assert list(counts.found) == [3, 3, 0]
    # a brain-wide blob that covers every lesion finds nothing: less than a tenth of it is
    # lesion
    blob = lesion_counts(np.full(shape, 0.3, np.float32), label, thresholds=(0.2,))
    assert (blob.findings[0], blob.true_findings[0], blob.found[0]) == (1, 0, 0)
    # a box with its lesion an eighth of it is a true finding (123 of 1,000 voxels); a
    # box 8 times as large around another lesion (123 of 8,000) is not, nor is that found
    boxes = np.zeros(shape, np.float32)
    boxes[5:15, 5:15, 5:15] = 0.3
    boxes[20:40, 10:30, 20:40] = 0.3
    assert int(label[5:15, 5:15, 5:15].sum()) == 123 == int(label[20:40, 10:30, 20:40].sum())
    cut = lesion_counts(boxes, label, thresholds=(0.2,))
    assert (cut.findings[0], cut.true_findings[0], cut.found[0]) == (2, 1, 1)
    # a healthy scan: every finding false
    healthy = lesion_counts(anomaly, None, thresholds=(0.5,))
    assert (healthy.lesions, healthy.findings[0], healthy.true_findings[0]) == (0, 4, 0)


def implanted_case(tmp_path: Path, count: int, seed: int):
    """The bundled healthy sample with ``count`` real lesion shapes implanted (apart), its
    label and brain mask written as files."""
    from napari_medood.evaluation.lesions import lesion_components
    from napari_medood.io.readers import read_volume
    from napari_medood.io.writers import write_nifti
    from napari_medood.synth.lesion_implants import LesionImplanter

    volume = read_volume(SAMPLES / "ixi048_t1_2mm.nii.gz")
    brain = read_volume(SAMPLES / "ixi048_brainmask_2mm.nii.gz").data > 0
    implanter = LesionImplanter(spacing=(2.0, 2.0, 2.0), tumour_p=0.0)
    image, target, info = implanter(volume.data, brain, count, np.random.default_rng(seed))
    _, components = lesion_components(target, brain)
    paths = {
        "image": write_nifti(volume.with_data(image), tmp_path / "lesions.nii.gz"),
        "label": write_nifti(
            volume.with_data((target > 0).astype(np.uint8)), tmp_path / "label.nii.gz", "labels"
        ),
        "mask": write_nifti(
            volume.with_data(brain.astype(np.uint8)), tmp_path / "mask.nii.gz", "labels"
        ),
        "healthy": SAMPLES / "ixi048_t1_2mm.nii.gz",
    }
    return paths, target > 0, brain, len(info["lesions"]), components


def test_an_implanted_lesion_set_is_scored_lesion_by_lesion(tmp_path):
    from napari_medood.evaluation import EvalOptions, evaluate
    from napari_medood.evaluation.predictions import Prediction
    from napari_medood.evaluation.report import write_report
    from napari_medood.io.cohort import Case

    paths, lesion, brain, drawn, components = implanted_case(tmp_path, 6, 4)
    assert components == drawn == 6  # six lesions, none touching another
    # a false finding in the lesion scan, two in the healthy scan, away from lesions
    far = np.argwhere(brain & ~lesion)
    spots = far[:: max(1, len(far) // 200)]
    lesion_map = np.where(lesion, 1.0, 0.0).astype(np.float32)
    lesion_map[ball(lesion.shape, spots[10], 2) & brain & ~lesion] = 0.9
    healthy_map = np.zeros(lesion.shape, np.float32)
    for spot in (spots[40], spots[120]):
        healthy_map[ball(lesion.shape, spot, 2) & brain] = 0.6
    maps = {"lesions": lesion_map, "healthy": healthy_map}
    cases = [Case("lesions", paths["image"], label=paths["label"], mask=paths["mask"])]
    healthy = [Case("healthy", paths["healthy"], mask=paths["mask"])]

    def predict(case):
        return Prediction(anomaly_map=maps[case.name], score=float(maps[case.name].max()))

    result = evaluate(
        cases, predict, healthy, predict, EvalOptions(thresholds=(0.5,), bootstrap=0, fprs=())
    )
    figures = result.lesion
    assert figures["lesions"] == 6 and figures["healthy_scans"] == 1
    at = figures["at"]["at0.5"]
    assert at["read_at"] == 0.5 and at["sensitivity"] == 1.0
    assert at["healthy_false_findings"] == [2]
    # 6 true findings of 9: precision 2/3, every lesion found: F1 0.8
    assert at["false_findings_per_scan"] == pytest.approx(1.5)
    assert at["f1"] == pytest.approx(0.8)
    # above 0.6 the healthy scan's findings are gone: 0.5 false findings per scan, all found
    assert figures["froc"]["1"]["sensitivity"] == 1.0
    assert figures["froc"]["1"]["threshold"] > 0.6
    report = (write_report(result, tmp_path / "report")["markdown"]).read_text()
    assert "## Lesion level" in report and "6 lesions in 1 scans" in report
    assert result.cases[0].lesions == 6
