"""Preprocessing on real scans: normalisation presets, resampling there and back, masks, crops."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medood.errors import GridMismatchError, PreprocessingError
from napari_medood.io import Volume, read_volume, write_nifti
from napari_medood.preprocessing import (
    align_to_grid,
    crop,
    foreground_box,
    grid_with_spacing,
    load_mask,
    mask_from_threshold,
    normalise,
    paste,
    resample_to_grid,
    resample_to_spacing,
)


@pytest.fixture
def ixi(ixi_t1):
    return read_volume(ixi_t1)


@pytest.fixture
def brain(ixi_parcellation):
    return read_volume(ixi_parcellation).data > 0


# ------------------------------------------------------------------------- normalisation
def test_percentile_in_mask_maps_percentiles_to_unit_range(ixi, brain):
    out = normalise(ixi.data, "percentile", brain, lower=1, upper=99)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    inside = out[brain]
    # 1 % of the brain voxels sit at 0, 1 % at 1 (the clipped tails), up to ties
    assert 0.009 <= np.mean(inside == 0) <= 0.02
    assert 0.009 <= np.mean(inside == 1) <= 0.02
    p1, p99 = np.percentile(ixi.data[brain], [1, 99])
    voxel = np.argwhere(brain & (ixi.data > p1) & (ixi.data < p99))[0]
    expected = (ixi.data[tuple(voxel)] - p1) / (p99 - p1)
    assert out[tuple(voxel)] == pytest.approx(expected, rel=1e-5)
    assert ixi.data.dtype == np.float64, "the input array is left as it was"


def test_zscore_of_nonzero_voxels(ixi):
    out = normalise(ixi.data, "zscore")
    nonzero = ixi.data != 0
    assert out[nonzero].mean() == pytest.approx(0, abs=1e-4)
    assert out[nonzero].std() == pytest.approx(1, abs=1e-4)
    assert np.all(out[~nonzero] == 0)


def test_minmax_and_clip01(ixi, brain):
    out = normalise(ixi.data, "minmax", brain)
    assert out[brain].min() == 0 and out[brain].max() == pytest.approx(1)
    clipped = normalise(np.array([[[-0.5, 0.25, 1.5]]]), "clip01")
    np.testing.assert_array_equal(clipped, [[[0.0, 0.25, 1.0]]])


def test_normalisation_errors_are_clear(ixi):
    with pytest.raises(ValueError, match=r"unknown normalisation 'zscor'.*Did you mean 'zscore'"):
        normalise(ixi.data, "zscor")
    with pytest.raises(PreprocessingError, match="mask is empty"):
        normalise(ixi.data, "percentile", np.zeros(ixi.shape, bool))
    with pytest.raises(PreprocessingError, match="percentiles are equal"):
        normalise(np.ones((4, 4, 4)), "percentile")


# ----------------------------------------------------------------------------- resampling
def test_resample_to_1mm_and_exactly_back(ixi, brain):
    fine = resample_to_spacing(ixi, 1.0)
    assert fine.shape == (240, 240, 180)
    np.testing.assert_allclose(fine.spacing, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(fine.origin, ixi.origin)  # voxel (0,0,0) stays put
    np.testing.assert_allclose(fine.direction, ixi.direction)
    # every 2 mm voxel centre is a 1 mm voxel centre: there holds the original value
    np.testing.assert_allclose(fine.data[::2, ::2, ::2], ixi.data, rtol=1e-5, atol=1e-3)
    back = resample_to_grid(fine, ixi.grid)
    assert back.shape == ixi.shape
    np.testing.assert_array_equal(back.affine, ixi.affine)
    np.testing.assert_allclose(back.data, ixi.data, rtol=1e-5, atol=1e-3)


def test_resample_down_and_back_stays_close(ixi, brain):
    coarse = resample_to_spacing(ixi, 3.0)
    assert coarse.shape == (80, 80, 60)
    back = resample_to_grid(coarse, ixi.grid)
    np.testing.assert_array_equal(back.affine, ixi.affine)
    error = np.abs(back.data - ixi.data)[brain].mean() / ixi.data[brain].mean()
    assert error < 0.15, error


def test_label_round_trip_is_exact_with_nearest(ixi, brain):
    mask = ixi.with_data(brain.astype(np.uint8))
    fine = resample_to_spacing(mask, 1.0, interpolation="nearest")
    assert fine.data.dtype == np.uint8
    back = resample_to_grid(fine, mask.grid, interpolation="nearest")
    np.testing.assert_array_equal(back.data, mask.data)


def test_resampling_keeps_anatomy_in_place(ixi, brain):
    """The brain's centre of mass is at the same world position before and after."""
    mask = ixi.with_data(brain.astype(np.float32))
    coarse = resample_to_spacing(mask, (3.0, 2.5, 4.0))

    def centroid(volume):
        weights = volume.data / volume.data.sum()
        ijk = np.stack(np.meshgrid(*map(np.arange, volume.shape), indexing="ij"), -1)
        return volume.voxel_to_world((ijk * weights[..., None]).reshape(-1, 3).sum(0))

    np.testing.assert_allclose(centroid(coarse), centroid(mask), atol=0.5)


def test_grid_with_spacing_validates():
    grid = Volume(np.zeros((4, 4, 4)), np.eye(4)).grid
    with pytest.raises(ValueError, match="positive"):
        grid_with_spacing(grid, 0)
    with pytest.raises(ValueError, match=r"unknown interpolation 'bicubic'"):
        resample_to_grid(Volume(np.zeros((4, 4, 4)), np.eye(4)), grid, "bicubic")


# ----------------------------------------------------------------------------------- masks
def test_otsu_head_mask_contains_the_brain(ixi, brain):
    head = mask_from_threshold(ixi.data, "otsu")
    assert head.dtype == bool
    assert (head & brain).sum() / brain.sum() > 0.995
    assert head.sum() < ixi.data.size * 0.6


def test_threshold_mask_errors(ixi):
    with pytest.raises(PreprocessingError, match="mask is empty"):
        mask_from_threshold(ixi.data, 1e9)
    with pytest.raises(ValueError, match="'otsu'"):
        mask_from_threshold(ixi.data, "triangle")


def test_mask_file_on_the_image_grid(ixi, ixi_parcellation, brain):
    np.testing.assert_array_equal(load_mask(ixi_parcellation, ixi.grid), brain)


def test_mask_stored_in_another_axis_order_is_aligned(ixi, brain, tmp_path):
    """A mask saved in RAS order for an image stored PSR covers the same voxels."""
    ras = nib.as_closest_canonical(nib.Nifti1Image(brain.astype(np.uint8), ixi.affine))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, tmp_path / "mask_ras.nii.gz")
    np.testing.assert_array_equal(load_mask(tmp_path / "mask_ras.nii.gz", ixi.grid), brain)


def test_mask_on_another_grid_is_refused(ixi, brain, ms_lesions, tmp_path):
    with pytest.raises(GridMismatchError, match=r"another voxel grid.*resample it") as error:
        load_mask(ms_lesions, ixi.grid)
    assert error.value.path == ms_lesions
    empty = write_nifti(
        ixi.with_data(np.zeros(ixi.shape, np.uint8)), tmp_path / "e.nii.gz", kind="labels"
    )
    with pytest.raises(GridMismatchError, match="mask is empty"):
        load_mask(empty, ixi.grid)
    shifted = Volume(brain.astype(np.uint8), ixi.affine @ np.diag([1, 1, 1.5, 1]))
    with pytest.raises(GridMismatchError):
        align_to_grid(shifted, ixi.grid)


# ------------------------------------------------------------------------------- cropping
def test_crop_to_brain_and_paste_back(ixi, brain):
    box = foreground_box(brain, margin=2)
    assert all(0 <= a < b <= n for a, b, n in zip(box.start, box.stop, ixi.shape, strict=True))
    cropped = crop(ixi, box)
    assert cropped.shape == box.shape and np.prod(box.shape) < 0.6 * ixi.data.size
    # a voxel of the crop is at the same world position as the voxel it came from
    np.testing.assert_allclose(
        cropped.voxel_to_world([3, 4, 5]),
        ixi.voxel_to_world(np.add(box.start, [3, 4, 5])),
    )
    restored = paste(cropped.data, box)
    np.testing.assert_array_equal(restored[brain], ixi.data[brain])
    assert np.all(
        restored[
            ~np.pad(
                np.ones(box.shape, bool),
                list(zip(box.start, np.subtract(ixi.shape, box.stop), strict=True)),
            )
        ]
        == 0
    )
    with pytest.raises(PreprocessingError, match="empty"):
        foreground_box(np.zeros((3, 3, 3), bool))
