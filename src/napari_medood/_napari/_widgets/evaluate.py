"""The "Evaluate" panel: how good is an anomaly map against a ground-truth label layer?

Pick the anomaly map (an Image layer with values in [0, 1]), the ground truth (a Labels layer,
any label > 0 is abnormal) and optionally a brain mask; each picker starts at the layer with
that role (threshold layers are never offered as ground truth, lesion masks never as brain
masks). Compute counts the voxels once (off the GUI thread, with the MOOD challenge's
semantics, with a progress bar and a Cancel button that keeps the numbers shown before) and
shows AP and AUROC, the precision-recall curve, and Dice, precision and recall at the
threshold of the slider, and as a reader counts them: the lesions (connected components of
the ground truth), how many the findings at the threshold find and how many findings are
false (``evaluation.lesions``; read at the lesion grid's nearest threshold at or above the
slider's), and the share found at one false finding. Moving the slider updates an orange Labels layer of the voxels at or
above the threshold, over the map (ground truth shows in green). When one of its layers is
removed, or another map, ground truth or mask is chosen, the panel clears its numbers and
its threshold layer (they belonged to the layers counted) and asks for Compute again. The
curve is drawn in the viewer's theme colours and follows a change of theme.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._roles import (
    ANOMALY_MAP,
    BRAIN_MASK,
    GROUND_TRUTH,
    THRESHOLD,
    label_colormap,
    with_role,
)
from napari_medood._napari._widgets._panel import Panel, wrapping_label
from napari_medood._napari._widgets._pickers import LayerComboBox, check_pairing, not_a_map
from napari_medood._napari._widgets._runs import CancellableRun
from napari_medood._napari._widgets._viewer import show_labels
from napari_medood._progress import check_cancelled, report
from napari_medood.evaluation.lesions import lesion_counts
from napari_medood.evaluation.metrics import CaseCounts, VoxelHistogram, best_dice_sweep

if TYPE_CHECKING:
    import napari

SLIDER_STEPS = 1000
#: the precision-recall curve: a blue that reads on napari's dark and light themes alike
CURVE_COLOUR = "#4d9de0"
#: the slabs (along the first axis) counted between two progress reports and cancel checks
COUNT_STEPS = 32


def count_voxels(job: dict, progress=None, cancelled=None) -> tuple:
    """Off the GUI thread: the voxel counts of ``job["map"]`` against ``job["truth"]`` (any
    label > 0 is abnormal) inside ``job["mask"]`` (None: every voxel), with the MOOD
    challenge's semantics, and its lesions and findings at the lesion-level grid
    (``evaluation.lesions``); returns ``(counts, the mask as booleans, lesion counts)``.
    Counted a slab of the first axis at a time (the counts are per voxel, so they add up),
    which gives an honest progress bar and a prompt Cancel."""
    anomaly_map, truth = job["map"], job["truth"]
    mask = None if job["mask"] is None else np.asarray(job["mask"]) > 0
    histogram = VoxelHistogram()
    length = np.shape(anomaly_map)[0]
    edges = np.unique(np.linspace(0, length, min(COUNT_STEPS, length) + 1).round().astype(int))
    for done, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        check_cancelled(cancelled)
        histogram.add(
            np.asarray(anomaly_map[start:stop]),
            np.asarray(truth[start:stop]) > 0,
            None if mask is None else mask[start:stop],
        )
        report(progress, done + 1, len(edges) - 1, "counting the voxels")
    check_cancelled(cancelled)
    report(progress, len(edges) - 1, len(edges) - 1, "counting lesions and findings")
    lesions = lesion_counts(
        np.clip(np.asarray(anomaly_map, np.float32), 0, 1), np.asarray(truth) > 0, mask
    )
    return CaseCounts.from_dense(histogram.pos, histogram.neg), mask, lesions


def removed_text(layer: Any) -> str:
    """What the panel says when a layer its numbers came from was removed."""
    return f"'{layer.name}' was removed; choose the layers and Compute again."


class EvaluateWidget(CancellableRun, Panel):
    """Dock widget: voxel metrics of an anomaly map against a label layer, with a live threshold."""

    cancelled_text = "Cancelled: the voxels were not counted."
    failure_text = "Cannot evaluate"
    title = "Evaluate"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from napari.layers import Image, Labels

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-evaluate")
        self.counts: CaseCounts | None = None
        self.lesion_counts = None
        self.last_error: str | None = None
        self._threshold_layer = None
        self._map_layer = None
        self._mask = None

        self.map_combo = LayerComboBox(
            napari_viewer,
            (Image,),
            self,
            none_label="choose the anomaly map",
            roles=(ANOMALY_MAP,),
            refuse=not_a_map,  # the scan itself is listed, greyed, never chosen
        )
        self.truth_combo = LayerComboBox(
            napari_viewer,
            (Labels,),
            self,
            none_label="choose the ground truth",
            roles=(GROUND_TRUTH,),
            exclude=(THRESHOLD, BRAIN_MASK),
            like=self.map_combo.current_layer,
        )
        self.mask_combo = LayerComboBox(
            napari_viewer,
            (Labels,),
            self,
            none_label="all voxels",
            roles=(BRAIN_MASK,),
            exclude=(THRESHOLD, GROUND_TRUTH),
            like=self.map_combo.current_layer,
        )
        self.map_combo.setToolTip("the anomaly map to evaluate: an Image layer of values in [0, 1]")
        self.truth_combo.setToolTip(
            "the ground truth on the map's grid: any label above 0 is abnormal"
        )
        self.mask_combo.setToolTip("count only the voxels inside this brain mask (or all voxels)")
        buttons = self.run_controls("Compute")
        self.run_button.setToolTip(
            "count the map's voxels against the ground truth (inside the mask): AP, AUROC, "
            "the precision-recall curve, and Dice at the threshold"
        )
        self.cancel_button.setToolTip("stop counting; the numbers shown before stay")
        self.best_button = QPushButton("Best Dice")
        self.best_button.setEnabled(False)
        self.best_button.setToolTip(
            "move the threshold to the one with the highest Dice (steps of 0.001); it is "
            "fitted to this ground truth, so it flatters the map"
        )
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setValue(SLIDER_STEPS // 2)
        self.slider.setToolTip(
            "the threshold: voxels at or above it are flagged (the orange layer over the map) "
            "and scored by Dice, precision and recall"
        )
        self.threshold_spin = QDoubleSpinBox(
            minimum=0.0, maximum=1.0, value=0.5, singleStep=0.01, decimals=3
        )
        self.threshold_spin.setToolTip("the threshold, typed (the slider moves with it)")
        self.metrics_label = wrapping_label("Choose a map and its ground truth, then Compute.")

        form = QFormLayout()
        form.addRow("Anomaly map", self.map_combo)
        form.addRow("Ground truth", self.truth_combo)
        form.addRow("Brain mask", self.mask_combo)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.slider, 1)
        threshold_row.addWidget(self.threshold_spin)
        form.addRow("Threshold", threshold_row)
        buttons.addWidget(self.best_button)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.metrics_label)
        self.canvas, self.axes = self._make_plot()
        self._draw_curve()
        layout.addWidget(self.canvas)
        layout.addStretch(1)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(40)
        self._debounce.timeout.connect(self._update_threshold_layer)
        self.best_button.clicked.connect(self.use_best_dice)
        self.slider.valueChanged.connect(lambda v: self.threshold_spin.setValue(v / SLIDER_STEPS))
        self.threshold_spin.valueChanged.connect(self._threshold_changed)
        self.map_combo.currentIndexChanged.connect(self._map_changed)
        self.truth_combo.currentIndexChanged.connect(
            lambda *_: self._choice_changed("ground truth")
        )
        self.mask_combo.currentIndexChanged.connect(lambda *_: self._choice_changed("brain mask"))
        napari_viewer.layers.events.removed.connect(self._layer_removed)
        napari_viewer.events.theme.connect(self._theme_changed)
        self._layers_used: tuple = ()
        #: the map, ground truth and mask the numbers shown were counted on
        self._chosen: tuple = (None, None, None)

    def _map_changed(self, *args) -> None:
        # cleared first, so that the message names the map, not the pickers that follow it
        self._choice_changed("map")
        # what pairs with the new map by place: listed again, greyed where it does not
        self.truth_combo.follow_pairing()
        self.mask_combo.follow_pairing()

    def chosen_layers(self) -> tuple:
        """The layers chosen now: the map, the ground truth and the mask (None for none)."""
        return (
            self.map_combo.current_layer(),
            self.truth_combo.current_layer(),
            self.mask_combo.current_layer(),
        )

    def _choice_changed(self, what: str) -> None:
        """Another layer was chosen: the numbers shown were not counted on it."""
        now = self.chosen_layers()
        if self.counts is None or all(a is b for a, b in zip(now, self._chosen, strict=True)):
            return
        # a picker also moves when the layer it showed is removed: say that, not a choice
        gone = [layer for layer in self._layers_used if layer not in self.viewer.layers]
        if gone:
            self.clear(removed_text(gone[0]))
        else:
            self.clear(f"{what} changed: press Compute")

    def _layer_removed(self, event) -> None:
        """A layer the numbers came from is gone: clear them and the threshold layer."""
        layer = event.value
        if layer is self._threshold_layer:
            self._threshold_layer = None
            return
        if self.counts is None or not any(layer is used for used in self._layers_used):
            return
        self.clear(removed_text(layer))

    def clear(self, message: str = "Choose a map and its ground truth, then Compute.") -> None:
        """Forget the computed numbers and remove the panel's threshold layer."""
        self.counts = None
        self.lesion_counts = None
        self._map_layer = None
        self._mask = None
        self._layers_used = ()
        self._chosen = (None, None, None)
        self.best_button.setEnabled(False)
        if self._threshold_layer is not None and self._threshold_layer in self.viewer.layers:
            self.viewer.layers.remove(self._threshold_layer)
        self._threshold_layer = None
        self.metrics_label.setText(message)
        self._draw_curve()

    # ---------------------------------------------------------------------------- plot
    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3.2, 2.6), dpi=90, tight_layout=True)
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(220)
        axes = figure.add_subplot()
        return canvas, axes

    def theme_colours(self) -> dict[str, str]:
        """The viewer's theme as the plot uses it: its background, text and lines (napari's
        own, so that the plot is no white box on a dark window)."""
        from napari.utils.theme import get_theme

        theme = get_theme(self.viewer.theme)
        return {
            "background": theme.background.as_hex(),
            "text": theme.text.as_hex(),
            "lines": theme.highlight.as_hex(),
        }

    def _style_plot(self, colours: dict[str, str]) -> None:
        self.canvas.figure.set_facecolor(colours["background"])
        axes = self.axes
        axes.set_facecolor(colours["background"])
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        for side in axes.spines.values():
            side.set_color(colours["lines"])
        axes.tick_params(colors=colours["text"], labelsize=8)
        axes.xaxis.label.set_color(colours["text"])
        axes.yaxis.label.set_color(colours["text"])
        axes.title.set_color(colours["text"])

    def _theme_changed(self, event: Any = None) -> None:
        self._draw_curve()

    def _draw_curve(self) -> None:
        self.axes.clear()
        colours = self.theme_colours()
        self._style_plot(colours)
        counts = self.counts
        if counts is not None and counts.n_pos:
            precision, recall, _ = counts.precision_recall()
            self.axes.plot(recall, precision, lw=1.4, color=CURVE_COLOUR)
            tp, fp, fn = (int(v[0]) for v in counts.counts_at([self.threshold]))
            if tp + fp:
                self.axes.plot(
                    [tp / max(tp + fn, 1)],
                    [tp / (tp + fp)],
                    "o",
                    color="#ff7f0e",
                    label=f"t = {self.threshold:.3f}",
                )
                legend = self.axes.legend(
                    loc="lower left", fontsize=8, facecolor=colours["background"]
                )
                legend.get_frame().set_edgecolor(colours["lines"])
                for text in legend.get_texts():
                    text.set_color(colours["text"])
            self.axes.set_title(
                f"AP {counts.average_precision():.3f}", fontsize=9, color=colours["text"]
            )
        self.canvas.draw_idle()

    # ------------------------------------------------------------------------- compute
    @property
    def threshold(self) -> float:
        return float(self.threshold_spin.value())

    def run(self) -> None:
        """Count the voxels of the chosen map against the ground truth (in a worker)."""
        if self._worker is not None:
            return
        try:
            map_layer, truth_layer = (
                self.map_combo.current_layer(),
                self.truth_combo.current_layer(),
            )
            if map_layer is None or truth_layer is None:
                raise ValueError(
                    "choose an anomaly map (Image layer) and its ground truth (Labels layer)"
                )
            # by place, not shape alone: a pairing forced past the greyed item is refused
            check_pairing(truth_layer, map_layer, "ground truth")
            mask_layer = self.mask_combo.current_layer()
            check_pairing(mask_layer, map_layer, "brain mask")
        except ValueError as exc:
            self._fail(exc)
            return
        # only references here: the worker reads the arrays
        job = {
            "map": map_layer.data,
            "truth": truth_layer.data,
            "mask": None if mask_layer is None else mask_layer.data,
        }
        chosen = (map_layer, truth_layer, mask_layer)
        self.status.setText("computing...")
        self.start_run(count_voxels, job, lambda outcome: self._computed(outcome, chosen))

    def _computed(self, outcome: tuple[CaseCounts, np.ndarray | None], chosen: tuple) -> None:
        used = tuple(layer for layer in chosen if layer is not None)
        gone = [layer.name for layer in used if layer not in self.viewer.layers]
        if gone:  # the numbers would belong to no layer in the viewer
            self._reset_progress()
            self.status.setText(f"'{gone[0]}' was removed during the count; Compute again.")
            return
        if any(a is not b for a, b in zip(chosen, self.chosen_layers(), strict=True)):
            # the numbers would not be those of the layers chosen now
            self._reset_progress()
            self.status.setText("Other layers were chosen during the count: press Compute.")
            return
        counts, mask, lesions = outcome
        self.counts, self.lesion_counts = counts, lesions
        self._map_layer, self._mask, self._layers_used = used[0], mask, used
        self._chosen = chosen
        self.last_error = None
        self.progress_bar.setValue(self.progress_bar.maximum())
        self.status.setText(
            f"Counted {counts.n_pos + counts.n_neg:,} voxels, {counts.n_pos:,} abnormal."
        )
        self.best_button.setEnabled(counts.n_pos > 0)
        self._show_metrics()
        self._update_threshold_layer()

    # ----------------------------------------------------------------------- threshold
    def metrics(self) -> dict[str, float | None]:
        """What the panel shows: AP, AUROC, and Dice/precision/recall/FPR at the threshold."""
        counts = self.counts
        if counts is None:
            return {}
        tp, fp, fn = (int(v[0]) for v in counts.counts_at([self.threshold]))
        ap = counts.average_precision() if counts.n_pos else None
        return {
            "ap": ap,
            "auroc": counts.auroc() if counts.n_pos and counts.n_neg else None,
            "dice": float(counts.dice_at([self.threshold])[0]),
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "fpr": fp / counts.n_neg if counts.n_neg else None,
            "flagged_voxels": tp + fp,
            **self.lesion_metrics(),
        }

    def lesion_metrics(self) -> dict[str, Any]:
        """Lesions and findings at the threshold (read at the lesion grid's nearest
        threshold at or above it) and the lesion sensitivity at one false finding."""
        lesions = getattr(self, "lesion_counts", None)
        if lesions is None:
            return {}
        index = int(np.searchsorted(lesions.thresholds, self.threshold - 1e-9))
        values: dict[str, Any] = {"lesions": lesions.lesions}
        within = lesions.false_findings <= 1
        if lesions.lesions and within.any():
            values["sensitivity_at_1_false_finding"] = float(
                lesions.found[within].max() / lesions.lesions
            )
        if index < len(lesions.thresholds):
            values.update(
                lesion_threshold=float(lesions.thresholds[index]),
                lesions_found=int(lesions.found[index]),
                findings=int(lesions.findings[index]),
                false_findings=int(lesions.false_findings[index]),
            )
        return values

    def _show_metrics(self) -> None:
        values = self.metrics()

        def text(key: str) -> str:
            value = values.get(key)
            return "-" if value is None else f"{value:.3f}"

        lesion_line = ""
        if "lesions" in values:
            lesion_line = f"\n{values['lesions']} lesions"
            if "lesions_found" in values:
                lesion_line += (
                    f"; at {values['lesion_threshold']:.3f}: {values['lesions_found']} found, "
                    f"{values['false_findings']} false findings of {values['findings']}"
                )
            if "sensitivity_at_1_false_finding" in values:
                lesion_line += (
                    f"; {values['sensitivity_at_1_false_finding']:.2f} found at 1 false finding"
                )
        self.metrics_label.setText(
            f"AP {text('ap')}   AUROC {text('auroc')}\n"
            f"at {self.threshold:.3f}: Dice {text('dice')}, precision {text('precision')}, "
            f"recall {text('recall')}, voxel FPR {text('fpr')} "
            f"({values.get('flagged_voxels', 0)} voxels flagged)" + lesion_line
        )
        self._draw_curve()

    def use_best_dice(self) -> None:
        """Move the threshold to the one with the best Dice (a sweep in steps of 0.001)."""
        if self.counts is None:
            return
        threshold, _, _ = best_dice_sweep([self.counts], np.arange(SLIDER_STEPS) / SLIDER_STEPS)
        self.threshold_spin.setValue(threshold)

    def _threshold_changed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value * SLIDER_STEPS))
        self.slider.blockSignals(False)
        if self.counts is not None:
            self._show_metrics()
            self._debounce.start()

    def _update_threshold_layer(self) -> None:
        """The Labels layer of voxels at or above the threshold, over the map."""
        layer = self._map_layer
        if layer is None or layer not in self.viewer.layers:
            return
        from napari_medood.evaluation.metrics import prediction_bins, threshold_bin

        # the same reading of the map as the metrics: float16, clipped to [0, 1]
        bins = prediction_bins(layer.data).reshape(layer.data.shape)
        flagged = bins >= threshold_bin(self.threshold)
        if self._mask is not None:
            flagged &= self._mask
        self._threshold_layer = show_labels(
            self.viewer,
            self._threshold_layer,
            flagged.astype(np.uint8),
            layer,
            f"{layer.name} >= {self.threshold:.3f}",
            with_role(layer.metadata, THRESHOLD, derived_from=layer.unique_id),
            colormap=label_colormap(THRESHOLD),
            opacity=0.6,
        )
