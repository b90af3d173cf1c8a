"""Hostile inputs at the reading stage (issue 25): each ends as one clear line that names the
file, or as a note the user sees; never as a silent success, and the input is never touched.

Everything is built in ``tmp_path`` from small synthetic volumes, so each test takes a second.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from helpers import rotation, write_dicom_series
from napari_medood.cli._common import EXIT_ERROR, EXIT_OK
from napari_medood.cli.predict import main as predict_main
from napari_medood.detectors.compatibility import scan_notes
from napari_medood.errors import CorruptVolumeError, GridMismatchError, VolumeNotFoundError
from napari_medood.io import find_volumes, read_volume
from napari_medood.io.cohort import discover_cases, find_mask
from napari_medood.io.volume import Grid
from napari_medood.preprocessing.masks import load_mask


def md5(path: Path) -> str:
    """One digest of a file, or of every file in a folder (a DICOM series)."""
    digest = hashlib.md5()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def head(shape=(32, 32, 24), seed=0) -> np.ndarray:
    """A bright noisy ellipsoid on a dark background: enough of a scan for the intensity
    baseline (it finds the foreground by a threshold)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = sum(axis**2 for axis in grid) < 0.6
    data = np.where(inside, 400.0, 5.0) + rng.normal(0, 10, shape)
    return data.astype(np.float32)


def one_line_error(error, path: Path) -> str:
    """The message, after checking it names ``path`` first, on one line, without ITK text."""
    text = str(error.value)
    assert text.startswith(f"{path}: "), text
    assert error.value.path == path
    assert "\n" not in text
    for leak in ("ITK", ".cxx", ".hxx", "[nrrd]", "SimpleITK"):
        assert leak not in text, text
    assert not re.search(r"0x[0-9a-fA-F]{6,}", text), text  # no C++ object addresses
    return text


def run_predict(capsys, *argv: str) -> tuple[int, str]:
    """``medood-predict --model intensity ...``: its exit status and stderr; it must not let
    a numpy RuntimeWarning through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = predict_main(["--model", "intensity", *argv])
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not runtime, [str(w.message) for w in runtime]
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------- 1. DICOM series
SLICE_MM = 2.5


@pytest.fixture
def series(tmp_path) -> Path:
    """A 16x16x12 DICOM series, 2.5 mm between slices, files slice000.dcm ... slice011.dcm."""
    voxels = (np.arange(12 * 16 * 16).reshape(12, 16, 16) % 200).astype(np.int16)
    return write_dicom_series(voxels, tmp_path / "series", spacing=(0.8, 0.8, SLICE_MM))


def test_dicom_series_with_a_missing_slice_names_the_gap(series, capfd):
    (series / "slice005.dcm").unlink()
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(series)
    assert one_line_error(error, series) == (
        f"{series}: slices are not evenly spaced: a gap of 5 mm between slice004.dcm and "
        "slice006.dcm (the other slices are 2.5 mm apart); a slice is missing"
    )
    assert "WARNING" not in capfd.readouterr().err  # no raw ITK warning either


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda f: f.write_bytes(f.read_bytes()[:-100]), id="truncated"),
        pytest.param(lambda f: f.write_text("not a DICOM file\n"), id="text"),
    ],
)
def test_dicom_slice_that_cannot_be_read_is_named(series, spoil, capfd):
    victim = series / "slice005.dcm"
    spoil(victim)
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(series)
    text = one_line_error(error, victim)
    assert "is not a readable DICOM file" in text
    assert "a gap of 5 mm between slice004.dcm and slice006.dcm" in text
    assert "probably the missing slice" in text
    assert "WARNING" not in capfd.readouterr().err


def test_dicom_slices_unevenly_spaced(series, tmp_path):
    # slice010 from a copy of the series shifted by 0.5 mm: steps 3 mm, then 2 mm
    shifted = write_dicom_series(
        (np.zeros((12, 16, 16))).astype(np.int16),
        tmp_path / "shifted",
        spacing=(0.8, 0.8, SLICE_MM),
        origin=(-100.0, -120.0, 30.5),
    )
    (series / "slice010.dcm").write_bytes((shifted / "slice010.dcm").read_bytes())
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(series)
    assert one_line_error(error, series) == (
        f"{series}: slices are not evenly spaced: 3 mm between slice009.dcm and slice010.dcm "
        "(the other slices are 2.5 mm apart); the volume would be distorted"
    )


def test_dicom_slices_a_few_micrometres_off_read_silently(series, tmp_path, capfd):
    # rounding in the headers: within tolerance, and ITK's raw warning about it stays quiet
    shifted = write_dicom_series(
        (np.zeros((12, 16, 16))).astype(np.int16),
        tmp_path / "shifted",
        spacing=(0.8, 0.8, SLICE_MM),
        origin=(-100.0, -120.0, 30.004),
    )
    (series / "slice006.dcm").write_bytes((shifted / "slice006.dcm").read_bytes())
    assert read_volume(series).shape == (16, 16, 12)
    assert capfd.readouterr().err == ""


def test_dicom_folder_with_a_stray_file_still_reads(series, capfd):
    (series / "README.txt").write_text("exported by the scanner\n")
    volume = read_volume(series)
    assert volume.shape == (16, 16, 12)
    assert volume.spacing == pytest.approx((0.8, 0.8, SLICE_MM))
    assert "notes" not in volume.meta  # a text file is not a DICOM file left out
    # a damaged DICOM file beside a complete series: read, with a note that names it
    (series / "extra.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 20)
    volume = read_volume(series)
    assert volume.shape == (16, 16, 12)
    assert volume.meta["notes"] == [
        "extra.dcm in the DICOM folder could not be read as DICOM and was left out; the "
        "series has no gap, so no slice of it is missing"
    ]
    assert "WARNING" not in capfd.readouterr().err


def test_predict_on_a_dicom_series_with_a_gap_fails_clearly(series, tmp_path, capsys):
    (series / "slice005.dcm").unlink()
    before = md5(series)
    code, err = run_predict(capsys, str(series), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"{series}: slices are not evenly spaced: a gap of 5 mm" in err
    assert "WARNING" not in err
    assert md5(series) == before


# ------------------------------------------------------------ 2. NIfTI without voxel size
NO_VOXEL_SIZE = (
    "the header gives no voxel size (pixdim all 0, no sform/qform): 1 mm isotropic voxels "
    "were assumed; distances and volumes in ml may be wrong"
)


def nifti_without_voxel_size(path: Path, data: np.ndarray) -> Path:
    """A NIfTI-1 file as a broken exporter writes it: pixdim 0, sform and qform codes 0."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header["pixdim"][1:4] = 0.0
    header["sform_code"] = header["qform_code"] = 0
    header["vox_offset"] = 352
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(np.asarray(data, dtype="<f4").tobytes(order="F"))
    return path


def test_nifti_without_voxel_size_reads_with_a_note(tmp_path, capfd):
    data = head()
    path = nifti_without_voxel_size(tmp_path / "novox.nii", data)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert volume.meta["notes"] == [NO_VOXEL_SIZE]
    assert "pixdim" not in capfd.readouterr().err  # nibabel's own log line is taken in
    mask = np.ones(volume.shape, dtype=bool)
    assert scan_notes(volume, mask, False, None)[0] == NO_VOXEL_SIZE


def test_predict_prints_the_readers_note(tmp_path, capsys):
    path = nifti_without_voxel_size(tmp_path / "novox.nii", head())
    before = md5(path)
    code, err = run_predict(capsys, str(path), str(tmp_path / "out"))
    assert code == EXIT_OK, err
    assert f"note: novox: {NO_VOXEL_SIZE}" in err
    assert md5(path) == before


def test_an_ordinary_nifti_has_no_notes(tmp_path):
    path = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(head(), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    assert "notes" not in read_volume(path).meta


# ------------------------------------------------- 3. NRRD / MetaImage with missing data
def small_sitk_image() -> sitk.Image:
    return sitk.GetImageFromArray(head((12, 16, 16)).astype(np.int16))


def test_nhdr_whose_data_file_is_missing(tmp_path):
    path = tmp_path / "scan.nhdr"
    sitk.WriteImage(small_sitk_image(), str(path))
    (tmp_path / "scan.raw").unlink()
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(path)
    assert one_line_error(error, path) == f"{path}: its data file scan.raw is missing"


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_data_shorter_than_the_header_says(tmp_path, suffix, capfd):
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(small_sitk_image(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(path)
    assert one_line_error(error, path) == (
        f"{path}: the voxel data are shorter than the header says (6,044 of 6,144 bytes): "
        "the file is truncated or corrupt"
    )
    assert "MetaImage" not in capfd.readouterr().err  # MetaIO's own report is never reached


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_compressed_data_shorter_than_the_header_says(tmp_path, suffix):
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(small_sitk_image(), str(path), useCompression=True)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(path)
    assert "shorter than the header says" in one_line_error(error, path)


def test_predict_on_a_truncated_metaimage(tmp_path, capsys):
    path = tmp_path / "scan.mha"
    sitk.WriteImage(small_sitk_image(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    before = md5(path)
    code, err = run_predict(capsys, str(path), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"{path}: the voxel data are shorter than the header says" in err
    assert "ITK" not in err
    assert md5(path) == before


# ------------------------------------------------------------------- 4. absurd magnitudes
def test_values_near_1e37_are_refused(tmp_path):
    data = head()
    data[10, 10, 10] = 1e37
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(CorruptVolumeError) as error:
        read_volume(path)
    assert one_line_error(error, path) == (
        f"{path}: holds values up to 1e+37, beyond what intensities can be; the file is "
        "probably corrupt or mis-scaled"
    )
    # large but plausible values (a PET in Bq/ml, say) still read
    data[10, 10, 10] = 5e8
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    assert read_volume(path).data.max() == pytest.approx(5e8)


def test_predict_on_values_near_1e37_fails_without_numpy_warnings(tmp_path, capsys):
    data = head()
    data[10, 10, 10] = -3e37
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    before = md5(path)
    code, err = run_predict(capsys, str(path), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"failed: huge: {path}: holds values up to -3e+37, beyond what intensities" in err
    assert "RuntimeWarning" not in err and "overflow" not in err
    assert md5(path) == before


# -------------------------------------------------------------------- 5. symbolic links
def test_symlink_loop_as_input(tmp_path, capsys):
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    for read in (read_volume, find_volumes, discover_cases):
        with pytest.raises(VolumeNotFoundError) as error:
            read(loop)
        assert one_line_error(error, loop) == (
            f"{loop}: is a symbolic link that loops (it leads back to itself); fix or remove it"
        )
    with pytest.raises(VolumeNotFoundError, match="is a symbolic link that loops"):
        find_mask(loop, tmp_path / "scan.nii.gz")
    code, err = run_predict(capsys, str(loop), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"{loop}: is a symbolic link that loops" in err


def test_symlink_to_nothing_as_input(tmp_path):
    link = tmp_path / "scan.nii.gz"
    link.symlink_to(tmp_path / "moved-away.nii.gz")
    with pytest.raises(VolumeNotFoundError) as error:
        read_volume(link)
    assert one_line_error(error, link) == (
        f"{link}: is a symbolic link that points nowhere ({tmp_path / 'moved-away.nii.gz'} "
        "does not exist)"
    )


def test_symlink_loop_in_a_folder_is_named(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    good = scans / "good.nii.gz"
    nib.save(nib.Nifti1Image(head(), np.diag([2.0, 2.0, 2.0, 1.0])), good)
    (scans / "a.nii.gz").symlink_to(scans / "b.nii.gz")
    (scans / "b.nii.gz").symlink_to(scans / "a.nii.gz")
    with pytest.raises(VolumeNotFoundError) as error:
        find_volumes(scans)
    assert "is a symbolic link that loops" in one_line_error(error, scans / "a.nii.gz")
    before = md5(good)
    code, err = run_predict(capsys, str(scans), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"error: {scans / 'a.nii.gz'}: is a symbolic link that loops" in err
    assert md5(good) == before


def test_dangling_symlink_in_a_folder_is_a_listed_failure(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    good = scans / "good.nii.gz"
    nib.save(nib.Nifti1Image(head(), np.diag([2.0, 2.0, 2.0, 1.0])), good)
    (scans / "gone.nii.gz").symlink_to(tmp_path / "moved-away.nii.gz")
    (scans / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not a volume: not a case
    assert find_volumes(scans) == [scans / "gone.nii.gz", good]
    before = md5(good)
    code, err = run_predict(capsys, str(scans), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"failed: gone: {scans / 'gone.nii.gz'}: is a symbolic link that points nowhere" in err
    assert "1 written, 0 skipped, 1 failed: gone" in err
    assert (tmp_path / "out" / "good.nii.gz").exists()
    assert md5(good) == before


# ------------------------------------------------------------ 6. mask on another grid
def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_oblique_scan_with_a_straight_mask_says_what_differs(tmp_path):
    straight = np.diag([2.0, 2.0, 2.0, 1.0])
    straight[:3, 3] = (-30.0, -30.0, -20.0)
    oblique = straight.copy()
    oblique[:3, :3] = rotation(0, 12.0) @ straight[:3, :3]
    image = Grid((32, 32, 24), oblique)
    mask = save(tmp_path / "mask.nii.gz", np.ones((32, 32, 24), np.uint8), straight)
    with pytest.raises(GridMismatchError) as error:
        load_mask(mask, image)
    text = one_line_error(error, mask)
    assert text.startswith(
        f"{mask}: is on another voxel grid than the image (axes rotated by 12.0 degrees;"
    )
    assert text.endswith("resample it onto the image first")


def test_mask_shape_and_origin_differences_are_named(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = Grid((32, 32, 24), affine)
    moved = affine.copy()
    moved[:3, 3] = (8.0, 0.0, 0.0)
    mask = save(tmp_path / "mask.nii.gz", np.ones((30, 32, 24), np.uint8), moved)
    with pytest.raises(GridMismatchError) as error:
        load_mask(mask, image)
    assert "(shape 30x32x24 vs 32x32x24; origins 8.0 mm apart;" in one_line_error(error, mask)
    assert Grid((32, 32, 24), affine).differences(image) == []


def test_predict_with_an_oblique_mask_fails_clearly(tmp_path, capsys):
    straight = np.diag([2.0, 2.0, 2.0, 1.0])
    oblique = straight.copy()
    oblique[:3, :3] = rotation(2, 20.0) @ straight[:3, :3]
    scan = save(tmp_path / "scan.nii.gz", head(), oblique)
    mask = save(tmp_path / "mask.nii.gz", np.ones((32, 32, 24), np.uint8), straight)
    before = md5(scan), md5(mask)
    code, err = run_predict(capsys, "--mask", str(mask), str(scan), str(tmp_path / "out"))
    assert code == EXIT_ERROR
    assert f"{mask}: is on another voxel grid than the image (axes rotated by 20.0 degrees" in err
    assert (md5(scan), md5(mask)) == before
