"""Screenshots for the README, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python tools/make_screenshots.py

Writes docs/images/napari-inspector.png: the bundled IXI sample opened through the plugin,
an axial slice, and the Anomaly inspector dock.
"""

from __future__ import annotations

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 850)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    viewer.layers.selection.active = scan
    viewer.dims.set_point(0, viewer.dims.range[0].start + 52 * 2.0)
    viewer.window.add_plugin_dock_widget("napari-medood", "Anomaly inspector")
    viewer.reset_view()
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / "napari-inspector.png"), canvas_only=False, flash=False)
    viewer.close()
    print(f"wrote {OUT / 'napari-inspector.png'}")


if __name__ == "__main__":
    main()
