"""Predict a whole cohort: one output per case, written atomically, resumable, sharded.

Outputs follow MOOD's conventions (``io.mood``): ``OUT/<input name>`` holds the anomaly map
on the input's grid and affine (values in [0, 1]); ``OUT/<input name>.txt`` holds the sample
score. A case whose output loads and fits is skipped (an interrupted run resumes); an output
that does not load (empty, truncated, misshapen) is redone; leftovers of an interrupted write
are removed; a failing case is recorded while the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import Cancelled, MedoodError, look_up_option
from napari_medood.io.cohort import Case
from napari_medood.io.mood import TASKS, input_shape, output_path, output_problem

#: what a detector must give for each task
NEEDS = {"pixel": "map", "sample": "score"}


@dataclass
class BatchSummary:
    """What one process did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plan:
    """Cases to do, cases already done, and finished-looking outputs that must be redone."""

    todo: list[Case]
    done: list[Case]
    redo: list[tuple[Case, str]] = field(default_factory=list)


def check_task(detector, task: str) -> None:
    """Refuse a task the detector cannot do, before any case runs."""
    look_up_option(task, TASKS, "task")
    need = NEEDS[task]
    outputs = tuple(getattr(detector, "outputs", ("map", "score")))
    if need not in outputs:
        gives = " + ".join(outputs) or "nothing"
        other = next((t for t, n in NEEDS.items() if n in outputs), None)
        hint = f"; use --task {other}" if other else ""
        raise MedoodError(
            f"the {detector.name} detector gives a {gives} only, not the {need} that "
            f"--task {task} writes{hint}"
        )


def run_record(detector, task: str) -> dict:
    """What produced a set of outputs: the detector and how it ran (device, precision,
    test-time augmentation), for reports and logs (a MOOD output folder holds the outputs
    alone)."""
    import datetime

    from napari_medood import __version__
    from napari_medood.detectors.base import score_info_of

    execution = getattr(detector, "execution", None)
    return {
        "napari_medood": __version__,
        "model": detector.name,
        "task": task,
        "outputs": list(getattr(detector, "outputs", ())),
        "device": getattr(execution, "device", None),
        "precision": getattr(execution, "precision", None),
        "tta": getattr(detector, "tta_method", None),
        "score": getattr(score_info_of(detector), "description", None),
        "written": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Make ``out_dir`` and prove it can be written, before any case runs."""
    import tempfile

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedoodError(f"{out_dir}: the output must be a folder, and this is a file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".medood-write-test-"):
            pass
    except OSError as exc:
        raise MedoodError(
            f"{out_dir}: cannot write into this output folder ({exc.strerror or exc})"
        ) from exc
    return out_dir


def plan(
    cases: Sequence[Case], out_dir: str | os.PathLike, task: str, overwrite: bool = False
) -> Plan:
    """Split ``cases`` into to do and done; refuses an output that would overwrite its input.
    An existing output counts as done only if it loads and fits its input."""
    look_up_option(task, TASKS, "task")
    out_dir = Path(out_dir)
    result = Plan([], [])
    for case in cases:
        target = output_path(out_dir, case.image, task)
        if target.resolve() == Path(case.image).resolve():
            raise MedoodError(
                f"{case.image}: the output would overwrite this input; choose another OUTPUT folder"
            )
        if overwrite or not target.exists():
            result.todo.append(case)
            continue
        problem = output_problem(target, task, input_shape(case.image) if task == "pixel" else None)
        if problem is None:
            result.done.append(case)
        else:
            result.todo.append(case)
            result.redo.append((case, f"{target.name} {problem}"))
    return result


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


def predict_case(case: Case, detector, masks: str | os.PathLike | None = None, cancelled=None):
    """Read a case's scan (and its mask) and run ``detector`` on it."""
    from napari_medood.io.cohort import find_mask
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(case.image)
    mask_path = case.mask or (find_mask(masks, case.image) if masks else None)
    mask = load_mask(mask_path, volume.grid) if mask_path else None
    return detector.predict(volume, mask, cancelled=cancelled)


def write_result(result, out_dir: str | os.PathLike, image: str | os.PathLike, tasks) -> list[Path]:
    """The one MOOD writer: the map and/or score of ``result`` for the ``tasks`` asked."""
    from napari_medood.io.mood import write_map, write_score, write_trust

    written = []
    trust = result.extras.get("trust")
    if trust is not None and result.anomaly_map is not None:  # the gate's verdict, beside the map
        write_trust(trust.as_dict(), out_dir, image)
    for task in tasks:
        if task == "pixel" and result.anomaly_map is not None:
            written.append(write_map(result.anomaly_map, out_dir, image))
        elif task == "sample" and result.score is not None:
            written.append(write_score(result.score, out_dir, image))
    return written


def predict_cases(
    cases: Sequence[Case],
    detector,
    out_dir: str | os.PathLike,
    task: str = "pixel",
    masks: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
    on_case: Callable[[Case, str | None, tuple[str, ...]], None] | None = None,
) -> BatchSummary:
    """Predict each case and write its output; ``on_case(case, error or None, notes)`` after
    each."""
    check_task(detector, task)
    out_dir = Path(out_dir)
    summary = BatchSummary()
    for index, case in enumerate(cases):
        check_cancelled(cancelled)
        error, notes = None, ()
        try:
            result = predict_case(case, detector, masks, cancelled)
            notes = tuple(result.notes)
            if not write_result(result, out_dir, case.image, (task,)):
                raise MedoodError(f"the {detector.name} detector returned no {NEEDS[task]}")
            summary.written.append(case.name)
        except Cancelled:
            raise
        except MedoodError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad case must not sink the batch
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if error is not None:
            summary.failed.append((case.name, error))
        summary.notes.extend((case.name, note) for note in notes)
        if on_case is not None:
            on_case(case, error, notes)
        report(progress, index + 1, len(cases), case.name)
    return summary
