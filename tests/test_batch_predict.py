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

pytestmark = pytest.mark.slow


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
