"""The MedOOD dock: every panel in one dock, as tabs (Scan, Detect, Compare, Trust,
Playground, Evaluate).

One dock keeps the window within the screen however many tools are in use; each panel also
opens on its own from the Plugins menu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QTabWidget, QWidget

if TYPE_CHECKING:
    import napari


class MedoodDock(QTabWidget):
    """The plugin's home: the inspector, Detect, Compare, Trust, the playground and Evaluate
    as tabs."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from napari_medood._napari._widgets.compare import CompareWidget
        from napari_medood._napari._widgets.detect import DetectWidget
        from napari_medood._napari._widgets.evaluate import EvaluateWidget
        from napari_medood._napari._widgets.inspector import AnomalyInspector
        from napari_medood._napari._widgets.playground import PlaygroundWidget
        from napari_medood._napari._widgets.trust import TrustWidget

        super().__init__(parent)
        self.setObjectName("medood-dock")
        self.setDocumentMode(True)
        self.inspector = AnomalyInspector(napari_viewer)
        self.detect = DetectWidget(napari_viewer)
        self.compare = CompareWidget(napari_viewer)
        self.playground = PlaygroundWidget(napari_viewer)
        self.evaluate = EvaluateWidget(napari_viewer)
        self.trust = TrustWidget(napari_viewer)
        self.addTab(self.inspector, "Scan")
        self.addTab(self.detect, "Detect")
        self.addTab(self.compare, "Compare")
        self.addTab(self.trust, "Trust")
        self.addTab(self.playground, "Playground")
        self.addTab(self.evaluate, "Evaluate")
        self.setCurrentWidget(self.detect)
