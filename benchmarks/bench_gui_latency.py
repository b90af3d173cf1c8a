"""How long the napari window stops answering while the Detect panel runs and shows a result.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_gui_latency.py [--runs 3]

A 5 ms QTimer ticks on the GUI thread; a gap between ticks is a freeze. Per run: the time
the Run button's handler takes, the largest gap from pressing Run until the result arrives
(reading the layers, the detector, preparing the layers: all off the GUI thread), and the
largest gap while the result is shown (its layers are added one per turn of the event loop,
and its table of findings listed), and the largest gap while the threshold slider is moved
through five values, each drawing the flagged voxels and listing the findings again (in a
worker) once the slider rests.
The baseline, measured in the same run: napari's own insertion and first drawing of a bare
layer of the same kind (an inferno Image). Python's cyclic garbage collector is frozen while
measuring, as its pauses stop every thread whatever runs.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="brain-t1-unet")
    args = parser.parse_args()

    import napari
    from napari.layers import Image
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_medood._napari._widgets._viewer import placement_of
    from napari_medood.detectors import get_detector

    def settle(seconds: float) -> None:
        """Run the real event loop for a while (as a user's napari does)."""
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = args.model
    get_detector(args.model, device="cpu")  # torch is imported before anything is timed
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

    def largest_gap(start: float, stop: float = float("inf")) -> float:
        inside = [t for t in ticks if start <= t <= stop]
        return float(np.diff(inside).max()) if len(inside) > 1 else 0.0

    rows = []
    for _ in range(args.runs):
        gc.collect()
        gc.freeze()
        settle(0.3)
        bare = Image(
            np.random.rand(*scan.data.shape).astype(np.float32),
            colormap="inferno",
            blending="additive",
            contrast_limits=(0, 1),
            **placement_of(scan),
        )
        before = time.perf_counter()
        viewer.layers.append(bare)
        settle(0.4)
        floor = largest_gap(before - 0.1)
        viewer.layers.remove(bare)
        settle(0.3)
        arrived: list[float] = []
        show = widget._show
        widget._show = lambda outcome, show=show, arrived=arrived: (
            arrived.append(time.perf_counter()),
            show(outcome),
        )
        clicked = time.perf_counter()
        widget.run()
        pressed = time.perf_counter() - clicked
        while widget.busy or widget.findings_busy:
            settle(0.05)
        settle(1.0)
        widget._show = show
        during = largest_gap(clicked - 0.1, arrived[0] - 0.001)
        after = largest_gap(arrived[0] - 0.01)
        listed = len(widget.findings_table.findings)
        # the slider moved by hand: five thresholds around the map's high values
        moved = time.perf_counter()
        top = float(np.asarray(widget.map_layer.data).max())
        for share in (0.5, 0.6, 0.7, 0.8, 0.9):
            widget.slider.setValue(int(round(share * top * 1000)))
            settle(0.05)
        while widget.findings_busy:
            settle(0.05)
        settle(0.5)
        sliding = largest_gap(moved)
        gc.unfreeze()
        rows.append((pressed, during, after, sliding, floor))
        print(
            f"Run press {pressed * 1000:.0f} ms; largest gap during the run {during * 1000:.0f} ms; "
            f"while showing the result and its {listed} findings {after * 1000:.0f} ms; "
            f"moving the slider (findings listed again) {sliding * 1000:.0f} ms; "
            f"napari's bare layer insertion {floor * 1000:.0f} ms (ratio {after / floor:.2f})",
            flush=True,
        )
    worst = np.max(np.asarray(rows), axis=0)
    print(
        f"worst of {args.runs}: press {worst[0] * 1000:.0f} ms, during {worst[1] * 1000:.0f} ms, "
        f"showing {worst[2] * 1000:.0f} ms, slider {worst[3] * 1000:.0f} ms, "
        f"napari floor {worst[4] * 1000:.0f} ms"
    )
    timer.stop()
    viewer.close()


if __name__ == "__main__":
    main()
