"""The Mahalanobis map through the Woodbury identity against the dense P x P inverse (issue 10).

    python benchmarks/bench_mahalanobis.py [--size 96] [--reconstructions 10] [--repeats 20]

One slice of ``size`` x ``size`` pixels (P = size^2, every pixel in the mask, the worst case),
N reconstructions around it; both paths on the same data in one run, in float64 as the
project computes them: the dense path builds the P x P covariance, inverts it and multiplies
(as the reference does, one slice at a time), Woodbury solves an N x N system. Prints the
seconds of each (Woodbury: the median of ``repeats``), the speed-up, the largest relative
difference of the two maps, and the dense path's covariance memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from napari_medood.inference.mahalanobis import dense_mahalanobis, pixelwise_mahalanobis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--reconstructions", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    size, count = args.size, args.reconstructions
    x = torch.rand(1, size, size, generator=generator)
    recons = x[:, None] + 0.1 * torch.randn(1, count, size, size, generator=generator)
    recons = recons.clamp(0, 1)

    started = time.perf_counter()
    dense = dense_mahalanobis(x, recons).double()
    dense_seconds = time.perf_counter() - started
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        woodbury = pixelwise_mahalanobis(x, recons).double()
        times.append(time.perf_counter() - started)
    woodbury_seconds = sorted(times)[len(times) // 2]
    scale = dense.abs().max()
    result = {
        "size": size,
        "reconstructions": count,
        "pixels": size * size,
        "dense_seconds": round(dense_seconds, 3),
        "woodbury_seconds": round(woodbury_seconds, 6),
        "speedup": round(dense_seconds / woodbury_seconds, 1),
        "max_relative_difference": float((woodbury - dense).abs().max() / scale),
        "dense_covariance_mib": round((size * size) ** 2 * 8 / 2**20, 1),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
