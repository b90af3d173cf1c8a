"""Is this scan like the data a model was trained on? The trust panel and the verdict view.

:class:`TrustView` shows a feature-OOD model's verdict on one scan: a sentence ("in
distribution: 62nd percentile of healthy IXI T1 scans", or a warning in orange) and a
histogram of the reference scans' confidences with this scan marked (an arrow at the edge
when it falls far outside them). The Detect panel shows it before the map when the model's
card names a trust gate; :class:`TrustWidget` ("Is this scan in distribution?") runs any
feature-OOD model, with any of its fitted heads, on any image layer, and lets the user move
the percentile below which a scan is called out of distribution.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._widgets._panel import Panel, wrapping_label
from napari_medood._napari._widgets._pickers import scan_and_mask_pickers
from napari_medood._napari._widgets._runs import CancellableRun, job_volume, scan_job

if TYPE_CHECKING:
    import napari

GOOD, BAD = "#7ddc7d", "#ffb347"


class TrustNotice(str):
    """A progress message that carries a gate's report, and its picture rendered off the GUI
    thread, to the GUI thread as soon as it is known (before the map is computed)."""

    report: Any = None
    picture: np.ndarray | None = None
    #: what the model read instead of a brain mask when none was given (None: one was)
    mask_note: str | None = None

    @classmethod
    def of(cls, report, mask_note: str | None = None) -> TrustNotice:
        notice = cls(f"trust gate: {report.verdict()}")
        notice.report = report
        notice.picture = render_report(report)
        notice.mask_note = mask_note
        return notice


def render_report(report, size: tuple[int, int] = (360, 150), dpi: int = 90) -> np.ndarray:
    """The reference histogram with this scan marked, as an RGBA array (matplotlib's Agg,
    safe off the GUI thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, facecolor="#262930")
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.04, right=0.98, top=0.95, bottom=0.25)
    reference = np.asarray(report.reference, dtype=float)
    ax = figure.add_subplot(111)
    ax.set_facecolor("#262930")
    for side in ax.spines.values():
        side.set_color("#888888")
    ax.tick_params(colors="#cccccc", labelsize=7)
    ax.set_yticks([])
    spread = max(float(np.ptp(reference)), 1e-6)
    low, high = reference.min() - 0.5 * spread, reference.max() + 0.5 * spread
    counts, _, _ = ax.hist(reference, bins=min(30, max(5, reference.size // 3)), color="#6a8fd0")
    top = max(float(np.max(counts)), 1.0)
    ax.set_xlim(low, high)
    ax.set_ylim(0, top * 1.25)
    ax.axvline(
        float(np.percentile(reference, report.threshold)),
        color="#aaaaaa",
        linestyle=":",
        linewidth=1,
    )
    colour = GOOD if report.in_distribution else BAD
    value = report.confidence
    if low <= value <= high:
        ax.axvline(value, color=colour, linewidth=2)
        ax.text(value, top * 1.1, " this scan", color=colour, fontsize=7)
    else:  # far outside the reference: an arrow at the edge says how far
        edge = low if value < low else high
        ax.annotate(
            f"this scan: {value:.3g}",
            xy=(edge, top * 0.5),
            xytext=(0.5 * (low + high), top * 1.05),
            color=colour,
            fontsize=7,
            arrowprops={"arrowstyle": "->", "color": colour},
        )
    ax.set_xlabel(f"{report.head} confidence of the reference scans", color="#cccccc", fontsize=7)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba()).copy()


class TrustView(QWidget):
    """A verdict sentence and the reference histogram with this scan marked."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.report = None
        self.verdict = wrapping_label()
        self.picture = QLabel()
        self.picture.setMinimumHeight(120)
        self._image = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.verdict)
        layout.addWidget(self.picture)
        self.hide()

    def show_report(self, report, picture: np.ndarray | None = None) -> None:
        """Show ``report``; ``picture`` is its rendered histogram (rendered here if None)."""
        from qtpy.QtGui import QImage, QPixmap

        self.report = report
        good = report.in_distribution
        self.verdict.setText(report.verdict())
        self.verdict.setStyleSheet(f"color: {GOOD if good else BAD}; font-weight: bold;")
        self.verdict.setToolTip(
            f"{report.model}, {report.head} head: confidence {report.confidence:.4g}; "
            f"score {report.score:.3f} (1 - percentile/100, higher = more out of distribution)"
        )
        self._image = np.ascontiguousarray(render_report(report) if picture is None else picture)
        height, width = self._image.shape[:2]
        image = QImage(self._image.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        self.picture.setPixmap(QPixmap.fromImage(image))
        self.picture.setToolTip(
            "the reference scans' confidences (blue), the threshold (dotted) and this scan"
        )
        self.show()


def gate_of_model(name: str) -> str | None:
    """The trust gate a map model's card names: its own ``gate``, else (a fused model) the
    first of its members' gates; None when no card names one or the card cannot be read."""
    from napari_medood.detectors.base import gate_path
    from napari_medood.errors import MedoodError
    from napari_medood.models.checkpoint import read_card, resolve_model

    try:
        folder = resolve_model(name)
        card = read_card(folder)
    except (MedoodError, OSError, ValueError):  # a baseline, or a card that cannot be read
        return None
    if card.get("gate"):
        return gate_path(str(card["gate"]), folder)
    for member in (card.get("members") or {}).values():
        model = member.get("model") if isinstance(member, dict) else None
        if not model:
            continue
        # a member is a shipped model's name or a folder relative to the fused card's own
        beside = folder / str(model)
        gate = gate_of_model(str(beside) if beside.is_dir() else str(model))
        if gate:
            return gate
    return None


def default_trust_model(models: list[str]) -> str | None:
    """The model the Trust panel starts at: the gate of the default detector (the check a
    Detect run makes first), else a feature-OOD model of brains (the shipped detectors are
    brain models: a 64^3 adrenal model is not what a brain scan should be checked with),
    else the first."""
    from napari_medood.detectors import default_model
    from napari_medood.models.checkpoint import read_card, resolve_model

    if not models:
        return None
    gate = gate_of_model(default_model())
    if gate in models:
        return gate

    def about_brains(name: str) -> bool:
        try:
            description = str(read_card(resolve_model(name)).get("description", ""))
        except Exception:  # noqa: BLE001 - an unreadable card is simply not preferred
            description = ""
        return "brain" in f"{name} {description}".lower()

    return next((name for name in models if about_brains(name)), models[0])


def mask_note_of(detector, mask_kind: str | None) -> str | None:
    """What a check made without a brain mask read instead, when the model reads one (a
    model-space input: the brain, zero outside); None when a mask was given or the model
    reads the whole scan anyway (a resized input)."""
    from napari_medood.detectors.base import MASK_GIVEN, MASK_SKULL_STRIPPED

    recipe = ((getattr(detector, "card", None) or {}).get("input") or {}).get("kind")
    if mask_kind in (None, MASK_GIVEN) or recipe != "model-space":
        return None
    if mask_kind == MASK_SKULL_STRIPPED:
        return (
            "no brain mask was given: the check read the scan's own brain (it looks "
            "skull-stripped, so its non-background voxels were taken as the brain)"
        )
    return (
        "no brain mask was given: the check read an Otsu head mask, and a whole head is not "
        "what the reference brains were (they were read inside their brain masks), so a "
        "healthy scan can rank far below them. Choose the scan's brain mask and Check again."
    )


def feature_ood_models(extra: tuple[str, ...] = ()) -> list[str]:
    """Shipped models that answer "is this scan in distribution?" (score-only feature-OOD
    models), then ``extra`` checkpoint folders."""
    from napari_medood.models.checkpoint import bundled_models, read_card

    names = [
        n
        for n, folder in bundled_models().items()
        if read_card(folder).get("detector") == "feature-ood"
    ]
    return names + [e for e in extra if e not in names]


class TrustWidget(CancellableRun, Panel):
    """The "Is this scan in distribution?" panel."""

    failure_text = "Could not check the scan"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-trust")
        self.last_report = None
        self.last_error: str | None = None
        self._worker = None
        self._cancel = threading.Event()
        self._checkpoints: list[str] = []
        self.image_combo, self.mask_combo = scan_and_mask_pickers(napari_viewer, self)
        models = feature_ood_models()
        self.model_choice = ComboBox(
            label="Model", choices=models, value=default_trust_model(models)
        )
        self.model_choice.tooltip = (
            "the feature-OOD model that judges the scan; it starts at the trust gate of the "
            "default detector, the check Detect makes before its map"
        )
        self.checkpoint_edit = FileEdit(label="Checkpoint", mode="d")
        self.checkpoint_edit.tooltip = "a feature-OOD checkpoint folder of your own"
        self.checkpoint_edit.choose_btn.tooltip = (
            "choose a feature-OOD checkpoint folder (card.json + weights) to check with"
        )
        self.head_choice = ComboBox(label="Score", choices=[])
        self.head_choice.tooltip = (
            "flow: MedOODFlow's log-likelihood; the others are the classic baselines"
        )
        self.threshold_spin = FloatSpinBox(
            label="Out below percentile", min=0.1, max=99.9, step=0.5, value=5.0
        )
        self.threshold_spin.tooltip = "a scan whose confidence falls below this percentile of the reference scans is called out of distribution"
        self.description = wrapping_label()
        buttons = self.run_controls("Check")
        self.run_button.setToolTip(
            "run the model on the scan (in its brain mask) and rank its confidence among the "
            "reference scans'"
        )
        self.cancel_button.setToolTip("stop the check; nothing is shown")
        self.image_combo.setToolTip("the scan to check")
        self.mask_combo.setToolTip(
            "the scan's brain mask: the reference scans were read inside theirs"
        )
        self.view = TrustView()
        #: says what was read instead of a brain mask when none was given
        self.mask_note = wrapping_label()
        self.mask_note.setStyleSheet(f"color: {BAD};")
        self.mask_note.hide()

        form = QFormLayout()
        form.addRow("Scan", self.image_combo)
        form.addRow("Brain mask", self.mask_combo)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        for widget in (
            self.model_choice,
            self.checkpoint_edit,
            self.head_choice,
            self.threshold_spin,
        ):
            row = QHBoxLayout()
            row.addWidget(QLabel(widget.label))
            row.addWidget(widget.native, 1)
            layout.addLayout(row)
        layout.addWidget(self.description)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.view)
        layout.addWidget(self.mask_note)
        layout.addStretch(1)

        self.model_choice.changed.connect(self._model_changed)
        self.checkpoint_edit.changed.connect(lambda value: self.add_checkpoint(value))
        self.threshold_spin.changed.connect(self._threshold_changed)
        self._model_changed()

    def add_checkpoint(self, folder: str | Path) -> None:
        folder = str(folder)
        if not folder or folder == ".":
            return
        if folder not in self._checkpoints:
            self._checkpoints.append(folder)
            self.model_choice.choices = feature_ood_models(tuple(self._checkpoints))
        self.model_choice.value = folder

    def _model_changed(self, *args: Any) -> None:
        from napari_medood.models.checkpoint import Checkpoint

        name = self.model_choice.value
        if not name:
            self.description.setText("No feature-OOD model is installed; add a checkpoint folder.")
            self.run_button.setEnabled(False)
            return
        try:
            card = Checkpoint.open(name).card
        except Exception as exc:  # noqa: BLE001 - shown, never raised into Qt
            self.description.setText(f"Cannot read {name}: {exc}")
            self.run_button.setEnabled(False)
            return
        heads = list(card.get("heads", {}))
        self.head_choice.choices = heads
        self.head_choice.value = card.get("default_head", heads[0] if heads else None)
        self.threshold_spin.value = float(card.get("threshold_percentile", 5.0))
        self.description.setText(card.get("description", ""))
        self.run_button.setEnabled(True)

    def _threshold_changed(self, value: float) -> None:
        if self.last_report is not None:  # a new verdict on the same score, no rerun
            self.last_report = replace(self.last_report, threshold=float(value))
            self.view.show_report(self.last_report)

    def run(self) -> None:
        if self._worker is not None:
            return
        source = self.image_combo.current_layer()
        if source is None:
            self._fail(ValueError("open a scan first (File > Open, or File > Open Sample)"))
            return
        mask_layer = self.mask_combo.current_layer()
        job = {
            **scan_job(source, mask_layer),
            "model": self.model_choice.value,
            "head": self.head_choice.value,
            "threshold": float(self.threshold_spin.value),
        }
        self.status.setText(f"{job['model']}: starting...")
        self.mask_note.hide()  # the note belongs to the result it came with
        self.start_run(trust_job, job, self._show)

    def _show(self, notice) -> None:
        if notice is None:
            return
        report = notice.report
        self.last_error = None
        self.last_report = report
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.status.setText(
            f"Score {report.score:.3f} (1 - percentile/100; higher = more out of distribution)"
        )
        self.view.show_report(report, notice.picture)
        self.mask_note.setText(notice.mask_note or "")
        self.mask_note.setVisible(bool(notice.mask_note))


def trust_job(job: dict, progress=None, cancelled=None):
    """Off the GUI thread: the layers to a volume, the model, its report."""
    from napari_medood.detectors import get_detector

    if progress is not None:
        progress(0, 0, "reading the layers")
    volume, mask = job_volume(job)
    if progress is not None:
        progress(0, 0, f"loading {job['model']}")
    detector = get_detector(job["model"], variant=job["head"])
    result = detector.predict(volume, mask, progress=progress, cancelled=cancelled)
    report = result.extras.get("trust")
    if report is None:
        from napari_medood.errors import MedoodError

        raise MedoodError(f"{job['model']} gives a score but no in-distribution report")
    return TrustNotice.of(
        replace(report, threshold=job["threshold"]),
        mask_note_of(detector, result.extras.get("mask")),
    )
