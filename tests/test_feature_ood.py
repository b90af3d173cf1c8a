"""The feature-OOD family end to end: medood-train classifier and flow, the detector, the
trust gate in front of a map, medood-predict --task sample (MedOODFlow, issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared

ADRENAL28 = ("medmnist-adrenalmnist3d", "adrenalmnist3d.npz")


def classifier_settings(out: Path, *extra: str) -> list[str]:
    npz = shared(*ADRENAL28)
    return [
        f"train={npz}:val",
        f"val={npz}:val",
        f"out={out}",
        "shape=[28,28,28]",
        "widths=[4,8,8,8]",
        "batch_size=4",
        "steps=6",
        "val_interval=3",
        "log_interval=1",
        "device=cpu",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from napari_medood.training.classifier import ClassifierTrainConfig, train_classifier
    from napari_medood.training.config import load_config

    out = tmp_path_factory.mktemp("classifier")
    config = load_config(None, classifier_settings(out), ClassifierTrainConfig)
    result = train_classifier(config)
    return result.best


@pytest.fixture(scope="module")
def tiny_flow(tiny_classifier, tmp_path_factory):
    from napari_medood.training.config import load_config
    from napari_medood.training.flow import FlowTrainConfig, train_flow

    npz = shared(*ADRENAL28)
    out = tmp_path_factory.mktemp("flow")
    config = load_config(
        None,
        [
            f"backbone={tiny_classifier}",
            f"train={npz}:val",
            f"reference={npz}:test",
            "reference_views=1",
            f"val_ood={shared('totalsegmentator-example', 'example_mr_sm.nii.gz')}",
            f"out={out}",
            "augment=false",
            "epochs=3",
            "batch_size=32",
            "device=cpu",
            "reference_scans='AdrenalMNIST3D test volumes'",
        ],
        FlowTrainConfig,
    )
    result = train_flow(config)
    return result.best


def adrenal_volume(index: int = 0, corrupt_kind: str | None = None):
    from napari_medood.io.volume import Volume
    from napari_medood.training.ood_data import load_npz

    array = load_npz(str(shared(*ADRENAL28)) + ":test").arrays[index]
    if corrupt_kind is not None:
        from napari_medood.ood.corruptions import corrupt

        array = corrupt(array, corrupt_kind, seed=index)
    return Volume(array, np.eye(4), f"adrenal_test_{index}.nii.gz")


def test_the_classifier_trains_logs_and_keeps_its_best_by_weighted_f1(tiny_classifier):
    from napari_medood.models.checkpoint import load_checkpoint

    model, card = load_checkpoint(tiny_classifier)
    assert card["detector"] == "classifier3d"
    assert card["architecture"]["type"] == "ResNet3D"
    assert card["input"] == {
        "kind": "resize",
        "shape": [28, 28, 28],
        "normalisation": "min-max to [0, 1]",
    }
    assert 0.0 <= card["metrics"]["validation"]["weighted_f1"] <= 1.0
    log = (tiny_classifier.parent / "val_log.csv").read_text().splitlines()
    assert len(log) == 3  # header + steps 3 and 6


def test_a_classifier_checkpoint_scores_by_its_softmax(tiny_classifier):
    """A classifier3d checkpoint is a detector too: 1 - MSP, rescaled to [0, 1]."""
    from napari_medood.detectors import get_detector

    detector = get_detector(str(tiny_classifier))
    assert detector.outputs == ("score",)
    result = detector.predict(adrenal_volume(2))
    probabilities = result.extras["probabilities"]
    assert probabilities.shape == (2,) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.score == pytest.approx(2 * (1 - probabilities.max()), abs=1e-5)


def test_the_flow_checkpoint_holds_every_head_and_its_reference(tiny_flow):
    from napari_medood.models.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(tiny_flow)
    card = checkpoint.card
    assert card["detector"] == "feature-ood"
    assert set(card["heads"]) == {"flow", "msp", "energy", "react", "mds", "vim", "knn"}
    assert card["feature_width"] == 4 + 4 + 8 + 8 + 8
    for entry in card["heads"].values():
        assert len(entry["reference"]) == 298  # the test split, one view each
        assert entry["reference"] == sorted(entry["reference"])
        assert 0.0 <= entry["validation_auroc"] <= 1.0
    state = checkpoint.load_state()
    assert any(k.startswith("backbone.") for k in state)
    assert any(k.startswith("heads.flow.") for k in state)
    assert len(card["training"]["flow_history"]) == 3


@pytest.mark.parametrize("head", ["flow", "msp", "energy", "react", "mds", "vim", "knn"])
def test_every_head_scores_a_volume_in_0_1_with_a_percentile(tiny_flow, head):
    from napari_medood.detectors import get_detector

    detector = get_detector(str(tiny_flow), variant=head)
    result = detector.predict(adrenal_volume(3))
    assert result.anomaly_map is None
    assert 0.0 <= result.score <= 1.0
    report = result.extras["trust"]
    assert report.head == head
    assert report.score == pytest.approx(1 - report.percentile / 100)
    assert "percentile" in report.verdict()


def test_a_truncated_volume_scores_as_less_typical_than_itself(tiny_flow):
    """Even a barely trained flow reads a half-zeroed volume as less likely."""
    from napari_medood.detectors import get_detector

    detector = get_detector(str(tiny_flow))
    clean = [detector.predict(adrenal_volume(i)).score for i in range(6)]
    damaged = [detector.predict(adrenal_volume(i, "truncation")).score for i in range(6)]
    assert np.mean(damaged) > np.mean(clean)


def test_a_head_the_model_lacks_is_named(tiny_flow):
    from napari_medood.detectors import get_detector
    from napari_medood.errors import MedoodError

    with pytest.raises(MedoodError, match="valid"):
        get_detector(str(tiny_flow), variant="odin")


def test_the_card_input_recipe_brings_any_size_to_the_network(tiny_flow, ct_scan):
    """A CT of another size and spacing is resized and scaled as the card says."""
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume

    result = get_detector(str(tiny_flow)).predict(read_volume(ct_scan))
    assert 0.0 <= result.score <= 1.0


def test_medood_predict_writes_sample_scores_and_refuses_maps(tiny_flow, tmp_path):
    from napari_medood.io import write_nifti

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(2):
        write_nifti(adrenal_volume(i), scans / f"adrenal_{i}.nii.gz")
    medood_predict = str(Path(sys.executable).with_name("medood-predict"))
    run = subprocess.run(
        [
            medood_predict,
            "--task",
            "sample",
            "--model",
            str(tiny_flow),
            "--variant",
            "mds",
            str(scans),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    for i in range(2):
        value = float((tmp_path / "out" / f"adrenal_{i}.nii.gz.txt").read_text())
        assert 0.0 <= value <= 1.0
    run = subprocess.run(
        [
            medood_predict,
            "--task",
            "pixel",
            "--model",
            str(tiny_flow),
            str(scans),
            str(tmp_path / "maps"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "sample" in run.stderr and "Traceback" not in run.stderr


def test_medood_eval_scores_a_feature_ood_model_on_id_and_shifted_volumes(tiny_flow, tmp_path):
    import csv

    from napari_medood.io import write_nifti

    rows = []
    for i in range(4):
        for kind in (None, "truncation"):
            path = tmp_path / f"adrenal_{i}_{kind or 'clean'}.nii.gz"
            write_nifti(adrenal_volume(i, kind), path)
            rows.append({"Path": str(path), "Anomalous": "0" if kind is None else "1"})
    table = tmp_path / "cohort.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Path", "Anomalous"])
        writer.writeheader()
        writer.writerows(rows)
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("medood-eval")),
            "--model",
            str(tiny_flow),
            "--bootstrap",
            "50",
            str(table),
            "-o",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "sample AUROC" in run.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["sample"]["auroc"] <= 1.0


SAMPLES = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"


def sample_scan():
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(SAMPLES / "ixi048_t1_2mm.nii.gz")
    return volume, load_mask(SAMPLES / "ixi048_brainmask_2mm.nii.gz", volume.grid)


def test_the_shipped_detectors_name_their_gate_and_it_runs_before_the_map(ct_scan):
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.models.checkpoint import Checkpoint

    for name in ("brain-t1-unet", "brain-t1-mhd"):
        assert Checkpoint.open(name).card["gate"] == "brain-t1-gate"
    detector = get_detector("brain-t1-unet", device="cpu")
    volume, mask = sample_scan()
    result = detector.predict(volume, mask)
    report = result.extras["trust"]
    assert report.model == "brain-t1-gate" and report.head == "flow"
    assert report.in_distribution and result.notes == ()
    assert result.anomaly_map is not None
    # a CT is nothing like a T1 brain: the map still comes, with the gate's warning first
    ct = detector.predict(read_volume(ct_scan))
    assert not ct.extras["trust"].in_distribution
    assert any(note.startswith("NOT like the training data") for note in ct.notes)
    assert ct.anomaly_map is not None
    # the gate can be switched off
    plain = get_detector("brain-t1-unet", device="cpu", gate=False).predict(volume, mask)
    assert "trust" not in plain.extras


@pytest.mark.slow  # the shipped gate's ranking
def test_the_gate_ranks_other_contrasts_below_the_t1_of_the_same_patient():
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume

    gate = get_detector("brain-t1-gate")
    confidence = {}
    for contrast in ("T1", "FLAIR", "T2"):
        path = shared(
            "open-ms-lesjak-mni",
            "patient07",
            f"{contrast}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
        volume = read_volume(path)
        confidence[contrast] = gate.predict(volume, volume.data > 0).extras["confidence"]
    assert confidence["T1"] > confidence["FLAIR"] and confidence["T1"] > confidence["T2"]


def test_a_missing_gate_warns_and_the_map_still_runs(tmp_path):
    import shutil
    import warnings

    from napari_medood.detectors import get_detector
    from napari_medood.models.checkpoint import resolve_model

    folder = tmp_path / "unet"
    shutil.copytree(resolve_model("brain-t1-unet"), folder)
    card = json.loads((folder / "card.json").read_text())
    card["gate"] = str(tmp_path / "no-such-gate")
    (folder / "card.json").write_text(json.dumps(card))
    volume, mask = sample_scan()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = get_detector(str(folder), device="cpu").predict(volume, mask)
    assert result.anomaly_map is not None and "trust" not in result.extras
    assert any("no-such-gate" in str(w.message) for w in caught)


@pytest.mark.slow
def test_medood_predict_writes_the_gate_verdict_beside_the_map(tmp_path, ct_scan):
    out = tmp_path / "out"
    medood_predict = str(Path(sys.executable).with_name("medood-predict"))
    run = subprocess.run(
        [medood_predict, "--device", "cpu", str(ct_scan), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    name = Path(ct_scan).name
    assert (out / name).is_file()
    trust = json.loads((out / f"{name}.trust.json").read_text())
    assert trust["model"] == "brain-any-gate"  # the default model's gate
    assert trust["in_distribution"] is False
    assert 0.0 <= trust["score"] <= 1.0 and trust["verdict"].startswith("NOT like")
    warnings = [line for line in run.stderr.splitlines() if "NOT like the training data" in line]
    assert len(warnings) == 1  # one line per scan
    run = subprocess.run(
        [medood_predict, "--device", "cpu", "--no-gate", str(ct_scan), str(tmp_path / "plain")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and not (tmp_path / "plain" / f"{name}.trust.json").exists()


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_fits_the_same_heads_as_one_process(tiny_classifier, tmp_path):
    """Each process computes a share of the features; gathered, every process fits the same
    heads, and rank 0 writes the checkpoint: the reference confidences equal one process's."""
    npz = shared(*ADRENAL28)
    settings = [
        f"backbone={tiny_classifier}",
        f"train={npz}:val",
        f"reference={npz}:val",
        "reference_views=1",
        "augment=false",
        "epochs=2",
        "batch_size=32",
        "device=cpu",
        "heads=[mds,knn,energy]",
    ]
    medood_train = str(Path(sys.executable).with_name("medood-train"))
    one = subprocess.run(
        [
            medood_train,
            "flow",
            *sum((["--set", s] for s in [*settings, f"out={tmp_path / 'one'}"]), []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr
    from helpers import medood_train_under_torchrun

    two = medood_train_under_torchrun("flow", [*settings, f"out={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stdout + two.stderr
    card_one = json.loads((tmp_path / "one" / "best" / "card.json").read_text())
    card_two = json.loads((tmp_path / "two" / "best" / "card.json").read_text())
    assert card_two["training"]["processes"] == 2
    for head in ("mds", "knn", "energy"):
        np.testing.assert_allclose(
            card_two["heads"][head]["reference"],
            card_one["heads"][head]["reference"],
            rtol=1e-4,
            atol=1e-4,
        )


def test_the_gate_reads_a_scan_at_its_own_coarser_spacing():
    from napari_medood.io import read_volume
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.preprocessing.feature_input import feature_inputs
    from napari_medood.training.flow import open_backbone

    gate = Checkpoint.open("brain-t1-gate").card["input"]
    unet = Checkpoint.open("brain-t1-unet").card["preprocessing"]
    assert gate["preprocessing"]["spacing"] == [4.0, 4.0, 4.0] and unet["spacing"] == [2.0] * 3
    # the recipe medood-train flow writes: the detector's model space at the given spacing
    _, _, recipe, _ = open_backbone("brain-t1-unet", spacing=[4, 4, 4])
    assert recipe["preprocessing"] == {**unet, "spacing": [4.0, 4.0, 4.0]}
    volume, mask = sample_scan()
    coarse = feature_inputs(volume, mask, gate)
    fine = feature_inputs(volume, mask, {**gate, "preprocessing": unet})
    assert len(coarse) == len(fine) == 1
    assert all(s % 16 == 0 for s in coarse[0].shape)
    # an eighth of the voxels, give or take the padding to a multiple of 16
    assert 1 / 12 < coarse[0].size / fine[0].size < 1 / 5
    # a 1 mm MNI brain comes to the same physical size
    ms = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient07",
            "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    (ms_input,) = feature_inputs(ms, ms.data > 0, gate)
    assert all(abs(a - b) <= 16 for a, b in zip(ms_input.shape, coarse[0].shape, strict=True))


@pytest.mark.parametrize("spacing", ["[4,4]", "[0,4,4]", "[-2,2,2]"])
def test_a_flow_config_refuses_a_spacing_that_is_not_three_voxel_sizes(spacing):
    from napari_medood.errors import MedoodError
    from napari_medood.training.config import load_config
    from napari_medood.training.flow import FlowTrainConfig

    with pytest.raises(MedoodError, match="spacing must be three positive voxel sizes"):
        load_config(
            None,
            ["backbone=brain-t1-unet", "train=scans/", f"spacing={spacing}"],
            FlowTrainConfig,
        )


def test_random_contrast_copies_join_the_gate_s_training_scans_as_their_subject(tmp_path):
    """medood-train flow --set contrast_copies=2: each training scan is followed by two
    healthy copies drawn in random contrasts from its parcellation (unlike it and each
    other, zero outside the same brain), all three of one subject, so cross-fitting never
    scores a scan's reference views with heads that saw its copies; the card records it."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.flow import FlowTrainConfig, open_backbone, train_flow
    from napari_medood.training.ood_data import load_source

    ixi = shared("ixi-t1-2mm")
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:3]
    table = tmp_path / "train.csv"
    table.write_text(
        "Path,Mask\n" + "".join(f"{c.image},{c.mask}\n" for c in cases), encoding="utf-8"
    )
    _, _, spec, _ = open_backbone("brain-any-unet-gpu", spacing=[4, 4, 4])
    volumes = load_source(str(table), spec, None, contrast_copies=2, seed=3)
    assert len(volumes) == 9 and volumes.subjects == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    real, first, second = volumes.arrays[:3]
    assert real.shape == first.shape == second.shape
    assert not np.allclose(real, first) and not np.allclose(first, second)
    # the same brain, zero around it (the real scan's darkest brain voxels are 0 as well)
    from scipy import ndimage

    around = ~ndimage.binary_dilation(ndimage.binary_fill_holes(real != 0), iterations=2)
    assert around.sum() > 0.3 * around.size and not first[around].any()
    again = load_source(str(table), spec, None, contrast_copies=2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(volumes.arrays, again.arrays, strict=True))
    config = FlowTrainConfig(
        backbone="brain-any-unet-gpu",
        train=str(table),
        out=str(tmp_path / "gate"),
        spacing=[4.0, 4.0, 4.0],
        contrast_copies=2,
        views=2,
        reference_views=1,
        reference_folds=3,
        epochs=2,
        batch_size=8,
        device="cpu",
    )
    result = train_flow(config)
    card = Checkpoint.open(result.best).card
    assert card["training"]["volumes"] == 9 and card["training"]["subjects"] == 3
    assert card["training"]["recipe"]["contrast_copies"] == 2
    assert len(card["heads"]["flow"]["reference"]) == 9  # one fresh view of each volume
