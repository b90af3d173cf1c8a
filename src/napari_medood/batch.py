"""Predict a whole cohort: one output per case, written atomically, resumable, sharded.

Outputs follow MOOD's conventions (``io.mood``): ``OUT/<input name>`` holds the anomaly map
on the input's grid and affine (values in [0, 1]); ``OUT/<input name>.txt`` holds the sample
score. A case whose output loads and fits is skipped (an interrupted run resumes); an output
that does not load (empty, truncated, misshapen) is redone; leftovers of an interrupted write
are removed; a failing case is recorded while the others go on.

:func:`run_cohort` is the whole run (checks, plan, clean-up, record, predictions, failures
gathered across ``torchrun`` ranks); ``medood-predict`` only translates its arguments into
that one call. While the detector computes one case, the next case's files are read in a
background thread (``prefetch``; one case ahead at most).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.distributed import Shard
from napari_medood.errors import Cancelled, MedoodError, look_up_option
from napari_medood.io.claims import claim_case, claim_holder, release_case
from napari_medood.io.cohort import Case
from napari_medood.io.mood import (
    RECORDS,
    TASKS,
    input_shape,
    output_path,
    output_problem,
    record_written,
    written_by_medood,
)

#: what a detector must give for each task
NEEDS = {"pixel": "map", "sample": "score"}


@dataclass
class BatchSummary:
    """What one process did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    #: cases another process was computing when their turn came (left to it)
    busy: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Plan:
    """Cases to do, cases already done, finished-looking outputs that must be redone, and
    cases whose output name holds a file no napari-medood run wrote (never touched)."""

    todo: list[Case]
    done: list[Case]
    redo: list[tuple[Case, str]] = field(default_factory=list)
    foreign: list[tuple[Case, str]] = field(default_factory=list)


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


@contextlib.contextmanager
def output_folder(out_dir: str | os.PathLike):
    """:func:`check_output_folder` for the length of a run: what the run created for it
    (the folder and its missing parents) is removed at its end if the run left it empty
    (failed, interrupted, or wrote nothing); a folder that was there before never is."""
    folder = Path(out_dir)
    # the folder and its missing parents, deepest first: what mkdir(parents=True) creates
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield check_output_folder(folder)
    finally:
        if created:
            remove_if_empty(folder)
            for made in created[1:]:
                try:
                    made.rmdir()  # only an empty folder goes
                except OSError:
                    break


def check_output_holds_no_input(
    out_dir: str | os.PathLike, cases: Sequence[Case], masks: Path | None
) -> None:
    """Refuse an OUTPUT folder that holds the run's own inputs: a scan's folder (its maps
    would be read as scans next time, and a NIfTI's map would replace it) or a mask's
    folder (a map named like the scan would replace the mask, or a mask named like the scan
    would pass for a finished map)."""
    out = Path(out_dir).resolve()
    if not out.is_dir():
        return
    mask_folders = set()
    if masks is not None:
        mask_folders.add(masks.resolve() if masks.is_dir() else masks.resolve().parent)
    for case in cases:
        if case.mask:
            with contextlib.suppress(OSError, RuntimeError):
                mask_folders.add(Path(case.mask).resolve().parent)
    if out in mask_folders:
        raise MedoodError(
            f"{out_dir}: the OUTPUT folder holds this run's masks; its maps would overwrite "
            "them or be taken for them; choose a folder of its own"
        )
    for case in cases:
        try:
            image = Path(case.image).resolve()
        except (OSError, RuntimeError):  # a symlink loop: that case fails when it is read
            continue
        if output_path(out, image, "pixel") == image:
            raise MedoodError(
                f"{case.image}: the output would overwrite this input; choose another OUTPUT folder"
            )
        if out in (image, image.parent):
            raise MedoodError(
                f"{case.image}: the OUTPUT folder holds this scan, and its map would be read as "
                "a scan by the next run on that folder; choose a folder of its own"
            )


def remove_if_empty(out_dir: Path) -> None:
    """Remove an OUTPUT folder this run made and left empty (a run that failed or wrote
    nothing leaves no empty folder behind); its records folder goes if it is empty too."""
    for folder in (out_dir / RECORDS, out_dir):
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()


def plan(
    cases: Sequence[Case], out_dir: str | os.PathLike, task: str, overwrite: bool = False
) -> Plan:
    """Split ``cases`` into to do and done; refuses an output that would overwrite its input.
    An existing output counts as done only if it loads and fits its input, and is redone
    (or, with ``overwrite``, recomputed) only if a napari-medood run wrote it: a file of the
    user's that happens to bear a case's output name is never skipped as done nor
    overwritten (that case fails, the others go on)."""
    look_up_option(task, TASKS, "task")
    out_dir = Path(out_dir)
    result = Plan([], [])
    for case in cases:
        target = output_path(out_dir, case.image, task)
        try:
            same = target.resolve() == Path(case.image).resolve()
        except (OSError, RuntimeError):  # a symlink loop: that case fails when it is read
            same = False
        if same:
            raise MedoodError(
                f"{case.image}: the output would overwrite this input; choose another OUTPUT folder"
            )
        if not target.exists():
            result.todo.append(case)
            continue
        if not written_by_medood(target, task):
            result.foreign.append(
                (
                    case,
                    f"{target}: this file was not written by napari-medood, so it is neither "
                    "taken as this case's output nor overwritten; move it, or choose another "
                    "OUTPUT folder",
                )
            )
            continue
        if overwrite:
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
    """Delete temporary files an interrupted write left for these cases, done or not (a
    killed ``--overwrite`` leaves one beside a finished output). Never another process's:
    only the names of ``cases`` are touched, and none a live process has claimed."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for case in cases:
        target = output_path(out_dir, case.image, task)
        if claim_holder(target) is not None:
            continue
        for leftover in out_dir.glob(f".{target.name}.*.part*"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def read_case(case: Case, masks: str | os.PathLike | None = None):
    """A case's scan as a Volume and its mask on the scan's grid (None without one): the
    case's own mask, else the one ``masks`` (a file or a folder) has for it."""
    from napari_medood.io.cohort import find_mask
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(case.image)
    mask_path = case.mask or (find_mask(masks, case.image) if masks else None)
    mask = load_mask(mask_path, volume.grid) if mask_path else None
    return volume, mask


def case_labels(case: Case, masks: str | os.PathLike | None, result) -> np.ndarray | None:
    """The case's mask file read again as labels on its map's grid (a parcellation given as
    the mask names the findings' structures); None without a mask or a map."""
    from napari_medood.io.cohort import find_mask
    from napari_medood.preprocessing.masks import load_labels

    mask_path = case.mask or (find_mask(masks, case.image) if masks else None)
    if mask_path is None or result.anomaly_map is None:
        return None
    return load_labels(mask_path, result.anomaly_map.grid)


def predict_case(case: Case, detector, masks: str | os.PathLike | None = None, cancelled=None):
    """Read a case's scan (and its mask) and run ``detector`` on it."""
    volume, mask = read_case(case, masks)
    return detector.predict(volume, mask, cancelled=cancelled)


class _Read:
    """One case read in a background (daemon) thread; :meth:`result` gives its scan and mask
    or raises what reading raised, in the caller's thread."""

    def __init__(self, case: Case, masks: str | os.PathLike | None):
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        # a daemon: a run stopped by Ctrl-C or a cancel never waits for a read it dropped
        threading.Thread(
            target=self._read, args=(case, masks), name=f"medood-read-{case.name}", daemon=True
        ).start()

    def _read(self, case: Case, masks) -> None:
        try:
            self._value = read_case(case, masks)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as that case's failure
            self._error = exc
        finally:
            self._done.set()

    def result(self, cancelled: CancelledPredicate | None = None):
        while not self._done.wait(0.05):  # short waits: Ctrl-C and cancel stay responsive
            check_cancelled(cancelled)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        value, self._value = self._value, None
        return value


class _CaseReader:
    """The cases' scans and masks in order; with ``ahead``, case k + 1 is read in a
    background thread while case k is computed (never more than one case ahead)."""

    def __init__(self, cases: Sequence[Case], masks, ahead: bool):
        self._cases, self._masks, self._ahead = cases, masks, ahead
        self._next: tuple[int, _Read] | None = None

    def take(self, index: int, cancelled: CancelledPredicate | None = None):
        """Case ``index``'s scan and mask (read now, or waited for if it is being read); the
        read of the case after it starts as this one is in hand, or has failed."""
        pending, self._next = self._next, None
        try:
            if pending is not None and pending[0] == index:
                value = pending[1].result(cancelled)
            else:
                value = read_case(self._cases[index], self._masks)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception:
            self._read_after(index)  # a case that cannot be read fails alone
            raise
        self._read_after(index)
        return value

    def _read_after(self, index: int) -> None:
        if self._ahead and index + 1 < len(self._cases):
            self._next = (index + 1, _Read(self._cases[index + 1], self._masks))

    def close(self) -> None:
        """Drop the read in flight, if any (its daemon thread ends on its own)."""
        self._next = None


def write_result(result, out_dir: str | os.PathLike, image: str | os.PathLike, tasks) -> list[Path]:
    """The one MOOD writer: the map and/or score of ``result`` for the ``tasks`` asked."""
    from napari_medood.io.mood import write_map, write_score, write_trust

    written = []
    for task in tasks:
        if task == "pixel" and result.anomaly_map is not None:
            written.append(write_map(result.anomaly_map, out_dir, image))
        elif task == "sample" and result.score is not None:
            written.append(write_score(result.score, out_dir, image))
    trust = result.extras.get("trust")
    if trust is not None and result.anomaly_map is not None and written:
        # the gate's verdict, beside the map: only once the map passed its checks
        write_trust(trust.as_dict(), out_dir, image)
    return written


def write_case(
    result,
    out_dir: Path,
    image,
    task: str,
    record: dict | None,
    findings: bool = False,
    findings_threshold: float | None = None,
    findings_parcellation: np.ndarray | None = None,
) -> list[Path]:
    """:func:`write_result` for one task, each file recorded as this run's (``record``:
    what wrote it), so a later run may redo it and never a file of the user's. With
    ``findings``, a map's table of findings goes beside it as CSV (at ``findings_threshold``,
    else the model's calibrated threshold, else 0.5)."""
    written = write_result(result, out_dir, image, (task,))
    if findings and written and task == "pixel":
        written.append(
            write_findings(result, out_dir, image, findings_threshold, findings_parcellation)
        )
    for path in written:
        record_written(path, record or {})
    return written


def write_findings(
    result, out_dir: Path, image, threshold: float | None = None, labels: np.ndarray | None = None
) -> Path:
    """The table of findings of ``result``'s map as ``OUT/<name>.findings.csv``, atomically
    (each row says the threshold and where it came from). ``labels``: the case's mask as
    read (on the map's grid); when it is a parcellation, each row gives the structure it
    lies in, named when the labels are DLMUSE's."""
    from napari_medood.detectors.findings import (
        find_findings,
        findings_csv,
        parcellation_kind,
        table_threshold,
    )
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.mood import findings_path

    at, source = table_threshold(result.extras, threshold)
    anomaly_map = result.anomaly_map
    is_parcellation, muse = (False, False) if labels is None else parcellation_kind(labels)
    table = find_findings(
        anomaly_map.data,
        anomaly_map.affine,
        at,
        parcellation=labels if is_parcellation else None,
    )
    return write_text_atomic(findings_path(out_dir, image), findings_csv(table, at, source, muse))


def predict_cases(
    cases: Sequence[Case],
    detector,
    out_dir: str | os.PathLike,
    task: str = "pixel",
    masks: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
    on_case: Callable[[Case, str | None, tuple[str, ...]], None] | None = None,
    prefetch: bool = True,
    record: dict | None = None,
    overwrite: bool = False,
    findings: bool = False,
    findings_threshold: float | None = None,
) -> BatchSummary:
    """Predict each case and write its output; ``on_case(case, error or None, notes)`` after
    each. With ``prefetch`` the next case is read while this one is computed; a case that
    cannot be read fails alone, as when it is read in turn. Each case is claimed before it
    is computed: one another process holds is left to it (``summary.busy``), and one that
    another run finished meanwhile is skipped (unless ``overwrite``)."""
    check_task(detector, task)
    out_dir = Path(out_dir)
    summary = BatchSummary()
    reader = _CaseReader(cases, masks, prefetch)
    try:
        for index, case in enumerate(cases):
            check_cancelled(cancelled)
            error, notes, volume, mask = None, (), None, None
            target = output_path(out_dir, case.image, task)
            claimed, holder = False, None
            try:
                holder = claim_case(target)
                claimed = holder is None
                if holder is not None:
                    summary.busy.append((case.name, holder))
                elif not overwrite and finished(target, case, task):
                    # another run finished it while this one was busy with others
                    summary.skipped.append(case.name)
                else:
                    volume, mask = reader.take(index, cancelled)
                    result = detector.predict(volume, mask, cancelled=cancelled)
                    del volume, mask  # a read-ahead holds the next case: keep one in memory
                    labels = case_labels(case, masks, result) if findings else None
                    notes = tuple(result.notes)
                    written = write_case(
                        result,
                        out_dir,
                        case.image,
                        task,
                        record,
                        findings,
                        findings_threshold,
                        labels,
                    )
                    del labels
                    if not written:
                        raise MedoodError(f"the {detector.name} detector returned no {NEEDS[task]}")
                    summary.written.append(case.name)
            except Cancelled:
                raise
            except MedoodError as exc:
                error = str(exc)
            except OSError as exc:  # a claim or a write the file system refused
                where = exc.filename or target
                error = f"{where}: {exc.strerror or exc}"
            except Exception as exc:  # noqa: BLE001 - one bad case must not sink the batch
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            finally:
                if claimed:
                    release_case(target)
            if holder is not None and error is None:
                report(progress, index + 1, len(cases), case.name)
                continue
            if error is not None:
                summary.failed.append((case.name, error))
            summary.notes.extend((case.name, note) for note in notes)
            if on_case is not None:
                on_case(case, error, notes)
            report(progress, index + 1, len(cases), case.name)
    finally:
        reader.close()
        with contextlib.suppress(OSError):  # a records folder left empty (nothing written)
            (out_dir / RECORDS).rmdir()
    return summary


def finished(target: Path, case: Case, task: str) -> bool:
    """Is ``target`` a finished output of ``case`` that a run wrote (a resume skips it)?"""
    if not target.exists() or not written_by_medood(target, task):
        return False
    shape = input_shape(case.image) if task == "pixel" else None
    return output_problem(target, task, shape) is None


@dataclass(frozen=True)
class CohortOptions:
    """How :func:`run_cohort` runs a cohort.

    Attributes:
        task: ``pixel`` (a map per case) or ``sample`` (a score per case).
        masks: brain/foreground masks: a file (one scan) or a folder of masks named like
            the scans; a case's own mask (a CSV or BIDS column) comes first.
        overwrite: recompute cases whose output already exists.
        part_id, num_parts: do only part ``part_id`` of ``num_parts`` (scheduler arrays);
            without them, ``torchrun``'s ranks share the cases.
        prefetch: read the next case while the detector computes this one.
        findings: with ``task`` pixel, also write each map's table of findings
            (``OUT/<name>.findings.csv``: its connected regions above the threshold).
        findings_threshold: the table's threshold (None: the model's calibrated threshold,
            else 0.5).
    """

    task: str = "pixel"
    masks: str | os.PathLike | None = None
    overwrite: bool = False
    part_id: int | None = None
    num_parts: int | None = None
    prefetch: bool = True
    findings: bool = False
    findings_threshold: float | None = None


@dataclass(frozen=True)
class CaseFailure:
    """A case that failed: its name, its scan, and the error (a file's error names it)."""

    name: str
    image: str
    error: str


@dataclass
class CohortStart:
    """What a run is about to do, before its first case: this process's share and plan (to
    do, already done, to redo and why), where it writes, and what computes it."""

    out_dir: Path
    shard: Shard
    plan: Plan
    record: dict


@dataclass
class CohortResult:
    """What a cohort run did. ``written``, ``skipped`` and ``failed`` cover every rank of a
    ``torchrun`` group, and this part only with ``--part-id/--num-parts`` (``whole`` says
    which); ``notes`` are this process's (case name, note)."""

    out_dir: Path
    shard: Shard
    record: dict
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    #: cases another process was computing and had not finished when this run ended (the
    #: run is not complete: ``ok`` is False)
    busy: list[tuple[str, str]] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        """The counts cover the whole cohort, not one part of it."""
        return self.shard.process_group or self.shard.world == 1

    @property
    def reporting(self) -> bool:
        """This process speaks for the run: the first rank of a group, or any lone process."""
        return self.shard.rank == 0 or not self.shard.process_group

    @property
    def ok(self) -> bool:
        return not self.failed and not self.busy


def run_cohort(
    source: str | os.PathLike | Sequence[Case],
    detector,
    out_dir: str | os.PathLike,
    options: CohortOptions | None = None,
    *,
    on_start: Callable[[CohortStart], None] | None = None,
    on_case: Callable[[Case, str | None, tuple[str, ...]], None] | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> CohortResult:
    """Run ``detector`` over a cohort and write one MOOD output per case into ``out_dir``.

    In order: refuse a task the detector cannot do; find the cases (``source``: a scan, a
    folder, a CSV, a BIDS dataset, or the cases themselves); refuse one mask file for several
    scans; prove ``out_dir`` can be written; take this process's share (``torchrun`` rank or
    ``part_id``/``num_parts``) of the sorted cases; plan it (done / to do / redo); remove the
    leftovers of interrupted writes; ``on_start`` (the plan and the run record); predict and
    write each case (``on_case`` after each); gather every rank's counts and failures.
    Everything before the plan raises a :class:`MedoodError` before any case runs; a case
    that fails is recorded and the others go on.
    """
    from napari_medood.distributed import check_parts, finish, gather, shard_from
    from napari_medood.io.cohort import discover_cases

    options = options or CohortOptions()
    check_task(detector, options.task)  # a score-only detector cannot write maps: say so now
    check_parts(options.part_id, options.num_parts)
    cases = discover_cases(source) if isinstance(source, str | os.PathLike) else list(source)
    masks = Path(options.masks) if options.masks is not None else None
    if masks is not None and masks.is_file() and len(cases) > 1:
        raise MedoodError(
            f"{masks}: one mask file for {len(cases)} scans; pass a folder with one mask per scan"
        )
    check_output_holds_no_input(out_dir, cases, masks)
    with output_folder(out_dir) as out_dir:
        shard = shard_from(options.part_id, options.num_parts)
        try:
            # shard the full, sorted case list: the same case always goes to the same part,
            # whatever was finished before
            mine = shard.take(cases)
            work = plan(mine, out_dir, options.task, options.overwrite)
            remove_partial_writes(out_dir, mine, options.task)
            record = run_record(detector, options.task)
            if on_start is not None:
                on_start(CohortStart(out_dir, shard, work, record))
            failures: list[CaseFailure] = []

            def each(case: Case, error: str | None, notes: tuple[str, ...]) -> None:
                if error is not None:
                    failures.append(CaseFailure(case.name, str(case.image), error))
                if on_case is not None:
                    on_case(case, error, notes)

            for case, problem in work.foreign:  # never computed: its output name is taken
                each(case, problem, ())
            summary = predict_cases(
                work.todo,
                detector,
                out_dir,
                options.task,
                masks,
                progress,
                cancelled,
                each,
                options.prefetch,
                record,
                options.overwrite,
                options.findings,
                options.findings_threshold,
            )
            # a case left to another process counts as done once that process finished it
            by_name = {case.name: case for case in work.todo}
            busy = [
                (name, holder)
                for name, holder in summary.busy
                if not finished(
                    output_path(out_dir, by_name[name].image, options.task),
                    by_name[name],
                    options.task,
                )
            ]
            finished_by_others = [name for name, _ in summary.busy if (name, _) not in busy]
            counts = (
                list(summary.written),
                [case.name for case in work.done] + summary.skipped + finished_by_others,
                failures,
                busy,
            )
            everyone = gather(counts, shard)
        finally:
            finish(shard)
    return CohortResult(
        out_dir,
        shard,
        record,
        written=[name for written, _, _, _ in everyone for name in written],
        skipped=[name for _, skipped, _, _ in everyone for name in skipped],
        failed=[failure for _, _, failed, _ in everyone for failure in failed],
        notes=list(summary.notes),
        busy=[entry for _, _, _, busy in everyone for entry in busy],
    )
