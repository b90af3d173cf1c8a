"""Contrast randomisation (SynthSeg-style images from a parcellation, issue 12): seeded,
on the label map's geometry, a different contrast per seed, lesion-like blobs, workers, and
the U-Net's training samples drawn from it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared
from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser

#: no artefacts, no spread and no blobs: the image is the drawn means, label by label
PLAIN = {
    "std_range": (0.0, 0.0),
    "lesions": (0, 0),
    "blur": (0.0, 0.0),
    "bias": 0.0,
    "noise": (0.0, 0.0),
    "log_gamma": (0.0, 0.0),
}


@pytest.fixture(scope="module")
def dlmuse():
    """A real DLMUSE parcellation (IXI, 2 mm) and its T1, as stored."""
    import nibabel as nib

    folder = shared("ixi-t1-2mm")
    labels = nib.load(folder / "dlmuse" / "IXI012-HH-1211-T1_ds_DLMUSE.nii.gz")
    t1 = nib.load(folder / "t1" / "IXI012-HH-1211-T1_ds.nii.gz")
    return np.asarray(labels.dataobj).astype(np.int32), t1.get_fdata().astype(np.float32)


def structure_of(labels: np.ndarray) -> np.ndarray:
    table = np.zeros(int(labels.max()) + 1, np.int32)
    for label, group in DLMUSE_STRUCTURES.items():
        if label < table.size:
            table[label] = group
    return table[labels]


def test_every_dlmuse_label_of_the_shared_scans_has_a_structure():
    import nibabel as nib

    for path in sorted(shared("ixi-t1-2mm", "dlmuse").glob("*.nii.gz")):
        present = set(np.unique(np.asarray(nib.load(path).dataobj)).astype(int)) - {0}
        assert present <= set(DLMUSE_STRUCTURES), (path.name, present - set(DLMUSE_STRUCTURES))


def test_the_same_seed_draws_the_same_image_and_blobs(dlmuse):
    labels, _ = dlmuse
    randomiser = ContrastRandomiser(groups=DLMUSE_STRUCTURES, lesions=(2, 2))
    first, again = randomiser(labels, 7), randomiser(labels, 7)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.target, again.target)
    assert first.params == again.params
    other = randomiser(labels, 8)
    assert not np.array_equal(first.image, other.image)


def test_the_image_keeps_the_label_geometry(dlmuse):
    labels, _ = dlmuse
    sample = ContrastRandomiser(groups=DLMUSE_STRUCTURES, **PLAIN)(labels, 3)
    assert sample.image.shape == labels.shape and sample.image.dtype == np.float32
    structure = structure_of(labels)
    # one intensity per structure, and (the means being continuous draws) a different one
    # for every structure: the image's edges are exactly the structures' borders
    values = {}
    for group in np.unique(structure):
        inside = sample.image[structure == group]
        assert np.ptp(inside) < 1e-5, group
        values[int(group)] = float(inside[0])
    assert len({round(v, 5) for v in values.values()}) == len(values)
    # with every artefact on, the structures still explain most of the image's variance
    full = ContrastRandomiser(groups=DLMUSE_STRUCTURES, lesions=(0, 0))(labels, 3)
    brain = labels > 0
    image, groups = full.image[brain], structure[brain]
    means = np.bincount(groups, weights=image) / np.maximum(np.bincount(groups), 1)
    explained = 1 - np.var(image - means[groups]) / np.var(image)
    assert explained > 0.5


def test_contrasts_differ_across_seeds(dlmuse):
    labels, t1 = dlmuse
    randomiser = ContrastRandomiser(groups=DLMUSE_STRUCTURES)
    structure = structure_of(labels)
    white, cortex = structure == DLMUSE_STRUCTURES[81], structure == DLMUSE_STRUCTURES[100]
    brighter_white = []
    correlations = []
    reference = randomiser(labels, 0).image[labels > 0]
    for seed in range(1, 13):
        image = randomiser(labels, seed).image
        brighter_white.append(np.median(image[white]) > np.median(image[cortex]))
        correlations.append(np.corrcoef(reference, image[labels > 0])[0, 1])
    # white matter brighter than cortex (T1-like) in some draws, darker (T2-like) in others
    assert 0 < sum(brighter_white) < len(brighter_white)
    assert min(correlations) < 0.5
    # the real T1 is one contrast among them: the draws are not all near it
    t1_brain = t1[labels > 0]
    assert (
        min(
            abs(np.corrcoef(t1_brain, randomiser(labels, s).image[labels > 0])[0, 1])
            for s in range(1, 13)
        )
        < 0.5
    )


def test_lesion_blobs_stand_out_from_the_tissue_under_them(dlmuse):
    labels, _ = dlmuse
    randomiser = ContrastRandomiser(groups=DLMUSE_STRUCTURES, **{**PLAIN, "lesions": (3, 3)})
    structure = structure_of(labels)
    blobs = 0
    for seed in range(6):
        sample = randomiser(labels, seed)
        assert sample.target.max() <= 1.0 and sample.target.min() >= 0.0
        assert not np.any(sample.target[labels == 0]), "a blob outside the brain"
        blobs += sum(blob["voxels"] > 0 for blob in sample.params["lesions"])
        # outside the blobs each structure still holds one intensity: nothing leaked
        outside = sample.target == 0
        tissue = {}
        for group in np.unique(structure[outside]):
            values = sample.image[outside & (structure == group)]
            assert np.ptp(values) < 1e-5
            tissue[int(group)] = float(values[0])
        # inside, the blob is brighter or darker than that tissue by at least the smallest
        # drawn contrast (the final rescaling to [0, 1] only stretches differences)
        core = sample.target >= 0.999
        if core.any():
            under = np.array([tissue[int(g)] for g in structure[core]])
            assert np.median(np.abs(sample.image[core] - under)) >= randomiser.lesion_contrast[0]
    assert blobs >= 6


def test_the_generator_runs_in_a_dataloader_with_workers(dlmuse):
    import torch
    from torch.utils.data import DataLoader, Dataset

    labels, _ = dlmuse
    randomiser = ContrastRandomiser(groups=DLMUSE_STRUCTURES)

    class Draws(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            sample = randomiser(labels[::2, ::2, ::2], [5, index])
            return torch.from_numpy(sample.image), torch.from_numpy(sample.target)

    loaded = list(DataLoader(Draws(), batch_size=None, num_workers=2))
    for index, (image, target) in enumerate(loaded):
        expected = randomiser(labels[::2, ::2, ::2], [5, index])
        # a worker runs torch on one thread: the blur's sums may round differently
        assert np.allclose(image.numpy(), expected.image, atol=1e-5)
        assert np.array_equal(target.numpy(), expected.target)


def test_bad_label_maps_and_settings_are_refused():
    with pytest.raises(ValueError, match="3D array of integers"):
        ContrastRandomiser()(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        ContrastRandomiser()(-np.ones((4, 4, 4), np.int32))
    with pytest.raises(ValueError, match="mean_range"):
        ContrastRandomiser(mean_range=(1.0, 0.0))


def test_training_samples_drawn_in_random_contrasts_are_normalised_with_blob_targets():
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import SyntheticAnomalyPatches, prepare_scans

    ixi = shared("ixi-t1-2mm")
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:1]
    space = ModelSpace(spacing=(2.0, 2.0, 2.0))
    (scan,) = prepare_scans(cases, space, labels=True)
    # the parcellation came along on the model-space grid, and its brain is the mask
    assert scan.labels.shape == scan.image.shape
    assert np.array_equal(scan.labels > 0, scan.mask)
    dataset = SyntheticAnomalyPatches(
        [scan],
        (48, 48, 48),
        40,
        seed=2,
        p_anomaly=0.0,
        contrast=ContrastRandomiser(groups=DLMUSE_STRUCTURES, lesions=(1, 3)),
        p_contrast=1.0,
        normalisation=space.normalisation,
    )
    kinds, blob_targets = [], 0
    for index in range(12):
        image, target, kind = dataset.sample(index)
        kinds.append(kind)
        assert image.shape == target.shape == (48, 48, 48)
        assert kind.startswith("contrast+")
        blob_targets += bool(target.any())
        assert target.min() >= 0.0 and target.max() <= 1.0
    assert blob_targets >= 3
    # the same draws again (the generator is seeded by index), and the real scan otherwise
    assert np.array_equal(dataset.sample(3)[0], dataset.sample(3)[0])
    real = SyntheticAnomalyPatches([scan], (48, 48, 48), 4, seed=2, p_anomaly=0.0)
    assert real.sample(0)[2] == "normal"
    with pytest.raises(ValueError, match="parcellation"):
        SyntheticAnomalyPatches(
            [prepare_scans(cases, space)[0]],
            (48, 48, 48),
            4,
            contrast=ContrastRandomiser(),
            p_contrast=0.5,
        )


def test_a_brain_mask_is_refused_as_a_parcellation(tmp_path):
    from dataclasses import replace

    import nibabel as nib

    from napari_medood.errors import MedoodError
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import prepare_scans

    ixi = shared("ixi-t1-2mm")
    (case,) = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:1]
    parcellation = nib.load(case.mask)
    binary = tmp_path / case.mask.name
    nib.save(
        nib.Nifti1Image(
            (np.asarray(parcellation.dataobj) > 0).astype(np.uint8), parcellation.affine
        ),
        binary,
    )
    case = replace(case, mask=binary)
    with pytest.raises(MedoodError, match="single label"):
        prepare_scans([case], ModelSpace(spacing=(2.0, 2.0, 2.0)), labels=True)


def test_resolution_augmentation_smooths_the_whole_patch_and_keeps_it_normal():
    """p_resolution=1 on normal samples: the same patch, smoothed inside the brain (its
    fine detail lower), zero outside, target still all normal; a config refuses nonsense."""
    from scipy import ndimage

    from napari_medood.errors import MedoodError
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.config import load_config
    from napari_medood.training.data import SyntheticAnomalyPatches, prepare_scans, smoothed

    ixi = shared("ixi-t1-2mm")
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:1]
    (scan,) = prepare_scans(cases, ModelSpace(spacing=(2.0, 2.0, 2.0)))
    common = {"seed": 4, "p_anomaly": 0.0, "flip_p": 0.0}
    sharp = SyntheticAnomalyPatches([scan], (48, 48, 48), 6, **common)
    smooth = SyntheticAnomalyPatches([scan], (48, 48, 48), 6, **common, p_resolution=1.0)
    for index in range(6):
        plain, plain_target, plain_kind = sharp.sample(index)
        image, target, kind = smooth.sample(index)
        assert kind == "smooth+normal" and plain_kind == "normal"
        assert not target.any() and not plain_target.any()
        brain = plain > 0
        # nothing leaks beyond the brain (its darkest percent is 0 inside, hence the margin)
        assert not image[~ndimage.binary_dilation(brain, iterations=2)].any()
        detail = np.abs(np.diff(plain, axis=0))[brain[1:] & brain[:-1]].mean()
        smoothed_detail = np.abs(np.diff(image, axis=0))[brain[1:] & brain[:-1]].mean()
        assert smoothed_detail < 0.8 * detail
        # the brain's mean intensity is kept: its edge is not darkened by the zeros beyond
        assert image[brain].mean() == pytest.approx(plain[brain].mean(), rel=0.05)
    # a blur of zero changes nothing
    mask = scan.mask
    np.testing.assert_allclose(smoothed(scan.image, mask, (0, 0, 0)), scan.image, atol=1e-6)
    with pytest.raises(MedoodError, match="resolution_blur"):
        load_config(None, ["train=x", "resolution_blur=[1.0, 0.5]"]).validate()
    with pytest.raises(MedoodError, match="resolution_augmentation"):
        load_config(None, ["train=x", "resolution_augmentation=2"]).validate()
