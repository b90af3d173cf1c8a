"""Real lesion shapes implanted into healthy brains (``synth.lesion_implants``), the
segmenter's stream of them in any contrast, and the diffusion slices that carry their own
noise."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared


@pytest.fixture(scope="module")
def scans():
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import prepare_scans

    ixi = shared("ixi-t1-2mm")
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:1]
    return prepare_scans(cases, ModelSpace(spacing=(2.0, 2.0, 2.0)), labels=True)


@pytest.mark.parametrize("polarity", ["darker", "brighter"])
def test_implanted_lesions_change_the_image_where_the_target_says(scans, polarity):
    from scipy.ndimage import binary_dilation

    from napari_medood.synth.lesion_implants import LesionImplanter

    scan = scans[0]
    implanter = LesionImplanter(polarity=polarity)
    image, target, drawn = implanter(scan.image, scan.mask, 5, np.random.default_rng(3))
    assert drawn["brighter"] is (polarity == "brighter")
    assert 1 <= len(drawn["lesions"]) <= 5
    lesion = target > 0
    assert 0 < lesion.sum() <= sum(d["voxels"] for d in drawn["lesions"])  # they may overlap
    assert not (lesion & ~scan.mask).any()  # inside the brain only
    # the tissue under a lesion is darker (brighter) by the drawn factors
    ratio = image[lesion].mean() / scan.image[lesion].mean()
    factors = [d["factor"] for d in drawn["lesions"]]
    assert (ratio < 1) if polarity == "darker" else (ratio > 1)
    assert min(factors) - 0.05 <= ratio <= max(factors) + 0.05
    # every lesion drawn is labelled: beyond its soft edge nothing changed, and within the
    # edge the change is small; the scan itself is untouched
    assert len(drawn["lesions"]) == 5
    far = ~binary_dilation(lesion, iterations=5)
    assert np.array_equal(image[far], scan.image[far])
    edge = ~binary_dilation(lesion, iterations=2)
    change = np.abs(image - scan.image)
    assert change[edge].max() < 0.5 * change[lesion].max()
    assert not np.shares_memory(image, scan.image)


def test_any_polarity_draws_both_and_a_seed_draws_the_same(scans):
    from napari_medood.synth.lesion_implants import LesionImplanter

    scan = scans[0]
    implanter = LesionImplanter()
    seen = {
        implanter(scan.image, scan.mask, 1, np.random.default_rng(seed))[2]["brighter"]
        for seed in range(12)
    }
    assert seen == {True, False}
    first = implanter(scan.image, scan.mask, 3, np.random.default_rng(7))
    again = implanter(scan.image, scan.mask, 3, np.random.default_rng(7))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    with pytest.raises(ValueError, match="polarity"):
        LesionImplanter(polarity="sideways")


def test_the_segmenters_stream_implants_lesions_in_own_and_random_contrasts(scans):
    from napari_medood.training.segmenter import SegTrainConfig, training_patches

    config = SegTrainConfig(
        train="-", implant_lesions=[1, 3], contrast_randomisation=0.5, patch=[64, 64, 64]
    ).validate()
    dataset = training_patches(config, scans, 24, seed=0)
    kinds, with_lesions = [], 0
    for index in range(24):
        image, target, kind = dataset.sample(index)
        assert image.shape == target.shape == (64, 64, 64)
        assert set(np.unique(target)) <= {0.0, 1.0}
        kinds.append(kind)
        with_lesions += bool(target.any())
    assert {"implanted", "contrast+implanted"} == set(kinds)
    assert with_lesions >= 20  # a shape cut away by the patch edge can leave none
    # the same item again is the same (every worker, every resumed run)
    assert np.array_equal(dataset.sample(5)[0], dataset.sample(5)[0])
    with pytest.raises(Exception, match="implant_lesions"):
        SegTrainConfig(train="-", implant_lesions=[3, 1]).validate()


def test_diffusion_slices_carry_their_own_noise_and_step(tmp_path):
    import torch

    from napari_medood.io.cohort import discover_cases
    from napari_medood.io.lmdb_cache import SliceLMDB
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.diffusion import (
        DiffusionTrainConfig,
        SliceSamples,
        write_slice_cache,
    )

    ixi = shared("ixi-t1-2mm")
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:1]
    write_slice_cache(cases, ModelSpace(spacing=(4.0, 4.0, 4.0)), tmp_path / "cache")
    process = DiffusionTrainConfig(train="-").process()
    with SliceLMDB(tmp_path / "cache") as cache:
        samples = SliceSamples(cache, (32, 32), 8, 0, True, process=process)
        image, noise, step = samples[3]
        again = samples[3]
        assert image.shape == noise.shape == (1, 32, 32)
        assert torch.equal(image, again[0]) and torch.equal(noise, again[1]) and step == again[2]
        assert 0 <= step < process.timesteps
        assert abs(float(noise.mean())) < 1e-4 and abs(float(noise.std()) - 1) < 1e-2
        others = [samples[i][1] for i in range(4)]
        assert not torch.equal(others[0], others[1])  # each item its own field


@pytest.mark.parametrize("polarity", ["darker", "brighter"])
def test_a_tumour_like_lesion_has_a_core_inside_a_milder_halo_both_labelled(scans, polarity):
    from napari_medood.synth.lesion_implants import LesionImplanter

    scan = scans[0]
    implanter = LesionImplanter(polarity=polarity, tumour_p=1.0)
    image, target, drawn = implanter(scan.image, scan.mask, 0, np.random.default_rng(11))
    tumour = drawn["tumour"]
    assert drawn["lesions"] == [] and tumour["core_voxels"] > 0 and tumour["halo_voxels"] > 0
    assert (target > 0).sum() >= tumour["core_voxels"] + tumour["halo_voxels"] * 0.5
    # the core changed more than its halo, both in the lesion's direction: the most changed
    # voxels are the core's factor, and much of the halo is at the halo's
    tissue = (target > 0) & (scan.image > 0.05)  # a ratio of the tissue's own intensity
    change = image[tissue] / scan.image[tissue]
    extreme = change.min() if polarity == "darker" else change.max()
    assert extreme == pytest.approx(tumour["factor"], abs=0.02)
    halo = np.abs(change - tumour["halo_factor"]) < 0.02
    assert halo.sum() > 0.3 * tumour["halo_voxels"]
    farther = tumour["factor"] < tumour["halo_factor"] < 1
    assert farther if polarity == "darker" else 1 < tumour["halo_factor"] < tumour["factor"]
    # none without tumour_p, and the same draws as before for the other lesions
    plain = LesionImplanter(polarity=polarity)
    assert "tumour" not in plain(scan.image, scan.mask, 2, np.random.default_rng(11))[2]


def test_no_lesion_of_the_test_patients_is_in_the_shipped_bank():
    """The MS patients 07 and 19 are what the lesion tables measure on: their lesions'
    shapes must not be what the segmenters learnt from."""
    from napari_medood.synth.lesions import LesionShapeBank

    bank = LesionShapeBank.default()
    masks = shared("open-ms-lesjak-mni") / "lesion-masks"
    theirs = LesionShapeBank.from_mask_files(
        sorted(masks.glob("patient07_*.nii.gz")) + sorted(masks.glob("patient19_*.nii.gz")),
        min_voxels=50,
        max_extent=128,
    )
    assert len(theirs) >= 10  # the check below compares against real shapes
    held = {(m.shape, m.tobytes()) for m in bank.masks}
    pairs = zip(theirs.sources, theirs.masks, strict=True)
    assert not [s for s, m in pairs if (m.shape, m.tobytes()) in held]
    assert not [s for s in bank.sources if s.startswith(("patient07", "patient19"))]
    # the other patients' lesions are there: the same filters find them in the bank
    others = LesionShapeBank.from_mask_files(sorted(masks.glob("patient0[1-4]_*.nii.gz")))
    assert any((m.shape, m.tobytes()) in held for m in others.masks)
