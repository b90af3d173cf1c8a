"""Sliding-window inference: plain MONAI vs napari-medood, same model, same windows, one run.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--preset small] [--batch 4]
    python benchmarks/bench_inference.py --memory [--device cuda]   # 256^3 vs 512^3 volumes

Volume (``--volume``): ``ms-brain`` (MS patient 19's T1, 1 mm, brain-extracted; the brain
fills almost every window) or ``ixi-head`` (the whole-head IXI048 T1 at 1 mm with its brain
mask), normalised as the U-Net expects. Model: the U-Net preset with fixed random
weights (the cost does not depend on the weights). Both use a 96^3 ROI, overlap 0.5 and
Gaussian blending; MONAI runs windows one at a time (its default), napari-medood skips windows
without brain and runs ``--batch`` windows per pass. Printed: the largest difference inside the
brain (must be below 1e-5), voxels per second of each, the speed-up, and peak memory (device
memory on CUDA; each method's peak RSS on the CPU, measured in a fresh process).

``--memory`` runs napari-medood alone on a 256^3 and a 512^3 CT-like volume (the example CT
tiled, body = HU > -500) and prints peak memory: it follows the volume size (a few float32
copies of it), not the number of windows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    for candidate in (REPO / ".data", REPO.parent / "shared" / "data"):
        if (candidate / "open-ms-lesjak-mni").is_dir():
            return candidate
    raise SystemExit("needs ../shared/data (or .data) with open-ms-lesjak-mni")


VOLUME = os.environ.get("BENCH_VOLUME", "ms-brain")


def brain_volume():
    """``ms-brain``: MS patient 19's brain-extracted T1 in MNI space (1 mm, 182 x 218 x 182;
    the brain fills the field of view); ``ixi-head``: the whole-head IXI048 T1 resampled to
    1 mm (240 x 240 x 180), foreground = its DLMUSE brain mask."""
    from napari_medood.io import read_volume
    from napari_medood.preprocessing import normalise, resample_to_spacing

    if VOLUME == "ixi-head":
        ixi = shared_dir() / "ixi-t1-2mm"
        volume = resample_to_spacing(read_volume(ixi / "t1" / "IXI048-HH-1326-T1_ds.nii.gz"), 1.0)
        parcels = read_volume(ixi / "dlmuse" / "IXI048-HH-1326-T1_ds_DLMUSE.nii.gz")
        mask = resample_to_spacing(parcels, 1.0, "nearest").data > 0
        return normalise(volume.data, "percentile", mask).astype(np.float32), mask
    name = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    volume = read_volume(shared_dir() / "open-ms-lesjak-mni" / "patient19" / name)
    mask = volume.data > 0
    image = normalise(volume.data, "percentile", mask)
    image[~mask] = 0
    return image.astype(np.float32), mask


def network(preset: str, device: str, amp: bool = False, precision: str | None = None):
    """The preset with fixed random weights, as a predictor; fp32 unless ``amp`` (on CUDA
    TF32 is switched off too, so batched and single windows compute the same numbers).
    ``precision``: run it through napari-medood's execution plan instead (``execution``:
    that precision, channels-last on the CPU, batch norms folded)."""
    import torch

    if device.startswith("cuda") and not amp:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    from napari_medood.models.unet import PRESETS, UNet3DDeepSup

    torch.manual_seed(0)
    model = (
        UNet3DDeepSup(
            features=PRESETS[preset]
            if preset in PRESETS
            else tuple(int(f) for f in preset.split(","))
        )
        .to(device)
        .eval()
    )

    if precision is not None:
        from napari_medood.execution import plan_execution

        execution = plan_execution(device, precision)
        model = execution.prepare(model)

        def planned(batch):
            with execution.autocast():
                return torch.sigmoid(model.predict(execution.inputs(batch)).float())

        return planned

    def predictor(batch):
        with torch.autocast("cuda", enabled=batch.is_cuda and amp):
            return torch.sigmoid(model.predict(batch).float())

    return predictor


def run_method(
    method: str,
    preset: str,
    device: str,
    batch: int,
    roi: int,
    overlap: float,
    amp: bool = False,
    precision: str | None = None,
) -> dict:
    """One method in this process: its map (saved for comparison), time and peak memory."""
    import torch

    image, mask = brain_volume()
    predictor = network(preset, device, amp, None if method.startswith("monai") else precision)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # imports and a warm-up window before the clock starts (importing MONAI alone takes
    # seconds), so both start with a ready device and allocator
    from monai.inferers import sliding_window_inference

    from napari_medood.inference.sliding_window import sliding_window_predict

    with torch.inference_mode():
        predictor(torch.zeros(1, 1, roi, roi, roi, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if method.startswith("monai"):
        windows_per_pass = batch if method == "monai-batched" else 1
        with torch.inference_mode():
            out = sliding_window_inference(
                torch.from_numpy(image)[None, None].to(device),
                (roi,) * 3,
                windows_per_pass,
                predictor,
                overlap=overlap,
                mode="gaussian",
            )
        result = out[0, 0].float().cpu().numpy()
        stats = {}
    else:
        result, stats = sliding_window_predict(
            image, predictor, (roi,) * 3, overlap, mask, batch, device
        )
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    np.save(f"/tmp/bench_inference_{method}.npy", result)
    peak_device = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {
        "seconds": seconds,
        "voxels": int(image.size),
        "stats": stats,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": peak_device,
    }


def run_memory(size: int, preset: str, device: str, batch: int, roi: int) -> dict:
    import torch

    from napari_medood.inference.sliding_window import sliding_window_predict
    from napari_medood.io import read_volume

    ct = read_volume(shared_dir() / "totalsegmentator-example" / "example_ct.nii.gz").data
    reps = [int(np.ceil(size / n)) for n in ct.shape]
    volume = np.tile(ct, reps)[:size, :size, :size].astype(np.float32)
    body = volume > -500
    image = np.clip((volume + 1000) / 2000, 0, 1).astype(np.float32)
    del volume, ct
    predictor = network(preset, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    _, stats = sliding_window_predict(image, predictor, (roi,) * 3, 0.5, body, batch, device)
    return {
        "size": size,
        "seconds": time.perf_counter() - start,
        "stats": stats,
        "volume_mib": image.nbytes / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": (
            torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        ),
    }


def in_child(*args: str) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="float16 autocast on CUDA (faster; numbers then differ by batch)",
    )
    parser.add_argument(
        "--volume",
        choices=("ms-brain", "ixi-head"),
        default="ms-brain",
        help="the brain scan (see brain_volume)",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="run napari-medood through its execution plan at this precision (auto, float32, "
        "bfloat16, float16); plain MONAI always runs float32",
    )
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    os.environ["BENCH_VOLUME"] = args.volume
    global VOLUME
    VOLUME = args.volume
    if args.child:
        kind = args.child[0]
        if kind == "memory":
            result = run_memory(int(args.child[1]), args.preset, args.device, args.batch, args.roi)
        else:
            result = run_method(
                kind,
                args.preset,
                args.device,
                args.batch,
                args.roi,
                args.overlap,
                args.amp,
                args.precision,
            )
        print(json.dumps(result))
        return
    common = [
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--batch",
        str(args.batch),
        "--roi",
        str(args.roi),
        "--overlap",
        str(args.overlap),
        "--volume",
        args.volume,
    ] + (["--amp"] if args.amp else [])
    common += ["--precision", args.precision] if args.precision else []
    if args.memory:
        for size in (256, 512):
            r = in_child("memory", str(size), *common)
            print(
                f"{size}^3 volume ({r['volume_mib']:.0f} MiB float32): "
                f"{r['stats']['windows_run']}/{r['stats']['windows']} windows, "
                f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB"
                + (
                    f", peak device memory {r['peak_device_mib']:.0f} MiB"
                    if r["peak_device_mib"]
                    else ""
                ),
                flush=True,
            )
        return
    monai = in_child("monai", *common)
    batched = in_child("monai-batched", *common)
    ours = in_child("ours", *common)
    _, mask = brain_volume()
    a = np.load("/tmp/bench_inference_monai.npy")
    b = np.load("/tmp/bench_inference_ours.npy")
    diff = float(np.abs(a - b)[mask].max())
    rate = {k: r["voxels"] / r["seconds"] for k, r in (("monai", monai), ("ours", ours))}
    print(
        f"device {args.device}, preset {args.preset}, ROI {args.roi}^3, overlap "
        f"{args.overlap}, {'float16 autocast' if args.amp else 'float32'}"
        f"{f', napari-medood at --precision {args.precision}' if args.precision else ''}, volume "
        f"{args.volume} ({monai['voxels'] / 1e6:.1f} M voxels)"
    )
    mean = float(np.abs(a - b)[mask].mean())
    limit = "must be < 1e-5" if args.precision in (None, "float32") else "reduced precision"
    print(f"max |difference| inside the brain: {diff:.2e}, mean {mean:.2e} ({limit})")
    print(
        f"MONAI sliding_window_inference (1 window/pass): {monai['seconds']:.2f} s, "
        f"{rate['monai'] / 1e6:.2f} M voxels/s, peak RSS {monai['peak_rss_mib']:.0f} MiB"
        + (f", device {monai['peak_device_mib']:.0f} MiB" if monai["peak_device_mib"] else "")
    )
    print(
        f"MONAI with sw_batch_size={args.batch}: {batched['seconds']:.2f} s, "
        f"{batched['voxels'] / batched['seconds'] / 1e6:.2f} M voxels/s"
    )
    print(
        f"napari-medood ({ours['stats']['windows_run']}/{ours['stats']['windows']} windows, "
        f"{args.batch}/pass): {ours['seconds']:.2f} s, {rate['ours'] / 1e6:.2f} M voxels/s, "
        f"peak RSS {ours['peak_rss_mib']:.0f} MiB"
        + (f", device {ours['peak_device_mib']:.0f} MiB" if ours["peak_device_mib"] else "")
    )
    print(
        f"speed-up: {rate['ours'] / rate['monai']:.2f}x over plain MONAI, "
        f"{batched['seconds'] / ours['seconds']:.2f}x over batched MONAI"
    )
    print(
        json.dumps(
            {
                "speedup": rate["ours"] / rate["monai"],
                "max_diff": diff,
                "mean_diff": mean,
                "peak_rss_mib": ours["peak_rss_mib"],
                "monai_peak_rss_mib": monai["peak_rss_mib"],
            }
        )
    )


if __name__ == "__main__":
    main()
