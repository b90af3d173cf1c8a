"""The "Detect anomalies" panel: run a detector on a scan and go to where it fires.

Choose the scan and its brain mask (picked by role: never a lesion mask), the model (a
shipped one, a baseline, or a checkpoint folder), where it runs, and (U-Net models) whether
it also reads the scan mirrored left-right (flip test-time augmentation). Run works off the GUI
thread in honest stages (reading the layers, the detector's own stages, preparing the
result layers) with a progress bar and a Cancel button. The panel draws what the detector
returns: an anomaly-map layer over the scan (inferno, additive, with a colour bar) and/or
its sample score. "Go to peak" takes the view to the map's highest voxel; the threshold
slider makes an orange Labels layer of the flagged voxels and says their volume in ml. What
the user should know about the scan (another contrast than the model's, no brain mask, an
oblique scan) is shown before the result. A second run replaces only the result of the same
scan with the same model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._roles import (
    ANOMALY_MAP,
    BY_PRODUCT,
    THRESHOLD,
    label_colormap,
    role_of,
    with_role,
)
from napari_medood._napari._widgets._panel import Panel, wrapping_label
from napari_medood._napari._widgets._pickers import scan_and_mask_pickers
from napari_medood._napari._widgets._runs import CancellableRun, job_volume, scan_job
from napari_medood._napari._widgets._viewer import go_to_voxel, remove_derived, show_labels
from napari_medood.execution import PRECISIONS

if TYPE_CHECKING:
    import napari

DETECTION_KEY = "medood_detection"
READING, PREPARING = "reading the layers", "preparing the result layers"
#: the families that use flip test-time augmentation (``DetectorOptions.tta``)
#: the threshold slider's steps over [0, 1]
SLIDER_STEPS = 1000
TTA_TEXT = "flip TTA (mirror left-right, ~2x time)"
TTA_TIP = (
    "flip test-time augmentation: the model also reads the scan mirrored left-right, and its "
    "map of the mirror, mirrored back, is averaged with the plain map (about twice the time)"
)


@dataclass
class DetectionOutcome:
    """What the worker hands to the GUI thread: the result and layer data ready to add."""

    result: Any
    detector_name: str
    score_text: str
    map_layer: Any = None  # a napari Image layer, built off the GUI thread, not yet added
    flagged: np.ndarray | None = None  # the voxels above the threshold, on the layer's grid
    flagged_at: float = 0.5  # that threshold (the slider's when Run was pressed)
    peak: tuple[int, int, int] | None = None
    extra_layers: list = field(default_factory=list)  # the detector's other maps, as layers


class ColourBar(QLabel):
    """The map's colours from 0 to 1, above the threshold slider, with the threshold marked:
    what a colour on the canvas means, and which colours the slider flags."""

    HEIGHT = 14

    def __init__(self, colormap: str, parent: QWidget | None = None):
        from napari.utils.colormaps import ensure_colormap

        super().__init__(parent)
        rgba = ensure_colormap(colormap).map(np.linspace(0.0, 1.0, 256))
        self._rgb = np.ascontiguousarray((rgba[:, :3] * 255).astype(np.uint8))
        self.marker = 0.5
        self.setMinimumHeight(self.HEIGHT + 12)
        self.setToolTip(f"{colormap}: 0 (left) to 1 (right); the line is the threshold")

    def set_marker(self, value: float) -> None:
        self.marker = float(value)
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        from qtpy.QtGui import QColor, QImage, QPainter, QPen

        painter = QPainter(self)
        width = max(self.width() - 1, 2)
        # copied, so that Qt never reads the numpy buffer after it is gone
        image = QImage(self._rgb.tobytes(), 256, 1, 3 * 256, QImage.Format.Format_RGB888).copy()
        painter.drawImage(self.rect().adjusted(0, 0, 0, -12).normalized(), image)
        painter.setPen(QPen(QColor("white"), 2))
        x = int(round(self.marker * width))
        painter.drawLine(x, 0, x, self.HEIGHT)
        painter.setPen(QColor(self.palette().windowText().color()))
        font = painter.font()
        font.setPointSize(7)
        painter.setFont(font)
        for value, align in (
            (0.0, Qt.AlignmentFlag.AlignLeft),
            (0.5, Qt.AlignmentFlag.AlignHCenter),
            (1.0, Qt.AlignmentFlag.AlignRight),
        ):
            painter.drawText(
                0, self.HEIGHT, self.width(), 12, align | Qt.AlignmentFlag.AlignTop, f"{value:g}"
            )
        painter.end()


class DetectWidget(CancellableRun, Panel):
    """Dock panel over the detectors (``napari_medood.detectors``)."""

    cancelled_text = "Cancelled: no result was added."
    failure_text = "Could not run the detector"
    title = "Detect anomalies"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-detect")
        self.map_layer = None
        self.threshold_layer = None
        self.last_result = None
        self.trust_report = None
        self.last_error: str | None = None
        self.notes: tuple[str, ...] = ()
        self._worker = None
        self._cancel = threading.Event()
        self._source = None
        self._model = ""
        self._checkpoints: list[str] = []
        self._pending_steps = 0

        self.image_combo, self.mask_combo = scan_and_mask_pickers(napari_viewer, self)
        # magicgui builds the value widgets of the run options
        self.model_choice = ComboBox(label="Model", choices=self._model_choices())
        self.checkpoint_edit = FileEdit(label="Checkpoint", mode="d")
        self.checkpoint_edit.tooltip = "add a checkpoint folder (card.json + model.safetensors)"
        self.device_choice = ComboBox(label="Device", choices=self._device_choices())
        self.precision_choice = ComboBox(label="Precision", choices=PRECISIONS, value="auto")
        self.precision_choice.tooltip = (
            "auto: bfloat16 on CPUs that compute it (about 3x faster), else float32; "
            "float16 on CUDA"
        )
        self.overlap_spin = FloatSpinBox(
            label="Window overlap", min=0.0, max=0.9, step=0.05, value=0.5
        )
        self.tta_check = CheckBox(text=TTA_TEXT, value=False)
        self.tta_check.tooltip = TTA_TIP
        self.options = Container(
            widgets=[
                self.model_choice,
                self.checkpoint_edit,
                self.device_choice,
                self.precision_choice,
                self.overlap_spin,
                self.tta_check,
            ]
        )
        self.options.margins = (0, 0, 0, 0)
        self.card_label = wrapping_label()
        self.notes_label = wrapping_label()
        self.notes_label.setStyleSheet("color: #ffb347;")
        self.notes_label.hide()
        self.replace_check = QCheckBox("replace this scan's result from this model", checked=True)
        self.gate_check = QCheckBox(
            "trust gate first: is the scan like the training data?", checked=True
        )
        self.gate_check.setToolTip(
            "the model's card names a feature-OOD model that checks the scan before the map"
        )
        self.gate_check.hide()
        from napari_medood._napari._widgets.trust import TrustView

        self.trust_view = TrustView()
        buttons = self.run_controls()
        self.peak_button = QPushButton("Go to peak")
        self.peak_button.setToolTip("show the slice through the map's highest voxel")
        self.peak_button.setEnabled(False)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)  # thousandths: calibrated thresholds are fine
        self.slider.setValue(SLIDER_STEPS // 2)
        self.slider.setEnabled(False)
        self.threshold_label = QLabel("threshold 0.50")
        self.calibrated: dict | None = None  # the chosen model's card calibration
        self.colour_bar = ColourBar("inferno")
        self.colour_bar.hide()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Scan", self.image_combo)
        form.addRow("Brain mask", self.mask_combo)
        threshold = QVBoxLayout()  # the slider spans the colour bar above it
        threshold.setSpacing(2)
        threshold.addWidget(self.slider)
        threshold.addWidget(self.threshold_label)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addWidget(self.options.native)
        layout.addWidget(self.card_label)
        layout.addWidget(self.gate_check)
        layout.addWidget(self.replace_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.trust_view)
        layout.addWidget(self.notes_label)
        layout.addWidget(self.peak_button)
        layout.addWidget(QLabel("Flag voxels above"))
        layout.addWidget(self.colour_bar)
        layout.addLayout(threshold)
        layout.addStretch(1)

        from napari_medood.detectors import default_model

        self.model_choice.value = default_model()
        self.model_choice.changed.connect(self._model_changed)
        self.checkpoint_edit.changed.connect(lambda value: self.add_checkpoint(value))
        self.image_combo.currentIndexChanged.connect(self._scan_changed)
        self.peak_button.clicked.connect(self.go_to_peak)
        self.slider.valueChanged.connect(self._threshold_changed)
        napari_viewer.layers.events.removed.connect(self._layer_removed)
        self._scan_changed()
        self._model_changed()

    # ------------------------------------------------------------------------- choices
    @staticmethod
    def _model_choices(extra: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        from napari_medood.detectors import available_models

        return [(name, name) for name in available_models()] + [(p, p) for p in extra]

    @staticmethod
    def _device_choices() -> list[tuple[str, str]]:
        from napari_medood.device import available_devices

        return available_devices()

    @property
    def device_combo(self):
        return self.device_choice

    def _scan_changed(self, *args: Any) -> None:
        self.mask_combo.choose_default()

    def _model_changed(self, *args: Any) -> None:
        from napari_medood.models.checkpoint import read_card, resolve_model
        from napari_medood.registry import FAMILIES, NAMED_DETECTORS, declared_outputs

        name = self.model_choice.value
        self.gate_check.hide()
        self._offer_tta(None)
        self.calibrated = None
        if name in NAMED_DETECTORS:
            self.card_label.setText(f"{NAMED_DETECTORS[name].description}. No training, no card.")
            return
        try:
            card = read_card(resolve_model(name))
        except (ValueError, OSError) as exc:
            self.card_label.setText(f"Cannot read this checkpoint: {exc}")
            return
        self._offer_tta(card.get("detector"))
        validation = card.get("metrics", {}).get("validation", {})
        ap = validation.get("pixel_ap")
        expects = card.get("expects", {})
        family = FAMILIES.get(card["detector"])
        outputs = declared_outputs(family) if family is not None else ("unknown family",)
        parts = [
            str(card.get("description", card.get("name", ""))),
            f"gives: {' + '.join(outputs)}",
        ]
        if expects.get("contrast") == "any":
            parts.append(f"for {expects.get('modality', '')} scans of any contrast".strip())
        elif expects.get("contrast"):
            parts.append(f"for {expects.get('modality', '')} {expects['contrast']} scans".strip())
        members = card.get("members")
        if isinstance(members, dict) and members:  # a fused model: what it is made of
            parts.append(
                f"fuses ({card.get('rule', 'max')}) "
                + " and ".join(f"{role} {m.get('model')}" for role, m in members.items())
            )
        spacing = card.get("preprocessing", {}).get("spacing")
        if spacing:
            parts.append(f"works at {spacing[0]:g} mm")
        if ap is not None:
            parts.append(f"validation pixel AP {ap:.3f}")
        tested = card.get("metrics", {}).get("test", {}).get("model", {})
        lesions = [
            f"{label} {tested[key]['pixel_ap']:.2f}"
            for key, label in (("ms-t1", "MS T1"), ("ms-t2", "MS T2"), ("ms-flair", "MS FLAIR"))
            if tested.get(key, {}).get("pixel_ap") is not None
        ]
        if lesions:
            parts.append("lesion AP " + ", ".join(lesions))
        if card.get("training", {}).get("device"):
            parts.append(f"trained on {card['training']['device']}")
        if card.get("gate"):
            parts.append(f"checked first by its trust gate {card['gate']}")
            self.gate_check.show()
        calibration = card.get("calibration") or {}
        if calibration.get("voxel_threshold") is not None:
            # the slider starts where the model flags the stated share of healthy voxels
            self.calibrated = dict(calibration)
            share = 100 * float(calibration.get("healthy_voxel_fpr", 0.0))
            parts.append(
                f"calibrated threshold {calibration['voxel_threshold']:.3f} "
                f"({share:g} % of healthy brain voxels above it)"
            )
            self.slider.setValue(round(float(calibration["voxel_threshold"]) * SLIDER_STEPS))
        self.card_label.setText("; ".join(parts) + ".")

    def _offer_tta(self, family: str | None) -> None:
        """Flip TTA can be chosen for the families that use it; the others would ignore it."""
        from napari_medood.registry import FAMILIES, declared_flip_tta

        usable = family in FAMILIES and declared_flip_tta(FAMILIES[family])
        self.tta_check.enabled = usable
        self.tta_check.tooltip = (
            TTA_TIP if usable else f"{TTA_TIP} (U-Net and segmenter models only)"
        )

    def add_checkpoint(self, folder: str | Path) -> None:
        """Offer a checkpoint folder in the model list and select it."""
        folder = str(folder)
        if not folder or folder == ".":
            return
        if folder not in self._checkpoints:
            self._checkpoints.append(folder)
            self.model_choice.choices = self._model_choices(tuple(self._checkpoints))
        self.model_choice.value = folder

    # ---------------------------------------------------------------------------- run
    def run(self) -> None:
        """Start the detector on the chosen scan, off the GUI thread."""
        if self._worker is not None:
            return
        source = self.image_combo.current_layer()
        mask_layer = self.mask_combo.current_layer()
        if source is None:
            self._fail(ValueError("open a scan first (File > Open, or File > Open Sample)"))
            return
        if mask_layer is not None and np.shape(mask_layer.data) != np.shape(source.data):
            self._fail(
                ValueError(
                    f"the mask '{mask_layer.name}' has shape {np.shape(mask_layer.data)}, "
                    f"the scan {np.shape(source.data)}"
                )
            )
            return
        # only references and small state are taken here: the volumes are built in the worker
        job = {
            **scan_job(source, mask_layer),
            "model": self.model_choice.value,
            "device": self.device_choice.value,
            "precision": self.precision_choice.value,
            "overlap": float(self.overlap_spin.value),
            "tta": bool(self.tta_check.value and self.tta_check.enabled),
            "gate": self.gate_check.isChecked(),
            "name": f"{source.name} anomaly ({self.model_choice.value})",
            "source_layer": source.name,
            "source_id": str(source.unique_id),
            "threshold": self.threshold,
        }
        self._source = source
        self._model = job["model"]
        self.notes = ()
        self.notes_label.hide()
        self.trust_view.hide()
        self.trust_report = None
        self.status.setText(f"{self._model}: starting...")
        self.start_run(detect_job, job, self._show)

    def _progress(self, report: tuple[int, int, str]) -> None:
        from napari_medood._napari._widgets.trust import TrustNotice

        done, total, message = report
        if isinstance(message, TrustNotice):  # the verdict comes before the map
            self.trust_report = message.report
            self.trust_view.show_report(message.report, message.picture)
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            text = f"{message}: {done}/{total}"
        else:
            self.progress_bar.setRange(0, 0)
            text = message
        self.status.setText(f"{self._model}: {text}")

    def _show(self, outcome: DetectionOutcome | None) -> None:
        from napari.utils.notifications import show_warning

        if outcome is None:  # quit before the end
            return
        result = outcome.result
        self.last_result = result
        self.last_error = None
        self.notes = tuple(result.notes)
        trust = result.extras.get("trust")
        # the gate's verdict has its own place above; the list holds the other notes
        listed = [n for n in self.notes if trust is None or n != trust.verdict()]
        if listed:
            self.notes_label.setText("Before you read this result:\n- " + "\n- ".join(listed))
            self.notes_label.show()
        if self.notes:
            show_warning(f"Detect anomalies ({outcome.detector_name}): " + " ".join(self.notes))
        source = self._source
        self.status.setText(outcome.score_text)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        if outcome.map_layer is None or source not in self.viewer.layers:
            if self.replace_check.isChecked():
                self.remove_results(source, self._model)
            self.map_layer = None
            self.peak_button.setEnabled(False)
            self.slider.setEnabled(False)
            return
        self._peak = outcome.peak
        # Each step that makes napari build a visual runs in its own turn of the event
        # loop, so that the window keeps responding while the result appears.
        previous = self.find_result(source, self._model) if self.replace_check.isChecked() else None
        self._run_steps(
            [
                lambda: self._place_map(outcome, source, previous),
                lambda: self._show_flagged_volume(outcome.flagged, outcome.flagged_at),
                lambda: self._place_extras(outcome, source),
            ]
        )

    def _place_map(self, outcome: DetectionOutcome, source: Any, previous: Any) -> None:
        layer = outcome.map_layer
        if previous is not None and previous.data.shape == layer.data.shape:
            # the same scan and model again: the existing layer takes the new map
            previous.data = layer.data
            previous.metadata = layer.metadata
            previous.name = layer.name
            self.map_layer = previous
            threshold = [
                x
                for x in self.viewer.layers
                if x.metadata.get("medood_derived_from") == str(previous.unique_id)
            ]
            self.threshold_layer = threshold[0] if threshold else None
        else:
            if previous is not None:
                self.viewer.layers.remove(previous)
            self.viewer.layers.append(layer)
            self.map_layer = layer
            self.threshold_layer = None
        self.peak_button.setEnabled(outcome.peak is not None)
        self.slider.setEnabled(True)
        self.colour_bar.show()

    def _place_extras(self, outcome: DetectionOutcome, source: Any) -> None:
        """The detector's other maps (a diffusion model's reconstructions, their mean and
        spread, its residual and distance maps), hidden under the anomaly map; those of an
        earlier run of the same model on the same scan make way for them."""
        if self.replace_check.isChecked():
            for layer in self.extras_of(source, self._model):
                self.viewer.layers.remove(layer)
        layers = self.viewer.layers
        for layer in outcome.extra_layers:
            # under the anomaly map (and its threshold layer), where the slider acts
            below = layers.index(self.map_layer) if self.map_layer in layers else len(layers)
            layers.insert(below, layer)

    def extras_of(self, source: Any, model: str) -> list[Any]:
        """The extra layers of ``model``'s results on ``source``."""
        key = str(source.unique_id)
        return [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get(DETECTION_KEY, {}).get("extra")
            and layer.metadata[DETECTION_KEY].get("source_id") == key
            and layer.metadata[DETECTION_KEY].get("model") == model
        ]

    def results_of(self, source: Any, model: str) -> list[Any]:
        """The map layers of ``model``'s results on ``source``."""
        key = str(source.unique_id)
        return [
            layer
            for layer in self.viewer.layers
            if role_of(layer) == ANOMALY_MAP
            and not layer.metadata.get(DETECTION_KEY, {}).get("extra")
            and layer.metadata.get(DETECTION_KEY, {}).get("source_id") == key
            and layer.metadata.get(DETECTION_KEY, {}).get("model") == model
        ]

    def find_result(self, source: Any, model: str) -> Any | None:
        """The newest map layer of ``model``'s result on ``source``, if there is one."""
        found = self.results_of(source, model)
        return found[-1] if found else None

    def remove_results(self, source: Any, model: str) -> int:
        """Remove the results of ``model`` on ``source`` (their maps, threshold layers and
        extra layers)."""
        old = self.results_of(source, model)
        for layer in [*old, *self.extras_of(source, model)]:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)  # its threshold layers go with it
        return len(old)

    def _layer_removed(self, event: Any) -> None:
        layer = event.value
        if role_of(layer) == ANOMALY_MAP:
            remove_derived(self.viewer, layer)
        if layer is self.map_layer:
            self.map_layer = None
            self.threshold_layer = None
            self.slider.setEnabled(False)
            self.peak_button.setEnabled(False)

    def go_to_peak(self) -> None:
        """Show the slice through the map's highest voxel, centred."""
        if self.map_layer is None or getattr(self, "_peak", None) is None:
            return
        go_to_voxel(self.viewer, self.map_layer, self._peak)
        self.map_layer.visible = True

    # ----------------------------------------------------------------------- threshold
    @property
    def threshold(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def _threshold_text(self, millilitres: float | None = None) -> str:
        """``threshold 0.177 (calibrated: 1 % of healthy brain voxels): 12.3 ml``."""
        text = f"threshold {self.threshold:.3f}"
        calibration = self.calibrated
        if calibration is not None and (
            abs(self.threshold - float(calibration["voxel_threshold"])) < 0.5 / SLIDER_STEPS
        ):
            share = 100 * float(calibration.get("healthy_voxel_fpr", 0.0))
            if self._calibration_holds():
                text += f" (calibrated: {share:g} % of healthy brain voxels)"
            else:
                text += " (the model's calibrated threshold; it does not hold for this map)"
        return text if millilitres is None else f"{text}: {millilitres:.1f} ml"

    def _calibration_holds(self) -> bool:
        """Was the map shown read against the chosen model's calibration? (Before any run:
        yes. Not for a map made without a brain mask on a whole head, with TTA, or by
        another model.)"""
        layer = self.map_layer
        if layer is None or layer not in self.viewer.layers:
            return True
        detection = layer.metadata.get(DETECTION_KEY, {})
        return (
            detection.get("calibration") is not None
            and detection.get("model") == self.model_choice.value
        )

    def _show_flagged_volume(self, flagged: np.ndarray | None, flagged_at: float) -> None:
        """The volume above the threshold, before any Labels layer is made."""
        layer = self.map_layer
        if layer is None or flagged is None:
            return
        moved = abs(flagged_at - self.threshold) > 1e-9  # the slider moved during the run
        if moved or (
            self.threshold_layer is not None and self.threshold_layer in self.viewer.layers
        ):
            self._threshold_changed(self.slider.value())  # the layer follows the slider
            return
        self.threshold_label.setText(self._threshold_text(self._millilitres(flagged, layer)))

    @staticmethod
    def _millilitres(flagged: np.ndarray, layer: Any) -> float:
        return float(np.count_nonzero(flagged)) * float(np.prod(np.abs(layer.scale))) / 1000

    def _threshold_changed(self, value: int) -> None:
        """Moving the slider makes (or updates) the Labels layer of the flagged voxels."""
        self.threshold_label.setText(self._threshold_text())
        self.colour_bar.set_marker(value / SLIDER_STEPS)
        layer = self.map_layer
        if layer is None or layer not in self.viewer.layers:
            return
        flagged = (np.asarray(layer.data) > self.threshold).astype(np.uint8)
        millilitres = self._millilitres(flagged, layer)
        self.threshold_label.setText(self._threshold_text(millilitres))
        source_name = layer.metadata.get(DETECTION_KEY, {}).get("source_layer", layer.name)
        self.threshold_layer = show_labels(
            self.viewer,
            self.threshold_layer,
            flagged,
            layer,
            f"{source_name} anomalies > {self.threshold:.3f}",
            with_role(layer.metadata, THRESHOLD, derived_from=layer.unique_id),
            colormap=label_colormap(THRESHOLD),
        )


#: a detector's extra maps (``extras["maps"]``) as layers: name, role, colormap
EXTRA_MAPS = {
    "mhd": ("MHD map", ANOMALY_MAP, "inferno"),
    "residual": ("residual", ANOMALY_MAP, "inferno"),
    "mahalanobis": ("raw distance", BY_PRODUCT, "magma"),
    "mean": ("recon mean", BY_PRODUCT, "gray"),
    "std": ("recon std", BY_PRODUCT, "viridis"),
    "reconstructions": ("reconstructions", BY_PRODUCT, "gray"),
}


def with_leading_axis(placement: dict[str, Any]) -> dict[str, Any]:
    """The placement of a 3D layer for a 4D stack of such volumes (the new first axis is
    the stack's index: one napari slider)."""
    out = dict(placement)
    if "scale" in out:
        out["scale"] = (1.0, *out["scale"])
    if "translate" in out:
        out["translate"] = (0.0, *out["translate"])
    for key in ("rotate", "affine"):
        if key in out and out[key] is not None:
            matrix = np.asarray(out[key], dtype=float)
            grown = np.eye(matrix.shape[0] + 1)
            grown[1:, 1:] = matrix
            out[key] = grown
    if "shear" in out and out["shear"] is not None:
        shear = list(np.asarray(out["shear"], dtype=float).ravel())
        out["shear"] = [0.0, 0.0, 0.0, *shear]  # the new axis shears nothing
    if "units" in out:
        out["units"] = ("pixel", *out["units"])
    if "axis_labels" in out:
        out["axis_labels"] = ("reconstruction", *out["axis_labels"])
    return out


def extra_layers(result: Any, job: dict, map_kwargs: dict) -> list:
    """The result's other maps as hidden napari layers placed exactly over the scan."""
    from napari.layers import Image

    from napari_medood._napari._layers import METADATA_KEY, to_display

    maps = result.extras.get("maps") or {}
    main = result.extras.get("variant")
    placement = {k: v for k, v in job["state"].items() if k != "metadata"}
    # a 3D extra is saved like the map: in the source's voxel order, with its exact affine
    source_volume = map_kwargs["metadata"].get(METADATA_KEY)
    layers = []
    # a family's own maps (a fused model's members) come with their labels
    labels = result.extras.get("map_labels") or {}
    known = {
        **EXTRA_MAPS,
        **{k: (str(v), ANOMALY_MAP, "inferno") for k, v in labels.items() if k not in EXTRA_MAPS},
    }
    for key, (label, role, colormap) in known.items():
        if key == main or key not in maps:
            continue
        values = np.asarray(maps[key], dtype=np.float32)
        grid = result.anomaly_map
        if values.ndim == 4:
            data = np.stack([to_display(grid.with_data(v))[0] for v in values])
            where = with_leading_axis(placement)
        else:
            data = to_display(grid.with_data(values))[0]
            where = placement
        if key in ("reconstructions", "mean"):
            high = 1.0  # in the model space's normalised intensities, [0, 1]
        else:
            high = float(np.percentile(data[data > 0], 99.5)) if (data > 0).any() else 1.0
        metadata = with_role(
            {
                DETECTION_KEY: {
                    "model": job["model"],
                    "source_id": job["source_id"],
                    "source_layer": job["source_layer"],
                    "extra": key,
                }
            },
            role,
        )
        if values.ndim == 3 and source_volume is not None:
            metadata[METADATA_KEY] = source_volume
        layers.append(
            Image(
                data,
                # what it is first: the layer list elides the middle of long names
                name=f"{label}: {job['source_layer']}",
                colormap=colormap,
                contrast_limits=(0.0, max(high, 1e-6)),
                blending="additive" if role == ANOMALY_MAP else "translucent",
                visible=False,
                metadata=metadata,
                **where,
            )
        )
    return layers


def detect_job(job: dict, progress=None, cancelled=None) -> DetectionOutcome:
    """The whole run, off the GUI thread: layers to volumes, the detector, layer data back."""
    from napari_medood._napari._layers import volume_to_layer_data
    from napari_medood._progress import check_cancelled
    from napari_medood.detectors import get_detector

    def say(message: str) -> None:
        if progress is not None:
            progress(0, 0, message)

    say(READING)
    volume, mask = job_volume(job)
    check_cancelled(cancelled)
    say(f"loading {job['model']}")
    detector = get_detector(
        job["model"],
        device=job["device"],
        overlap=job["overlap"],
        precision=job["precision"],
        gate=job.get("gate", True),
        tta=job.get("tta", False),
    )
    trust = None
    if detector.gate_name is not None:
        from napari_medood._napari._widgets.trust import TrustNotice
        from napari_medood.detectors.base import foreground_of

        say(f"trust gate {detector.gate_name}: is this scan like the training data?")
        trust = detector.trust(volume, foreground_of(volume, mask), cancelled)
        if trust is not None and progress is not None:
            progress(0, 0, TrustNotice.of(trust))
    result = detector.predict(volume, mask, progress=progress, cancelled=cancelled, trust=trust)
    check_cancelled(cancelled)
    say(PREPARING)
    from napari_medood.detectors.base import score_info_of

    calibration = result.extras.get("calibration")
    # a map not read against the card's calibration keeps the family's own score
    info = score_info_of(detector) if calibration is not None else detector.score_info
    healthy = " and ".join(f"{v:.1f}" for v in (calibration or {}).get("healthy_flagged_ml", []))
    if result.score is None:
        score_text = "No sample score."
    elif calibration is not None and "sample_score" in calibration:
        # the calibrated score, said in the volumes it is made of
        score_text = (
            f"Sample score {result.score:.3f}: {calibration['flagged_ml']:.1f} ml above the "
            f"calibrated threshold, against {healthy} ml in healthy scans (0.5 = as much as "
            "an average healthy brain; higher = more abnormal)."
        )
    else:
        score_text = f"Sample score {result.score:.3f}: {info.describe()}."
        if calibration is not None:
            score_text += f" {calibration['flagged_ml']:.1f} ml above the calibrated threshold" + (
                f" (healthy scans: {healthy} ml)." if healthy else "."
            )
    members = result.extras.get("members") or {}
    if members:  # a fused model: each member's own reading beside the fused one
        score_text += (
            " "
            + "; ".join(
                f"{role} ({m['model']}): {m['flagged_ml']:.1f} ml above its threshold, "
                f"score {m['score']:.3f}"
                for role, m in members.items()
            )
            + "."
        )
    outcome = DetectionOutcome(result, detector.name, score_text)
    if result.anomaly_map is not None:
        state_metadata = job["state"]["metadata"]
        metadata = with_role(
            {
                **state_metadata,
                DETECTION_KEY: {
                    "model": job["model"],
                    "score": result.score,
                    "scores": result.extras.get("scores", {}),
                    "source_layer": job["source_layer"],
                    "source_id": job["source_id"],
                    "notes": list(result.notes),
                    "precision": result.extras.get("precision"),
                    "tta": result.extras.get("tta"),
                    # the card's calibrated threshold and the volume above it (None: none)
                    "calibration": result.extras.get("calibration"),
                },
            },
            ANOMALY_MAP,
        )
        data, kwargs, _ = volume_to_layer_data(result.anomaly_map, "image", name=job["name"])
        kwargs.update(
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=0.8,
            metadata={**metadata, **kwargs["metadata"]},
        )
        from napari.layers import Image

        # exactly over the scan, as it is shown
        kwargs.update({k: v for k, v in job["state"].items() if k != "metadata"})
        outcome.map_layer = Image(data, **kwargs)
        outcome.flagged = (data > job["threshold"]).astype(np.uint8)
        outcome.flagged_at = job["threshold"]
        outcome.peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(data)), data.shape))
        outcome.extra_layers = extra_layers(result, job, kwargs)
        if "maps" in result.extras:  # the layers hold them now: do not keep them twice
            from dataclasses import replace

            outcome.result = replace(
                result, extras={k: v for k, v in result.extras.items() if k != "maps"}
            )
        windows = result.extras.get("windows", {}).get("windows_run")
        how = result.extras.get("execution", result.extras.get("device"))
        where = f" {windows} windows ({how})." if windows else ""
        outcome.score_text += where
    return outcome
