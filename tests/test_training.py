"""Training the U-Net: configuration, a resumed run, contrast randomisation, fine-tuning (DDP
is the spine's, tested once for every family in ``test_training_spine.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import TINY_UNET, shared
from helpers import after_steps
from napari_medood.errors import Cancelled, MedoodError
from napari_medood.models.checkpoint import load_checkpoint
from napari_medood.training.config import load_config
from napari_medood.training.unet import train_unet


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two IXI scans to train on, one held-out scan turned into a small validation set."""
    from napari_medood.cli import synth_main

    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    root = tmp_path_factory.mktemp("training")
    scans = sorted(t1.glob("*.nii.gz"))
    (root / "train").mkdir()
    for scan in scans[:2]:
        shutil.copy(scan, root / "train" / scan.name)
    (root / "held_out").mkdir()
    shutil.copy(scans[-1], root / "held_out" / scans[-1].name)
    assert (
        synth_main(
            [
                "--mask",
                str(dlmuse),
                "--kinds",
                "uniform_noise",
                str(root / "held_out"),
                str(root / "val"),
            ]
        )
        == 0
    )
    return root, dlmuse


def tiny(root: Path, dlmuse: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"train={root / 'train'}",
        f"masks={dlmuse}",
        f"out={out}",
        *TINY_UNET,
        *extra,
    ]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(
        MedoodError,
        match=r"unknown configuration keys: stepz \(did you mean "
        r"steps\?\)",
    ):
        load_config(None, ["train=x", "stepz=3"])
    with pytest.raises(MedoodError, match="multiples of 16"):
        load_config(None, ["train=x", "patch=[40,40,40]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(MedoodError, match="not valid YAML"):
        load_config(bad)


def test_an_interrupted_run_resumes_and_keeps_the_best_checkpoint(data, tmp_path):
    root, dlmuse = data
    out = tmp_path / "run"
    config = load_config(
        None, tiny(root, dlmuse, out, f"val={root / 'val'}", "steps=6", "val_interval=3")
    )
    with pytest.raises(Cancelled):  # stop during step 5
        train_unet(config, progress=None, cancelled=after_steps(out, 4))
    assert (out / "last" / "state.pt").exists() and (out / "best" / "card.json").exists()
    result = train_unet(
        load_config(
            None, tiny(root, dlmuse, out, f"val={root / 'val'}", "steps=6", "val_interval=3")
        )
    )
    assert result.last_step == 6
    steps = [
        int(line.split(",")[0]) for line in (out / "train_log.csv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2, 3, 4, 5, 6], "the cancel kept step 4's state; the run went on there"
    val = (out / "val_log.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in val[1:]] == ["3", "6"]
    model, card = load_checkpoint(result.best)
    assert card["metrics"]["validation"]["step"] in (3, 6)
    # the forward passes ran at the precision auto means on this CPU (bfloat16 where it can)
    from napari_medood.execution import resolve_precision

    assert card["training"]["precision"] == resolve_precision("auto", "cpu")
    assert card["training"]["data"] == sorted(
        p.name.replace(".nii.gz", "") for p in (root / "train").iterdir()
    )
    with pytest.raises(MedoodError, match="started with steps=6"):
        train_unet(load_config(None, tiny(root, dlmuse, out, "steps=9")))


def test_contrast_randomised_training_runs_and_its_card_expects_any_contrast(data, tmp_path):
    import numpy as np

    from napari_medood.detectors.compatibility import card_mismatches
    from napari_medood.io import read_volume

    root, dlmuse = data
    out = tmp_path / "any-contrast"
    config = load_config(
        None, tiny(root, dlmuse, out, "steps=2", "contrast_randomisation=0.5", "workers=0")
    )
    train_unet(config)
    _, card = load_checkpoint(out / "last")
    assert card["training"]["recipe"]["contrast_randomisation"] == 0.5
    assert card["expects"]["contrast"] == "any"
    assert card["expects"].get("deep_to_superficial") is None
    # such a model is not warned off a FLAIR by the scan's name
    flair = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient07",
            "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    notes = card_mismatches(flair, flair.data > 0, True, card)
    assert not any("FLAIR" in note for note in notes)
    # a run asked to randomise contrasts from plain brain masks says what it needs
    masks = tmp_path / "binary"
    masks.mkdir()
    import nibabel as nib

    for path in sorted(dlmuse.glob("*.nii.gz")):
        image = nib.load(path)
        binary = (np.asarray(image.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(binary, image.affine), masks / path.name)
    with pytest.raises(MedoodError, match="parcellation"):
        train_unet(
            load_config(
                None,
                tiny(root, masks, tmp_path / "refused", "steps=2", "contrast_randomisation=0.5"),
            )
        )
    with pytest.raises(MedoodError, match="contrast_groups"):
        load_config(None, tiny(root, dlmuse, out, "contrast_groups=aseg")).validate()


def test_a_run_can_start_from_another_checkpoint_of_the_same_architecture(data, tmp_path):
    import torch

    root, dlmuse = data
    first = tmp_path / "first"
    train_unet(load_config(None, tiny(root, dlmuse, first, "steps=1")))
    start, start_card = load_checkpoint(first / "last")
    # a near-zero learning rate: the fine-tuned weights are the ones it started from
    tuned = tmp_path / "tuned"
    train_unet(
        load_config(
            None,
            tiny(root, dlmuse, tuned, "steps=1", f"init={first / 'last'}", "lr=1e-12")
            + ["max_lr=1e-12", "weight_decay=0"],
        )
    )
    model, card = load_checkpoint(tuned / "last")
    assert card["training"]["init"]["sha256"] == start_card["weights"]["sha256"]
    for (name, a), (_, b) in zip(
        start.state_dict().items(), model.state_dict().items(), strict=True
    ):
        if name.endswith(".weight") and a.ndim == 5:  # the convolutions
            assert torch.allclose(a, b, atol=1e-6), name
    # another architecture is refused, naming both
    with pytest.raises(MedoodError, match="features"):
        train_unet(
            load_config(
                None,
                tiny(root, dlmuse, tmp_path / "other", "steps=1", f"init={first / 'last'}")
                + ["features=[4,8,32]"],
            )
        )
