"""Shared fixtures: paths into ../shared/data (real public scans) and small helpers.

Tests that need the shared data skip with a reason when it is absent; CI always has it.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDOOD_SHARED_DATA", REPO.parent / "shared" / "data"))

IXI_SUBJECT = "IXI048-HH-1326"

# napari saves its settings (and plugin settings, beside them) on every change, and
# make_napari_viewer resets them in place: point NAPARI_CONFIG at a throwaway folder before
# napari.settings is first imported, so no test reads or writes the user's real settings.
_NAPARI_CONFIG_DIR = tempfile.mkdtemp(prefix="medood-test-napari-config-")
atexit.register(shutil.rmtree, _NAPARI_CONFIG_DIR, ignore_errors=True)
os.environ["NAPARI_CONFIG"] = os.path.join(_NAPARI_CONFIG_DIR, "settings.yaml")


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set MEDOOD_SHARED_DATA)")
    return path


@pytest.fixture
def ixi_t1() -> Path:
    return shared("ixi-t1-2mm", "t1", f"{IXI_SUBJECT}-T1_ds.nii.gz")


@pytest.fixture
def ixi_parcellation() -> Path:
    return shared("ixi-t1-2mm", "dlmuse", f"{IXI_SUBJECT}-T1_ds_DLMUSE.nii.gz")


@pytest.fixture
def ms_t1() -> Path:
    return shared(
        "open-ms-lesjak-mni",
        "patient07",
        "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    )


@pytest.fixture
def ms_lesions() -> Path:
    return shared(
        "open-ms-lesjak-mni",
        "patient07",
        "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
    )


@pytest.fixture
def ct_scan() -> Path:
    return shared("totalsegmentator-example", "example_ct_sm.nii.gz")


MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MS_LABEL = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


def small_cohort(root: Path, patient: str) -> Path:
    """``root`` with ``ixi/`` (two IXI T1 scans; their DLMUSE parcellations are in the shared
    data) and ``ms.csv`` (an MS patient's T1 with its consensus lesions: Name, Path, Label)."""
    import csv

    (root / "ixi").mkdir(parents=True, exist_ok=True)
    for scan in sorted(shared("ixi-t1-2mm", "t1").glob("*.nii.gz"))[:2]:
        shutil.copy(scan, root / "ixi" / scan.name)
    folder = shared("open-ms-lesjak-mni", patient)
    with open(root / "ms.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["Name", "Path", "Label"], [patient, folder / MS_T1, folder / MS_LABEL]]
        )
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny_diffusion_settings(root: Path, out: Path, *extra: str) -> list[str]:
    """A diffusion model small enough to train in seconds: 4 mm, 48 x 48 slices, two levels."""
    return [
        f"train={root / 'train'}",
        f"masks={root / 'masks'}",
        f"out={out}",
        "spacing=[4,4,4]",
        "slice_size=[48,48]",
        "channels=[8,16]",
        "attention_levels=[false,true]",
        "num_head_channels=8",
        "norm_num_groups=8",
        "batch_size=4",
        "workers=0",
        "log_interval=1",
        "lr=3e-3",
        "reconstructions=4",
        *extra,
    ]


@pytest.fixture(scope="session")
def diffusion_scans(tmp_path_factory):
    """Two IXI scans to train on and one held out, with their DLMUSE brain masks."""
    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    root = tmp_path_factory.mktemp("diffusion")
    scans = sorted(t1.glob("*.nii.gz"))
    for folder, chosen in (("train", scans[:2]), ("val", scans[-1:])):
        (root / folder).mkdir()
        for scan in chosen:
            shutil.copy(scan, root / folder / scan.name)
    (root / "masks").mkdir()
    for mask in dlmuse.glob("*.nii.gz"):
        shutil.copy(mask, root / "masks" / mask.name)
    return root


@pytest.fixture(scope="session")
def diffusion_checkpoint(diffusion_scans):
    """A real (tiny, briefly trained) diffusion checkpoint with its card."""
    from napari_medood.training.config import load_config
    from napari_medood.training.diffusion import DiffusionTrainConfig, train_diffusion

    out = diffusion_scans / "run"
    config = load_config(
        None, tiny_diffusion_settings(diffusion_scans, out, "steps=4"), DiffusionTrainConfig
    )
    result = train_diffusion(config)
    return result.best
