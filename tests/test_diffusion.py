"""The diffusion family (MHD): the Mahalanobis map, reconstructions, training, the detector
through the CLI, and the slice cache it trains from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared, tiny_diffusion_settings
from helpers import after_steps
from napari_medood.errors import Cancelled, MedoodError
from napari_medood.inference.mahalanobis import (
    PostProcessing,
    dense_mahalanobis,
    gaussian_ssim_3d,
    mhd_volume_maps,
    pixelwise_mahalanobis,
)

# -- the Mahalanobis map ---------------------------------------------------------------


def _slices(seed: int = 0, size: int = 32, count: int = 10, batch: int = 2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, size, size, generator=generator)
    recons = x[:, None] + 0.1 * torch.randn(batch, count, size, size, generator=generator)
    mask = torch.rand(batch, size, size, generator=generator) > 0.2
    return x, recons, mask


def test_identical_reconstructions_give_a_zero_map():
    x, _, mask = _slices()
    same = x[:, None].repeat(1, 10, 1, 1)
    assert not pixelwise_mahalanobis(x, same, mask).any()
    volume = np.random.default_rng(0).random((24, 20, 16)).astype(np.float32)
    brain = np.zeros(volume.shape, bool)
    brain[4:20, 4:16, 2:14] = True
    volume[~brain] = 0
    maps = mhd_volume_maps(volume, np.repeat(volume[None], 5, axis=0), brain)
    assert not maps["mahalanobis"].any() and not maps["mhd"].any()
    assert not maps["residual"].any() and not maps["std"].any()


def test_the_woodbury_path_equals_the_dense_inverse():
    x, recons, mask = _slices(seed=3)
    woodbury = pixelwise_mahalanobis(x, recons, mask).double()
    dense = dense_mahalanobis(x, recons, mask).double()
    assert woodbury.abs().max() > 1.0  # a real distance, not zeros on both sides
    np.testing.assert_allclose(woodbury.numpy(), dense.numpy(), rtol=1e-4, atol=1e-6)
    # some pixels' contributions are negative: they score 0 on both paths, as in the reference
    assert ((dense == 0) & mask).any()
    # and the regularisation is used: another lambda gives another map
    other = pixelwise_mahalanobis(x, recons, mask, regularisation=1e-1)
    assert not torch.allclose(other.double(), woodbury)


def test_maps_are_finite_non_negative_and_zero_outside_the_brain():
    rng = np.random.default_rng(1)
    volume = rng.random((30, 28, 20)).astype(np.float32)
    brain = np.zeros(volume.shape, bool)
    brain[5:25, 5:23, 3:17] = True
    recons = volume[None] + 0.05 * rng.standard_normal((6, *volume.shape)).astype(np.float32)
    maps = mhd_volume_maps(volume, recons, brain)
    for name in ("mhd", "residual", "mahalanobis", "std"):
        assert np.isfinite(maps[name]).all() and (maps[name] >= 0).all(), name
    for name in ("mhd", "residual", "mahalanobis"):
        assert not maps[name][~brain].any(), name
    assert maps["mhd"].max() > 0 and maps["mhd"].shape == volume.shape
    # every post-processing step is an option: without them the map is the raw distance
    raw = mhd_volume_maps(
        volume,
        recons,
        brain,
        options=PostProcessing(minmax=False, smooth_sigma=0, ssim_weight=False),
    )
    np.testing.assert_allclose(raw["mhd"], maps["mahalanobis"], rtol=1e-6)
    with pytest.raises(MedoodError, match="at least 2 reconstructions"):
        mhd_volume_maps(volume, recons[:1], brain)
    with pytest.raises(MedoodError, match="unknown MHD post-processing options smoth"):
        PostProcessing.from_card({"smoth": 1})


def test_ssim_of_a_volume_with_itself_is_one_and_drops_with_noise():
    rng = np.random.default_rng(2)
    volume = rng.random((20, 22, 24)).astype(np.float32)
    np.testing.assert_allclose(gaussian_ssim_3d(volume, volume), 1.0, atol=1e-5)
    noisy = volume + 0.3 * rng.standard_normal(volume.shape).astype(np.float32)
    assert gaussian_ssim_3d(volume, noisy).mean() < 0.9


def test_a_lesion_stands_out_of_the_spread_of_the_reconstructions():
    """A bright blob that no reconstruction reproduces scores above the rest of the brain."""
    rng = np.random.default_rng(4)
    volume = np.zeros((40, 40, 12), np.float32)
    brain = np.zeros(volume.shape, bool)
    brain[4:36, 4:36, 2:10] = True
    volume[brain] = 0.5 + 0.05 * rng.standard_normal(brain.sum())
    healthy = volume.copy()
    volume[18:24, 18:24, 4:8] = 1.0  # the lesion
    recons = healthy[None] + 0.03 * rng.standard_normal((10, *volume.shape)).astype(np.float32)
    maps = mhd_volume_maps(volume, recons * brain, brain)
    lesion = np.zeros(volume.shape, bool)
    lesion[18:24, 18:24, 4:8] = True
    assert maps["mhd"][lesion].mean() > 5 * maps["mhd"][brain & ~lesion].mean()


# -- noise and reconstructions ------------------------------------------------------------


def test_simplex_noise_is_smooth_standardised_and_seeded():
    from napari_medood.models.diffusion import noise_fields

    fields = noise_fields("simplex", 3, (40, 48), torch.Generator().manual_seed(0))
    again = noise_fields("simplex", 3, (40, 48), torch.Generator().manual_seed(0))
    other = noise_fields("simplex", 3, (40, 48), torch.Generator().manual_seed(1))
    assert fields.shape == (3, 40, 48) and torch.equal(fields, again)
    assert not torch.allclose(fields, other)
    np.testing.assert_allclose(fields.mean(dim=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(fields.std(dim=(1, 2)), 1, atol=1e-4)
    # low frequencies dominate (frequency 64): neighbours correlate, unlike Gaussian noise
    neighbours = torch.corrcoef(torch.stack([fields[0, :, :-1].ravel(), fields[0, :, 1:].ravel()]))
    assert neighbours[0, 1] > 0.7
    gaussian = noise_fields("gaussian", 1, (40, 48), torch.Generator().manual_seed(0))[0]
    white = torch.corrcoef(torch.stack([gaussian[:, :-1].ravel(), gaussian[:, 1:].ravel()]))
    assert abs(white[0, 1]) < 0.1
    with pytest.raises(MedoodError, match="valid: simplex, gaussian"):
        noise_fields("pink", 1, (8, 8), torch.Generator())


@pytest.mark.slow
def test_reconstructions_differ_under_different_seeds_and_repeat_under_the_same(
    diffusion_checkpoint, ixi_t1
):
    from napari_medood.detectors import get_detector
    from napari_medood.detectors.diffusion import MHDDetector
    from napari_medood.io import read_volume

    volume = read_volume(ixi_t1)
    first = MHDDetector(diffusion_checkpoint, device="cpu", seed=0).predict(volume)
    again = MHDDetector(diffusion_checkpoint, device="cpu", seed=0).predict(volume)
    other = MHDDetector(diffusion_checkpoint, device="cpu", seed=1).predict(volume)
    recons = first.extras["maps"]["reconstructions"]
    assert recons.shape == (4, *volume.shape)  # the card's N = 4, on the scan's grid
    np.testing.assert_array_equal(recons, again.extras["maps"]["reconstructions"])
    np.testing.assert_array_equal(first.anomaly_map.data, again.anomaly_map.data)
    assert not np.array_equal(recons, other.extras["maps"]["reconstructions"])
    assert not np.array_equal(recons[0], recons[1])  # fresh noise per reconstruction
    # a DDIM walk of 3 steps from t gives other reconstructions than the single x0 step
    walked = MHDDetector(diffusion_checkpoint, device="cpu", steps=3).predict(volume)
    assert not np.array_equal(walked.extras["maps"]["reconstructions"], recons)
    # the residual variant is the same run's other map
    residual = get_detector(str(diffusion_checkpoint), device="cpu", variant="residual").predict(
        volume
    )
    np.testing.assert_allclose(
        residual.anomaly_map.data, first.extras["maps"]["residual"], atol=1e-6
    )


def test_the_detector_works_on_the_scan_grid_and_reads_its_card(diffusion_checkpoint, ixi_t1):
    from napari_medood.detectors.diffusion import MHDDetector
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(ixi_t1)
    mask = load_mask(
        shared("ixi-t1-2mm", "dlmuse", "IXI048-HH-1326-T1_ds_DLMUSE.nii.gz"),
        volume.grid,
    )
    reports = []
    result = MHDDetector(diffusion_checkpoint, device="cpu").predict(
        volume, mask, progress=lambda d, t, m: reports.append(m)
    )
    assert result.anomaly_map.shape == volume.shape
    assert np.array_equal(result.anomaly_map.affine, volume.affine)
    values = result.anomaly_map.data
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    assert values.max() > 0 and not values[~mask].any()
    assert result.score == pytest.approx(values[mask].mean(), rel=1e-5)  # the reference's score
    stages = list(dict.fromkeys(m.split(":")[0].split(" (")[0] for m in reports))
    assert stages == [
        "preprocessing",
        "reconstructions",
        "Mahalanobis map",
        "back to the input grid",
    ]
    for name in ("mean", "std", "mahalanobis", "residual"):
        assert result.extras["maps"][name].shape == volume.shape
    # batch runs skip the by-products and get the same map
    lean = MHDDetector(diffusion_checkpoint, device="cpu", keep_reconstructions=False)
    lean_result = lean.predict(volume, mask)
    assert set(lean_result.extras["maps"]) == {"mhd", "residual"}
    np.testing.assert_array_equal(lean_result.anomaly_map.data, values)
    with pytest.raises(Cancelled):
        MHDDetector(diffusion_checkpoint, device="cpu").predict(
            volume, mask, cancelled=lambda: True
        )
    with pytest.raises(MedoodError, match="at least 2 reconstructions"):
        MHDDetector(diffusion_checkpoint, reconstructions=1)
    with pytest.raises(MedoodError, match=r"t must be within \[0, 999\]"):
        MHDDetector(diffusion_checkpoint, t=1000)


def test_variants_are_checked_before_anything_runs(diffusion_checkpoint):
    from napari_medood.detectors import get_detector

    with pytest.raises(
        MedoodError, match="unknown variant of .* 'residul'; valid choices: 'mhd', 'residual'"
    ):
        get_detector(str(diffusion_checkpoint), variant="residul")
    with pytest.raises(MedoodError, match="has no variants"):
        get_detector("intensity", variant="residual")


# -- training --------------------------------------------------------------------------


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(ixi_t1):
    from napari_medood.io import read_volume
    from napari_medood.models.diffusion import DiffusionProcess, build_slice_diffusion
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.diffusion import fit_slice, noised_batch

    volume = read_volume(ixi_t1)
    prepared = ModelSpace(spacing=(4.0, 4.0, 4.0)).prepare(volume, volume.data > 0)
    planes = [fit_slice(prepared.image[:, :, k], (32, 32), None) for k in (10, 14, 18, 22)]
    clean = torch.from_numpy(np.stack(planes))[:, None] * 2 - 1
    torch.manual_seed(0)
    model = build_slice_diffusion(
        {
            "channels": [8, 16],
            "attention_levels": [False, True],
            "num_head_channels": 8,
            "norm_num_groups": 8,
        }
    )
    process = DiffusionProcess()
    alphas = process.scheduler().alphas_cumprod.float()
    noisy, times = noised_batch(clean, process, alphas, step=0, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = (model(noisy, times, clean) - clean).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == min(losses), losses


def test_training_resumes_keeps_the_best_by_validation_loss_and_writes_its_card(
    diffusion_scans, tmp_path
):
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import DiffusionTrainConfig, train_diffusion

    out = tmp_path / "run"
    settings = tiny_diffusion_settings(
        diffusion_scans,
        out,
        "steps=6",
        "val_interval=3",
        f"val={diffusion_scans / 'val'}",
        f"val_masks={diffusion_scans / 'masks'}",
    )
    with pytest.raises(Cancelled):  # stop during step 5
        train_diffusion(
            load_config(None, settings, DiffusionTrainConfig), cancelled=after_steps(out, 4)
        )
    assert (out / "last" / "state.pt").exists() and (out / "best" / "card.json").exists()
    result = train_diffusion(load_config(None, settings, DiffusionTrainConfig))
    assert result.last_step == 6 and result.metric == "L1 loss"
    steps = [int(r.split(",")[0]) for r in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6], "the second run went on where the cancelled one stopped"
    val = [r.split(",") for r in (out / "val_log.csv").read_text().splitlines()[1:]]
    assert [int(step) for step, _ in val] == [3, 6]
    best = min(float(loss) for _, loss in val)
    checkpoint = Checkpoint.open(result.best)
    card = checkpoint.card
    assert card["detector"] == "diffusion2d" and card["metrics"]["validation"]["l1_loss"] == best
    assert card["diffusion"]["schedule"] == "cosine" and card["diffusion"]["objective"] == "x0"
    assert card["diffusion"]["noise"] == "simplex"
    assert card["inference"]["t"] == 498 and card["inference"]["reconstructions"] == 4
    assert card["preprocessing"]["spacing"] == [4.0, 4.0, 4.0]
    assert card["expects"]["contrast"] == "T1w" and card["expects"]["scans"] == 2
    # the slices came from an LMDB cache in UAD-IMAG's layout, written once
    caches = sorted(p.name for p in out.glob("slices-*"))
    assert len(caches) == 2 and not list(out.glob("*.part"))
    with pytest.raises(MedoodError, match=r"started with steps=6 \(now 9\)"):
        train_diffusion(
            load_config(
                None, tiny_diffusion_settings(diffusion_scans, out, "steps=9"), DiffusionTrainConfig
            )
        )


def test_config_errors_name_the_problem():
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import DiffusionTrainConfig

    with pytest.raises(MedoodError, match="multiples of 8"):
        load_config(None, ["train=x", "slice_size=[90,96]"], DiffusionTrainConfig)
    with pytest.raises(MedoodError, match="valid: simplex, gaussian"):
        load_config(None, ["train=x", "noise=pink"], DiffusionTrainConfig)
    with pytest.raises(MedoodError, match="at least 2 reconstructions"):
        load_config(None, ["train=x", "reconstructions=1"], DiffusionTrainConfig)


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_trains_the_diffusion_model(diffusion_scans, tmp_path):
    from helpers import medood_train_under_torchrun
    from napari_medood.models.checkpoint import load_checkpoint

    out = tmp_path / "ddp"
    run = medood_train_under_torchrun(
        "diffusion", tiny_diffusion_settings(diffusion_scans, out, "steps=3", "val_interval=3")
    )
    assert run.returncode == 0, run.stdout + run.stderr
    model, card = load_checkpoint(out / "best")
    assert card["training"]["processes"] == 2
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == 4  # a header and one row per step, from rank 0 only
    assert "medood-train: 3 steps" in run.stderr


# -- the slice cache ---------------------------------------------------------------------


def test_contrast_copies_join_the_slice_cache_seeded_and_healthy(diffusion_scans, tmp_path):
    """contrast_copies=2: each training scan's slices, then two healthy copies drawn from its
    DLMUSE parcellation in random contrasts, the same in every run, zero outside the brain;
    a model trained on them expects any contrast."""
    pytest.importorskip("lmdb")
    from napari_medood.io.cohort import discover_cases
    from napari_medood.io.lmdb_cache import SliceLMDB
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import (
        DiffusionTrainConfig,
        cache_folder,
        model_space,
        train_diffusion,
        write_slice_cache,
    )

    settings = tiny_diffusion_settings(diffusion_scans, tmp_path / "run", "contrast_copies=2")
    config = load_config(None, settings, DiffusionTrainConfig)
    cases = discover_cases(config.train, masks=config.masks)[:1]
    space = model_space(config)
    contrast = {"copies": 2, "groups": "dlmuse", "seed": 0}
    assert cache_folder(tmp_path, "t", cases, space) != cache_folder(
        tmp_path, "t", cases, space, contrast
    )
    write_slice_cache(cases, space, tmp_path / "plain")
    for name in ("a", "b"):
        write_slice_cache(cases, space, tmp_path / name, contrast)
    with (
        SliceLMDB(tmp_path / "plain") as plain,
        SliceLMDB(tmp_path / "a") as a,
        SliceLMDB(tmp_path / "b") as b,
    ):
        n = len(plain)
        assert len(a) == len(b) == 3 * n  # the copies keep the brain's geometry
        for i in range(len(a)):
            np.testing.assert_array_equal(a[i], b[i])
        for i in range(n):
            np.testing.assert_array_equal(a[i], plain[i])
        middle = n // 2
        real, first, second = a[middle][0], a[n + middle][0], a[2 * n + middle][0]
    brain = real > 0
    for copy in (first, second):
        assert np.corrcoef(copy[brain], real[brain])[0, 1] < 0.95
    assert np.corrcoef(first[brain], second[brain])[0, 1] < 0.95
    # each copy is a healthy brain of the scan's own geometry: zero outside its mask
    from napari_medood.training.data import (
        contrast_randomiser,
        draw_random_contrast,
        prepare_scans,
    )

    scan = prepare_scans(cases, space, labels=True)[0]
    randomiser = contrast_randomiser("dlmuse", space.spacing, lesions=(0, 0))
    image, blobs = draw_random_contrast(
        randomiser, scan, np.random.default_rng([0, 0, 1]), space.normalisation
    )
    assert not image[~scan.mask].any() and image[scan.mask].any() and not blobs.any()
    result = train_diffusion(load_config(None, [*settings, "steps=2"], DiffusionTrainConfig))
    assert Checkpoint.open(result.best).card["expects"]["contrast"] == "any"
    with pytest.raises(MedoodError, match="contrast_copies must be >= 0"):
        load_config(None, [*settings, "contrast_copies=-1"], DiffusionTrainConfig).validate()


def test_the_slice_cache_takes_arrays_and_is_written_whole(tmp_path, monkeypatch):
    pytest.importorskip("lmdb")
    from napari_medood.io.lmdb_cache import SliceLMDB, write_slice_lmdb

    volume = np.zeros((6, 5, 4), np.float32)
    volume[1:5, 1:4, 1:3] = np.arange(24, dtype=np.float32).reshape(4, 3, 2) + 1
    count = write_slice_lmdb([volume], tmp_path / "cache")
    assert count == 2  # the two slices along the third axis that hold something
    with SliceLMDB(tmp_path / "cache") as cache:
        np.testing.assert_allclose(cache[0][0], volume[:, :, 1] / volume.max())
    assert not (tmp_path / "cache.part").exists()
    with pytest.raises(MedoodError, match="exists already"):
        write_slice_lmdb([volume], tmp_path / "cache")
    with pytest.raises(MedoodError, match="no such LMDB slice cache"):
        SliceLMDB(tmp_path / "missing")
    # a map reserved too small grows: every slice of a larger volume is kept
    import napari_medood.io.lmdb_cache as cache_module

    monkeypatch.setattr(cache_module, "MAP_SIZE_PER_VOLUME", 64 * 1024)
    big = np.random.default_rng(0).random((64, 64, 40)).astype(np.float32) + 0.1
    assert write_slice_lmdb([big], tmp_path / "big") == 40  # 40 x 32 KiB > 64 KiB
    with SliceLMDB(tmp_path / "big") as cache:
        assert len(cache) == 40
        np.testing.assert_allclose(
            cache[39][0], (big[:, :, 39] - big.min()) / np.ptp(big), rtol=1e-5
        )


# -- the faces -------------------------------------------------------------------------


def test_medood_predict_and_eval_run_the_diffusion_model(
    diffusion_checkpoint, diffusion_scans, tmp_path, capsys
):
    from napari_medood.cli import eval_main, predict_main

    scan = next((diffusion_scans / "val").glob("*.nii.gz"))
    out = tmp_path / "pred"
    code = predict_main(
        [
            str(scan),
            str(out),
            "--model",
            str(diffusion_checkpoint),
            "--device",
            "cpu",
            "--variant",
            "residual",
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = list(out.rglob("*.nii.gz"))
    assert written
    code = predict_main(
        [str(scan), str(tmp_path / "bad"), "--model", "intensity", "--variant", "x"]
    )
    assert code == 2 and "has no variants" in capsys.readouterr().err
    # medood-eval --detector on a labelled synthetic case
    from napari_medood.cli import synth_main

    assert (
        synth_main(
            [
                "--mask",
                str(diffusion_scans / "masks"),
                "--kinds",
                "uniform_noise",
                str(diffusion_scans / "val"),
                str(tmp_path / "set"),
            ]
        )
        == 0
    )
    report = tmp_path / "report"
    code = eval_main(
        [
            str(tmp_path / "set"),
            "--detector",
            str(diffusion_checkpoint),
            "--device",
            "cpu",
            "-o",
            str(report),
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0 < metrics["pixel"]["ap"] <= 1 and metrics["settings"]["failed"] == []
    assert len(list((report / "predictions").rglob("*.nii.gz"))) == len(metrics["cases"])


def test_the_conditioned_model_reads_the_clean_slice():
    """cDDPM: an encoder of the clean slice conditions every reconstruction."""
    from napari_medood.models.diffusion import (
        DiffusionProcess,
        build_slice_diffusion,
        noise_fields,
        reconstruct,
    )

    torch.manual_seed(0)
    model = build_slice_diffusion(
        {
            "channels": [8, 16],
            "attention_levels": [False, True],
            "num_head_channels": 8,
            "norm_num_groups": 8,
            "condition": True,
            "condition_dim": 16,
        }
    ).eval()
    for parameter in model.parameters():  # MONAI starts outputs and projections at zero
        if not parameter.detach().abs().sum():
            torch.nn.init.normal_(parameter, std=0.1)
    slices = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = noise_fields("gaussian", 3, (32, 32), torch.Generator().manual_seed(2))
    with torch.inference_mode():
        base = reconstruct(model, slices, noise, 498, DiffusionProcess())
        # the same noisy input with another conditioning slice gives other reconstructions
        timesteps = torch.full((2,), 498)
        noisy = torch.randn(2, 1, 32, 32)
        one = model(noisy, timesteps, slices * 2 - 1)
        other = model(noisy, timesteps, slices.flip(0) * 2 - 1)
    assert base.shape == (2, 3, 32, 32) and base.min() >= 0 and base.max() <= 1
    assert not torch.allclose(one, other)
    with pytest.raises(MedoodError, match="needs the clean slice"):
        model(noisy, timesteps)
    with pytest.raises(MedoodError, match="needs attention at one level"):
        build_slice_diffusion(
            {
                "channels": [8, 16],
                "attention_levels": [False, False],
                "norm_num_groups": 8,
                "condition": True,
            }
        )


def test_ssim_matches_scikit_image_inside_the_volume():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(5)
    a = rng.random((24, 26, 28)).astype(np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    ours = gaussian_ssim_3d(a, b)
    value_range = max(np.ptp(a), np.ptp(b))
    _, theirs = structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.0,
        use_sample_covariance=False,
        data_range=value_range,
        full=True,
    )
    inner = (slice(6, -6),) * 3  # away from the borders, where the paddings differ
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=2e-3)


def test_the_brain_box_crops_and_pastes_back_exactly():
    from napari_medood.detectors.diffusion import brain_box, crop, uncrop

    rng = np.random.default_rng(6)
    volume = rng.random((30, 25, 6)).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[0:20, 3:25, 1:5] = True  # touches two edges: the box reaches beyond the array
    box = brain_box(mask, divisor=8, margin=4)
    sides = [part.stop - part.start for part in box]
    assert all(side % 8 == 0 for side in sides) and box[0].start < 0
    cropped = crop(volume, box)
    assert cropped.shape == (*sides, 6)
    assert crop(mask, box).sum() == mask.sum()  # the whole brain is inside the box
    back = uncrop(cropped, box, volume.shape)
    np.testing.assert_array_equal(back[mask], volume[mask])
    stack = uncrop(np.stack([cropped, 2 * cropped]), box, volume.shape)  # (N, ...) too
    np.testing.assert_array_equal(stack[1][mask], 2 * volume[mask])


def test_the_reference_settings_are_the_defaults():
    from dataclasses import asdict

    from napari_medood.inference.mahalanobis import REGULARISATION
    from napari_medood.models.diffusion import SIMPLEX, DiffusionProcess
    from napari_medood.training.diffusion import DiffusionTrainConfig

    config = DiffusionTrainConfig(train="x")
    assert (config.reconstructions, config.t, config.timesteps) == (10, 498, 1000)
    assert (config.schedule, config.noise, config.lr) == ("cosine", "simplex", 1e-4)
    assert REGULARISATION == 1e-2 and SIMPLEX == {
        "octaves": 6,
        "persistence": 0.8,
        "frequency": 64.0,
    }
    assert asdict(PostProcessing()) == {
        "regularisation": 1e-2,
        "minmax": True,
        "smooth_sigma": 1.0,
        "ssim_weight": True,
        "ssim_kernel": 11,
        "ssim_sigma": 1.0,
    }
    process = DiffusionProcess.from_card(DiffusionProcess().to_card())
    assert process == DiffusionProcess()  # a card round trip keeps the process
    with pytest.raises(MedoodError, match="unknown schedule 'cosin'"):
        DiffusionProcess.from_card({"schedule": "cosin"})


@pytest.mark.slow
def test_the_shipped_model_maps_the_sample_on_the_command_line(tmp_path, capsys):
    import nibabel as nib

    from napari_medood.cli import predict_main
    from napari_medood.models.checkpoint import Checkpoint

    samples = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
    scan = samples / "ixi048_t1_2mm.nii.gz"
    mask = samples / "ixi048_brainmask_2mm.nii.gz"
    code = predict_main(
        [
            "--model",
            "brain-t1-mhd",
            "--mask",
            str(mask),
            "--device",
            "cpu",
            str(scan),
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = nib.load(tmp_path / "ixi048_t1_2mm.nii.gz")
    source = nib.load(scan)
    values = written.get_fdata()
    assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    assert not values[np.asarray(nib.load(mask).dataobj) == 0].any()
    card = Checkpoint.open("brain-t1-mhd").card  # the weights match the card's sha256
    assert card["detector"] == "diffusion2d" and card["expects"]["contrast"] == "T1w"
    tested = card["metrics"]["test"]
    assert set(tested["model"]) == {"ixi-held-out", "ms-t1", "ms-t2", "ms-flair"}
    assert set(tested["variants"]["residual"]) == set(tested["model"])


def test_hard_slices_are_the_ones_the_baseline_reconstructs_badly_and_are_seen_more(
    diffusion_scans, diffusion_checkpoint, tmp_path
):
    import torch

    from conftest import tiny_diffusion_settings
    from napari_medood.execution import plan_execution
    from napari_medood.io.lmdb_cache import SliceLMDB
    from napari_medood.models.checkpoint import Checkpoint, load_checkpoint
    from napari_medood.models.diffusion import DiffusionProcess, reconstruct
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import (
        DiffusionTrainConfig,
        SliceSamples,
        fit_slice,
        mine_hard_slices,
        train_diffusion,
    )

    def config(*extra):
        settings = tiny_diffusion_settings(diffusion_scans, tmp_path / "hard", "steps=2", *extra)
        return load_config(None, settings, DiffusionTrainConfig)

    cache_folder = next((diffusion_scans / "run").glob("slices-train-*"))
    execution = plan_execution("cpu", "float32")
    every = config(
        "ood_supervision=0.5",
        f"ood_baseline={diffusion_checkpoint}",
        "ood_candidates=24",
        "ood_threshold=-1",
        "ood_min_voxels=1",
    )
    with SliceLMDB(cache_folder) as cache:
        candidates, _ = mine_hard_slices(every, cache, execution)
        assert len(candidates) == 24
        # the pixels each candidate gets wrong by more than 0.1, reconstructed here
        checkpoint = Checkpoint.open(diffusion_checkpoint)
        network = checkpoint.build_model("cpu")
        process = DiffusionProcess.from_card(checkpoint.card["diffusion"])
        noise = process.noise_fields(1, (48, 48), torch.Generator().manual_seed(every.seed))
        slices = torch.from_numpy(
            np.stack([fit_slice(cache[i][0], (48, 48), None) for i in candidates])
        )[:, None]
        with torch.inference_mode():
            rebuilt = reconstruct(
                network, slices, noise, checkpoint.card["inference"]["t"], process
            )[:, 0]
        wrong = ((rebuilt - slices[:, 0]).abs() > 0.1) & (slices[:, 0] > 0)
        counts = wrong.flatten(1).sum(1).numpy()
        minimum = int(np.median(counts)) + 1
        chosen = config(
            "ood_supervision=0.5",
            f"ood_baseline={diffusion_checkpoint}",
            "ood_candidates=24",
            "ood_threshold=0.1",
            f"ood_min_voxels={minimum}",
        )
        hard, record = mine_hard_slices(chosen, cache, execution)
        assert hard == [i for i, c in zip(candidates, counts, strict=True) if c >= minimum]
        assert 0 < len(hard) < 24
        assert record["hard"] == len(hard) and record["share"] == 0.5

        # half the samples come from the hard slices (the cache records what is read)
        class Recording:
            def __init__(self):
                self.read = []

            def __len__(self):
                return len(cache)

            def __getitem__(self, index):
                self.read.append(index)
                return cache[index]

        recording = Recording()
        samples = SliceSamples(recording, (48, 48), 400, 0, False, hard, 0.5)
        for i in range(400):
            samples[i]
        share = np.mean([index in set(hard) for index in recording.read])
        assert share > 0.45  # 0.5, plus the hard slices the uniform draws pick
    # the whole run records it; auto (the ratio rule) is refused with the reason
    result = train_diffusion(chosen)
    _, card = load_checkpoint(result.best)
    assert card["training"]["ood_supervision"]["hard"] == len(hard)
    with pytest.raises(MedoodError, match="healthy slices only"):
        config("ood_supervision=auto", f"ood_baseline={diffusion_checkpoint}")
