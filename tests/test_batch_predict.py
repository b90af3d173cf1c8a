"""Batch prediction at scale: torchrun shards (2 gloo processes), resume after a kill, a corrupt
case among good ones, scheduler-array parts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def torchrun(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        tool("torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        tool("medood-predict"),
        *args,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        **popen,
    )


def written_lines(output: str) -> Counter:
    return Counter(re.findall(r"medood-predict\[part \d/2\]: wrote (\S+)", output))


@pytest.fixture
def scans(ixi_t1, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for k in range(6):
        shutil.copy(ixi_t1, folder / f"case{k}.nii.gz")
    (folder / "case9_broken.nii.gz").write_bytes(b"\x1f\x8b truncated and corrupt")
    return folder


@pytest.mark.slow
def test_torchrun_shards_write_each_case_once_and_report_the_corrupt_one(scans, tmp_path):
    out = tmp_path / "maps"
    run = torchrun("--verbose", str(scans), str(out))
    output, _ = run.communicate(timeout=240)
    assert run.returncode != 0, output  # one case failed, so the job fails at the end
    lines = written_lines(output)
    assert sorted(lines) == [f"case{k}" for k in range(6)], output
    assert set(lines.values()) == {1}, "each case is written by exactly one rank"
    assert re.search(
        r"failed: case9_broken: .*case9_broken\.nii\.gz: not a readable NIfTI", output
    ), output
    assert "medood-predict: 6 written, 0 skipped, 1 failed" in output
    reference = nib.load(scans / "case0.nii.gz")
    for k in range(6):
        image = nib.load(out / f"case{k}.nii.gz")
        np.testing.assert_array_equal(image.affine, reference.affine)
        values = image.get_fdata()
        assert values.min() >= 0 and values.max() <= 1
    assert not list(out.glob(".*part*")), "no temporary file is left behind"


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(ms_t1, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(8):  # 1 mm scans: slow enough to kill the run half-way
        shutil.copy(ms_t1, scans / f"ms{k}.nii.gz")
    out = tmp_path / "maps"
    first = torchrun("--verbose", str(scans), str(out))
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("ms*.nii.gz"))) < 2:
        time.sleep(0.2)
    # torchrun starts its workers in sessions of their own: kill the whole tree at once
    import psutil

    tree = psutil.Process(first.pid)
    for process in [*tree.children(recursive=True), tree]:
        process.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    finished = sorted(p.name for p in out.glob("ms*.nii.gz"))
    assert 2 <= len(finished) < 8, f"the run was not interrupted half-way: {finished}"

    second = torchrun("--verbose", str(scans), str(out))
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    rewritten = written_lines(output)
    assert set(rewritten.values()) == {1}
    assert not set(rewritten) & {name.replace(".nii.gz", "") for name in finished}, (
        "finished cases are not computed again"
    )
    assert f"{len(rewritten)} written, {len(finished)} skipped, 0 failed" in output
    assert sorted(p.name for p in out.glob("ms*.nii.gz")) == [f"ms{k}.nii.gz" for k in range(8)]
    assert not list(out.glob(".*part*"))
    for k in range(8):  # every output is whole
        assert nib.load(out / f"ms{k}.nii.gz").get_fdata().shape == (182, 218, 182)


@pytest.mark.slow
def test_scheduler_array_parts_cover_every_case_once(scans, tmp_path, capsys):
    from napari_medood.cli import predict_main

    (scans / "case9_broken.nii.gz").unlink()
    out = tmp_path / "maps"
    seen = Counter()
    for part in range(3):
        assert (
            predict_main(
                ["--verbose", "--part-id", str(part), "--num-parts", "3", str(scans), str(out)]
            )
            == 0
        )
        seen.update(re.findall(r"wrote (\S+)", capsys.readouterr().err))
    assert sorted(seen) == [f"case{k}" for k in range(6)] and set(seen.values()) == {1}
    assert predict_main(["--part-id", "3", "--num-parts", "3", str(scans), str(out)]) == 2
    assert "--part-id must be within 0..2" in capsys.readouterr().err


def test_a_cli_run_enters_the_core_batch_once(ixi_t1, ixi_parcellation, tmp_path, monkeypatch):
    """medood-predict only translates: on a real cohort (two IXI scans with their masks and a
    broken file) it makes one call into ``napari_medood.batch``, which does the rest."""
    import inspect

    import napari_medood.batch as batch
    from napari_medood.cli import predict_main

    scans, masks, out = tmp_path / "scans", tmp_path / "masks", tmp_path / "maps"
    scans.mkdir(), masks.mkdir()
    for name in ("a", "b"):
        shutil.copy(ixi_t1, scans / f"{name}.nii.gz")
        shutil.copy(ixi_parcellation, masks / f"{name}.nii.gz")
    (scans / "c_broken.nii.gz").write_bytes(b"not a scan")
    entries, inside = [], []

    def counted(name, function):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__")
            (inside if caller == batch.__name__ else entries).append((caller, name))
            return function(*args, **kwargs)

        return wrapper

    public = [
        name
        for name, value in vars(batch).items()
        if inspect.isfunction(value) and value.__module__ == batch.__name__ and name[0] != "_"
    ]
    assert {"run_cohort", "plan", "predict_cases", "check_task", "read_case"} <= set(public)
    for name in public:
        monkeypatch.setattr(batch, name, counted(name, getattr(batch, name)))
    code = predict_main(["--model", "intensity", "--mask", str(masks), str(scans), str(out)])
    assert code == 2  # the broken case failed, the others were written
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz"]
    assert entries == [("napari_medood.cli.predict", "run_cohort")]
    # the walk went through the core's steps (so the count above saw real work)
    for step in ("check_task", "check_output_folder", "plan", "remove_partial_writes"):
        assert (batch.__name__, step) in inside
    assert inside.count((batch.__name__, "read_case")) == 3


def _score_detector(on_predict):
    from napari_medood.detectors import AnomalyResult, ScoreInfo

    class Recorder:
        name = "recorder"
        outputs = ("score",)
        score_info = ScoreInfo("nothing")

        def predict(self, volume, mask=None, progress=None, cancelled=None):
            on_predict(Path(volume.source).name.removesuffix(".nii.gz"))
            return AnomalyResult(None, 0.5)

    return Recorder()


@pytest.fixture
def three_cases(ixi_t1, tmp_path):
    from napari_medood.io.cohort import Case

    folder = tmp_path / "scans"
    folder.mkdir()
    cases = []
    for k in range(3):
        shutil.copy(ixi_t1, folder / f"case{k}.nii.gz")
        cases.append(Case(f"case{k}", folder / f"case{k}.nii.gz"))
    return cases


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_next_case_is_read_while_this_one_is_computed(
    three_cases, tmp_path, monkeypatch, prefetch
):
    import threading

    import napari_medood.batch as batch

    read = {case.name: threading.Event() for case in three_cases}
    real_read_case = batch.read_case

    def read_case(case, masks=None):
        value = real_read_case(case, masks)
        read[case.name].set()
        return value

    monkeypatch.setattr(batch, "read_case", read_case)
    seen = {}

    def on_predict(name: str) -> None:
        k = int(name.removeprefix("case"))
        if k + 1 < len(three_cases):  # is the next case read while this one computes?
            seen[name] = read[f"case{k + 1}"].wait(10 if prefetch else 0.5)

    summary = batch.predict_cases(
        three_cases, _score_detector(on_predict), tmp_path / "out", "sample", prefetch=prefetch
    )
    assert summary.written == ["case0", "case1", "case2"] and not summary.failed
    assert seen == {"case0": prefetch, "case1": prefetch}


def test_a_case_that_cannot_be_read_ahead_fails_alone(three_cases, tmp_path):
    from napari_medood.batch import predict_cases

    broken = three_cases[1].image
    broken.write_bytes(b"\x1f\x8b truncated")
    done = []
    summary = predict_cases(
        three_cases, _score_detector(done.append), tmp_path / "out", "sample", prefetch=True
    )
    assert done == ["case0", "case2"] and summary.written == ["case0", "case2"]
    assert len(summary.failed) == 1
    name, error = summary.failed[0]
    assert name == "case1" and error.startswith(f"{broken}: not a readable NIfTI")


def test_a_cancel_or_ctrl_c_does_not_wait_for_the_read_ahead(three_cases, tmp_path, monkeypatch):
    """A read that never ends (a hung network share) does not hold up a cancel or Ctrl-C."""
    import threading

    import napari_medood.batch as batch
    from napari_medood.errors import Cancelled

    release = threading.Event()
    real_read_case = batch.read_case

    def read_case(case, masks=None):
        if case.name != "case0":
            release.wait(60)
        return real_read_case(case, masks)

    monkeypatch.setattr(batch, "read_case", read_case)
    stop = threading.Event()
    try:
        # cancel: asked while case 1 is still being read
        detector = _score_detector(lambda name: threading.Timer(0.3, stop.set).start())
        started = time.monotonic()
        with pytest.raises(Cancelled):
            batch.predict_cases(
                three_cases, detector, tmp_path / "a", "sample", cancelled=stop.is_set
            )
        assert time.monotonic() - started < 5

        # Ctrl-C in the detector while the next case is being read
        def interrupted(name):
            raise KeyboardInterrupt

        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            batch.predict_cases(three_cases, _score_detector(interrupted), tmp_path / "b", "sample")
        assert time.monotonic() - started < 5
    finally:
        release.set()


def test_run_cohort_reports_counts_names_and_failing_files(ixi_t1, tmp_path):
    """The core's one entry point: what was written, skipped and failed, with the file."""
    from napari_medood.batch import CohortOptions, run_cohort
    from napari_medood.detectors import get_detector

    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        shutil.copy(ixi_t1, scans / f"{name}.nii.gz")
    (scans / "c.nii.gz").write_bytes(b"not a scan")
    detector = get_detector("intensity", device="cpu")
    starts = []
    result = run_cohort(scans, detector, tmp_path / "out", on_start=starts.append)
    assert result.written == ["a", "b"] and result.skipped == []
    assert [(f.name, f.image) for f in result.failed] == [("c", str(scans / "c.nii.gz"))]
    assert result.failed[0].error.startswith(f"{scans / 'c.nii.gz'}: not a readable NIfTI")
    assert not result.ok and result.whole and result.reporting
    assert [c.name for c in starts[0].plan.todo] == ["a", "b", "c"]
    assert result.record["model"] == "intensity"
    again = run_cohort(
        scans, detector, tmp_path / "out", CohortOptions(task="pixel", prefetch=False)
    )
    assert again.written == [] and again.skipped == ["a", "b"]
    assert [f.name for f in again.failed] == ["c"]
