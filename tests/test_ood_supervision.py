"""Anomaly-free samples as supervision (issue 13, the Med-OoD method in 3D): labelled objects
removed (blacked out or inpainted), the hard-negative filter and the ratio rule."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared

FLAIR = "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
LESIONS = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


@pytest.fixture(scope="module")
def patient():
    """MS patient 07's FLAIR (1 mm MNI) around its lesions, with their consensus mask."""
    from napari_medood.io import read_volume

    folder = shared("open-ms-lesjak-mni", "patient07")
    image = read_volume(folder / FLAIR).data.astype(np.float32)
    lesions = read_volume(folder / LESIONS).data > 0.5
    where = np.argwhere(lesions)
    low, high = np.maximum(where.min(0) - 12, 0), where.max(0) + 13
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    return image[box], lesions[box]


@pytest.mark.parametrize("mode", ["black", "inpaint"])
def test_removed_objects_leave_no_lesion_and_every_other_voxel(patient, mode):
    from scipy import ndimage

    from napari_medood.synth.ood_supervision import remove_objects

    image, lesions = patient
    brain = image > 0
    source = image.copy()
    out = remove_objects(image, lesions, mode, mask=brain)
    np.testing.assert_array_equal(image, source)  # the input is not written
    rim = ndimage.binary_dilation(lesions, iterations=1) if mode == "inpaint" else lesions
    np.testing.assert_array_equal(out[~rim], image[~rim])  # the rest kept exactly
    if mode == "black":
        assert not out[lesions].any()
        return
    # FLAIR lesions are bright: filled from the tissue around them, they are no longer
    ring = ndimage.binary_dilation(lesions, iterations=4) & ~rim & brain
    assert image[lesions].mean() > image[ring].mean() + 2 * image[ring].std() / 3
    assert out[lesions].mean() == pytest.approx(image[ring].mean(), rel=0.15)
    assert np.percentile(out[lesions], 95) < np.percentile(image[lesions], 50)


def test_nothing_labelled_changes_nothing_and_bad_input_is_named(patient):
    from napari_medood.synth.ood_supervision import remove_objects

    image, lesions = patient
    np.testing.assert_array_equal(remove_objects(image, np.zeros_like(lesions)), image)
    with pytest.raises(ValueError, match="unknown removal mode 'blur'.*'black', 'inpaint'"):
        remove_objects(image, lesions, "blur")
    with pytest.raises(ValueError, match="differ in shape"):
        remove_objects(image, lesions[1:])


def test_the_hard_negative_filter_keeps_exactly_where_the_baseline_fires():
    from napari_medood.synth.ood_supervision import hard_negatives

    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 0.4, (8, 8, 8)).astype(np.float32) for _ in range(6)]
    for index in (1, 4):  # a bright spot the baseline (intensity > 0.5) takes for foreground
        images[index][3, 3, 3] = 0.9
    samples = hard_negatives(images, lambda image: image, threshold=0.5)
    assert [s.hard for s in samples] == [False, True, False, False, True, False]
    assert [s.name for s in samples if s.hard] == ["ood_0001", "ood_0004"]
    assert samples[1].image is images[1]


def test_the_ratio_rule_picks_the_fraction_closest_to_0_65():
    from napari_medood.synth.ood_supervision import choose_ood_fraction

    # 65 samples hold foreground, 80 background (some both); 40 hard negatives to draw from:
    # 65 / (80 + 20) = 0.65 exactly at r = 0.5
    positive = [True] * 65 + [False] * 35
    negative = [True] * 80 + [False] * 20
    assert choose_ood_fraction(positive, negative, 40) == 0.5
    # already below the target without any: add none
    assert choose_ood_fraction([True] * 10, [True] * 100, 50) == 0.0
    # far above it: add them all
    assert choose_ood_fraction([True] * 100, [True] * 10, 20) == 1.0
