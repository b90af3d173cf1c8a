"""Every format reads into the right place in the world and writes back to the same place."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import sha256
from helpers import sitk_image_from_nifti, sitk_world_ras, write_dicom_series
from napari_medood.io import Grid, Volume, find_volumes, output_name, read_volume, write_nifti
from napari_medood.io.readers import DicomSeriesWarning


def corner_world_nibabel(path, shape):
    affine = nib.load(path).affine
    return Grid(shape, affine).voxel_to_world(Grid(shape, affine).corners())


@pytest.mark.parametrize("fixture", ["ixi_t1", "ms_t1", "ct_scan"])
def test_nifti_world_coordinates_match_nibabel_and_sitk(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    before = sha256(path)
    volume = read_volume(path)
    reference = nib.load(path)
    assert volume.shape == reference.shape
    np.testing.assert_array_equal(volume.affine, reference.affine)
    np.testing.assert_array_equal(volume.data, np.asanyarray(reference.dataobj))
    corners = volume.grid.corners()
    np.testing.assert_allclose(
        volume.voxel_to_world(corners), nib.affines.apply_affine(reference.affine, corners)
    )
    # SimpleITK agrees on where the corner voxels are (it reads the same file in LPS)
    np.testing.assert_allclose(
        volume.voxel_to_world(corners),
        sitk_world_ras(sitk.ReadImage(str(path)), corners),
        atol=1e-4,
    )
    assert sha256(path) == before, "reading must never modify the input"


@pytest.mark.parametrize("fixture", ["ixi_t1", "ms_t1"])
def test_nifti_write_reproduces_source_affine_exactly(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    volume = read_volume(path)
    out = write_nifti(volume, tmp_path / "copy.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, nib.load(path).affine)
    source_header = nib.load(path).header
    assert int(back.header["sform_code"]) == int(source_header["sform_code"])
    assert int(back.header["qform_code"]) == int(source_header["qform_code"])
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), volume.data.astype(np.float32))


def test_label_map_round_trip_keeps_labels_and_affine(ms_lesions, tmp_path):
    volume = read_volume(ms_lesions)
    out = write_nifti(volume, tmp_path / "lesions.nii.gz", kind="labels")
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    assert back.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), volume.data)
    np.testing.assert_array_equal(back.affine, nib.load(ms_lesions).affine)


def test_moved_volume_gets_its_new_affine(ixi_t1, tmp_path):
    volume = read_volume(ixi_t1)
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0, 1.5, 0.5])
    affine[:3, 3] += [3.0, -2.0, 1.0]
    moved = Volume(volume.data, affine, meta=volume.meta)
    back = nib.load(write_nifti(moved, tmp_path / "moved.nii"))
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("tilt", [0.0, 17.0])
def test_sitk_formats_round_trip(suffix, tilt, ixi_t1, tmp_path):
    """NRRD and MetaImage (with an oblique tilt) -> Volume -> NIfTI: every corner stays put."""
    image = sitk_image_from_nifti(ixi_t1, tilt_degrees=tilt)
    source = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(source))
    volume = read_volume(source)
    assert volume.meta["format"] in ("nrrd", "metaimage")
    assert volume.shape == image.GetSize()
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), rtol=1e-6)
    corners = volume.grid.corners()
    expected = sitk_world_ras(image, corners)
    np.testing.assert_allclose(volume.voxel_to_world(corners), expected, atol=1e-4)
    # voxel values arrive in (i, j, k) order
    np.testing.assert_array_equal(volume.data, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    # write NIfTI and read it back with both libraries
    out = write_nifti(volume, tmp_path / "scan.nii.gz")
    np.testing.assert_allclose(corner_world_nibabel(out, volume.shape), expected, atol=1e-3)
    np.testing.assert_allclose(
        sitk_world_ras(sitk.ReadImage(str(out)), corners), expected, atol=1e-3
    )


def test_dicom_series_round_trip(ct_scan, tmp_path):
    ct = nib.load(ct_scan)
    voxels = np.asanyarray(ct.dataobj)[::2, ::2, :12].astype(np.int16)  # (i, j, k)
    direction = np.array([[1.0, 0, 0], [0, 0.9848077, -0.1736482], [0, 0.1736482, 0.9848077]])
    folder = write_dicom_series(voxels.transpose(2, 1, 0), tmp_path / "series", direction=direction)
    volume = read_volume(folder)
    assert volume.meta["format"] == "dicom"
    assert volume.shape == voxels.shape
    np.testing.assert_array_equal(volume.data, voxels)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.8, 2.5), rtol=1e-5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    corners = volume.grid.corners()
    expected = sitk_world_ras(reference, corners)
    np.testing.assert_allclose(volume.voxel_to_world(corners), expected, atol=1e-3)
    out = write_nifti(volume, tmp_path / "series.nii.gz")
    np.testing.assert_allclose(corner_world_nibabel(out, volume.shape), expected, atol=1e-3)
    assert find_volumes(folder) == [folder]
    assert output_name(folder) == "series.nii.gz"


def test_dicom_folder_with_two_series_reads_the_larger_and_warns(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    write_dicom_series(
        rng.integers(0, 1000, (6, 16, 16)), folder, series_uid="1.2.3.4.1", description="big"
    )
    scout = tmp_path / "scout"
    write_dicom_series(
        rng.integers(0, 1000, (2, 16, 16)), scout, series_uid="1.2.3.4.2", description="scout"
    )
    for k, f in enumerate(sorted(scout.iterdir())):
        f.rename(folder / f"scout{k}.dcm")
    with pytest.warns(DicomSeriesWarning, match=r"2 DICOM series.*1\.2\.3\.4\.1"):
        volume = read_volume(folder)
    assert volume.shape == (16, 16, 6)


def test_find_volumes_lists_a_folder_of_scans(ixi_t1, tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(ixi_t1.read_bytes())
    (tmp_path / "a.nii.gz").write_bytes(ixi_t1.read_bytes())
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    assert [p.name for p in find_volumes(tmp_path)] == ["a.nii.gz", "b.nii.gz"]
    assert output_name(tmp_path / "scan.nrrd") == "scan.nii.gz"
    assert output_name(tmp_path / "scan.nii.gz") == "scan.nii.gz"


def test_outputs_are_written_atomically(ixi_t1, tmp_path, monkeypatch):
    """A write that fails half-way leaves the old file intact and no temporary file behind."""
    volume = read_volume(ixi_t1)
    target = write_nifti(volume, tmp_path / "out.nii.gz")
    before = sha256(target)

    def disk_full(image, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(nib, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_nifti(volume.with_data(volume.data * 2), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    assert sha256(target) == before
    monkeypatch.undo()
    assert nib.load(target).shape == volume.shape
