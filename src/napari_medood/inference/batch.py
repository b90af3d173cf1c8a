"""Predict a whole cohort: one output per case, written atomically, resumable, sharded.

Outputs follow MOOD's conventions: ``OUT/<input name>`` holds the anomaly map on the input's
grid and affine (values in [0, 1]); ``OUT/<input name>.txt`` holds the sample score. A case
whose output exists is skipped (an interrupted run resumes), leftovers of an interrupted
write are removed, and a failing case is recorded while the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import Cancelled, MedoodError, look_up_option
from napari_medood.io.cohort import Case
from napari_medood.io.discovery import output_name

TASKS = ("pixel", "sample")


@dataclass
class BatchSummary:
    """What one process did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def output_path(out_dir: Path, image: Path, task: str) -> Path:
    name = output_name(image)
    return out_dir / (name + ".txt" if task == "sample" else name)


def plan(
    cases: Sequence[Case], out_dir: str | os.PathLike, task: str, overwrite: bool = False
) -> tuple[list[Case], list[Case]]:
    """``(to do, already done)``; refuses an output that would overwrite its input."""
    look_up_option(task, TASKS, "task")
    out_dir = Path(out_dir)
    todo, done = [], []
    for case in cases:
        target = output_path(out_dir, case.image, task)
        if target.resolve() == Path(case.image).resolve():
            raise MedoodError(
                f"{case.image}: the output would overwrite this input; choose another OUTPUT folder"
            )
        (done if target.exists() and not overwrite else todo).append(case)
    return todo, done


def remove_partial_writes(out_dir: Path, cases: Sequence[Case], task: str) -> int:
    """Delete temporary files an interrupted write left for these cases (never another
    process's: only the names of ``cases`` are touched)."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for case in cases:
        target = output_path(out_dir, case.image, task)
        for leftover in out_dir.glob(f".{target.name}.*.part*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def predict_cases(
    cases: Sequence[Case],
    detector,
    out_dir: str | os.PathLike,
    task: str = "pixel",
    masks: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
    on_case: Callable[[Case, str | None], None] | None = None,
) -> BatchSummary:
    """Predict each case and write its output; ``on_case(case, error or None)`` after each."""
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.cohort import find_mask
    from napari_medood.io.readers import read_volume
    from napari_medood.io.writers import write_nifti
    from napari_medood.preprocessing.masks import load_mask

    look_up_option(task, TASKS, "task")
    out_dir = Path(out_dir)
    summary = BatchSummary()
    for index, case in enumerate(cases):
        check_cancelled(cancelled)
        error = None
        try:
            volume = read_volume(case.image)
            mask_path = case.mask or (find_mask(masks, case.image) if masks else None)
            mask = load_mask(mask_path, volume.grid) if mask_path else None
            result = detector.predict(volume, mask, cancelled=cancelled)
            target = output_path(out_dir, case.image, task)
            if task == "pixel":
                if result.anomaly_map is None:
                    raise MedoodError(
                        f"the {detector.name} detector gives no voxel-wise map; use --task sample"
                    )
                write_nifti(result.anomaly_map, target)
            else:
                if result.score is None:
                    raise MedoodError(f"the {detector.name} detector gives no sample score")
                write_text_atomic(target, f"{result.score:.6f}\n")
            summary.written.append(case.name)
        except Cancelled:
            raise
        except MedoodError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad case must not sink the batch
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if error is not None:
            summary.failed.append((case.name, error))
        if on_case is not None:
            on_case(case, error)
        report(progress, index + 1, len(cases), case.name)
    return summary
