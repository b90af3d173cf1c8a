"""Screenshots for the README, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python tools/make_screenshots.py

Writes docs/images/napari-inspector.png (the bundled IXI sample opened through the plugin,
an axial slice, and the Anomaly inspector dock) and docs/images/napari-playground.png (the
Anomaly playground with two committed anomalies and a pending preview) and
docs/images/napari-detect.png (the shipped model finding an anomaly made in the playground).
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def inspector() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 850)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    viewer.layers.selection.active = scan
    viewer.dims.set_point(0, viewer.dims.range[0].start + 52 * 2.0)
    viewer.window.add_plugin_dock_widget("napari-medood", "Anomaly inspector")
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-inspector.png"), canvas_only=False, flash=False)
    viewer.close()


def playground() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Anomaly playground")
    for kind, voxel, size in (
        ("lesion", (66, 72, 28), 50.0),
        ("sphere", (66, 80, 64), 22.0),
        ("brush", (66, 40, 58), 36.0),
    ):
        widget.shape_combo.setCurrentIndex(widget.shape_combo.findData(kind))
        widget.size_spin.setValue(size)
        widget.place(voxel)
        while widget._worker is not None:
            settle(0.1)
        if kind != "brush":
            widget.commit()
    viewer.dims.set_point(0, scan.data_to_world((66, 0, 0))[0])
    viewer.layers.selection.active = widget._labels_layer
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-playground.png"), canvas_only=False, flash=False)
    viewer.close()


def detect() -> None:
    """The shipped model on the sample with an implanted lesion-shaped anomaly."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, playground_widget = viewer.window.add_plugin_dock_widget(
        "napari-medood", "Anomaly playground"
    )
    playground_widget.shape_combo.setCurrentIndex(playground_widget.shape_combo.findData("sphere"))
    playground_widget.size_spin.setValue(22.0)
    playground_widget.alpha_spin.setValue(1.0)
    playground_widget.texture_combo.setCurrentIndex(
        playground_widget.texture_combo.findData("noise")
    )
    playground_widget.place((66, 70, 30))
    while playground_widget._worker is not None:
        settle(0.1)
    playground_widget.commit()
    corrupted = playground_widget._image_layer
    playground_widget._labels_layer.visible = False
    scan.visible = False
    viewer.window.remove_dock_widget(playground_widget.parent() or playground_widget)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Detect anomalies")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText(corrupted.name))
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    widget.run()
    while widget._worker is not None:
        settle(0.2)
    widget.slider.setValue(50)
    viewer.dims.set_point(0, scan.data_to_world((66, 0, 0))[0])
    viewer.layers.selection.active = widget.map_layer
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-detect.png"), canvas_only=False, flash=False)
    viewer.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    inspector()
    playground()
    detect()
    print(f"wrote the screenshots to {OUT}")


if __name__ == "__main__":
    main()
