"""Shared fixtures: paths into ../shared/data (real public scans), the test tiers and small
helpers.

Tests that need the shared data skip with a reason when it is absent; CI always has it.

Two tiers. ``pytest`` runs the fast tier: every test not marked ``slow`` (a test that trains
a network for real, measures a full-size shipped model, waits out a real time budget of more
than a few seconds or starts torchrun is ``slow``; docs/how-to/develop.md says where a new
test goes). ``pytest -m slow`` runs the slow tier; CI runs both. A test named on the command
line by its node id (``tests/test_zoo.py::test_x``) runs whatever its tier. Each test has a
time limit (pytest-timeout): ``FAST_LIMIT_S`` in the fast tier, so that heavy work cannot creep
back into it unnoticed, ``SLOW_LIMIT_S`` in the slow one; a ``timeout`` mark of its own, or
``--timeout`` on the command line, wins.

``MEDOOD_CPU_BFLOAT16=0`` (or ``1``) makes ``precision=auto`` take float32 (or bfloat16)
whatever this CPU computes: run both tiers both ways to prove a test holds on every CPU.
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


#: seconds a fast-tier test may take on the 2-core machine (under load), and a slow one
FAST_LIMIT_S = 60
SLOW_LIMIT_S = 900


def pytest_collection_modifyitems(config, items):
    """The fast tier by default: slow tests are deselected unless a ``-m`` expression names
    the tier (``-m slow``, ``-m "slow or not slow"``) or the test is named by its node id
    (``-m gui`` alone stays in the fast tier); every test gets its tier's time limit."""
    named = {arg.split("[")[0] for arg in config.args if "::" in arg}
    if "slow" not in (config.option.markexpr or ""):
        kept, dropped = [], []
        for item in items:
            slow = item.get_closest_marker("slow") is not None
            by_name = any(item.nodeid.split("[")[0].endswith(n.split("tests/")[-1]) for n in named)
            (dropped if slow and not by_name else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
    if not config.pluginmanager.hasplugin("timeout"):  # an environment made before it
        return
    if config.getoption("timeout", None) is not None:  # --timeout on the command line wins
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            slow = item.get_closest_marker("slow") is not None
            item.add_marker(pytest.mark.timeout(SLOW_LIMIT_S if slow else FAST_LIMIT_S))


#: a U-Net small enough to take a training step in a fraction of a second on a CPU, for tests
#: of training and of plumbing (never a model to measure)
TINY_UNET = [
    "features=[4,8,16]",
    "patch=[32,32,32]",
    "spacing=[4,4,4]",
    "fp_size=16",
    "batch_size=2",
    "workers=0",
    "log_interval=1",
]


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


@pytest.fixture(scope="session")
def tiny_unet(tmp_path_factory) -> Path:
    """A tiny calibrated U-Net checkpoint folder, built once per session, for PLUMBING tests:
    CLI options, files and records written, reports, ensembles, TTA wiring, precision.

    It is a real checkpoint made by the real code, so it goes wherever a shipped U-Net goes
    (``--model PATH``, ``get_detector(str(path))``): ``train_unet`` runs a handful of steps of
    a [4, 8, 16] U-Net on 32-voxel patches at 4 mm of two IXI T1 scans with their DLMUSE
    masks, then ``calibrate_on_healthy`` + ``write_calibration`` (as ``medood-eval
    --calibrate`` does) store a voxel threshold and the calibrated sample score in its card
    from one held-out healthy IXI scan, as the shipped brain U-Nets have. Its card is named
    ``tiny-unet``, expects T1w MR and has no trust gate.

    Its weights have barely left their initialisation: NEVER use it for a quality figure (AP,
    Dice, what it flags on a FLAIR or a blurred brain); such a test runs a shipped model and
    is marked ``slow``. Treat the folder as read-only; copy it to change it.
    """
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation.calibration import calibrate_on_healthy, write_calibration
    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.checkpoint import Checkpoint
    from napari_medood.training.config import load_config
    from napari_medood.training.unet import train_unet

    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    root = tmp_path_factory.mktemp("tiny-unet")
    scans = sorted(t1.glob("*.nii.gz"))
    # train on the first two scans; calibrate on IXI039, held out of training as the shipped
    # brain U-Nets hold it out; IXI048 (the bundled sample, ``ixi_t1``) is in neither
    held_out = next(scan for scan in scans if scan.name.startswith("IXI039"))
    for folder, chosen in (("train", scans[:2]), ("healthy", [held_out])):
        (root / folder).mkdir()
        for scan in chosen:
            shutil.copy(scan, root / folder / scan.name)
    settings = [
        f"train={root / 'train'}",
        f"masks={dlmuse}",
        f"out={root / 'run'}",
        "name=tiny-unet",
        "description=tiny U-Net for plumbing tests (a few steps; no quality to speak of)",
        *TINY_UNET,
        "steps=6",
        "device=cpu",
        # float32, not auto: the same weights on a CPU with bfloat16 and on one without
        "precision=float32",
    ]
    result = train_unet(load_config(None, settings))
    # calibrated as medood-eval --calibrate does it: the detector without its gate, each
    # healthy scan read in its DLMUSE brain mask; in float32, so that the threshold is the
    # same on every CPU
    detector = get_detector(str(result.best), device="cpu", gate=False, precision="float32")
    entry = calibrate_on_healthy(detector, discover_cases(root / "healthy", masks=dlmuse), 0.01)
    assert not entry["failed"] and entry.get("sample_score"), entry
    write_calibration(
        Checkpoint.open(result.best),
        entry,
        f"tests/conftest.py tiny_unet: calibrate_on_healthy on {held_out.name}, fpr 0.01",
    )
    return result.best
