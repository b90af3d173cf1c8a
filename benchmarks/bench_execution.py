"""Ways to run the shipped network on a CPU, one 96^3 window at a time, in one table.

    python benchmarks/bench_execution.py [--repeats 5] [--compile]

The window is cut from a real brain (MS patient 19's T1, in the model's space: RAS, 2 mm,
normalised in the brain). Every candidate runs the same ``brain-t1-unet`` weights on the same
window: its median seconds per window after two warm-up passes, its speed-up over torch in
float32 with the default memory layout (the baseline, in the same run), and the largest
difference of its probabilities from the baseline's. Candidates:

- torch float32: the network as trained, in the default layout (the baseline), then with
  ``channels_last_3d``, then also with its batch norms folded into the convolutions;
- torch bfloat16 autocast: the same three steps (the last is what ``--precision auto`` runs);
- ``torch.compile`` of the last (``--compile``: it compiles C++ for minutes first);
- ONNX Runtime (CPU, float32) and OpenVINO (CPU, float32, and bfloat16 as its inference
  precision hint), when those optional packages are installed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def window() -> np.ndarray:
    from napari_medood.io import read_volume
    from napari_medood.preprocessing.model_space import ModelSpace

    name = "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    volume = read_volume(
        REPO.parent / "shared" / "data" / "open-ms-lesjak-mni" / "patient19" / name
    )
    prepared = ModelSpace((2.0, 2.0, 2.0)).prepare(volume, volume.data > 0)
    image = np.zeros((96, 96, 96), np.float32)
    part = prepared.image[:96, :96, :96]
    image[: part.shape[0], : part.shape[1], : part.shape[2]] = part
    return image[None, None]


def timed(run, x, repeats: int) -> tuple[float, np.ndarray]:
    for _ in range(2):
        out = run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.asarray(out, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import torch

    from napari_medood.execution import Execution, configure_threads
    from napari_medood.models.checkpoint import load_checkpoint

    threads = configure_threads()
    x_np = window()
    x = torch.from_numpy(x_np)
    model, _ = load_checkpoint("brain-t1-unet", "cpu")

    def torch_runner(precision: str, channels_last: bool, fold: bool, compiled: bool = False):
        execution = Execution("cpu", precision, channels_last)
        net = execution.prepare(load_checkpoint("brain-t1-unet", "cpu")[0], fold_batch_norm=fold)
        forward = torch.compile(net.predict) if compiled else net.predict

        def run(batch):
            with torch.inference_mode(), execution.autocast():
                return torch.sigmoid(forward(execution.inputs(batch)).float()).numpy()

        return run

    rows = []
    candidates = [
        ("torch float32, the network as trained (baseline)", torch_runner("float32", False, False)),
        ("torch float32, channels_last_3d", torch_runner("float32", True, False)),
        (
            "torch float32, channels_last_3d, batch norms folded",
            torch_runner("float32", True, True),
        ),
        ("torch bfloat16 autocast", torch_runner("bfloat16", False, False)),
        ("torch bfloat16 autocast, channels_last_3d", torch_runner("bfloat16", True, False)),
        (
            "torch bfloat16 autocast, channels_last_3d, batch norms folded (napari-medood auto)",
            torch_runner("bfloat16", True, True),
        ),
    ]
    if args.compile:
        candidates.append(
            ("torch.compile of the last", torch_runner("bfloat16", True, True, compiled=True))
        )
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "unet.onnx"
        exported = False
        try:
            import onnx  # noqa: F401

            class Head(torch.nn.Module):
                def __init__(self, net):
                    super().__init__()
                    self.net = net

                def forward(self, batch):
                    return torch.sigmoid(self.net.predict(batch))

            torch.onnx.export(Head(model), (x,), str(onnx_path), dynamo=False, opset_version=17)
            exported = True
        except Exception as exc:  # noqa: BLE001 - an optional row
            print(f"ONNX export skipped: {type(exc).__name__}: {exc}")
        if exported:
            try:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                session = ort.InferenceSession(
                    str(onnx_path), options, providers=["CPUExecutionProvider"]
                )
                name = session.get_inputs()[0].name
                candidates.append(
                    (
                        f"ONNX Runtime {ort.__version__}, float32",
                        lambda b: session.run(None, {name: b.numpy()})[0],
                    )
                )
            except ImportError:
                pass
            try:
                import openvino as ov

                core = ov.Core()
                for hint in ("f32", "bf16"):
                    compiled_model = core.compile_model(
                        str(onnx_path),
                        "CPU",
                        {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads},
                    )
                    candidates.append(
                        (
                            f"OpenVINO {ov.__version__.split('-')[0]}, {'float32' if hint == 'f32' else 'bfloat16'}",
                            lambda b, c=compiled_model: c(b.numpy())[0],
                        )
                    )
            except ImportError:
                pass
        baseline = None
        for label, run in candidates:
            seconds, out = timed(run, x, args.repeats)
            if baseline is None:
                baseline = (seconds, out)
            diff = float(np.abs(out - baseline[1]).max())
            rows.append((label, seconds, baseline[0] / seconds, diff))
            print(
                f"{label}: {seconds:.3f} s/window, {baseline[0] / seconds:.2f}x, max |diff| {diff:.3g}",
                flush=True,
            )
    print(f"\n{threads} threads, one 96^3 window of brain-t1-unet ({torch.__version__})")
    print("| candidate | s / window | speed-up | max abs difference of probabilities |")
    print("|---|---|---|---|")
    for label, seconds, speed, diff in rows:
        print(f"| {label} | {seconds:.3f} | {speed:.2f}x | {diff:.2g} |")


if __name__ == "__main__":
    main()
