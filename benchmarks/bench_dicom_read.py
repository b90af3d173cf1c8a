"""What the DICOM series checks cost: ``read_volume`` against SimpleITK's bare series read.

    python benchmarks/bench_dicom_read.py [--slices 300] [--size 512] [--repeats 3]

Writes a synthetic CT series (``--slices`` files of ``--size`` x ``--size`` int16, one
slice per file, positions written to 6 decimals) into a temporary folder, then reads it,
alternating, with SimpleITK's ``ImageSeriesReader`` alone and the reader's own conversion to
a Volume (the baseline: GDCM's file list, one ``Execute``, the (i, j, k) array) and with
``napari_medood.io.readers.read_volume`` (the same plus the series checks: every slice's
position from the same read, the spacing checks, the folder scan for files GDCM dropped,
the first file's header for the memory check, the value checks). Both
read from the page cache (one warm-up read each). Prints one JSON line per read and ends with
``checked_vs_bare=<ratio of median seconds>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def bare_read(folder: Path):
    import SimpleITK as sitk

    from napari_medood.io.readers import _volume_from_sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    return _volume_from_sitk(reader.Execute(), folder, {})


def main() -> None:
    from helpers import write_dicom_series
    from napari_medood.io.readers import read_volume

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 2000, (args.slices, args.size, args.size), dtype=np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dicom_series(volume, Path(tmp) / "series", spacing=(0.7, 0.7, 1.25))
        reads = {"bare": lambda: bare_read(folder), "checked": lambda: read_volume(folder)}
        for read in reads.values():  # warm-up: page cache, imports
            read()
        times: dict[str, list[float]] = {name: [] for name in reads}
        for repeat in range(args.repeats):
            for name in ("bare", "checked") if repeat % 2 == 0 else ("checked", "bare"):
                start = time.perf_counter()
                reads[name]()
                seconds = time.perf_counter() - start
                times[name].append(seconds)
                print(
                    json.dumps({"read": name, "slices": args.slices, "seconds": round(seconds, 3)})
                )
    ratio = statistics.median(times["checked"]) / statistics.median(times["bare"])
    print(f"checked_vs_bare={ratio:.2f}")


if __name__ == "__main__":
    main()
