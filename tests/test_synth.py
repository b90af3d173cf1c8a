"""Synthetic anomalies on real scans: the invariants of methods.md R1-R6."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medood.io import read_volume
from napari_medood.preprocessing import normalise
from napari_medood.synth import (
    ForeignPatchBank,
    LesionShapeBank,
    SyntheticAnomaly3D,
    blend,
    brush_mask,
    cuboid_mask,
    gaussian_kernel_1d,
    implant,
    sample_kernel_size,
    smooth_alpha,
    sphere_mask,
    uniform_noise_texture,
)
from napari_medood.synth.lesions import LesionBankError
from napari_medood.synth.validation import OUTLIER_KINDS, make_outlier


@pytest.fixture(scope="module")
def brain_patch():
    """A 1 mm MS-patient T1 (brain-extracted), normalised to [0, 1], cropped to 160x160x128."""
    from conftest import shared

    volume = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient19",
            "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    image = normalise(volume.data, "percentile", volume.data > 0)
    image[volume.data == 0] = 0
    return np.ascontiguousarray(image[11:171, 29:189, 30:158])


@pytest.fixture(scope="module")
def ixi():
    from conftest import IXI_SUBJECT, shared

    image = read_volume(shared("ixi-t1-2mm", "t1", f"{IXI_SUBJECT}-T1_ds.nii.gz"))
    brain = read_volume(shared("ixi-t1-2mm", "dlmuse", f"{IXI_SUBJECT}-T1_ds_DLMUSE.nii.gz"))
    return image, brain.data > 0


# ------------------------------------------------------------------------- R1 patch bank
def test_patch_bank_capacity_push_limit_and_single_use(brain_patch):
    bank = ForeignPatchBank(capacity=7, max_push_per_call=5, patch_size=64)
    rng = np.random.default_rng(0)
    assert bank.push_from(brain_patch, rng) == 5  # first call on one volume pushes <= 5
    assert bank.push_from(brain_patch, rng) == 2  # never beyond capacity
    assert bank.push_from(brain_patch, rng) == 0 and len(bank) == 7
    popped = [bank.pop(rng) for _ in range(7)]
    assert all(p.shape == (64, 64, 64) and p.dtype == np.float32 for p in popped)
    ids = {id(p) for p in popped}
    assert len(ids) == 7  # no patch handed out twice
    with pytest.raises(IndexError, match="empty"):
        bank.pop(rng)


def test_patch_bank_clips_patch_to_small_images():
    bank = ForeignPatchBank(patch_size=128)
    bank.push_from(np.ones((40, 50, 30), np.float32), 0)
    assert bank.pop(0).shape == (40, 50, 30)


# ---------------------------------------------------------------------------- R2 shapes
@pytest.mark.parametrize("seed", range(20))
def test_sphere_diameter_within_bounds(seed):
    shape = sphere_mask(128, seed, min_diameter=10, max_diameter=60)
    assert shape.voxels > 0
    assert all(9 <= e <= 61 for e in shape.extent), shape.extent
    assert max(shape.extent) - min(shape.extent) <= 1  # a ball, not an ellipsoid
    full = shape.full()
    assert full.shape == (128, 128, 128) and full.sum() == shape.voxels


@pytest.mark.parametrize("seed", range(20))
def test_cuboid_sides_within_bounds(seed):
    unrotated = cuboid_mask((96, 128, 64), seed, min_size=10, rotate_p=0.0)
    assert all(10 <= e <= n for e, n in zip(unrotated.extent, (96, 128, 64), strict=True))
    assert unrotated.voxels == np.prod(unrotated.extent)  # a solid axis-aligned box
    rotated = cuboid_mask(128, seed, min_size=10, max_size=40, rotate_p=1.0)
    assert rotated.voxels > 0
    assert max(rotated.extent) <= int(np.ceil(40 * np.sqrt(3))) + 2


def test_brush_shapes_match_the_reference_bank_statistics():
    """Tuned to the mood22 bank of 300 complex shapes (methods.md R2)."""
    rng = np.random.default_rng(1234)
    fractions, extents, components = [], [], []
    for _ in range(40):
        shape = brush_mask(128, rng)
        fractions.append(shape.voxels / 128**3)
        extents.append(max(shape.extent))
        components.append(ndimage.label(shape.mask)[1])
    assert 0.02 <= np.median(fractions) <= 0.05
    assert np.percentile(fractions, 5) >= 0.002 and max(fractions) <= 0.11
    assert np.percentile(extents, 10) >= 25 and np.percentile(extents, 90) <= 90
    assert min(components) >= 1 and max(components) <= 9


@pytest.mark.parametrize("make", [sphere_mask, cuboid_mask, brush_mask])
def test_shapes_are_deterministic_for_a_seed(make):
    a, b, c = make(64, 42), make(64, 42), make(64, 43)
    assert a.offset == b.offset and np.array_equal(a.mask, b.mask)
    assert not (a.offset == c.offset and np.array_equal(a.mask, c.mask))


def test_default_lesion_bank_is_checked_and_gives_real_shapes():
    bank = LesionShapeBank.default()
    assert len(bank) == 600
    counts = bank.voxel_counts()
    assert counts.min() >= 50 and np.median(counts) > 500
    shape = bank.sample(128, 0, spacing=2.0, axcodes=("P", "S", "R"), affine_p=0.0, index=0)
    # a lesion at 1 mm shown on a 2 mm grid has about 1/8 of its voxels
    assert 0.08 * counts[0] < shape.voxels < 0.2 * counts[0]
    assert bank.sample(128, 5).voxels > 0


def test_lesion_bank_from_real_mask_files_round_trips(tmp_path, ms_lesions):
    bank = LesionShapeBank.from_mask_files([ms_lesions], min_voxels=20)
    assert len(bank) > 5 and all(
        s == "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
        for s in bank.sources
    )
    digest = bank.save(tmp_path / "bank.npz")
    again = LesionShapeBank.load(tmp_path / "bank.npz", sha256=digest)
    assert all(np.array_equal(a, b) for a, b in zip(bank.masks, again.masks, strict=True))
    np.testing.assert_array_equal(bank.spacings, again.spacings)
    # real MS lesion sizes (1 mm voxels) are kept exactly at 1 mm without augmentation
    shape = again.sample(128, 0, spacing=1.0, affine_p=0.0, index=3)
    assert shape.voxels == again.masks[3].sum()


def test_tampered_or_unreadable_lesion_banks_are_refused(tmp_path, ms_lesions):
    from napari_medood.errors import CorruptVolumeError, VolumeNotFoundError

    bank = LesionShapeBank.from_mask_files([ms_lesions], min_voxels=20)
    path = tmp_path / "bank.npz"
    digest = bank.save(path)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(LesionBankError, match="sha256 mismatch"):
        LesionShapeBank.load(path, sha256=digest)
    with pytest.raises(LesionBankError, match="not a readable lesion bank"):
        LesionShapeBank.load(path)
    broken = tmp_path / "lesion.nii.gz"
    broken.write_bytes(b"garbage")
    with pytest.raises(CorruptVolumeError, match=str(broken)):
        LesionShapeBank.from_mask_files([ms_lesions, broken])
    with pytest.raises(VolumeNotFoundError, match="missing.nii.gz"):
        LesionShapeBank.from_mask_files([tmp_path / "missing.nii.gz"])


# -------------------------------------------------------------------------- R3 smoothing
def test_kernel_draw_follows_reference_weights():
    rng = np.random.default_rng(0)
    draws = np.array([sample_kernel_size(rng) for _ in range(8000)])
    for size, expected in ((1, 0.5), (3, 0.25), (5, 0.125), (7, 0.125)):
        assert abs(np.mean(draws == size) - expected) < 0.02


def test_smoothing_identity_bounds_and_mass(brain_patch):
    alpha = np.zeros((40, 40, 40), np.float32)
    alpha[10:30, 12:28, 15:25] = 0.7
    np.testing.assert_array_equal(smooth_alpha(alpha, 1), alpha)
    for size in (3, 5, 7):
        out = smooth_alpha(alpha, size)
        assert out.min() >= 0 and out.max() <= 0.7 + 1e-6
        assert out.sum() == pytest.approx(alpha.sum(), rel=1e-5)  # away from borders
    assert gaussian_kernel_1d(7).sum() == pytest.approx(1.0)
    # the mood22 kernel is wider: exp(-((x)/(2 sigma))^2) has sigma_eff = sqrt(2)
    legacy = gaussian_kernel_1d(7, legacy_sigma=True)
    x = np.arange(7) - 3
    assert np.sqrt((legacy * x**2).sum()) > np.sqrt((gaussian_kernel_1d(7) * x**2).sum())


# --------------------------------------------------------------------------- R4 blending
def test_blend_endpoints():
    rng = np.random.default_rng(0)
    image, foreign = rng.random((8, 8, 8), np.float32), rng.random((8, 8, 8), np.float32)
    np.testing.assert_array_equal(blend(image, foreign, np.zeros_like(image)), image)
    np.testing.assert_array_equal(blend(image, foreign, np.ones_like(image)), foreign)
    half = blend(image, foreign, np.full_like(image, 0.5))
    np.testing.assert_allclose(half, (image + foreign) / 2, rtol=1e-6)


# ---------------------------------------------------------------- R5 training transform
def test_no_anomaly_leaves_the_image_and_target_empty(brain_patch):
    transform = SyntheticAnomaly3D(p_anomaly=0.0)
    corrupted, target = transform(brain_patch, 0)
    np.testing.assert_array_equal(corrupted, brain_patch)
    assert not target.any()


def test_training_anomaly_invariants(brain_patch):
    transform = SyntheticAnomaly3D(p_anomaly=1.0)
    rng = np.random.default_rng(7)
    kinds = set()
    for _ in range(30):
        before = brain_patch.copy()
        result = transform.generate(brain_patch, rng)
        np.testing.assert_array_equal(brain_patch, before)  # the input is never modified
        target, params = result.target, result.params
        if params["kind"] == "none":
            continue
        kinds.add(params["kind"])
        assert target.dtype == np.float32 and target.max() <= params["alpha"] + 1e-6
        assert target.max() <= transform.alpha_range[1]
        # the target lies inside the foreign-patch box grown by the blur radius
        halo = params["kernel_size"] // 2
        box = np.zeros(target.shape, bool)
        lo = np.maximum(np.array(params["box_start"]) - halo, 0)
        hi = np.array(params["box_start"]) + np.array(params["box_size"]) + halo
        box[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
        assert not target[~box].any()
        # foreground only: nothing in the background, and outside the target nothing changed
        assert not target[brain_patch == 0].any()
        np.testing.assert_array_equal(result.image[target == 0], brain_patch[target == 0])
        assert result.image.min() >= 0 and result.image.max() <= 1
    assert kinds == {"cuboid", "sphere", "brush", "lesion"}


def test_training_transform_is_deterministic_for_a_seed(brain_patch):
    def run(seed):
        transform = SyntheticAnomaly3D(p_anomaly=1.0)
        rng = np.random.default_rng(seed)
        return [transform(brain_patch, rng) for _ in range(4)]

    first, second, other = run(11), run(11), run(12)
    for (i1, t1), (i2, t2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(t1, t2)
    assert not all(np.array_equal(t1, t3) for (_, t1), (_, t3) in zip(first, other, strict=True))


def test_binary_target_and_any_size(ixi):
    image, brain = ixi
    data = normalise(image.data, "percentile", brain)
    transform = SyntheticAnomaly3D(
        p_anomaly=1.0, binary_target=True, spacing=image.spacing, axcodes=image.axcodes
    )
    for seed in range(5):
        corrupted, target = transform(data, seed, foreground=brain)
        assert corrupted.shape == data.shape == (120, 120, 90)
        assert set(np.unique(target)) <= {0.0, 1.0}
        assert not target[~brain].any()


def test_works_in_a_torch_dataloader_with_two_workers(brain_patch):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, Dataset

    class Patches(Dataset):
        def __init__(self):
            self.transform = SyntheticAnomaly3D(p_anomaly=1.0, fp_size=48)
            self.image = np.ascontiguousarray(brain_patch[40:104, 40:104, 30:94])

        def __len__(self):
            return 6

        def __getitem__(self, index):
            image, target = self.transform(self.image, np.random.default_rng([5, index]))
            return torch.from_numpy(image)[None], torch.from_numpy(target)[None]

    def batches():
        loader = DataLoader(Patches(), batch_size=2, num_workers=2)
        return [(x.clone(), y.clone()) for x, y in loader]

    first, second = batches(), batches()
    assert len(first) == 3 and first[0][0].shape == (2, 1, 64, 64, 64)
    assert any(y.sum() > 0 for _, y in first)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_implant_checks_alpha(brain_patch):
    shape = sphere_mask(32, 0, min_diameter=10, max_diameter=10)
    with pytest.raises(ValueError, match=r"alpha must be within \[0, 1\]"):
        implant(brain_patch, shape, (60, 60, 60), 1.5, uniform_noise_texture(0))


# -------------------------------------------------------------- R6 validation outliers
@pytest.mark.parametrize("kind", OUTLIER_KINDS)
@pytest.mark.parametrize("edges", ["hard", "smooth"])
def test_validation_outlier_invariants(kind, edges, ixi):
    image, brain = ixi
    before = image.data.copy()
    out, label, params = make_outlier(
        image.data, kind, 3, foreground=brain, edges=edges, reflect_axis=2
    )
    np.testing.assert_array_equal(image.data, before)
    assert label.dtype == bool and label.any() and not label[~brain].any()
    # the label is the ball (cut to the brain)
    centre, radius = np.array(params["centre"]), params["radius"]
    grid = np.stack(np.meshgrid(*map(np.arange, image.shape), indexing="ij"), -1)
    ball = np.linalg.norm(grid - centre, axis=-1) < radius
    np.testing.assert_array_equal(label, ball & brain)
    # nothing outside the label changes, for every kind
    np.testing.assert_array_equal(out[~label], image.data[~label].astype(np.float32))
    changed = out[label] != image.data[label].astype(np.float32)
    assert changed.mean() > (0.1 if kind in ("shift", "reflection", "deformation") else 0.5)
    # the centre is in the middle half of the volume, on the brain
    assert brain[tuple(np.round(centre).astype(int))]


def test_validation_outliers_are_seeded(ixi):
    image, brain = ixi
    a = make_outlier(image.data, "local_noise", 9, foreground=brain)
    b = make_outlier(image.data, "local_noise", 9, foreground=brain)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]


def test_validation_outlier_errors(ixi):
    image, brain = ixi
    with pytest.raises(ValueError, match="unknown outlier kind 'blur'"):
        make_outlier(image.data, "blur", 0)
    with pytest.raises(ValueError, match="foreground mask has shape"):
        make_outlier(image.data, "shift", 0, foreground=brain[:10])
    with pytest.raises(ValueError, match="empty"):
        make_outlier(image.data, "shift", 0, foreground=np.zeros_like(brain))


def test_rotated_patch_texture_reads_the_rotated_patch():
    """A quarter turn about axis 0 equals numpy's rot90 of the patch."""
    from napari_medood.synth import PatchTexture

    patch = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    texture = PatchTexture(patch, (0, 0, 0), 0, augment=False, clip=None)
    texture.rotation = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    values = texture(np.zeros(3, int), np.array([16, 16, 16]))
    expected = np.rot90(patch, k=1, axes=(1, 2))  # values[x, y, z] = patch[x, z, 15 - y]
    np.testing.assert_allclose(values, expected, atol=1e-5)
    plain = PatchTexture(patch, (4, 4, 4), 0, augment=False, clip=None)
    np.testing.assert_array_equal(
        plain(np.array([4, 4, 4]), np.array([8, 9, 10])), patch[:4, :5, :6]
    )
