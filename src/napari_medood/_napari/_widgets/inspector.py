"""The "Anomaly inspector" panel: where the chosen scan sits in the world.

It follows the scan chosen in its layer list and shows its file, voxels, spacing,
orientation, field of view and intensities. It is the first tab of the MedOOD dock
(``main.py``) and can be opened on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

from napari_medood._napari._layers import METADATA_KEY, layer_data_to_volume
from napari_medood._napari._roles import SCAN
from napari_medood._napari._widgets._panel import ElidedLabel, Panel, wrapping_label
from napari_medood._napari._widgets._pickers import LayerComboBox
from napari_medood.io.volume import Volume

if TYPE_CHECKING:
    import napari

_MAX_STAT_VOXELS = 1_000_000


def layer_volume(layer: Any) -> Volume:
    """The Volume behind a 3D napari layer (source geometry when the plugin made the layer)."""
    return layer_data_to_volume(layer.data, layer.as_layer_data_tuple()[1])


def _fmt(values: Any, digits: int = 2, sep: str = " x ") -> str:
    def one(value: Any) -> str:
        text = f"{float(value):.{digits}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text

    return sep.join(one(v) for v in values)


def describe_volume(volume: Volume, metadata: dict | None = None) -> list[tuple[str, str]]:
    """Rows of (label, text) describing a scan's geometry and intensities."""
    info = (metadata or {}).get(METADATA_KEY, {})
    meta = {**info.get("meta", {}), **volume.meta}
    grid = volume.grid
    rows = [
        ("File", str(volume.source) if volume.source else "not from a file"),
        ("Format", str(meta.get("format", "unknown")).upper() if meta.get("format") else "-"),
        ("Voxels", _fmt(grid.shape, 0)),
        ("Spacing", _fmt(grid.spacing) + " mm"),
        ("Field of view", _fmt(np.asarray(grid.shape) * np.asarray(grid.spacing), 1) + " mm"),
        ("Stored axes", "".join(grid.axcodes) + " (array axes point to)"),
        ("Origin (RAS)", _fmt(grid.origin, 1, ", ") + " mm"),
    ]
    tilt = grid.obliquity_degrees
    if tilt > 1e-3 or not grid.is_orthogonal:
        shear = "" if grid.is_orthogonal else ", sheared grid"
        rows.append(("Obliquity", f"{tilt:.1f} degrees{shear}: 2D slices ignore the tilt"))
    data = volume.data
    step = max(1, int(np.ceil(data.size / _MAX_STAT_VOXELS)))
    sample = np.asarray(data).ravel()[::step]
    if sample.dtype.kind in "biuf" and sample.size:
        low, p1, p99, high = np.percentile(sample, [0, 1, 99, 100])
        rows.append(
            ("Intensities", f"{data.dtype}, {low:g} .. {high:g} (1st-99th pct {p1:g} .. {p99:g})")
        )
    credit = (metadata or {}).get("attribution") or meta.get("attribution")
    if credit:
        rows.append(("Credit", str(credit)))
    return rows


class AnomalyInspector(Panel):
    """Dock panel: pick a scan and see its geometry and intensities."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from napari.layers import Image, Labels

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-anomaly-inspector")
        layout = QVBoxLayout(self.body)
        picker = QFormLayout()
        self.layer_combo = LayerComboBox(napari_viewer, (Image, Labels), self, roles=(SCAN,))
        self.layer_combo.setToolTip("the layer whose file, grid and intensities are shown below")
        picker.addRow("Scan", self.layer_combo)
        layout.addLayout(picker)
        self.scan_form = QFormLayout()
        self.scan_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        layout.addLayout(self.scan_form)
        layout.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._show_scan)
        self._show_scan()

    def scan_rows(self) -> dict[str, str]:
        """What the panel shows now, label -> full text (also of elided rows)."""
        rows = {}
        for row in range(self.scan_form.rowCount()):
            label = self.scan_form.itemAt(row, QFormLayout.ItemRole.LabelRole)
            field = self.scan_form.itemAt(row, QFormLayout.ItemRole.FieldRole)
            if label is not None and field is not None:
                value = field.widget()
                text = value.full_text() if isinstance(value, ElidedLabel) else value.text()
                rows[label.widget().text()] = text
        return rows

    def _show_scan(self, *args: Any) -> None:
        while self.scan_form.rowCount():
            self.scan_form.removeRow(0)
        layer = self.layer_combo.current_layer()
        if layer is None:
            self.scan_form.addRow(
                QLabel("No scan"),
                wrapping_label("open a 3D scan (File > Open) or File > Open Sample > MedOOD"),
            )
            return
        try:
            rows = describe_volume(layer_volume(layer), layer.metadata)
        except ValueError as exc:
            rows = [("Not a 3D scan", str(exc))]
        for name, text in rows:
            # a path has no spaces to wrap at: elide it (the tooltip holds all of it)
            value = ElidedLabel(text) if name == "File" else wrapping_label(text)
            self.scan_form.addRow(QLabel(name), value)
