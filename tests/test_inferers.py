"""The slice-wise inferer beside the sliding window, on a real scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medood.errors import Cancelled
from napari_medood.inference.slicewise import slicewise_predict
from napari_medood.io import read_volume

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"


@pytest.fixture(scope="module")
def scan():
    image = read_volume(SAMPLE / "ixi048_t1_2mm.nii.gz").data.astype(np.float32)
    brain = read_volume(SAMPLE / "ixi048_brainmask_2mm.nii.gz").data > 0
    return image / image.max(), brain


def two_channel_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    return conv.eval()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_slice_gets_the_2d_model_and_empty_slices_stay_zero(scan, axis):
    image, brain = scan
    conv = two_channel_conv()
    values, stats = slicewise_predict(image, conv, axis, brain, batch_size=7)
    assert values.shape == (2, *image.shape)
    has_brain = np.moveaxis(brain, axis, 0).reshape(image.shape[axis], -1).any(1)
    assert stats == {
        "slices": image.shape[axis],
        "slices_run": int(has_brain.sum()),
        "batches": -(-int(has_brain.sum()) // 7),
    }
    index = int(np.flatnonzero(has_brain)[len(np.flatnonzero(has_brain)) // 2])
    plane = torch.from_numpy(np.ascontiguousarray(np.take(image, index, axis)))[None, None]
    with torch.no_grad():
        expected = conv(plane)[0].numpy()
    np.testing.assert_allclose(np.take(values, index, axis + 1), expected, atol=1e-6)
    empty = np.flatnonzero(~has_brain)
    assert empty.size and not np.take(values, empty, axis + 1).any()


def test_batching_does_not_change_the_result_and_cancel_stops_it(scan):
    image, brain = scan
    conv = two_channel_conv()
    one, _ = slicewise_predict(image, conv, 2, brain, batch_size=1)
    many, _ = slicewise_predict(image, conv, 2, brain, batch_size=32)
    np.testing.assert_allclose(one, many, atol=1e-6)
    reports = []
    with pytest.raises(Cancelled):
        slicewise_predict(
            image, conv, 2, brain, 4, progress=lambda *r: reports.append(r), cancelled=lambda: True
        )
    assert reports == [(0, int(np.any(brain, axis=(0, 1)).sum()), "slices")]
    with pytest.raises(ValueError, match="returned shape"):
        slicewise_predict(image, lambda batch: batch[:, :, :-1], 2, brain)
