"""Checks that need a real GPU (run on one; CI has none).

    python benchmarks/gpu_checks.py

1. A real CUDA out-of-memory error: most of the GPU's memory is taken first, then the shipped
   model runs with large batches; the detector must warn and finish on the CPU with the same
   map it gives on the GPU when memory is free.
2. Where plain MONAI spends its time on the GPU (cProfile of one sliding_window_inference on
   the benchmark volume), to explain bench_inference.py's GPU ratio.

GPU rows of the precision table (issue 9): ``python benchmarks/bench_inference.py --device
cuda --batch 8 --precision float16`` (and ``bfloat16``, ``float32``).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def oom_fallback() -> None:
    import torch
    from bench_inference import shared_dir

    from napari_medood.detectors.unet import DeviceFallbackWarning, UNetDetector
    from napari_medood.io import read_volume

    name = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    volume = read_volume(shared_dir() / "open-ms-lesjak-mni" / "patient19" / name)
    mask = volume.data > 0
    # float32 on both sides: the fallback must give the GPU's map, not another precision's
    reference = UNetDetector(["brain-t1-unet"], device="cuda", precision="float32").predict(
        volume, mask
    )
    torch.cuda.empty_cache()  # what torch keeps cached would otherwise absorb the squeeze
    free, total = torch.cuda.mem_get_info()
    hog = torch.empty(int(free - 300 * 2**20), dtype=torch.uint8, device="cuda")
    detector = UNetDetector(["brain-t1-unet"], device="cuda", batch_size=64, precision="float32")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = detector.predict(volume, mask)
    fell_back = [w for w in caught if issubclass(w.category, DeviceFallbackWarning)]
    del hog
    diff = float(np.abs(result.anomaly_map.data - reference.anomaly_map.data).max())
    print(
        f"OOM fallback: {len(fell_back)} warning(s): "
        f"{fell_back[0].message if fell_back else 'none'}; finished on {detector.device} in "
        f"{time.perf_counter() - start:.1f} s; max |map difference| vs GPU run {diff:.2e}"
    )


def profile_monai() -> None:
    import torch
    from bench_inference import brain_volume, network
    from monai.inferers import sliding_window_inference

    image, _ = brain_volume()
    predictor = network("small", "cuda")
    inputs = torch.from_numpy(image)[None, None].cuda()
    with torch.inference_mode():
        predictor(torch.zeros(1, 1, 96, 96, 96, device="cuda"))
        torch.cuda.synchronize()
        profiler = cProfile.Profile()
        profiler.enable()
        sliding_window_inference(inputs, (96,) * 3, 1, predictor, overlap=0.5, mode="gaussian")
        torch.cuda.synchronize()
        profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    oom_fallback()
    profile_monai()
