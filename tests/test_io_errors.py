"""Bad input gives a clear error that names the file and the problem, and the file is untouched."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import sha256
from helpers import nifti_like
from napari_medood.errors import (
    CorruptVolumeError,
    NonFiniteVoxelsError,
    UnsupportedFormatError,
    VolumeNotFoundError,
    VolumeShapeError,
    VolumeTooLargeError,
)
from napari_medood.io import find_volumes, read_volume
from napari_medood.io.readers import NonFiniteVoxelsWarning


def assert_names_file(error, path):
    assert str(error.value).startswith(str(path)), str(error.value)
    assert error.value.path == path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(VolumeNotFoundError, match="no such file") as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("name", ["scan.png", "scan.txt", "scan.nii.bz2"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG....")
    with pytest.raises(UnsupportedFormatError, match=r"unsupported file type.*NIfTI") as error:
        read_volume(path)
    assert_names_file(error, path)
    with pytest.raises(UnsupportedFormatError):
        find_volumes(path)


def test_single_dicom_file_points_to_its_folder(tmp_path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(b"\0" * 132)
    with pytest.raises(UnsupportedFormatError, match="open the folder"):
        read_volume(path)


def test_folder_without_volumes(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="no DICOM series"):
        read_volume(tmp_path)
    with pytest.raises(UnsupportedFormatError, match="holds no volumes"):
        find_volumes(tmp_path)


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    before = sha256(path)
    with pytest.raises(CorruptVolumeError, match="not a readable NIfTI") as error:
        read_volume(path)
    assert_names_file(error, path)
    assert sha256(path) == before


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"plain text pretending to be gzip")
    with pytest.raises(CorruptVolumeError, match="not a readable NIfTI"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti(ixi_t1, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    nib.save(nib.load(ixi_t1), full)
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CorruptVolumeError, match="truncated or corrupt") as error:
        read_volume(path)
    assert_names_file(error, path)


def test_truncated_metaimage(ixi_t1, tmp_path):
    path = tmp_path / "scan.mha"
    sitk.WriteImage(sitk.ReadImage(str(ixi_t1)), str(path))
    path.write_bytes(path.read_bytes()[:-100_000])
    with pytest.raises(CorruptVolumeError, match="truncated or corrupt") as error:
        read_volume(path)
    assert_names_file(error, path)


def test_metaimage_header_without_its_raw_file(ixi_t1, tmp_path):
    path = tmp_path / "scan.mhd"
    sitk.WriteImage(sitk.ReadImage(str(ixi_t1)), str(path))
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(path)
    assert_names_file(error, path)
    assert "ITK ERROR" not in str(error.value) and "0x" not in str(error.value)


def test_2d_image(ixi_t1, tmp_path):
    reference = nib.load(ixi_t1)
    slice_2d = np.asanyarray(reference.dataobj)[:, :, 40].astype(np.float32)
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(slice_2d, reference.affine), path)
    with pytest.raises(VolumeShapeError, match=r"2D image \(120x120\)") as error:
        read_volume(path)
    assert_names_file(error, path)
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(slice_2d[:, :, None], reference.affine), single)
    with pytest.raises(VolumeShapeError, match=r"2D image \(120x120x1\)"):
        read_volume(single)


def test_4d_series(ixi_t1, tmp_path):
    reference = nib.load(ixi_t1)
    data = np.asanyarray(reference.dataobj).astype(np.float32)
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, data, data], axis=-1), reference.affine), path)
    with pytest.raises(VolumeShapeError, match=r"4D \(120x120x90x3\): 3 volumes") as error:
        read_volume(path)
    assert_names_file(error, path)
    # a trailing singleton axis is just a 3D volume
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(data[..., None], reference.affine), single)
    assert read_volume(single).shape == (120, 120, 90)


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    image = sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(image, str(path))
    with pytest.raises(UnsupportedFormatError, match="3 components per voxel"):
        read_volume(path)


def header_only_nifti(path, shape, payload=b"\0" * 4):
    """A NIfTI file whose header claims ``shape`` float32 voxels, followed by a few bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(payload)
    return path


def test_empty_array(tmp_path):
    path = header_only_nifti(tmp_path / "empty.nii", (0, 10, 10))
    with pytest.raises(VolumeShapeError, match=r"holds no voxels \(shape 0x10x10\)") as error:
        read_volume(path)
    assert_names_file(error, path)


def test_nan_and_inf_voxels(ixi_t1, tmp_path):
    reference = nib.load(ixi_t1)
    data = np.asanyarray(reference.dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    data[20, 20, 20] = np.inf
    data[30, 30, 30] = -np.inf
    path = nifti_like(tmp_path / "nan.nii.gz", data, reference)
    before = sha256(path)
    with pytest.raises(NonFiniteVoxelsError, match="1 NaN and 2 infinite voxels") as error:
        read_volume(path)
    assert_names_file(error, path)
    with pytest.warns(NonFiniteVoxelsWarning, match="replaced 1 NaN and 2 infinite"):
        volume = read_volume(path, nonfinite="zero")
    assert np.isfinite(volume.data).all()
    assert volume.data[10, 10, 10] == 0 and volume.data[20, 20, 20] == 0
    assert sha256(path) == before
    with pytest.raises(ValueError, match="valid choices: 'error', 'zero'"):
        read_volume(path, nonfinite="ignore")


def test_volume_too_large_for_memory(ixi_t1, tmp_path):
    with pytest.raises(VolumeTooLargeError, match=r"needs 9\.9 MiB of memory but only 1\.0 MiB"):
        read_volume(ixi_t1, max_bytes=1024 * 1024)
    # A header that claims 8000^3 float32 voxels (1.9 TB) is refused before any data is read.
    path = header_only_nifti(tmp_path / "huge.nii", (8000, 8000, 8000), b"\0" * 1024)
    with pytest.raises(VolumeTooLargeError, match=r"8000x8000x8000 volume needs 1\.9 TiB") as error:
        read_volume(path)
    assert_names_file(error, path)
