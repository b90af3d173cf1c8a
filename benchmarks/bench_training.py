"""What one CPU process feeds each family's training: samples per second per data-loader
worker, before (a baseline commit) and after (this checkout), in one command.

    python benchmarks/bench_training.py [--baseline 866eba9] [--samples 40]
                                        [--families unet,unet-any,seg,seg-any,diffusion,flow,classifier]
    python benchmarks/bench_training.py --train-steps [--device cpu] [--batch 2] [--patch 96]
    python benchmarks/bench_training.py --recipes unet,seg [--baseline 1f5a371] [--steps 14]
                                        [--warmup 4] [--repeats 3]

For each family its training dataset is built as its recipe builds it, from the shared data
(two IXI T1 scans at 2 mm with their DLMUSE parcellations, MS patient 07 with his lesions,
AdrenalMNIST3D), and ``--samples`` items are drawn in this process (what one loader worker
does), after one warm-up item:

- ``unet``: brain-t1-unet's synthetic-anomaly 96^3 patches; ``unet-any``: brain-any-unet's,
  half of them drawn in a random contrast from the parcellation (``synth.contrast``);
- ``seg``: brain-t1-seg's 64^3 lesion patches of scans with lesion masks; ``seg-any``: the
  zoo's segmenter patches, healthy scans with real lesion shapes implanted, half in a random
  contrast (new: no baseline);
- ``diffusion``: brain-t1-mhd's 96^2 slices with the forward process's simplex noise. Where
  the noise was drawn per batch in the training process (the baseline), that serial cost is
  measured beside it and bounds what any number of workers can feed;
- ``flow``: the gate's augmented 4 mm views (``training.flow.augmented``);
- ``classifier``: AdrenalMNIST3D's augmented 64^3 volumes.

The baseline runs from ``git archive BASELINE src`` in a child process with the same script;
each figure is that family's items per second in one process, "fed" is what 14 workers feed
(bounded by any part drawn serially in the training process), and the ratio is fed after /
fed before. Against the figures measured on the GPU machine (the U-Net consumed 58-67
samples/s, diffusion ~100 slices/s: ``../shared/docs/gpu-measurements.md``) it says how many
times that the workers feed.

``--train-steps`` times the U-Net's optimiser steps at each of ``--precisions`` instead
(the first the baseline), as before.

``--recipes unet,seg`` times whole training runs instead: each recipe as shipped
(``configs/brain-any-unet.yaml``, ``configs/brain-any-seg.yaml`` of each tree, with its
workers, precision and initial weights), on the six IXI training subjects, ``--steps``
optimiser steps without validation, in a child process per tree and recipe (the
baseline's ``src`` and ``configs`` from ``git archive``). The figure is samples per second
of the steps after the first ``--warmup`` (loader start-up and kernel choice excluded), read
from the run's own ``train_log.csv``; both trees' final losses are printed beside it, and
both runs are seeded alike, so the losses show whether the curve kept its shape.
``--repeats`` runs each tree that many times, interleaved, and prints the medians. A
recipe that compiles its steps (``compile: true``) compiles in the warm-up steps, which
are not timed (the first compile of the U-Net takes about 35 s on the 2-core CPU; torch
caches it for later runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("unet", "unet-any", "seg", "seg-any", "diffusion", "flow", "classifier")
#: what the GPU consumed (../shared/docs/gpu-measurements.md): samples per second
GPU_CONSUMED = {"unet": 67.0, "unet-any": 67.0, "diffusion": 100.0}
GPU_WORKERS = 14


def shared_dir() -> Path:
    for candidate in (REPO / ".data", REPO.parent / "shared" / "data"):
        if (candidate / "ixi-t1-2mm").is_dir():
            return candidate
    raise SystemExit("needs ../shared/data (or .data) with ixi-t1-2mm")


def _rate(draw, samples: int) -> float:
    draw(0)  # warm-up: imports, caches, the lesion bank
    start = time.perf_counter()
    for index in range(1, samples + 1):
        draw(index)
    return samples / (time.perf_counter() - start)


def _ixi_scans(labels: bool):
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import prepare_scans

    ixi = shared_dir() / "ixi-t1-2mm"
    space = ModelSpace(spacing=(2.0, 2.0, 2.0))
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:2]
    return prepare_scans(cases, space, labels=labels), space


def measure(family: str, samples: int) -> dict:
    """``{"rate": items/s, ...}`` of ``family`` in this process (this checkout's code)."""
    import inspect

    import numpy as np

    if family in ("unet", "unet-any"):
        from napari_medood.training.data import SyntheticAnomalyPatches, contrast_randomiser

        scans, space = _ixi_scans(labels=family == "unet-any")
        dataset = SyntheticAnomalyPatches(
            scans,
            (96, 96, 96),
            samples + 1,
            seed=0,
            contrast=contrast_randomiser("dlmuse", (2, 2, 2)) if family == "unet-any" else None,
            p_contrast=0.5 if family == "unet-any" else 0.0,
            normalisation=space.normalisation,
        )
        return {"rate": _rate(dataset.__getitem__, samples)}
    if family == "seg":
        from napari_medood.io.cohort import Case
        from napari_medood.preprocessing.model_space import ModelSpace
        from napari_medood.training.data import prepare_scans
        from napari_medood.training.segmenter import LesionPatches

        patient = shared_dir() / "open-ms-lesjak-mni" / "patient07"
        case = Case(
            "patient07",
            patient / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
            label=patient / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
        )
        scans = prepare_scans([case], ModelSpace(spacing=(2.0, 2.0, 2.0)), lesions=True)
        dataset = LesionPatches(scans, (64, 64, 64), samples + 1, 0, 0.33, 0.5, 0.1)
        return {"rate": _rate(dataset.__getitem__, samples)}
    if family == "seg-any":
        from napari_medood.training import segmenter

        if not hasattr(segmenter, "training_patches"):
            return {"rate": None, "note": "not in this version"}
        config = segmenter.SegTrainConfig(
            train="-", implant_lesions=[1, 4], contrast_randomisation=0.5
        ).validate()
        scans, _ = _ixi_scans(labels=True)
        dataset = segmenter.training_patches(config, scans, samples + 1, 0)
        return {"rate": _rate(dataset.__getitem__, samples)}
    if family == "diffusion":
        import torch

        from napari_medood.io.cohort import discover_cases
        from napari_medood.io.lmdb_cache import SliceLMDB
        from napari_medood.preprocessing.model_space import ModelSpace
        from napari_medood.training.diffusion import (
            DiffusionTrainConfig,
            SliceSamples,
            write_slice_cache,
        )

        ixi = shared_dir() / "ixi-t1-2mm"
        cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")[:2]
        scratch = tempfile.TemporaryDirectory(prefix="bench-slices-")
        folder = Path(scratch.name) / "cache"
        write_slice_cache(cases, ModelSpace(spacing=(2.0, 2.0, 2.0)), folder)
        process = DiffusionTrainConfig(train="-").process()
        with scratch, SliceLMDB(folder) as cache:
            in_items = "process" in inspect.signature(SliceSamples).parameters
            options = {"process": process} if in_items else {}
            dataset = SliceSamples(cache, (96, 96), samples + 1, 0, True, **options)
            result = {"rate": _rate(dataset.__getitem__, samples)}
            if not in_items:  # the noise, drawn per batch of 16 in the training process
                generator = torch.Generator().manual_seed(0)
                batches = max(2, samples // 16)
                result["serial_rate"] = 16 * _rate(
                    lambda _: process.noise_fields(16, (96, 96), generator), batches
                )
        return result
    if family == "flow":
        from napari_medood.io.readers import read_volume
        from napari_medood.preprocessing.model_space import ModelSpace
        from napari_medood.training.flow import augmented

        scan = sorted((shared_dir() / "ixi-t1-2mm" / "t1").glob("*.nii.gz"))[0]
        volume = read_volume(scan)
        array = ModelSpace(spacing=(4.0, 4.0, 4.0)).prepare(volume, volume.data > 0).image
        return {"rate": _rate(lambda i: augmented(array, i + 1, 0, True), samples)}
    if family == "classifier":
        from napari_medood.training.classifier import AugmentedVolumes

        data = np.load(shared_dir() / "medmnist-adrenalmnist3d" / "adrenalmnist3d_64.npz")
        arrays, labels = (
            data["train_images"][:64].astype(np.float32) / 255.0,
            data["train_labels"][:64],
        )
        dataset = AugmentedVolumes(arrays, labels.ravel(), samples + 1, 0, True)
        return {"rate": _rate(dataset.__getitem__, samples)}
    raise SystemExit(f"unknown family {family!r}")


RECIPES = {"unet": "brain-any-unet.yaml", "seg": "brain-any-seg.yaml"}


def measure_recipe(recipe: str, configs: Path, steps: int, warmup: int) -> dict:
    """Samples per second of ``steps`` optimiser steps of ``recipe`` as ``configs`` ships it
    (this process's napari_medood), after ``warmup`` steps; the per-step losses."""
    import csv as csv_module

    from napari_medood.io.cohort import discover_cases
    from napari_medood.training.config import load_config

    ixi = shared_dir() / "ixi-t1-2mm"
    cases = [
        c
        for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse")
        if not c.name.startswith(("IXI039", "IXI048"))
    ]
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as scratch:
        table = Path(scratch) / "train.csv"
        with open(table, "w", newline="") as handle:
            writer = csv_module.writer(handle)
            writer.writerow(["Path", "Mask"])
            for case in cases:
                writer.writerow([case.image, case.mask])
        overrides = [
            f"train={table}",
            f"out={Path(scratch) / 'run'}",
            f"steps={steps}",
            "log_interval=1",
            f"val_interval={steps + 1}",
        ]
        if recipe == "unet":
            from napari_medood.training.unet import UNetTrainConfig as config_class
            from napari_medood.training.unet import train_unet as train
        else:
            from napari_medood.training.segmenter import SegTrainConfig as config_class
            from napari_medood.training.segmenter import train_segmenter as train
        config = load_config(configs / RECIPES[recipe], overrides, config_class)
        started = time.perf_counter()
        train(config)
        wall = time.perf_counter() - started
        with open(Path(scratch) / "run" / "train_log.csv") as handle:
            rows = list(csv_module.DictReader(handle))
    seconds = [float(r["seconds"]) for r in rows]
    timed = seconds[-1] - seconds[warmup - 1]
    return {
        "rate": (len(rows) - warmup) * config.batch_size / timed,
        "losses": [float(r["loss"]) for r in rows],
        "workers": config.workers,
        "wall": wall,
    }


def run_recipe_in(tree: Path, recipe: str, steps: int, warmup: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    command = [
        sys.executable, __file__, "--measure-recipe", recipe, "--configs", str(tree / "configs"),
        "--steps", str(steps), "--warmup", str(warmup),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"rate": None, "note": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_recipes(args: argparse.Namespace) -> None:
    before_tree = baseline_tree(args.baseline, ("src", "configs")).parent
    print(
        f"training recipes as shipped, {args.steps} steps each ({args.warmup} of warm-up "
        f"untimed), no validation, median of {args.repeats} run(s); before = {args.baseline}, after = this checkout; "
        f"torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}",
        flush=True,
    )
    import statistics

    for recipe in args.recipes.split(","):
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.repeats):  # interleaved: a change of load hits both alike
            runs["before"].append(run_recipe_in(before_tree, recipe, args.steps, args.warmup))
            runs["after"].append(run_recipe_in(REPO, recipe, args.steps, args.warmup))
        medians = {}
        for what, records in runs.items():
            rates = [r["rate"] for r in records if r.get("rate")]
            medians[what] = statistics.median(rates) if rates else None
            if len(rates) > 1:
                print(f"{recipe:<5} {what:<6} runs: {', '.join(f'{r:.3f}' for r in rates)}")
        before, after = runs["before"][-1], runs["after"][-1]
        before["rate"], after["rate"] = medians["before"], medians["after"]
        ratio = after["rate"] / before["rate"] if before.get("rate") and after.get("rate") else None
        for what, record in (("before", before), ("after", after)):
            if record.get("rate") is None:
                print(f"{recipe:<5} {what:<6} failed: {record.get('note')}", flush=True)
                continue
            losses = record["losses"]
            print(
                f"{recipe:<5} {what:<6} {record['rate']:6.3f} samples/s  workers "
                f"{record['workers']}  run {record['wall']:.0f} s  loss first/last "
                f"{losses[0]:.4f}/{losses[-1]:.4f}  mean of last half "
                f"{sum(losses[len(losses) // 2 :]) / len(losses[len(losses) // 2 :]):.4f}",
                flush=True,
            )
        if ratio:
            print(f"{recipe:<5} ratio  {ratio:.2f}x", flush=True)


def run_in(source: Path, family: str, samples: int) -> dict:
    """``measure`` in a child process importing napari_medood from ``source`` (a src tree)."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--measure", family, "--samples", str(samples)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"rate": None, "note": done.stderr.strip().splitlines()[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_tree(revision: str, paths: tuple[str, ...] = ("src",)) -> Path:
    """``src`` of ``revision`` (with ``paths``) in a temporary folder (removed when the
    process ends)."""
    import atexit
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    atexit.register(shutil.rmtree, folder, True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, *paths], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def fed(record: dict, workers: int = GPU_WORKERS) -> float | None:
    """Items per second ``workers`` loader processes feed: each at its rate, bounded by
    what the training process draws serially per batch (the baseline's diffusion noise)."""
    if not record.get("rate"):
        return None
    return min(workers * record["rate"], record.get("serial_rate") or float("inf"))


def compare(args: argparse.Namespace) -> None:
    before_src = baseline_tree(args.baseline)
    after_src = REPO / "src"
    print(
        f"samples/s per worker (one process, OMP_NUM_THREADS=1), {args.samples} items each; "
        f"before = {args.baseline}, after = this checkout; fed = what {GPU_WORKERS} workers "
        "feed (bounded by any serial part)"
    )
    print(
        f"{'family':<11} {'before':>8} {'after':>8} {'ratio':>6} {'fed before':>11} {'fed after':>10}   notes"
    )
    for family in args.families.split(","):
        before = run_in(before_src, family, args.samples)
        after = run_in(after_src, family, args.samples)
        notes = [
            f"{what}: {r['note']}"
            for what, r in (("before", before), ("after", after))
            if r.get("note")
        ]
        if before.get("serial_rate"):
            notes.append(
                f"before: noise drawn in the trainer, {before['serial_rate']:.0f} slices/s"
            )
        fed_before, fed_after = fed(before), fed(after)
        if family in GPU_CONSUMED and fed_after:
            notes.append(
                f"after feeds {fed_after / GPU_CONSUMED[family]:.1f}x the {GPU_CONSUMED[family]:.0f}/s the H200 consumed"
            )
        ratio = fed_after / fed_before if fed_before and fed_after else None

        def cell(value, width):
            return f"{value:{width}.1f}" if value else f"{'-':>{width}}"

        ratio_text = f"{ratio:5.2f}x" if ratio else f"{'-':>6}"
        print(
            f"{family:<11} {cell(before.get('rate'), 8)} {cell(after.get('rate'), 8)} {ratio_text} "
            f"{cell(fed_before, 11)} {cell(fed_after, 10)}   {'; '.join(notes)}",
            flush=True,
        )


def train_rate(preset, device, batch, patch, steps, precision) -> float:
    import torch

    from napari_medood.execution import plan_execution
    from napari_medood.models.unet import PRESETS, UNet3DDeepSup, deep_supervision_loss

    torch.manual_seed(0)
    execution = plan_execution(device, precision)
    model = execution.prepare(UNet3DDeepSup(features=PRESETS[preset]), fold_batch_norm=False)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=execution.precision == "float16")
    x = execution.inputs(torch.rand(batch, 1, patch, patch, patch))
    y = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.95).float()
    cuda = device.startswith("cuda")

    def step():
        optimiser.zero_grad(set_to_none=True)
        with execution.autocast():
            outputs = model(x)
        scaler.scale(deep_supervision_loss(outputs, y)).backward()
        scaler.step(optimiser)
        scaler.update()

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="866eba9", help="the commit measured as before")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--train-steps", action="store_true")
    parser.add_argument("--recipes", help="time whole runs of these recipes (unet,seg)")
    parser.add_argument("--measure-recipe", help=argparse.SUPPRESS)
    parser.add_argument("--configs", type=Path, default=REPO / "configs", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=1, help="--recipes: runs of each, interleaved (medians)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precisions", default="float32,auto")
    args = parser.parse_args()
    if args.measure:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(measure(args.measure, args.samples)))
        return
    if args.measure_recipe:
        print(
            json.dumps(measure_recipe(args.measure_recipe, args.configs, args.steps, args.warmup))
        )
        return
    if args.recipes:
        compare_recipes(args)
        return
    if not args.train_steps:
        compare(args)
        return
    from napari_medood.execution import resolve_precision

    rates = {}
    for precision in args.precisions.split(","):
        rates[precision] = train_rate(
            args.preset, args.device, args.batch, args.patch, args.steps, precision
        )
        first = next(iter(rates.values()))
        print(
            f"training at {precision} ({resolve_precision(precision, args.device)}): "
            f"{rates[precision]:.3f} steps/s, {rates[precision] / first:.2f}x the first "
            f"({args.preset}, batch {args.batch} x {args.patch}^3, {args.device})",
            flush=True,
        )


if __name__ == "__main__":
    main()
