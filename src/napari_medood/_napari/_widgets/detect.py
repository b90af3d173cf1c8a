"""The "Detect anomalies" dock widget: run a detector on a scan and look at where it fires.

Choose the scan (an Image layer), its brain mask (optional), the model (a shipped one, a
baseline, or a checkpoint folder), the device and the window overlap; Run works off the GUI
thread with a progress bar and a Cancel button. The result is an anomaly-map layer over the
scan (inferno colormap, additive blending), its sample score (shown and kept in the layer's
metadata), and a threshold slider that makes a Labels layer of the flagged voxels.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._widgets._common import (
    LayerComboBox,
    pick_matching_mask,
    placement_of,
    progress_generator,
    show_labels,
)

if TYPE_CHECKING:
    import napari

BROWSE = "__browse__"


class DetectWidget(QWidget):
    """Dock widget over the detectors (``napari_medood.detectors``)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from napari.layers import Image, Labels

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-detect")
        self.map_layer = None
        self.threshold_layer = None
        self.last_result = None
        self.last_error: str | None = None
        self._worker = None
        self._cancel = threading.Event()

        self.image_combo = LayerComboBox(napari_viewer, (Image,), self)
        self.mask_combo = LayerComboBox(napari_viewer, (Labels,), self, none_label="Otsu head mask")
        self.model_combo = QComboBox()
        self.card_label = QLabel("")
        self.card_label.setWordWrap(True)
        self.device_combo = QComboBox()
        self.overlap_spin = QDoubleSpinBox(minimum=0.0, maximum=0.9, value=0.5, singleStep=0.05)
        self.replace_check = QCheckBox("replace the previous result", checked=True)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(50)
        self.slider.setEnabled(False)
        self.threshold_label = QLabel("threshold 0.50")

        form = QFormLayout()
        form.addRow("Scan", self.image_combo)
        form.addRow("Brain mask", self.mask_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.card_label)
        form.addRow("Device", self.device_combo)
        form.addRow("Window overlap", self.overlap_spin)
        form.addRow("", self.replace_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        threshold = QHBoxLayout()
        threshold.addWidget(self.slider, 1)
        threshold.addWidget(self.threshold_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("Flag voxels above"))
        layout.addLayout(threshold)
        layout.addStretch(1)

        self._fill_models()
        self._fill_devices()
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.image_combo.currentIndexChanged.connect(self._pick_matching_mask)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.slider.valueChanged.connect(self._threshold_changed)
        self._pick_matching_mask()
        self._model_changed()

    # ------------------------------------------------------------------------- choices
    def _fill_models(self) -> None:
        from napari_medood.detectors import available_models, default_model

        default = default_model()
        for name, description in available_models().items():
            self.model_combo.addItem(name, name)
            self.model_combo.setItemData(
                self.model_combo.count() - 1, description, Qt.ItemDataRole.ToolTipRole
            )
        self.model_combo.addItem("Browse for a checkpoint...", BROWSE)
        self.model_combo.setCurrentIndex(self.model_combo.findData(default))

    def _fill_devices(self) -> None:
        import importlib.util

        self.device_combo.addItem("auto", "auto")
        self.device_combo.addItem("cpu", "cpu")
        if importlib.util.find_spec("torch") is not None:
            import torch

            if torch.cuda.is_available():
                self.device_combo.addItem(f"cuda ({torch.cuda.get_device_name()})", "cuda")
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                self.device_combo.addItem("mps", "mps")

    def _pick_matching_mask(self, *args: Any) -> None:
        pick_matching_mask(self.mask_combo, self.image_combo.current_layer())

    def _model_changed(self, *args: Any) -> None:
        from napari_medood.models.checkpoint import read_card, resolve_model

        if self.model_combo.currentData() == BROWSE:
            folder = QFileDialog.getExistingDirectory(self, "Checkpoint folder (card.json)")
            if folder:
                self.add_checkpoint(folder)
            else:
                self.model_combo.setCurrentIndex(0)
            return
        name = self.model_combo.currentData()
        try:
            card = read_card(resolve_model(name))
        except (ValueError, OSError):
            self.card_label.setText("baseline: no training, no card")
            return
        validation = card.get("metrics", {}).get("validation", {})
        ap = validation.get("pixel_ap")
        self.card_label.setText(
            f"{card.get('description', '')}\nspacing {card['preprocessing'].get('spacing')} mm"
            + (f", validation pixel AP {ap:.3f}" if ap is not None else "")
            + (f", trained on {card['training'].get('device')}" if card.get("training") else "")
        )

    def add_checkpoint(self, folder: str) -> None:
        """Offer a checkpoint folder in the model list and select it."""
        index = self.model_combo.findData(str(folder))
        if index < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, str(folder), str(folder))
            index = self.model_combo.findData(str(folder))
        self.model_combo.setCurrentIndex(index)

    # ---------------------------------------------------------------------------- run
    def run(self) -> None:
        """Start the detector on the chosen scan, off the GUI thread."""
        from napari.qt.threading import create_worker

        from napari_medood._napari._widgets.inspector import layer_volume
        from napari_medood.detectors import get_detector

        if self._worker is not None:
            return
        source = self.image_combo.current_layer()
        try:
            if source is None:
                raise ValueError("open a scan first (File > Open, or File > Open Sample)")
            volume = layer_volume(source)
            mask_layer = self.mask_combo.current_layer()
            mask = None
            if mask_layer is not None:
                mask_volume = layer_volume(mask_layer)
                if mask_volume.shape != volume.shape:
                    raise ValueError(
                        f"the mask '{mask_layer.name}' has shape "
                        f"{mask_layer.data.shape}, the scan {source.data.shape}"
                    )
                mask = mask_volume.data > 0
            model = self.model_combo.currentData()
            device = self.device_combo.currentData()
            overlap = self.overlap_spin.value()
        except ValueError as exc:
            self._fail(exc)
            return

        def detect(progress, cancelled):
            detector = get_detector(model, device=device, overlap=overlap)
            return detector.predict(volume, mask, progress=progress, cancelled=cancelled)

        self._cancel = threading.Event()
        self._source = source
        self._model = model
        self.status.setText(f"running {model}...")
        self.progress_bar.setRange(0, 0)  # busy until the first report
        from napari.utils import progress

        # napari's own bar too (activity dock), closed when the worker finishes
        self._napari_progress = progress(total=0, desc=f"Detect anomalies: {model}")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._worker = create_worker(
            progress_generator,
            detect,
            cancel_event=self._cancel,
            _connect={
                "yielded": self._progress,
                "returned": self._show,
                "errored": self._fail,
                "finished": self._finished,
                "aborted": self._aborted,
            },
        )

    def cancel(self) -> None:
        """Stop the running detector after its current window."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("cancelling...")

    def _progress(self, report: tuple[int, int, str]) -> None:
        done, total, message = report
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status.setText(f"{self._model}: {message} {done}/{total}")
        bar = getattr(self, "_napari_progress", None)
        if bar is not None:
            bar.total = max(total, 1)
            bar.n = done
            bar.refresh()

    def _finished(self) -> None:
        self._worker = None
        bar = getattr(self, "_napari_progress", None)
        if bar is not None:
            bar.close()
            self._napari_progress = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)

    def _aborted(self) -> None:
        self.status.setText("Cancelled: no result was added.")
        self.last_error = "cancelled"

    def _fail(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from napari_medood.errors import Cancelled

        if isinstance(exc, Cancelled):
            self._aborted()
            return
        self.last_error = str(exc)
        self.status.setText(f"Could not run the detector: {exc}")
        show_error(f"Detect anomalies: {exc}")

    def _show(self, result) -> None:
        from napari_medood._napari._layers import volume_to_layer_data

        if result is None:  # quit before the end
            return
        self.last_result = result
        self.last_error = None
        source = self._source
        score = result.score
        metadata = {
            **source.metadata,
            "medood_detection": {
                "model": self._model,
                "score": score,
                "scores": result.extras.get("scores", {}),
                "source_layer": source.name,
            },
        }
        data, kwargs, _ = volume_to_layer_data(
            result.anomaly_map, "image", name=f"{source.name} anomaly ({self._model})"
        )
        kwargs.update(
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=0.8,
            metadata={**metadata, **kwargs["metadata"]},
        )
        kwargs.update(placement_of(source))  # exactly over the scan, as it is shown
        if self.replace_check.isChecked() and self.map_layer in self.viewer.layers:
            self.viewer.layers.remove(self.map_layer)
            if self.threshold_layer in self.viewer.layers:
                self.viewer.layers.remove(self.threshold_layer)
            self.threshold_layer = None
        self.map_layer = self.viewer.add_image(data, **kwargs)
        self.slider.setEnabled(True)
        text = "-" if score is None else f"{score:.3f}"
        self.status.setText(
            f"Sample score {text} (mean of the 100 highest voxels); "
            f"{result.extras.get('windows', {}).get('windows_run', '')} windows "
            f"on {result.extras.get('device', 'cpu')}."
        )
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self._threshold_changed(self.slider.value())

    # ----------------------------------------------------------------------- threshold
    @property
    def threshold(self) -> float:
        return self.slider.value() / 100.0

    def _threshold_changed(self, value: int) -> None:
        self.threshold_label.setText(f"threshold {value / 100:.2f}")
        layer = self.map_layer
        if layer is None or layer not in self.viewer.layers:
            return
        flagged = (np.asarray(layer.data) > self.threshold).astype(np.uint8)
        self.threshold_layer = show_labels(
            self.viewer,
            self.threshold_layer,
            flagged,
            layer,
            f"{self._source.name} anomalies > {self.threshold:.2f}",
        )
