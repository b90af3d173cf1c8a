"""Findings: the regions a map flags, as a table (issue 26, headless part and the CLI)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medood.cli import predict_main
from napari_medood.detectors.findings import find_findings, table_threshold

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"


def sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).reshape(3, -1).T
    inside = np.linalg.norm(grid - np.asarray(centre), axis=1) <= radius
    return inside.reshape(shape)


@pytest.fixture
def sphere_and_lesions(ms_lesions):
    """MS patient 07's consensus lesions (real shapes, 1 mm MNI) at 0.6, with an implanted
    sphere of radius 5 voxels at 0.9 (its centre 1.0) in a corner free of lesions."""
    image = nib.load(ms_lesions)
    lesions = np.asanyarray(image.dataobj) > 0
    ball = sphere(lesions.shape, (40, 40, 40), 5)
    assert not (ball & lesions).any()
    values = np.where(lesions, 0.6, 0.0).astype(np.float32)
    values[ball] = 0.9
    values[40, 40, 40] = 1.0
    return values, image.affine, lesions, ball


def test_findings_list_an_implanted_sphere_and_real_lesions(sphere_and_lesions, ixi_parcellation):
    values, affine, lesions, ball = sphere_and_lesions
    by_size = find_findings(values, affine, 0.5)
    assert sum(f.voxels for f in by_size) == int(lesions.sum() + ball.sum())
    assert [f.finding for f in by_size] == list(range(1, len(by_size) + 1))
    assert [f.voxels for f in by_size] == sorted((f.voxels for f in by_size), reverse=True)
    assert len(by_size) > 2  # the sphere and several lesions
    # by peak: the sphere first, its peak at its centre, in voxels and in mm
    first = find_findings(values, affine, 0.5, order="peak")[0]
    assert first.voxels == int(ball.sum()) and first.peak == pytest.approx(1.0)
    assert first.peak_ijk == (40, 40, 40)
    assert first.peak_mm == pytest.approx(tuple((affine @ [40, 40, 40, 1])[:3]))
    assert first.centre_mm == pytest.approx(first.peak_mm, abs=1e-6)  # a symmetric ball
    assert first.volume_ml == pytest.approx(ball.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000)
    assert first.mean == pytest.approx((0.9 * (ball.sum() - 1) + 1.0) / ball.sum(), rel=1e-5)
    # the lesions alone above 0.7: only the sphere is left; a mask leaves it out
    assert [f.voxels for f in find_findings(values, affine, 0.7)] == [int(ball.sum())]
    assert find_findings(values, affine, 0.7, mask=~ball) == []
    # tiny regions can be left out
    assert all(f.voxels >= 20 for f in find_findings(values, affine, 0.5, min_voxels=20))


def test_a_finding_names_the_structure_it_lies_in(ixi_parcellation):
    parcellation = np.asanyarray(nib.load(ixi_parcellation).dataobj).astype(np.int32)
    affine = nib.load(ixi_parcellation).affine
    labels, counts = np.unique(parcellation[parcellation > 0], return_counts=True)
    label = int(labels[np.argmax(counts)])  # the largest structure
    inside = np.argwhere(parcellation == label)[len(counts) // 2]
    values = np.zeros(parcellation.shape, np.float32)
    values[tuple(inside)] = 0.8
    (finding,) = find_findings(values, affine, 0.5, parcellation=parcellation)
    assert finding.structure == label and finding.voxels == 1
    # outside the brain: no structure (0)
    values[:] = 0
    values[0, 0, 0] = 0.8
    assert find_findings(values, affine, 0.5, parcellation=parcellation)[0].structure == 0


def test_the_table_threshold_is_given_else_calibrated_else_half():
    assert table_threshold({}, 0.3) == (0.3, "given")
    assert table_threshold({"calibration": {"voxel_threshold": 0.177}}) == (0.177, "calibrated")
    assert table_threshold({}) == (0.5, "default")


def test_medood_predict_writes_the_findings_beside_the_map(tmp_path, capsys):
    scan, brain = SAMPLE / "ixi048_t1_2mm.nii.gz", SAMPLE / "ixi048_brainmask_2mm.nii.gz"
    out = tmp_path / "out"
    args = ["--model", "intensity", "--mask", str(brain), "--findings"]
    assert predict_main([*args, "--findings-threshold", "0.9", str(scan), str(out)]) == 0
    table = out / "ixi048_t1_2mm.nii.gz.findings.csv"
    rows = list(csv.DictReader(table.open()))
    anomaly_map = nib.load(out / "ixi048_t1_2mm.nii.gz")
    above = anomaly_map.get_fdata() > 0.9
    assert rows and sum(int(r["voxels"]) for r in rows) == int(above.sum())
    assert [int(r["voxels"]) for r in rows] == sorted(
        (int(r["voxels"]) for r in rows), reverse=True
    )
    assert {(r["threshold"], r["threshold_from"]) for r in rows} == {("0.9", "given")}
    peak = tuple(int(rows[0][k]) for k in ("peak_i", "peak_j", "peak_k"))
    assert above[peak]
    ml = float(rows[0]["volume_ml"])
    assert ml == pytest.approx(int(rows[0]["voxels"]) * 0.008, abs=1e-4)  # 2 mm voxels
    assert (out / ".medood" / f"{table.name}.written.json").is_file()


def test_a_dlmuse_mask_names_each_findings_structure_and_a_brain_mask_does_not(
    tmp_path, ixi_parcellation
):
    """Given the subject's DLMUSE parcellation as its --mask, each row of the CSV says the
    label at the finding and its MUSE name; with a plain brain mask the columns stay empty."""
    from napari_medood.detectors.findings import structure_name

    scan = SAMPLE / "ixi048_t1_2mm.nii.gz"
    labels = np.asarray(nib.load(ixi_parcellation).dataobj)
    tables = {}
    for name, mask in (
        ("dlmuse", ixi_parcellation),
        ("brain", SAMPLE / "ixi048_brainmask_2mm.nii.gz"),
    ):
        out = tmp_path / name
        args = ["--model", "intensity", "--mask", str(mask), "--findings"]
        assert predict_main([*args, "--findings-threshold", "0.9", str(scan), str(out)]) == 0
        tables[name] = list(csv.DictReader((out / f"{scan.name}.findings.csv").open()))
    named = tables["dlmuse"]
    assert named and all(r["structure"] and r["structure_name"] for r in named)
    for row in named:
        peak = tuple(int(row[k]) for k in ("peak_i", "peak_j", "peak_k"))
        label = int(row["structure"])
        assert label == labels[peak] or labels[peak] == 0
        assert row["structure_name"] == structure_name(label)
    assert any(r["structure_name"].startswith(("left ", "right ")) for r in named)
    plain = tables["brain"]
    assert [r["voxels"] for r in plain] == [r["voxels"] for r in named]  # the same map
    assert all(r["structure"] == "" and r["structure_name"] == "" for r in plain)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--findings", "--task", "sample"], "--findings lists the regions of a map"),
        (["--findings", "--findings-threshold", "1.5"], "--findings-threshold takes a map value"),
        (["--findings-threshold", "0.5"], "give it too"),
    ],
)
def test_findings_options_are_checked_first(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert predict_main([*args, str(SAMPLE / "ixi048_t1_2mm.nii.gz"), str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
