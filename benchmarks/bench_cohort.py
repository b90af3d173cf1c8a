"""A cohort through ``medood-predict``'s core call, with and without read-ahead (issue 22).

    python benchmarks/bench_cohort.py [--shared ../shared/data] [--device cpu] [--repeats 1]

The 8 IXI T1 scans of the shared data (2 mm whole heads) with their brain masks (DLMUSE
labels > 0), through ``batch.run_cohort`` exactly as ``medood-predict --mask MASKS SCANS OUT``
runs them (the default model, its trust gate, maps written), once with ``prefetch`` (the next
case read in a background thread while the model computes this one) and once without, in
the same process with the same detector. Before the clock: one case predicted (weights,
kernels, the gate) and every file read once (the page cache). Runs alternate (off, on, on,
off, ...) with ``--repeats`` above 1; each run recomputes every case (``--overwrite``).

Prints one JSON line per run; then the time reading the cohort takes alone, its share of a
run without read-ahead and the speed-up that share allows at most (``ceiling``: read-ahead
hides reading, nothing else); and ends with ``prefetch_vs_off=<ratio of scans/s>``, each mode's
scans over its runs' whole time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from napari_medood.batch import CohortOptions, read_case, run_cohort
    from napari_medood.detectors import PREFERRED_DEFAULT, DetectorOptions, get_detector
    from napari_medood.io.cohort import discover_cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default=PREFERRED_DEFAULT)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    ixi = args.shared / "ixi-t1-2mm"
    scans, masks = ixi / "t1", ixi / "dlmuse"
    cases = discover_cases(scans)
    detector = get_detector(args.model, DetectorOptions(args.device, extra_maps=False))
    started = time.perf_counter()
    for case in cases:
        read_case(case, masks)
    reading = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as work:
        out = Path(work) / "maps"
        run_cohort(cases[:1], detector, out, CohortOptions(masks=masks))  # warm-up
        order = ([False, True, True, False] * args.repeats)[: 2 * args.repeats]
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for prefetch in order:
            options = CohortOptions(masks=masks, overwrite=True, prefetch=prefetch)
            started = time.perf_counter()
            result = run_cohort(cases, detector, out, options)
            elapsed = time.perf_counter() - started
            assert len(result.written) == len(cases) and result.ok, result
            seconds[prefetch].append(elapsed)
            print(
                json.dumps(
                    {
                        "prefetch": prefetch,
                        "scans": len(cases),
                        "seconds": round(elapsed, 2),
                        "scans_per_second": round(len(cases) / elapsed, 4),
                    }
                )
            )
    # whole time of each mode over its runs (off, on, on, off, ... balances a linear drift)
    rate = {p: len(cases) * len(s) / sum(s) for p, s in seconds.items()}
    share = reading / (sum(seconds[False]) / len(seconds[False]))
    print(
        json.dumps(
            {
                "model": detector.name,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "read_alone_seconds": round(reading, 2),
                "read_share_without_prefetch": round(share, 4),
                # read-ahead hides reading at most: the speed-up it can give
                "ceiling": round(1 / (1 - share), 4),
                "scans_per_second_off": round(rate[False], 4),
                "scans_per_second_on": round(rate[True], 4),
            }
        )
    )
    print(f"prefetch_vs_off={rate[True] / rate[False]:.3f}")


if __name__ == "__main__":
    main()
