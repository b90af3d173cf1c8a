"""The "Detect anomalies" panel: run a detector on a scan and go to where it fires.

Choose the scan and its brain mask (picked by role: never a lesion mask), the model (a
shipped one, a baseline, or a checkpoint folder), where it runs, and (U-Net models) whether
it also reads the scan mirrored left-right (flip test-time augmentation). Run works off the GUI
thread in honest stages (reading the layers, the detector's own stages, preparing the
result layers) with a progress bar and a Cancel button. The panel draws what the detector
returns: an anomaly-map layer over the scan (inferno, additive, with a colour bar) and/or
its sample score. The threshold slider makes an orange Labels layer of the flagged voxels and
says their volume in ml; the table of findings under it lists the flagged regions, and a
click on a row (or "Next finding") takes the view to one. What the user should know about
the scan (another contrast than the model's, no brain mask, an oblique scan) is shown as soon
as the scan, mask and model are chosen, before Run. A second run replaces only the result of
the same scan with the same model.

The numbers under the map belong to the map: the slider starts at the map's calibrated
threshold, switching the model does not re-threshold a map another model made (the label
says whose map it is), and removing the map clears its volume, score, colour bar and table.
"""

from __future__ import annotations

import contextlib
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
from napari_medood._napari._widgets._findings import FindingsTable
from napari_medood._napari._widgets._panel import Panel, show_notes, wrapping_label
from napari_medood._napari._widgets._pickers import pairing_problem, scan_and_mask_pickers
from napari_medood._napari._widgets._runs import (
    CancellableRun,
    job_volume,
    quiet_worker,
    scan_job,
)
from napari_medood._napari._widgets._viewer import go_to_voxel, remove_derived, show_labels
from napari_medood.execution import PRECISIONS

if TYPE_CHECKING:
    import napari

DETECTION_KEY = "medood_detection"
READING, PREPARING = "reading the layers", "preparing the result layers"
#: the families that use flip test-time augmentation (``DetectorOptions.tta``)
#: the threshold slider's steps over [0, 1]
SLIDER_STEPS = 1000
#: how long the slider rests before the table of findings is computed again, and how long
#: the choices rest before the scan is checked against the model's card (ms)
FINDINGS_DELAY_MS = 150
PREFLIGHT_DELAY_MS = 250
NO_MASK_NOTE = (
    "no brain mask chosen: the model reads the scan's own brain if it is skull-stripped, "
    "else an Otsu mask of the whole head (skull and scalp included); choose the brain mask "
    "if there is one"
)
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
    findings: list = field(default_factory=list)  # the regions above ``flagged_at``
    parcellation: Any = None  # the labels the findings were named from (None: none)
    muse: bool = False  # those labels are DLMUSE's


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
        from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox

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
        self.checkpoint_edit.choose_btn.tooltip = (
            "choose a checkpoint folder (card.json + model.safetensors) to add to the models"
        )
        self.image_combo.setToolTip("the scan to read (never an anomaly map)")
        self.mask_combo.setToolTip(
            "the scan's brain mask: only layers that lie on the scan in the world are offered"
        )
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
        self.model_choice.tooltip = (
            "a shipped model, a baseline (no training), or a checkpoint folder added below"
        )
        self.device_choice.tooltip = "where the model runs"
        self.overlap_spin.tooltip = (
            "how much neighbouring sliding windows overlap (more: smoother map, slower)"
        )
        # the run options' value widgets, laid out in the panel's one form (one column of
        # labels for the pickers and the options alike)
        self.options = (
            self.model_choice,
            self.checkpoint_edit,
            self.device_choice,
            self.precision_choice,
            self.overlap_spin,
        )
        self.card_label = wrapping_label()
        self.notes_label = wrapping_label()  # the shown result's notes
        self.notes_label.setStyleSheet("color: #ffb347;")
        self.notes_label.hide()
        # what the scan check says of the scan, mask and model chosen now, before Run
        self.before_label = wrapping_label()
        self.before_label.setStyleSheet("color: #ffb347;")
        self.before_label.hide()
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
        self.run_button.setToolTip(
            "run the model on the scan (inside the brain mask), off the GUI thread"
        )
        self.cancel_button.setToolTip("stop the run at its next step; nothing is added")
        self.replace_check.setToolTip(
            "a new run of this model on this scan takes the place of its earlier map"
        )
        self.findings_table = FindingsTable(self._show_finding)
        self.findings_table.order_combo.currentIndexChanged.connect(
            lambda *_: self._schedule_findings()
        )
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)  # thousandths: calibrated thresholds are fine
        self.slider.setValue(SLIDER_STEPS // 2)
        self.slider.setEnabled(False)
        self.slider.setToolTip(
            "flag the map's voxels above this value (orange layer, ml and findings below); "
            "it starts at the model's calibrated threshold"
        )
        self._slider_by_user = False  # the user moved it (a new map keeps their threshold)
        self.slider.actionTriggered.connect(self._slider_touched)
        self.threshold_label = wrapping_label("threshold 0.50")
        self.before_notes: tuple[str, ...] = ()  # what the scan check said before Run
        self._flagged_ml: float | None = None
        self._findings_worker = None
        self._findings_generation = 0
        self._preflight_worker = None
        self._preflight_generation = 0
        from qtpy.QtCore import QTimer

        self._findings_timer = QTimer(self)
        self._findings_timer.setSingleShot(True)
        self._findings_timer.setInterval(FINDINGS_DELAY_MS)
        self._findings_timer.timeout.connect(self._recompute_findings)
        self._preflight_timer = QTimer(self)
        self._preflight_timer.setSingleShot(True)
        self._preflight_timer.setInterval(PREFLIGHT_DELAY_MS)
        self._preflight_timer.timeout.connect(self._preflight)
        self.calibrated: dict | None = None  # the chosen model's card calibration
        self.colour_bar = ColourBar("inferno")
        self.colour_bar.hide()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Scan", self.image_combo)
        form.addRow("Brain mask", self.mask_combo)
        for option in self.options:
            form.addRow(option.label, option.native)
        form.addRow("", self.tta_check.native)
        threshold = QVBoxLayout()  # the slider spans the colour bar above it
        threshold.setSpacing(2)
        threshold.addWidget(self.slider)
        threshold.addWidget(self.threshold_label)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addWidget(self.card_label)
        layout.addWidget(self.gate_check)
        layout.addWidget(self.before_label)
        layout.addWidget(self.replace_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.trust_view)
        layout.addWidget(self.notes_label)
        layout.addWidget(QLabel("Flag voxels above"))
        layout.addWidget(self.colour_bar)
        layout.addLayout(threshold)
        layout.addWidget(self.findings_table)
        layout.addStretch(1)

        from napari_medood.detectors import default_model

        self.model_choice.value = default_model()
        self.model_choice.changed.connect(self._model_changed)
        self.checkpoint_edit.changed.connect(lambda value: self.add_checkpoint(value))
        self.image_combo.currentIndexChanged.connect(self._scan_changed)
        self.mask_combo.currentIndexChanged.connect(lambda *_: self._schedule_preflight())
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
        self._schedule_preflight()

    def _model_changed(self, *args: Any) -> None:
        name = self.model_choice.value
        self.gate_check.hide()
        self._offer_tta(None)
        self.calibrated = None
        self._schedule_preflight()
        try:
            self._describe_model(name)
        finally:
            # the label says whose map the slider reads (never the new model's calibration
            # over another model's map)
            self.threshold_label.setText(self._threshold_text(self._shown_ml()))

    def _describe_model(self, name: str) -> None:
        from napari_medood.models.checkpoint import read_card, resolve_model
        from napari_medood.registry import FAMILIES, NAMED_DETECTORS, declared_outputs

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
            if self._shown_map() is None:  # a map shown keeps its own threshold
                self._set_slider(float(calibration["voxel_threshold"]))
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
        from napari_medood._napari._widgets._pickers import PairingError, pairing_message

        pairing = pairing_message(mask_layer, source, "brain mask")
        if pairing is not None:  # a pairing forced past the greyed item
            self._fail(PairingError(pairing))
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
            "threshold": self._run_threshold(),
            # the findings are named from a parcellation on the scan, when there is one
            "parcellations": [layer.data for layer in self._parcellation_layers(source)],
        }
        self._source = source
        self._model = job["model"]
        self._run_key = self._choice_key()
        self.notes = ()
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
            self._doubt_the_gate()
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
        if getattr(self, "_before_key", None) == getattr(self, "_run_key", ()):
            self.before_label.hide()  # the result's notes below say it again
        show_notes(self.notes_label, "Before you read this result:", listed)
        if self.notes:
            show_warning(f"Detect anomalies ({outcome.detector_name}): " + "; ".join(self.notes))
        source = self._source
        self.status.setText(outcome.score_text)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        if outcome.map_layer is None or source not in self.viewer.layers:
            if self.replace_check.isChecked():
                with self._replacing():
                    self.remove_results(source, self._model)
            self.map_layer = None
            self.slider.setEnabled(False)
            self.findings_table.clear(f"{outcome.detector_name} gives no map: no findings.")
            return
        self._peak = outcome.peak
        # Each step that makes napari build a visual runs in its own turn of the event
        # loop, so that the window keeps responding while the result appears.
        previous = self.find_result(source, self._model) if self.replace_check.isChecked() else None
        self._run_steps(
            [
                lambda: self._place_map(outcome, source, previous),
                lambda: self._show_flagged_volume(outcome),
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
                with self._replacing():
                    self.viewer.layers.remove(previous)
            self.viewer.layers.append(layer)
            self.map_layer = layer
            self.threshold_layer = None
        self.slider.setEnabled(True)
        self.colour_bar.show()
        self._parcellation = (outcome.parcellation, outcome.muse)
        calibration = self.map_layer.metadata.get(DETECTION_KEY, {}).get("calibration") or {}
        if calibration.get("voxel_threshold") is not None and not self._slider_by_user:
            # a new map is read at its own calibration (unless the user set a threshold);
            # the flagged voxels and findings come next, from the worker when they were
            # computed at this threshold (the run asked for it), so no signal here
            self.slider.blockSignals(True)
            try:
                self._set_slider(float(calibration["voxel_threshold"]))
            finally:
                self.slider.blockSignals(False)
            self.colour_bar.set_marker(self.threshold)
        self.threshold_label.setText(self._threshold_text(self._shown_ml()))

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
            if getattr(self, "_replacing_now", False):
                return  # a new result takes its place: the panel shows that one
            # its numbers go with it: nothing on the panel may describe a map not shown
            self._flagged_ml = None
            self._findings_generation += 1  # a table being computed is dropped
            self.slider.setEnabled(False)
            self.colour_bar.hide()
            self.notes_label.hide()
            self.trust_view.hide()
            self.status.setText(f"The map '{layer.name}' was removed, with its score and volume.")
            self.findings_table.clear("The map was removed: Run to list findings again.")
            self.threshold_label.setText(self._threshold_text())

    def go_to_peak(self) -> None:
        """Show the slice through the map's highest voxel, centred."""
        if self.map_layer is None or getattr(self, "_peak", None) is None:
            return
        go_to_voxel(self.viewer, self.map_layer, self._peak)
        self.map_layer.visible = True

    def _show_finding(self, finding: Any) -> None:
        """Show the slice through a finding's peak, centred."""
        if self.map_layer is None or self.map_layer not in self.viewer.layers:
            return
        go_to_voxel(self.viewer, self.map_layer, finding.peak_ijk)
        self.map_layer.visible = True

    @contextlib.contextmanager
    def _replacing(self):
        """The panel removes its own earlier result to show a new one."""
        self._replacing_now = True
        try:
            yield
        finally:
            self._replacing_now = False

    def _run_threshold(self) -> float:
        """The threshold a run reads its map at: the slider's when the user set it, else
        the chosen model's calibrated one (where the slider goes when the map arrives)."""
        calibration = self.calibrated or {}
        if not self._slider_by_user and calibration.get("voxel_threshold") is not None:
            return round(float(calibration["voxel_threshold"]) * SLIDER_STEPS) / SLIDER_STEPS
        return self.threshold

    def _shown_map(self) -> Any | None:
        layer = self.map_layer
        return layer if layer is not None and layer in self.viewer.layers else None

    def _shown_ml(self) -> float | None:
        return self._flagged_ml if self._shown_map() is not None else None

    def _set_slider(self, threshold: float) -> None:
        """Put the slider at a card's or map's threshold (not the user's choice)."""
        self.slider.setValue(round(float(threshold) * SLIDER_STEPS))
        self._slider_by_user = False

    def _slider_touched(self, *args: Any) -> None:
        self._slider_by_user = True

    def _parcellation_layers(self, source: Any) -> list[Any]:
        """Label layers on the scan that may be a parcellation to name findings from: its
        brain mask first, then the other brain-mask layers (never a ground truth or a
        threshold); the worker keeps the first with several structures."""
        from napari.layers import Labels

        from napari_medood._napari._roles import BRAIN_MASK, GROUND_TRUTH, ROLE_KEY

        chosen = self.mask_combo.current_layer()
        others = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels)
            and layer is not chosen
            # a recorded ground truth or a threshold is not an atlas; a layer whose name
            # only suggests ground truth (a "_seg" file) may be one: the worker decides
            and layer.metadata.get(ROLE_KEY) != GROUND_TRUTH
            and role_of(layer) not in (THRESHOLD, BY_PRODUCT)
            and pairing_problem(layer, source) is None
        ]
        # newest first, brain-mask layers (a DLMUSE) before the others
        others.reverse()
        others.sort(key=lambda layer: role_of(layer) != BRAIN_MASK)  # a stable sort
        return ([chosen] if chosen is not None else []) + others

    # ----------------------------------------------------------------------- threshold
    @property
    def threshold(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def _at(self, calibration: dict | None) -> bool:
        return calibration is not None and (
            abs(self.threshold - float(calibration["voxel_threshold"])) < 0.5 / SLIDER_STEPS
        )

    def _threshold_text(self, millilitres: float | None = None) -> str:
        """``threshold 0.177 (calibrated: 1 % of healthy brain voxels): 12.3 ml``: what the
        slider reads, against the calibration of the map shown (before any map: the chosen
        model's), and whose map it is when another model is chosen."""
        text = f"threshold {self.threshold:.3f}"
        layer = self._shown_map()
        detection = {} if layer is None else layer.metadata.get(DETECTION_KEY, {})
        chosen = self.model_choice.value
        if layer is not None and detection.get("model") != chosen:
            # the numbers are the shown map's; the model chosen since has made none yet
            text += f" on the map of {detection.get('model')} (Run to see {chosen}'s)"
        else:
            own = detection.get("calibration") if layer is not None else self.calibrated
            if self._at(own):
                share = 100 * float(own.get("healthy_voxel_fpr") or 0.0)
                text += f" (calibrated: {share:g} % of healthy brain voxels)"
            elif layer is not None and self._at(self.calibrated):
                text += " (the model's calibrated threshold; it does not hold for this map)"
        return text if millilitres is None else f"{text}: {millilitres:.1f} ml"

    def _show_flagged_volume(self, outcome: DetectionOutcome) -> None:
        """The volume above the threshold and its findings, before any Labels layer is made."""
        layer = self.map_layer
        if layer is None or outcome.flagged is None:
            return
        moved = abs(outcome.flagged_at - self.threshold) > 1e-9  # the slider moved meanwhile
        if moved or (
            self.threshold_layer is not None and self.threshold_layer in self.viewer.layers
        ):
            self._threshold_changed(self.slider.value())  # the layer follows the slider
            return
        self._flagged_ml = self._millilitres(outcome.flagged, layer)
        self.threshold_label.setText(self._threshold_text(self._flagged_ml))
        self._findings_generation += 1
        if self.findings_table.order == "size":
            self.findings_table.show_findings(outcome.findings, outcome.flagged_at, outcome.muse)
        else:  # the worker sorts by size: the table's other order is computed again
            self._schedule_findings()

    @staticmethod
    def _millilitres(flagged: np.ndarray, layer: Any) -> float:
        from napari_medood._napari._widgets._pickers import world_matrix

        # the whole placement: a sheared scan is placed by its affine with a scale of 1
        voxel = abs(float(np.linalg.det(world_matrix(layer)[:3, :3])))
        return float(np.count_nonzero(flagged)) * voxel / 1000

    def _threshold_changed(self, value: int) -> None:
        """Moving the slider makes (or updates) the Labels layer of the flagged voxels, and
        the table of findings follows once the slider rests."""
        self.threshold_label.setText(self._threshold_text())
        self.colour_bar.set_marker(value / SLIDER_STEPS)
        layer = self._shown_map()
        if layer is None:
            return
        flagged = (np.asarray(layer.data) > self.threshold).astype(np.uint8)
        self._flagged_ml = self._millilitres(flagged, layer)
        self.threshold_label.setText(self._threshold_text(self._flagged_ml))
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
        self._schedule_findings()

    # ------------------------------------------------------------------------ findings
    @property
    def findings_busy(self) -> bool:
        """The table of findings is being computed (or will be once the slider rests)."""
        return self._findings_timer.isActive() or self._findings_worker is not None

    def _schedule_findings(self) -> None:
        self._findings_generation += 1  # a table being computed is now out of date
        if self._shown_map() is not None:
            self.findings_table.summary.setText(
                f"listing the findings above {self.threshold:.3f}..."
            )
            self._findings_timer.start()

    def _recompute_findings(self) -> None:
        """The findings of the shown map at the slider's threshold, in a worker; a run still
        computing an older table finishes first, and only the newest table is shown."""
        from napari_medood._napari._layers import WORLD_TO_RAS
        from napari_medood._napari._widgets._findings import findings_job
        from napari_medood._napari._widgets._pickers import world_matrix

        layer = self._shown_map()
        if layer is None:
            return
        if self._findings_worker is not None:  # one at a time; the newest request follows
            self._findings_timer.start()
            return
        parcellation, muse = getattr(self, "_parcellation", (None, False))
        job = {
            "map": layer.data,
            "affine": WORLD_TO_RAS @ world_matrix(layer),
            "threshold": self.threshold,
            "order": self.findings_table.order,
            "parcellation": parcellation,
            "muse": muse,
            "generation": self._findings_generation,
            "layer": layer,
        }
        generation = self._findings_generation
        self._findings_worker = quiet_worker(
            findings_job,
            job,
            self._findings_ready,
            lambda exc: self._findings_failed(exc, generation),
            self._findings_done,
            parent=self,
        )

    def _findings_done(self) -> None:
        self._findings_worker = None

    def _findings_ready(self, found: dict) -> None:
        if found["generation"] != self._findings_generation or self._shown_map() is None:
            return  # the slider, the order or the map changed since: a newer table follows
        self.findings_table.show_findings(found["findings"], found["threshold"], found["muse"])

    def _findings_failed(self, exc: BaseException, generation: int) -> None:
        if generation == self._findings_generation and self._shown_map() is not None:
            self.findings_table.clear(f"Could not list the findings: {exc}")

    # ----------------------------------------------------------------- before the run
    def _schedule_preflight(self) -> None:
        """Check the choices again once they rest, while the panel is shown (a hidden tab
        is checked when it is shown: :meth:`showEvent`)."""
        if hasattr(self, "_preflight_timer"):
            self._preflight_generation += 1  # a check under way is of earlier choices
            if self.isVisible():
                self._preflight_timer.start()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if getattr(self, "_before_key", None) != self._choice_key():
            self._schedule_preflight()

    def _preflight(self) -> None:
        """Check the chosen scan and mask against the chosen model's card, off the GUI
        thread, so that what the map's notes would say is read before Run."""
        from napari_medood._napari._widgets._runs import scan_job

        source = self.image_combo.current_layer()
        if source is None:
            self._show_before_notes(())
            return
        if self._preflight_worker is not None:
            self._preflight_timer.start()
            return
        generation, key = self._preflight_generation, self._choice_key()
        job = {
            **scan_job(source, self.mask_combo.current_layer()),
            "model": self.model_choice.value,
            "generation": generation,
            "key": key,
        }
        self._preflight_worker = quiet_worker(
            preflight_job,
            job,
            self._preflight_ready,
            lambda exc: self._preflight_failed(exc, generation, key),
            self._preflight_done,
            parent=self,
        )

    def _preflight_done(self) -> None:
        self._preflight_worker = None

    @property
    def preflight_busy(self) -> bool:
        return self._preflight_timer.isActive() or self._preflight_worker is not None

    def _preflight_ready(self, checked: dict) -> None:
        if checked["generation"] == self._preflight_generation:
            self._show_before_notes(tuple(checked["notes"]), checked.get("key"))

    def _preflight_failed(self, exc: BaseException, generation: int, key: tuple) -> None:
        if generation == self._preflight_generation:  # not a check of earlier choices
            self._show_before_notes((f"this scan cannot be run: {exc}",), key)

    def _show_before_notes(self, notes: tuple[str, ...], key: tuple | None = None) -> None:
        """The scan check's notes on the scan, mask and model chosen now (``key``), above
        Run; the shown result keeps its own notes below."""
        self.before_notes = notes
        self._before_key = key
        show_notes(self.before_label, "Before you run:", notes)

    def _choice_key(self) -> tuple:
        """What a scan check or a run is made for: the scan, the mask and the model."""
        source = self.image_combo.current_layer()
        mask = self.mask_combo.current_layer()
        return (
            None if source is None else str(source.unique_id),
            None if mask is None else str(mask.unique_id),
            self.model_choice.value,
        )

    def _doubt_the_gate(self) -> None:
        """A gate that finds the scan in distribution is not shown green while the scan
        check already disagrees with the model's card (another contrast, say)."""
        report = self.trust_report
        if getattr(self, "_before_key", None) != getattr(self, "_run_key", ()):
            return  # the notes were made for another scan, mask or model
        doubts = [n for n in self.before_notes if not n.startswith("no brain mask chosen")]
        if report is None or not report.in_distribution or not doubts:
            return
        from napari_medood._napari._widgets.trust import BAD

        self.trust_view.verdict.setText(
            f"{report.verdict()}, but the scan check disagrees: {doubts[0]}"
        )
        self.trust_view.verdict.setStyleSheet(f"color: {BAD}; font-weight: bold;")


def preflight_job(job: dict, progress=None, cancelled=None) -> dict:
    """Off the GUI thread: the notes a run of ``job["model"]`` would start with on the scan
    (``detectors.base.scan_preamble``), and one when no brain mask is chosen."""
    from napari_medood._napari._widgets._runs import job_volume
    from napari_medood.detectors.base import MASK_FOREGROUND, scan_preamble
    from napari_medood.models.checkpoint import read_card, resolve_model
    from napari_medood.registry import NAMED_DETECTORS

    volume, mask = job_volume(job)
    card = None
    if job["model"] not in NAMED_DETECTORS:
        card = read_card(resolve_model(job["model"]))
    _, kind, notes = scan_preamble(volume, mask, card)
    if mask is None and kind == MASK_FOREGROUND:
        notes.insert(0, NO_MASK_NOTE)
    return {"notes": notes, "generation": job["generation"], "key": job.get("key")}


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
        from napari_medood._napari._layers import WORLD_TO_RAS, _layer_world_affine
        from napari_medood._napari._widgets._findings import findings_job

        say("listing the findings")
        found = findings_job(
            {
                "map": data,
                "affine": WORLD_TO_RAS @ _layer_world_affine(job["state"]),
                "threshold": job["threshold"],
                "parcellations": job.get("parcellations") or [],
            }
        )
        outcome.findings = found["findings"]
        outcome.parcellation, outcome.muse = found["parcellation"], found["muse"]
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
