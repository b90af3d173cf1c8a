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


@pytest.mark.parametrize(
    "channels, units", [((16, 32, 64, 128), 2), ((4, 8, 16), 0), ((4, 8, 16, 32), 1)]
)
def test_the_segmenter_is_monai_s_unet_layer_for_layer(channels, units):
    """Built here (MONAI's import is most of the default model's start-up), it is MONAI's
    network: the same tensors under the same names, drawn the same from a seed, the same
    outputs; the shipped segmenter's weights load into it."""
    from monai.networks.nets import UNet

    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.models.segmenter import LesionSegmenter

    torch.manual_seed(3)
    ours = LesionSegmenter(channels, units, prior=0.5).eval()
    torch.manual_seed(3)
    theirs = UNet(3, 1, 1, channels, (2,) * (len(channels) - 1), num_res_units=units).eval()
    mine, monai_state = ours.net.state_dict(), theirs.state_dict()
    assert list(mine) == list(monai_state)
    # the prior sets the last convolution's bias: log(0.5 / 0.5) = 0 where MONAI draws one
    last = [n for n, m in ours.net.named_modules() if isinstance(m, torch.nn.Conv3d)][-1]
    for key in mine:
        if key != f"{last}.bias":
            assert torch.equal(mine[key], monai_state[key]), key
    theirs.load_state_dict(mine)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    if channels == (16, 32, 64, 128):
        shipped = LesionSegmenter(channels, units)
        shipped.load_state_dict(Checkpoint.open("brain-any-seg").load_state())


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
    from napari_medood.training.data import model_space
    from napari_medood.training.unet import UNetTrainConfig, model_card

    config = UNetTrainConfig(train="x", spacing=[1.5, 1.5, 1.5])
    card = model_card(config, (8, 16), {}, {})
    assert ModelSpace.from_card(card["preprocessing"]) == model_space(config)
    assert card["detector"] == "unet3d" and card["preprocessing"]["roi"] == [96, 96, 96]
    shipped = Checkpoint.open("brain-t1-unet")
    assert shipped.family == "unet3d"
    assert ModelSpace.from_card(shipped.card["preprocessing"]) == ModelSpace((2.0, 2.0, 2.0))


def test_an_ensemble_of_two_identical_checkpoints_equals_one(sample, tmp_path, tiny_unet):
    image, brain = sample
    # two copies of the tiny calibrated U-Net: the averaging and the card are what is tested
    shutil.copytree(tiny_unet, tmp_path / "a")
    shutil.copytree(tiny_unet, tmp_path / "b")
    single = get_detector(str(tmp_path / "a"), device="cpu").predict(image, brain)
    pair = get_detector(f"{tmp_path / 'a'},{tmp_path / 'b'}", device="cpu")
    assert pair.name == "ensemble(tiny-unet,tiny-unet)"
    both = pair.predict(image, brain)
    np.testing.assert_allclose(both.anomaly_map.data, single.anomaly_map.data, atol=1e-6)
    # a member's calibration does not carry over to the ensemble's averaged map, not even
    # when every member carries the same one
    assert "calibration" in get_detector(str(tmp_path / "a"), device="cpu", gate=False).card
    assert "calibration" not in pair.card
    assert pair.describe_score() is pair.score_info


@pytest.mark.parametrize("tta", [False, True])
def test_cuda_out_of_memory_falls_back_to_the_cpu(sample, tiny_unet, tta):
    image, brain = sample
    # the tiny U-Net works at 4 mm: a few windows a run where a 2 mm checkpoint runs hundreds
    expected = UNetDetector([tiny_unet], device="cpu", tta=tta).predict(image, brain)
    detector = UNetDetector([tiny_unet], device="cpu", tta=tta)
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
    assert result.extras["tta"] == ("left-right flip" if tta else None)
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


@pytest.mark.slow  # runs the default shipped model (brain-any: two full-size networks + gate)
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


# --------------------------------------------------------------- flip test-time augmentation
class OneConvolution(torch.nn.Module):
    """A stand-in network: one 3x3x3 convolution (padding 1, no stride), its kernel made
    mirror-symmetric along x (RAS left-right, dim 2 of (n, c, x, y, z)) when asked, so that
    mirroring its input left-right mirrors its output."""

    def __init__(self, symmetric: bool):
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)
        weight = torch.randn(self.conv.weight.shape, generator=generator) * 2.0
        with torch.no_grad():
            self.conv.weight.copy_((weight + weight.flip(2)) / 2 if symmetric else weight)
            self.conv.bias.fill_(-1.0)

    def forward(self, x):
        return self.conv(x)

    def predict(self, x):
        return self.forward(x)


def shipped_card() -> dict:
    from napari_medood.models.checkpoint import Checkpoint

    return Checkpoint.open("brain-t1-unet").card


def stand_in_maps(sample, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    image, brain = sample
    maps = []
    for tta in (False, True):
        detector = UNetDetector.from_models(
            [OneConvolution(symmetric)],
            [shipped_card()],
            device="cpu",
            tta=tta,
            precision="float32",
        )
        detector.gate_enabled = False
        result = detector.predict(image, brain)
        assert result.extras["tta"] == ("left-right flip" if tta else None)
        maps.append(result.anomaly_map.data)
    return maps[0], maps[1]


def test_flip_tta_of_a_mirror_symmetric_model_changes_nothing(sample):
    """A model that commutes with the left-right mirror gives the same map with flip TTA;
    the same convolution before it was made symmetric does not (the check can fail)."""
    image, brain = sample
    plain, tta = stand_in_maps(sample, symmetric=True)
    assert plain[brain].std() > 0.05  # a map with structure, not a constant
    np.testing.assert_allclose(tta, plain, atol=1e-5)
    plain, tta = stand_in_maps(sample, symmetric=False)
    assert np.abs(tta - plain).max() > 0.05
    # training validation builds its detectors this way: no TTA unless asked
    assert not UNetDetector.from_models([OneConvolution(True)], [shipped_card()]).tta


def test_flip_tta_of_a_trained_model_averages_the_map_of_the_mirrored_scan(sample, tiny_unet):
    """A trained U-Net (the tiny one) is not mirror-symmetric: with --tta its map is the mean
    of its plain map and of its map of the scan mirrored left-right (the stored axis whose
    code is L or R), mirrored back. The model works at 4 mm, every other 2 mm voxel centre:
    the scan, zero-padded from 90 to 91 voxels across, has its 4 mm voxels at the even 2 mm
    ones, which mirroring maps onto each other, and its 46 voxels across are two windows of
    32 at 0 and 14, each the other's mirror image, so the mirrored scan's windows are exactly
    the mirrored windows."""
    import nibabel as nib

    from napari_medood.io.volume import Volume

    image, brain = sample
    across = [code in "LR" for code in nib.aff2axcodes(image.affine)].index(True)
    widths = [(0, 0)] * 3
    widths[across] = (0, 1)  # one empty voxel after the last: voxel 0 and the affine stay
    image, brain = Volume(np.pad(image.data, widths), image.affine), np.pad(brain, widths)
    mirrored = image.with_data(np.flip(image.data, across).copy())
    mirrored_brain = np.flip(brain, across).copy()

    def run(volume, mask, tta):
        detector = get_detector(
            str(tiny_unet), device="cpu", precision="float32", gate=False, tta=tta
        )
        assert detector.tta is tta
        return detector.predict(volume, mask)

    plain = run(image, brain, False).anomaly_map.data
    with_tta = run(image, brain, True)
    back = np.flip(run(mirrored, mirrored_brain, False).anomaly_map.data, across)
    assert with_tta.extras["tta"] == "left-right flip"
    assert "flip TTA" in with_tta.extras["execution"]
    assert "flip TTA" in with_tta.anomaly_map.meta["description"]
    tta = with_tta.anomaly_map.data
    assert np.abs(tta - plain).max() > 0.05 and np.abs(back - plain).max() > 0.05
    np.testing.assert_allclose(tta, (plain + back) / 2, atol=1e-5)


def test_tta_is_off_by_default_and_families_without_it_ignore_it(sample):
    from napari_medood.detectors import DetectorOptions

    image, brain = sample
    assert DetectorOptions().tta is False
    assert get_detector("brain-t1-unet", device="cpu", gate=False).tta is False
    maps = [get_detector("intensity", tta=tta).predict(image, brain) for tta in (False, True)]
    np.testing.assert_array_equal(maps[1].anomaly_map.data, maps[0].anomaly_map.data)


def test_predict_cli_tta_is_recorded_in_the_map_header_and_console(tmp_path, capsys, tiny_unet):
    import nibabel as nib

    from napari_medood.cli import predict_main

    scan = f"{SAMPLE}/ixi048_t1_2mm.nii.gz"
    mask = f"{SAMPLE}/ixi048_brainmask_2mm.nii.gz"
    name = "tiny-unet"  # the name in the checkpoint's card, which the records use
    args = ["--model", str(tiny_unet), "--device", "cpu", "--precision", "float32", "--no-gate"]
    args += ["--mask", mask, scan]
    assert predict_main(["--tta", *args, str(tmp_path / "tta")]) == 0
    err = capsys.readouterr().err
    assert f"{name} on cpu at float32 with left-right flip test-time augmentation" in err
    header = nib.load(tmp_path / "tta" / "ixi048_t1_2mm.nii.gz").header
    assert bytes(header["descrip"]).startswith(f"napari-medood {name} (cpu, float32".encode())
    assert bytes(header["descrip"]).rstrip(b"\0").endswith(b", flip TTA)")
    # without --tta: another map, and neither the header nor the console mention TTA
    assert predict_main([*args, str(tmp_path / "plain")]) == 0
    assert "test-time augmentation" not in capsys.readouterr().err
    plain = nib.load(tmp_path / "plain" / "ixi048_t1_2mm.nii.gz")
    assert b"TTA" not in bytes(plain.header["descrip"])
    written = nib.load(tmp_path / "tta" / "ixi048_t1_2mm.nii.gz").get_fdata()
    assert np.abs(written - plain.get_fdata()).max() > 0.05
    from napari_medood.cli.predict import build_parser

    assert "twice the time" in " ".join(build_parser().format_help().split())


def test_eval_cli_passes_tta_to_the_detector(tmp_path, monkeypatch, capsys, tiny_unet):
    import napari_medood.detectors as detectors
    from napari_medood.cli import eval_main
    from napari_medood.errors import MedoodError

    seen = []

    def stop(name, options=None, **values):
        seen.append(options)
        raise MedoodError("stopped here by the test")

    monkeypatch.setattr(detectors, "get_detector", stop)
    args = ["--model", "brain-t1-unet", str(tmp_path / "set"), "-o", str(tmp_path / "r")]
    assert eval_main(["--tta", *args]) == 2
    assert eval_main(args) == 2
    assert [options.tta for options in seen] == [True, False]
    assert "stopped here by the test" in capsys.readouterr().err
    # without a model to run, --tta means nothing: say so
    assert (
        eval_main(["--tta", str(tmp_path / "p"), str(tmp_path / "l"), "-o", str(tmp_path / "r")])
        == 2
    )
    assert "--tta is how a detector runs" in capsys.readouterr().err
    # what medood-eval keeps in its report's settings (metrics.json) says it
    from napari_medood.batch import run_record

    monkeypatch.undo()
    record = run_record(get_detector(str(tiny_unet), device="cpu", gate=False, tta=True), "x")
    assert record["tta"] == "left-right flip"
    assert run_record(get_detector("intensity", tta=True), "x")["tta"] is None


@pytest.mark.slow  # a figure of the shipped models' trained weights, on a full-size scan
def test_the_contrast_randomised_model_does_not_light_up_a_flair():
    """brain-t1-unet paints nearly the whole brain of an MS FLAIR; brain-any-unet-cpu,
    fine-tuned with contrast randomisation, expects any contrast and flags a few percent."""
    from conftest import shared
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.models.checkpoint import Checkpoint

    assert Checkpoint.open("brain-any-unet-cpu").card["expects"]["contrast"] == "any"
    flair = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient07",
            "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    brain = flair.data > 0
    lit = {}
    for name in ("brain-t1-unet", "brain-any-unet-cpu"):
        result = get_detector(name, device="cpu", gate=False).predict(flair, brain)
        lit[name] = float((result.anomaly_map.data[brain] > 0.5).mean())
        notes = " ".join(result.notes)
        assert ("says FLAIR" in notes) == (name == "brain-t1-unet")
    assert lit["brain-t1-unet"] > 0.5 and lit["brain-any-unet-cpu"] < 0.1


@pytest.mark.slow  # a figure of the shipped models' trained weights
def test_the_ood_supervised_model_flags_less_of_a_smoother_healthy_brain(sample):
    """brain-t1-unet takes a smoother healthy brain for an abnormal one; brain-t1-unet-ood,
    fine-tuned on the clean patches it fired on (Med-OoD), flags far less of it, each at
    its own calibrated threshold."""
    from napari_medood.detectors import get_detector
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.data import smoothed

    image, mask = sample
    card = Checkpoint.open("brain-t1-unet-ood").card
    assert card["training"]["ood_supervision"]["hard"] > 0
    assert card["gate"] == "brain-t1-gate"
    # the held-out brain as a 1.4 mm blur shows it (0.7 voxels of 2 mm)
    blurred = image.with_data(smoothed(image.data, mask, (0.7, 0.7, 0.7)))
    flagged = {}
    for name in ("brain-t1-unet", "brain-t1-unet-ood"):
        result = get_detector(name, device="cpu", gate=False).predict(blurred, mask)
        flagged[name] = result.extras["calibration"]["flagged_share"]
    assert flagged["brain-t1-unet"] > 0.5
    assert flagged["brain-t1-unet-ood"] < 0.5 * flagged["brain-t1-unet"]


def test_the_gpu_trained_model_ships_calibrated_with_a_gate_pinned_to_its_encoder(sample):
    """brain-any-unet-gpu: the GPU-trained weights as training wrote them (sha256), its
    calibration on the held-out IXI brains, and its own trust gate on its encoder, which
    takes the held-out sample for a brain like its training brains and a trunk CT for none."""
    from conftest import shared
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.models.checkpoint import Checkpoint

    model = Checkpoint.open("brain-any-unet-gpu")  # checks the weights against the card
    card = model.card
    assert card["training"]["device"] == "NVIDIA H200"
    assert card["training"]["steps_done"] == 3000 and card["training"]["seconds"] > 0
    assert card["expects"]["contrast"] == "any"
    calibration = card["calibration"]
    assert calibration["made_with"]["mask"] == "given"
    assert [s[:6] for s in calibration["healthy_scans"]] == ["IXI039", "IXI048"]
    gate = Checkpoint.open(card["gate"]).card
    assert gate["backbone"]["model"] == "brain-any-unet-gpu"
    assert gate["backbone"]["sha256"] == card["weights"]["sha256"]
    assert gate["training"]["recipe"]["contrast_copies"] > 0
    detector = get_detector("brain-any-unet-gpu", device="cpu")
    image, brain = sample
    assert detector.trust(image, brain).in_distribution
    ct = read_volume(shared("totalsegmentator-example", "example_ct.nii.gz"))
    assert not detector.trust(ct).in_distribution


@pytest.mark.slow  # figures of the shipped models' trained weights, on full-size scans
def test_the_gpu_trained_model_reads_a_flair_and_a_smoother_brain_calmly(sample):
    """On an MS FLAIR brain-t1-unet paints nearly everything above 0.5, brain-any-unet-gpu a
    few percent at most and without a contrast warning; on the held-out brain blurred as a
    1.4 mm acquisition shows it, it flags far less than brain-t1-unet, each at its own
    calibrated threshold."""
    from conftest import shared
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.training.data import smoothed

    flair = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient19",
            "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    brain = flair.data > 0
    image, mask = sample
    blurred = image.with_data(smoothed(image.data, mask, (0.7, 0.7, 0.7)))
    lit, flagged = {}, {}
    for name in ("brain-t1-unet", "brain-any-unet-gpu"):
        detector = get_detector(name, device="cpu", gate=False)
        result = detector.predict(flair, brain)
        lit[name] = float((result.anomaly_map.data[brain] > 0.5).mean())
        assert ("says FLAIR" in " ".join(result.notes)) == (name == "brain-t1-unet")
        flagged[name] = detector.predict(blurred, mask).extras["calibration"]["flagged_share"]
    assert lit["brain-t1-unet"] > 0.5 and lit["brain-any-unet-gpu"] < 0.05
    assert flagged["brain-any-unet-gpu"] < 0.6 * flagged["brain-t1-unet"]
