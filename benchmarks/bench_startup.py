"""The README's main command, from start to the written map, in phases: before (a baseline
commit) and after (this checkout), each in fresh processes, in one command.

    python benchmarks/bench_startup.py [--baseline 1f5a371] [--runs 3]

For each tree, ``--runs`` fresh processes each:

- ``command``: ``medood-predict --mask <brain mask> <IXI048 T1 2 mm sample> OUT`` as a whole
  process (its wall time; what the README's user waits for);
- in-process phases of the same work: ``imports`` (the command's module and what the
  detector needs, torch and MONAI included), ``built`` (``get_detector("brain-any")``:
  both members and the trust gate), then each member's map alone (``seg``, ``unet``) with
  its windows and seconds per window, and ``fused`` (the default's whole map, the gate's
  verdict included, on a second detector built the same way).

Printed: the median of each figure, before and after, and the ratio. The figures of one
run depend on the machine's load: run nothing else beside it (a background training
campaign pauses by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "napari_medood" / "samples"
SCAN = SAMPLES / "ixi048_t1_2mm.nii.gz"
MASK = SAMPLES / "ixi048_brainmask_2mm.nii.gz"


def phases() -> dict:
    """The in-process figures (this process's napari_medood)."""
    figures = {}
    start = time.perf_counter()
    import napari_medood.cli.predict  # noqa: F401 - what the command imports first
    from napari_medood.detectors import DetectorOptions, get_detector
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(SCAN)
    mask = load_mask(MASK, volume)
    figures["imports"] = time.perf_counter() - start
    mark = time.perf_counter()
    detector = get_detector("brain-any", DetectorOptions(device="cpu"))
    figures["built"] = time.perf_counter() - mark
    members = getattr(detector, "members", None) or {}
    for name, member in dict(members).items():
        from napari_medood.inference import sliding_window

        counted = {"windows": 0}
        original = sliding_window.sliding_window_predict

        def counting(*args, _original=original, counted=counted, **kwargs):
            predictor = args[1] if len(args) > 1 else kwargs["predictor"]

            def counted_predictor(batch, _predictor=predictor, _counted=counted):
                _counted["windows"] += int(batch.shape[0])
                return _predictor(batch)

            if len(args) > 1:
                args = (args[0], counted_predictor, *args[2:])
            else:
                kwargs["predictor"] = counted_predictor
            return _original(*args, **kwargs)

        sliding_window.sliding_window_predict = counting
        try:
            mark = time.perf_counter()
            member.predict(volume, mask)
            seconds = time.perf_counter() - mark
        finally:
            sliding_window.sliding_window_predict = original
        key = "seg" if "seg" in name or "lesion" in name else "unet"
        figures[key] = seconds
        if counted["windows"]:
            figures[f"{key}_per_window"] = seconds / counted["windows"]
            figures[f"{key}_windows"] = counted["windows"]
    mark = time.perf_counter()
    get_detector("brain-any", DetectorOptions(device="cpu")).predict(volume, mask)
    figures["fused"] = time.perf_counter() - mark
    return figures


def command_seconds(tree_src: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as out:
        env = {**os.environ, "PYTHONPATH": str(tree_src)}
        code = (
            "import sys; from napari_medood.cli import predict_main; "
            f"sys.exit(predict_main(['--mask', {str(MASK)!r}, {str(SCAN)!r}, {out!r}]))"
        )
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"the command failed in {tree_src}: {done.stderr[-400:]}")
        return seconds


def run_phases(tree_src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree_src)}
    done = subprocess.run(
        [sys.executable, __file__, "--phases"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"the phases failed in {tree_src}: {done.stderr[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="1f5a371")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases:
        print(json.dumps(phases()))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_training import baseline_tree

    trees = {"before": baseline_tree(args.baseline), "after": REPO / "src"}
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.runs):  # interleaved, so that a change of load hits both alike
        for what, tree in trees.items():
            figures = {"command": command_seconds(tree), **run_phases(tree)}
            for key, value in figures.items():
                results.setdefault(what, {}).setdefault(key, []).append(value)
    print(
        f"medood-predict --mask <mask> IXI048 T1 2 mm sample OUT; medians of {args.runs} fresh "
        f"processes; before = {args.baseline}, after = this checkout; seconds unless said"
    )
    keys = list(results["after"])
    print(f"{'figure':<16} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in keys:
        before = statistics.median(results["before"].get(key, [float("nan")]))
        after = statistics.median(results["after"][key])
        unit = "" if not key.endswith("windows") else " (count)"
        print(f"{key + unit:<16} {before:9.3f} {after:9.3f} {after / before:12.2f}x")


if __name__ == "__main__":
    main()
