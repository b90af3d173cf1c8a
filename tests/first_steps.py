"""The first training steps of the shipped recipes, as a regression record.

``first_steps(method, folder)`` trains a shipped recipe (``configs/``) for two steps on real
data (CPU, float32, no workers) and returns the losses and learning rates its log recorded.
Run as a script on a commit to write ``tests/golden/first_steps.json``: the test compares a
later commit's first steps with the ones recorded there, so that reorganising the training
code cannot change, unnoticed, what a recipe draws or learns first.

    python tests/first_steps.py   # writes tests/golden/first_steps.json
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GOLDEN = Path(__file__).parent / "golden" / "first_steps.json"
MS_T1 = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
MS_LABEL = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"

#: shipped recipe -> (method, its configuration)
RECIPES = {
    "brain-t1-unet": ("unet", "configs/brain-t1-unet.yaml"),
    "brain-any-unet": ("unet", "configs/brain-any-unet.yaml"),
    "brain-t1-seg": ("seg", "configs/brain-t1-seg.yaml"),
    "brain-t1-mhd": ("diffusion", "configs/brain-t1-mhd.yaml"),
    "adrenal3d-classifier": ("classifier", "configs/adrenal3d-classifier.yaml"),
    "brain-t1-gate": ("flow", "configs/brain-t1-gate.yaml"),
}
#: how a run is made small enough to test, without touching what it draws or computes
RUN = ["device=cpu", "precision=float32"]


def _data(folder: Path) -> dict[str, list[str]]:
    """Where each recipe's data comes from, made in ``folder``: two IXI scans with their
    DLMUSE parcellations, the MS patients with their lesion masks, AdrenalMNIST3D."""
    ixi = folder / "ixi"
    if not ixi.exists():
        ixi.mkdir(parents=True)
        for scan in sorted((SHARED / "ixi-t1-2mm" / "t1").glob("*.nii.gz"))[:2]:
            shutil.copy(scan, ixi / scan.name)
    dlmuse = SHARED / "ixi-t1-2mm" / "dlmuse"
    cohort = folder / "ms.csv"
    with open(cohort, "w", newline="") as handle:
        rows = [
            [
                p,
                SHARED / "open-ms-lesjak-mni" / p / MS_T1,
                SHARED / "open-ms-lesjak-mni" / p / MS_LABEL,
            ]
            for p in ("patient07", "patient19")
        ]
        csv.writer(handle).writerows([["Name", "Path", "Label"], *rows])
    adrenal = SHARED / "medmnist-adrenalmnist3d" / "adrenalmnist3d_64.npz"
    # uncompiled: a compiled step adds in another order (the U-Net's first loss moved by
    # 2.6e-4 relative), which is not what this record is about
    # (benchmarks/bench_training.py --recipes compares a compiled run's losses)
    steps = ["steps=2", "log_interval=1", "val_interval=1000", "workers=0", "compile=false"]
    ixi_data = [f"train={ixi}", f"masks={dlmuse}", "val=null"]
    return {
        "unet": [*ixi_data, *steps],
        "seg": [f"train={cohort}", "val=null", *steps],
        "diffusion": [*ixi_data, "val_masks=null", *steps],
        "classifier": [f"train={adrenal}:train", "val=null", *steps],
        "flow": [
            f"train={ixi}",
            f"masks={dlmuse}",
            "epochs=2",
            "views=2",
            "reference_views=1",
            "reference_folds=2",
        ],
    }


def first_steps(recipe: str, folder: Path) -> dict[str, list[float]]:
    """The losses and learning rates of the first two steps (epochs, for a flow) of the
    shipped ``recipe``, trained by ``medood-train`` in a process of its own."""
    method, config = RECIPES[recipe]
    out = folder / recipe
    shutil.rmtree(out, ignore_errors=True)
    settings = [*_data(folder)[method], *RUN, f"out={out}"]
    command = [str(Path(sys.executable).parent / "medood-train"), method, "--config", config]
    for item in settings:
        command += ["--set", item]
    run = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",  # the progress bar draws with block characters, whatever the locale
        errors="replace",
        timeout=1800,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{recipe}: medood-train failed:\n{run.stderr[-3000:]}")
    log = out / ("flow_log.csv" if method == "flow" else "train_log.csv")
    with open(log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if method == "flow":
        return {"nll": [float(r["nll"]) for r in rows[:2]]}
    return {
        "loss": [float(r["loss"]) for r in rows[:2]],
        "lr": [float(r["lr"]) for r in rows[:2]],
    }


def main() -> None:
    folder = ROOT / "work" / "first-steps"
    folder.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    record = {"commit": commit, "recipes": {}}
    for recipe in RECIPES:
        record["recipes"][recipe] = first_steps(recipe, folder)
        print(recipe, record["recipes"][recipe], flush=True)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
