"""The 3D U-Net detector: network, loss, checkpoints, sliding window, detector behaviour."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_medood.detectors import get_detector
from napari_medood.detectors.unet import DeviceFallbackWarning, UNetDetector
from napari_medood.errors import Cancelled
from napari_medood.inference.sliding_window import sliding_window_predict
from napari_medood.io import read_volume
from napari_medood.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_medood.models.unet import (
    REFERENCE_FEATURES,
    UNet3DDeepSup,
    deep_supervision_loss,
    ds_weights,
)

SAMPLE = "src/napari_medood/samples"


@pytest.fixture(scope="module")
def sample():
    from conftest import REPO

    image = read_volume(REPO / SAMPLE / "ixi048_t1_2mm.nii.gz")
    brain = read_volume(REPO / SAMPLE / "ixi048_brainmask_2mm.nii.gz").data > 0
    return image, brain


def tiny_card(spacing=(2.0, 2.0, 2.0), roi=(32, 32, 32), features=(4, 8, 16)) -> dict:
    return {
        "name": "tiny",
        "detector": "unet3d",
        "architecture": {"type": "UNet3DDeepSup", "features": list(features)},
        "preprocessing": {
            "spacing": list(spacing),
            "roi": list(roi),
            "normalisation": {"method": "percentile", "lower": 1, "upper": 99},
            "zero_outside_mask": True,
        },
        "inference": {"overlap": 0.5, "blend": "gaussian"},
    }


def constant_checkpoint(folder, spacing=(2.0, 2.0, 2.0)):
    """A network whose weights are all zero: logits 0, probability 0.5 everywhere."""
    torch.manual_seed(0)
    model = UNet3DDeepSup(features=(4, 8, 16))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    return save_checkpoint(model, folder, tiny_card(spacing))


def random_checkpoint(folder, seed=0):
    torch.manual_seed(seed)
    return save_checkpoint(UNet3DDeepSup(features=(4, 8, 16)), folder, tiny_card())


# ------------------------------------------------------------------------------ network
def test_reference_network_shapes_and_deep_supervision_weights():
    assert ds_weights(4) == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])
    assert sum(ds_weights(4)) == pytest.approx(1.0)
    model = UNet3DDeepSup(features=REFERENCE_FEATURES)
    assert model.divisor == 32
    outputs = model(torch.zeros(1, 1, 64, 64, 64))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8,) * 3, (16,) * 3, (32,) * 3, (64,) * 3]
    heads = [head.in_channels for head in model.heads]
    assert heads == [256, 128, 64, 32]  # mood22's deep-supervision heads
    assert sum(p.numel() for p in model.parameters()) == 31_189_824  # stable across versions
    assert model.predict(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 1, 64, 64, 64)


def test_a_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = UNet3DDeepSup(features=(4, 8, 16)).train()
    x = torch.rand(2, 1, 32, 32, 32)
    y = torch.zeros_like(x)
    y[:, :, 8:20, 8:20, 8:20] = 0.7  # a soft target, as the synthetic anomalies give
    optimiser = torch.optim.AdamW(model.parameters(), 1e-2)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss = deep_supervision_loss(model(x), y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.9, losses


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_tamper_detection(tmp_path):
    card = random_checkpoint(tmp_path / "ckpt")
    assert len(card["weights"]["sha256"]) == 64
    model, loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["weights"]["sha256"] == card["weights"]["sha256"] and not model.training
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_the_shipped_model_is_verified_and_described():
    model, card = load_checkpoint("brain-t1-unet")
    assert card["name"] == "brain-t1-unet"
    assert card["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
    assert card["metrics"]["validation"]["pixel_ap"] > 0.1
    assert "IXI" in card["training"]["data_licence"]
    assert sum(p.numel() for p in model.parameters()) == card["weights"]["parameters"]


# ------------------------------------------------------------------------ sliding window
def test_foreground_skipping_keeps_the_map_inside_the_foreground(sample):
    image, brain = sample
    torch.manual_seed(1)
    model = UNet3DDeepSup(features=(4, 8, 16)).eval()

    def predictor(batch):
        return torch.sigmoid(model.predict(batch))

    data = np.asarray(image.data, np.float32) / float(image.data.max())
    full, full_stats = sliding_window_predict(data, predictor, (32, 32, 32), 0.5, None, 4)
    skipped, stats = sliding_window_predict(data, predictor, (32, 32, 32), 0.5, brain, 4)
    assert stats["windows_run"] < full_stats["windows_run"] == stats["windows"]
    np.testing.assert_allclose(skipped[brain], full[brain], atol=1e-6)
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        reference = sliding_window_inference(
            torch.from_numpy(data)[None, None],
            (32, 32, 32),
            1,
            predictor,
            overlap=0.5,
            mode="gaussian",
        )
    np.testing.assert_allclose(full, reference[0, 0].numpy(), atol=1e-5)


# ------------------------------------------------------------------------------ detector
def test_a_constant_model_gives_a_constant_map_on_the_input_grid(sample, tmp_path):
    """Zero weights: probability 0.5 inside the brain, 0 outside, on the scan's own grid,
    also when the model works at another spacing (3 mm) and orientation (RAS)."""
    from scipy import ndimage

    image, brain = sample
    constant_checkpoint(tmp_path / "constant", spacing=(3.0, 3.0, 3.0))
    result = UNetDetector([tmp_path / "constant"], device="cpu").predict(image, brain)
    anomaly = result.anomaly_map
    assert anomaly.shape == image.shape
    np.testing.assert_array_equal(anomaly.affine, image.affine)
    interior = ndimage.binary_erosion(brain, iterations=3)
    np.testing.assert_allclose(anomaly.data[interior], 0.5, atol=1e-5)
    assert not anomaly.data[~brain].any()
    assert result.score == pytest.approx(0.5, abs=1e-5)
    assert set(result.extras["scores"]) == {"topk_mean", "mean_in_mask", "fpi_slices"}


def test_model_space_round_trip_is_exact_at_the_model_spacing(sample):
    from napari_medood.preprocessing.model_space import ModelSpace

    image, brain = sample
    raw = {"method": "minmax"}
    everywhere = np.ones(image.shape, bool)
    space = ModelSpace((2.0, 2.0, 2.0), raw, zero_outside_mask=False)
    prepared = space.prepare(image, everywhere)
    assert "".join(prepared.model_grid.axcodes) == "RAS"
    assert prepared.model_grid is prepared.ras_grid
    low, high = image.data.min(), image.data.max()
    back = space.to_input_grid(prepared.image * (high - low) + low, prepared)
    np.testing.assert_allclose(back, image.data, rtol=1e-5, atol=1e-3)
    fine = ModelSpace((1.0, 1.0, 1.0), raw, zero_outside_mask=False)
    prepared = fine.prepare(image, everywhere)
    assert prepared.model_grid.shape == (180, 240, 240)
    back = fine.to_input_grid(prepared.image * (high - low) + low, prepared)
    np.testing.assert_allclose(back, image.data, rtol=1e-4, atol=1e-2 * (high - low))


def test_the_card_preprocessing_is_the_model_space_training_applies(sample):
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.config import UNetTrainConfig
    from napari_medood.training.unet import model_card, model_space

    config = UNetTrainConfig(train="x", spacing=[1.5, 1.5, 1.5])
    card = model_card(config, (8, 16), {}, {})
    assert ModelSpace.from_card(card["preprocessing"]) == model_space(config)
    assert card["detector"] == "unet3d" and card["preprocessing"]["roi"] == [96, 96, 96]
    shipped = Checkpoint.open("brain-t1-unet")
    assert shipped.family == "unet3d"
    assert ModelSpace.from_card(shipped.card["preprocessing"]) == ModelSpace((2.0, 2.0, 2.0))


def test_an_ensemble_of_two_identical_checkpoints_equals_one(sample, tmp_path):
    image, brain = sample
    random_checkpoint(tmp_path / "a", seed=3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    single = get_detector(str(tmp_path / "a"), device="cpu").predict(image, brain)
    pair = get_detector(f"{tmp_path / 'a'},{tmp_path / 'b'}", device="cpu")
    assert pair.name == "ensemble(tiny,tiny)"
    both = pair.predict(image, brain)
    np.testing.assert_allclose(both.anomaly_map.data, single.anomaly_map.data, atol=1e-6)


def test_cuda_out_of_memory_falls_back_to_the_cpu(sample, tmp_path):
    image, brain = sample
    random_checkpoint(tmp_path / "ckpt")
    expected = UNetDetector([tmp_path / "ckpt"], device="cpu").predict(image, brain)
    detector = UNetDetector([tmp_path / "ckpt"], device="cpu")
    original = detector.models[0].predict
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(batch)

    detector.models[0].predict = flaky
    with pytest.warns(DeviceFallbackWarning, match="ran out of memory; going on on the CPU"):
        result = detector.predict(image, brain)
    assert detector.device == "cpu"
    np.testing.assert_allclose(result.anomaly_map.data, expected.anomaly_map.data, atol=1e-6)


def test_cancel_stops_within_one_window(sample, tmp_path):
    image, brain = sample
    random_checkpoint(tmp_path / "ckpt")
    detector = UNetDetector([tmp_path / "ckpt"], device="cpu", batch_size=1)
    original = detector.models[0].predict
    calls = {"n": 0}

    def counting(batch):
        calls["n"] += 1
        return original(batch)

    detector.models[0].predict = counting
    with pytest.raises(Cancelled):
        detector.predict(image, brain, cancelled=lambda: calls["n"] >= 1)
    assert calls["n"] == 1


def test_predict_cli_with_a_checkpoint_path_and_the_shipped_model(sample, tmp_path):
    import nibabel as nib

    from napari_medood.cli import predict_main

    scan = f"{SAMPLE}/ixi048_t1_2mm.nii.gz"
    mask = f"{SAMPLE}/ixi048_brainmask_2mm.nii.gz"
    assert predict_main(["--mask", mask, scan, str(tmp_path / "maps")]) == 0  # default model
    result, source = nib.load(tmp_path / "maps" / "ixi048_t1_2mm.nii.gz"), nib.load(scan)
    np.testing.assert_array_equal(result.affine, source.affine)
    values = result.get_fdata()
    assert result.shape == source.shape and values.min() >= 0 and values.max() <= 1
    random_checkpoint(tmp_path / "ckpt")
    assert (
        predict_main(
            [
                "--model",
                str(tmp_path / "ckpt"),
                "--task",
                "sample",
                "--device",
                "cpu",
                "--mask",
                mask,
                scan,
                str(tmp_path / "scores"),
            ]
        )
        == 0
    )
    score = float((tmp_path / "scores" / "ixi048_t1_2mm.nii.gz.txt").read_text())
    assert 0 <= score <= 1
    card = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert card["architecture"]["features"] == [4, 8, 16]
