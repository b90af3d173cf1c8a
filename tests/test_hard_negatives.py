"""OoD supervision in training (Med-OoD): hard negatives for the U-Net, anomaly-free samples
for the supervised segmenter, the ratio rule, and the step that learns from them."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_UNET, shared
from napari_medood.errors import MedoodError
from napari_medood.models.checkpoint import load_checkpoint
from napari_medood.training.config import load_config

MS = ("open-ms-lesjak-mni",)
MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MS_LABEL = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


@pytest.fixture(scope="module")
def ixi(tmp_path_factory):
    """Two healthy IXI scans to train the U-Net on, and a tiny baseline trained on them."""
    from napari_medood.training.unet import train_unet

    root = tmp_path_factory.mktemp("hard_negatives")
    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    (root / "train").mkdir()
    for scan in sorted(t1.glob("*.nii.gz"))[:2]:
        shutil.copy(scan, root / "train" / scan.name)
    baseline = root / "baseline"
    train_unet(load_config(None, tiny_unet_settings(root, dlmuse, baseline, "steps=2")))
    return root, dlmuse, baseline / "best"


def tiny_unet_settings(root: Path, dlmuse: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"train={root / 'train'}",
        f"masks={dlmuse}",
        f"out={out}",
        *TINY_UNET,
        *extra,
    ]


def prepared(root: Path, dlmuse: Path):
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import prepare_scans

    cases = discover_cases(root / "train", masks=dlmuse)
    return prepare_scans(cases, ModelSpace(spacing=(4.0, 4.0, 4.0)))


def baseline_network(checkpoint: Path):
    from napari_medood.execution import plan_execution
    from napari_medood.models.checkpoint import Checkpoint

    execution = plan_execution("cpu", "float32")
    return execution.prepare(Checkpoint.open(checkpoint).build_model("cpu")), execution


def test_mining_keeps_exactly_the_patches_where_the_baseline_fires(ixi):
    import torch

    from napari_medood.training.hard_negatives import clean_patch_draw, mine_hard_negatives

    root, dlmuse, baseline = ixi
    network, execution = baseline_network(baseline)
    draw = clean_patch_draw(prepared(root, dlmuse), (32, 32, 32), 0.5, (0.5, 1.5))
    every = mine_hard_negatives(network, execution, draw, 12, seed=3, threshold=-1.0)
    assert len(every.patches) == every.candidates == 12
    # the baseline's own highest brain probability on each candidate, computed here
    peaks = []
    for image, mask in every.patches:
        with torch.inference_mode():
            logits = network.predict(torch.from_numpy(image)[None, None])
        peaks.append(float(torch.sigmoid(logits)[0, 0].numpy()[mask].max()))
    threshold = float(np.median(peaks))
    kept = mine_hard_negatives(network, execution, draw, 12, seed=3, threshold=threshold)
    expected = [i for i, peak in enumerate(peaks) if peak > threshold]
    assert 0 < len(kept.patches) == len(expected) < 12
    for (image, mask), index in zip(kept.patches, expected, strict=True):
        assert np.array_equal(image, every.patches[index][0])
        assert np.array_equal(mask, every.patches[index][1])
    # several voxels must fire when asked: fewer or as many patches, each with that many
    strict = mine_hard_negatives(
        network, execution, draw, 12, seed=3, threshold=threshold, min_voxels=50
    )
    assert len(strict.patches) <= len(kept.patches)
    assert all(count >= 50 for count in strict.flagged_voxels)


def test_the_ratio_rule_picks_the_documented_share():
    from napari_medood.training.hard_negatives import ratio_rule_share

    # 90 of 100 patches hold an anomaly, all hold background: adding r * 40 hard negatives
    # brings 90 / (100 + 40 r) closest to 0.65 at r = 1.0 (0.643; r = 0.9 gives 0.662)
    r, share = ratio_rule_share(90, 100, 40)
    assert r == 1.0 and share == pytest.approx(40 / 140)
    # plenty of hard negatives: only the fraction that reaches the ratio is added
    r, share = ratio_rule_share(90, 100, 200)
    assert r == 0.2 and share == pytest.approx(40 / 140)
    # already below the ratio: nothing is added
    assert ratio_rule_share(50, 100, 30) == (0.0, 0.0)


def test_a_training_step_with_hard_negatives_lowers_the_loss_on_a_fixed_batch(ixi):
    import torch

    from napari_medood.models.unet import deep_supervision_loss
    from napari_medood.training.data import SyntheticAnomalyPatches
    from napari_medood.training.hard_negatives import clean_patch_draw, mine_hard_negatives

    root, dlmuse, baseline = ixi
    torch.manual_seed(0)
    network, execution = baseline_network(baseline)
    scans = prepared(root, dlmuse)
    draw = clean_patch_draw(scans, (32, 32, 32), 1.0, (0.5, 1.5))
    # a low threshold, so that this barely trained baseline "fires" on clean patches
    found = mine_hard_negatives(network, execution, draw, 8, seed=1, threshold=0.3)
    assert found.patches, "the baseline fired on no clean patch"
    data = SyntheticAnomalyPatches(
        scans, (32, 32, 32), 8, seed=2, fp_size=16, spacing=(4, 4, 4), negatives=found.patches
    )
    data.p_negative = 0.5
    items = [data.sample(i) for i in range(8)]
    kinds = [kind for *_, kind in items]
    assert "hard-negative" in kinds and set(kinds) != {"hard-negative"}
    for image, target, kind in items:
        if kind == "hard-negative":  # a clean patch the baseline fired on, target all zero
            assert not target.any()
            assert any(
                np.array_equal(image, p) or np.array_equal(image, p[::-1]) for p, _ in found.patches
            )
    images = torch.from_numpy(np.stack([i for i, *_ in items]))[:, None]
    targets = torch.from_numpy(np.stack([t for _, t, _ in items]))[:, None]
    negative = torch.tensor([k == "hard-negative" for k in kinds])
    model = network.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_and_negative_probability():
        outputs = model(images)
        probability = torch.sigmoid(outputs[-1])[negative].mean()
        return deep_supervision_loss(outputs, targets), float(probability.detach())

    before, negative_before = loss_and_negative_probability()
    for _ in range(6):
        optimiser.zero_grad()
        loss, _ = loss_and_negative_probability()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after, negative_after = loss_and_negative_probability()
    assert float(after) < 0.8 * float(before.detach())
    # and the hard negatives are what it learnt to stop firing on
    assert negative_after < negative_before


def test_unet_training_with_ood_supervision_records_its_mix(ixi, tmp_path):
    from napari_medood.training.hard_negatives import ratio_rule_share
    from napari_medood.training.unet import train_unet

    root, dlmuse, baseline = ixi
    out = tmp_path / "ood"
    result = train_unet(
        load_config(
            None,
            tiny_unet_settings(
                root,
                dlmuse,
                out,
                "steps=2",
                f"init={baseline}",
                "ood_supervision=auto",
                "ood_candidates=10",
                "ood_threshold=0.3",
                "ood_blur=1.0",
            ),
        )
    )
    _, card = load_checkpoint(result.best)
    record = card["training"]["ood_supervision"]
    assert record["candidates"] == 10 and 0 < record["hard"] <= 10
    assert record["baseline"]["sha256"] == load_checkpoint(baseline)[1]["weights"]["sha256"]
    assert (record["r"], record["share"]) == pytest.approx(
        ratio_rule_share(9, 10, record["hard"]), abs=1e-4
    )
    # a resumed run must mine with the baseline it started with
    from napari_medood.training.hard_negatives import check_same_baseline

    check_same_baseline(out / "last" / "card.json", record, out)
    other = {**record, "baseline": {"model": "another", "sha256": "0" * 64}}
    with pytest.raises(MedoodError, match="resume with the same ood_baseline"):
        check_same_baseline(out / "last" / "card.json", other, out)
    # YAML's 5e-2 is a string: still a share
    assert (
        load_config(
            None, tiny_unet_settings(root, dlmuse, out, "ood_supervision=5e-2", f"init={baseline}")
        ).ood_supervision
        == 0.05
    )
    # a share by hand; no baseline, an unknown share: clear errors
    with pytest.raises(MedoodError, match="ood_baseline"):
        load_config(None, tiny_unet_settings(root, dlmuse, out, "ood_supervision=0.3"))
    with pytest.raises(MedoodError, match="'auto'"):
        load_config(None, tiny_unet_settings(root, dlmuse, out, "ood_supervision=lots"))
    with pytest.raises(MedoodError, match="spacing"):
        train_unet(
            load_config(
                None,
                tiny_unet_settings(
                    root, dlmuse, tmp_path / "other", "steps=1", "ood_supervision=0.3"
                )
                + [f"ood_baseline={baseline}", "spacing=[8,8,8]"],
            )
        )


@pytest.fixture(scope="module")
def ms_cohort(tmp_path_factory):
    """The two MS patients' T1 scans with their real lesion masks (a CSV cohort), and one
    healthy IXI scan."""
    root = tmp_path_factory.mktemp("segmenter")
    rows = [
        [patient, shared(*MS, patient, MS_T1), shared(*MS, patient, MS_LABEL)]
        for patient in ("patient07", "patient19")
    ]
    with open(root / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["Name", "Path", "Label"], *rows])
    with open(root / "val.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["Name", "Path", "Label"], rows[0]])
    scan = sorted(shared("ixi-t1-2mm", "t1").glob("*.nii.gz"))[0]
    (root / "healthy").mkdir()
    shutil.copy(scan, root / "healthy" / scan.name)
    return root


def tiny_seg(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "seg",
        "--set",
        f"train={root / 'train.csv'}",
        "--set",
        f"out={out}",
        *sum(
            (
                ["--set", item]
                for item in (
                    "preset=tiny",
                    "patch=[32,32,32]",
                    "spacing=[4,4,4]",
                    "batch_size=2",
                    "workers=0",
                    "log_interval=1",
                    *extra,
                )
            ),
            [],
        ),
    ]


@pytest.mark.slow
def test_the_segmenter_trains_with_anomaly_free_samples_from_the_cli(ms_cohort, tmp_path):
    from napari_medood.cli import predict_main, train_main
    from napari_medood.io.readers import read_volume
    from napari_medood.training.hard_negatives import ratio_rule_share

    baseline = tmp_path / "baseline"
    assert train_main(tiny_seg(ms_cohort, baseline, "steps=2", f"val={ms_cohort / 'val.csv'}")) == 0
    _, card = load_checkpoint(baseline / "best")
    assert card["detector"] == "seg3d" and card["architecture"]["type"] == "MonaiUNet"
    assert card["training"]["ood_supervision"] is None
    assert "pixel_ap" in card["metrics"]["validation"]

    out = tmp_path / "ood"
    argv = tiny_seg(
        ms_cohort,
        out,
        "steps=2",
        f"init={baseline / 'best'}",
        f"ood_healthy={ms_cohort / 'healthy'}",
        "ood_candidates=8",
        "ood_threshold=0.0",  # every candidate is hard: the mix is the ratio rule's alone
    )
    assert train_main([*argv, "--ood-supervision", "auto"]) == 0
    _, card = load_checkpoint(out / "best")
    record = card["training"]["ood_supervision"]
    assert record["removal"] == ["black", "inpaint"]
    assert record["removed_images"] == 4 and record["healthy_scans"] == 1
    assert record["hard"] == record["candidates"] == 8
    positives = round(record["positive_share"] * 8)
    assert (record["r"], record["share"]) == pytest.approx(
        ratio_rule_share(positives, 8, 8), abs=1e-4
    )
    assert "Med-OoD" in card["method"]

    # the trained segmenter is a detector like any other: its map on a scan
    maps = tmp_path / "maps"
    scan = shared(*MS, "patient07", MS_T1)
    assert predict_main([str(scan), str(maps), "--model", str(out / "best")]) == 0
    written = sorted(maps.rglob("*.nii.gz"))
    assert written
    probability = read_volume(written[0]).data
    assert probability.shape == read_volume(scan).data.shape
    assert probability.min() >= 0.0 and probability.max() <= 1.0


def test_segmenter_data_and_errors(ms_cohort, tmp_path):
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import prepare_scans
    from napari_medood.training.segmenter import LesionPatches, SegTrainConfig

    scans = prepare_scans(
        discover_cases(ms_cohort / "train.csv"), ModelSpace(spacing=(4.0, 4.0, 4.0)), lesions=True
    )
    assert all(scan.lesion.any() and scan.lesion.shape == scan.image.shape for scan in scans)
    data = LesionPatches(scans, (16, 16, 16), 40, seed=0, foreground_p=1.0, jitter=0.0)
    # every patch is centred on a lesion voxel when asked to
    assert all(data.sample(i)[1].any() for i in range(40))
    # scans without lesion masks are refused, naming the scan
    with pytest.raises(MedoodError, match="lesion masks"):
        prepare_scans(discover_cases(ms_cohort / "healthy"), ModelSpace(), lesions=True)
    with pytest.raises(MedoodError, match="ood_removal"):
        load_config(None, [f"train={ms_cohort / 'train.csv'}", "ood_removal=erase"], SegTrainConfig)


@pytest.mark.slow
def test_the_segmenter_with_ood_supervision_trains_under_torchrun(ms_cohort, tmp_path):
    from helpers import medood_train_under_torchrun

    baseline = tmp_path / "baseline"
    settings = tiny_seg(ms_cohort, baseline, "steps=1")[2::2]  # the values of each --set
    assert medood_train_under_torchrun("seg", settings).returncode == 0
    out = tmp_path / "ddp"
    settings = tiny_seg(
        ms_cohort,
        out,
        "steps=2",
        "ood_supervision=0.5",
        f"ood_baseline={baseline / 'best'}",
        "ood_candidates=4",
        "ood_threshold=0.0",
    )[2::2]
    run = medood_train_under_torchrun("seg", settings)
    assert run.returncode == 0, run.stdout + run.stderr
    _, card = load_checkpoint(out / "best")
    assert card["training"]["processes"] == 2
    assert card["training"]["ood_supervision"]["hard"] == 4
    assert len((out / "train_log.csv").read_text().splitlines()) == 3  # rank 0 writes alone


def test_a_new_segmenter_starts_at_the_lesion_prior():
    import torch

    from napari_medood.models.segmenter import LesionSegmenter

    torch.manual_seed(0)
    network = LesionSegmenter(channels=(4, 8, 16), prior=0.01).eval()
    scan = torch.rand(1, 1, 32, 32, 32)
    with torch.inference_mode():
        probability = torch.sigmoid(network.predict(scan))
    # rare lesions from the first step, not an even guess that Dice + BCE must unlearn
    assert float(probability.mean()) < 0.1


@pytest.mark.slow
def test_the_shipped_segmenter_finds_an_ms_patients_lesions_better_than_the_unet():
    """brain-t1-seg learnt from real MS lesion shapes implanted into healthy IXI brains (not
    this patient's); on a real MS patient's T1 its map ranks the consensus lesions well above
    the self-supervised U-Net's."""
    from sklearn.metrics import average_precision_score

    from napari_medood.detectors import get_detector
    from napari_medood.io.readers import read_volume

    scan = read_volume(shared(*MS, "patient19", MS_T1))
    lesions = read_volume(shared(*MS, "patient19", MS_LABEL)).data[scan.data > 0] > 0.5
    brain = scan.data > 0
    ap = {}
    for name in ("brain-t1-seg", "brain-t1-unet"):
        detector = get_detector(name, device="cpu", gate=False)
        ap[name] = average_precision_score(
            lesions, detector.predict(scan, brain).anomaly_map.data[brain]
        )
    assert get_detector("brain-t1-seg", gate=False).card["detector"] == "seg3d"
    assert ap["brain-t1-seg"] > 2 * ap["brain-t1-unet"]
    assert ap["brain-t1-seg"] > 4 * lesions.mean()  # chance is the lesions' share, 4.6 %
