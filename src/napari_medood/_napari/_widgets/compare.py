"""The "Compare two models" panel: two maps of one scan, their difference, and where they
disagree (``napari_medood.evaluation.compare``).

Choose the scan and its brain mask, model A and model B (any two models that give a map),
where they run, and the threshold each uses when it has no calibration that holds for the
run. Run works off the GUI thread, with progress through both models and a Cancel button.
It adds four layers placed exactly over the scan: each model's map (hidden, a click away),
A - B (red where A is higher, blue where B is, transparent where they agree), and a Labels
layer of which model flags each voxel (red A only, blue B only, yellow both), each named by
the scan and the two models; a legend under the result says what the colours mean, with the
models' names. Each model flags voxels above its card's calibrated threshold where that
holds for the run (the panel says which before Run), else above its Threshold. Loading each
model is said in the status line. The panel says how much each flags, alone and together,
and the Dice of the two. The scan and mask layers are only read; running the same pair on
the same scan again replaces the panel's own layers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._roles import ANOMALY_MAP, BY_PRODUCT, THRESHOLD, with_role
from napari_medood._napari._widgets._panel import Panel, show_notes, wrapping_label
from napari_medood._napari._widgets._pickers import scan_and_mask_pickers
from napari_medood._napari._widgets._runs import CancellableRun, job_volume, scan_job

if TYPE_CHECKING:
    import napari

#: the metadata key of the panel's own layers
COMPARISON_KEY = "medood_comparison"
#: the panel's outputs, in the order they are stacked (the last on top)
OUTPUTS = ("map_a", "map_b", "difference", "disagreement")
READING, PREPARING = "reading the layers", "preparing the result layers"
#: the disagreement labels' colours: A's side red and B's blue, as in the difference layer
DISAGREEMENT_COLOURS = {1: "#ff4d4d", 2: "#4d88ff", 3: "#ffd700"}
THRESHOLD_TIP = (
    "flag this model's voxels above this value when it has no calibrated threshold that holds "
    "for this run (a calibrated model, given a brain mask, uses its card's threshold)"
)
#: what the difference layer's colours mean (the legend and the layer agree)
DIFFERENCE_COLOURS = {"a_higher": "#ff2619", "b_higher": "#1a59ff"}


def model_card(model: str) -> dict | None:
    """A model's card (None for a baseline, or a card that cannot be read)."""
    from napari_medood.errors import MedoodError
    from napari_medood.models.checkpoint import read_card, resolve_model

    try:
        return read_card(resolve_model(model))
    except (MedoodError, OSError, ValueError):
        return None


def threshold_note(which: str, model: str | None, mask_given: bool) -> str:
    """Which threshold model ``which`` will flag voxels above in a run with (or without) a
    brain mask: its card's calibrated one where that holds, else the panel's own."""
    from napari_medood.detectors.base import MASK_FOREGROUND, MASK_GIVEN
    from napari_medood.detectors.calibration import calibrated_threshold

    if not model:
        return f"{which}: no model"
    name = _display_name(model)
    card = model_card(model)
    threshold = calibrated_threshold(card)
    if threshold is None:
        return f"{which}: {name} has no calibration: Threshold {which}"
    measured = (card["calibration"].get("made_with") or {}).get("mask", MASK_GIVEN)
    if measured == (MASK_GIVEN if mask_given else MASK_FOREGROUND):
        return f"{which}: {name} at its calibrated threshold {threshold:.4g}"
    if measured == MASK_GIVEN:  # calibrated in brain masks, run without one
        return (
            f"{which}: {name}'s calibrated threshold {threshold:.4g} holds in a brain mask "
            f"(or a skull-stripped scan's brain); else Threshold {which}"
        )
    return f"{which}: {name}'s calibration holds without a mask only: Threshold {which}"


def legend_html(scan: str, name_a: str, name_b: str) -> str:
    """What the colours of a comparison's layers mean, naming the two models."""
    from html import escape

    def swatch(colour: str) -> str:
        return f'<span style="color:{colour}; font-size:large;">&#9632;</span>'

    a, b, on = escape(name_a), escape(name_b), escape(scan)
    return (
        f"<b>Where they disagree</b> on {on}:<br>"
        f"{swatch(DISAGREEMENT_COLOURS[1])} A only: {a}<br>"
        f"{swatch(DISAGREEMENT_COLOURS[2])} B only: {b}<br>"
        f"{swatch(DISAGREEMENT_COLOURS[3])} both<br>"
        f"<b>A &minus; B</b>: {swatch(DIFFERENCE_COLOURS['a_higher'])} {a} higher, "
        f"{swatch(DIFFERENCE_COLOURS['b_higher'])} {b} higher, clear where they agree"
    )


@dataclass
class ComparisonOutcome:
    """What the worker hands to the GUI thread: the summary and layers ready to add."""

    summary: dict
    notes: tuple[str, ...]
    layers: dict[str, Any] = field(default_factory=dict)  # OUTPUTS -> napari layer, not added


def difference_colormap():
    """Diverging, centred on 0: blue (B higher) through transparent (no difference) to red
    (A higher), so that the scan shows through where the two maps agree."""
    from matplotlib.colors import to_rgba
    from napari.utils.colormaps import Colormap

    return Colormap(
        [
            to_rgba(DIFFERENCE_COLOURS["b_higher"]),
            [1.0, 1.0, 1.0, 0.0],
            to_rgba(DIFFERENCE_COLOURS["a_higher"]),
        ],
        name="medood A - B",
    )


def disagreement_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", **DISAGREEMENT_COLOURS}
    )


class CompareWidget(CancellableRun, Panel):
    """Dock panel over :func:`napari_medood.evaluation.compare.compare_models`."""

    cancelled_text = "Cancelled: no layer was added."
    failure_text = "Could not compare"
    title = "Compare two models"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from magicgui.widgets import ComboBox, Container, FloatSpinBox

        from napari_medood.detectors import default_model
        from napari_medood.device import available_devices
        from napari_medood.evaluation.compare import DEFAULT_THRESHOLD, map_models

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-compare")
        self.last_summary: dict | None = None
        self.last_error: str | None = None
        self.notes: tuple[str, ...] = ()
        self._worker = None
        self._cancel = threading.Event()
        self._source = None
        self._scan_name = ""
        self._pair: tuple[str, str] = ("", "")
        self._pending_steps = 0

        self.image_combo, self.mask_combo = scan_and_mask_pickers(napari_viewer, self)
        models = map_models()
        first = default_model() if default_model() in models else (models or [None])[0]
        second = next((m for m in models if m != first), first)
        # magicgui builds the value widgets of the run options
        self.model_a_choice = ComboBox(label="Model A", choices=models, value=first)
        self.model_b_choice = ComboBox(label="Model B", choices=models, value=second)
        self.threshold_a_spin = FloatSpinBox(
            label="Threshold A", min=0.0, max=1.0, step=0.01, value=DEFAULT_THRESHOLD
        )
        self.threshold_b_spin = FloatSpinBox(
            label="Threshold B", min=0.0, max=1.0, step=0.01, value=DEFAULT_THRESHOLD
        )
        for spin in (self.threshold_a_spin, self.threshold_b_spin):
            spin.tooltip = THRESHOLD_TIP
        self.model_a_choice.tooltip = "model A: its map's higher values show red in A - B"
        self.model_b_choice.tooltip = "model B: its map's higher values show blue in A - B"
        self.device_choice = ComboBox(label="Device", choices=available_devices())
        self.device_choice.tooltip = "where both models run (cpu, or a GPU)"
        self.options = Container(
            widgets=[
                self.model_a_choice,
                self.threshold_a_spin,
                self.model_b_choice,
                self.threshold_b_spin,
                self.device_choice,
            ]
        )
        self.options.margins = (0, 0, 0, 0)
        #: which threshold each model will be read at, for the chosen models and mask
        self.thresholds_label = wrapping_label()
        buttons = self.run_controls()
        self.run_button.setToolTip(
            "run both models on the scan (in its brain mask) and add their maps, A - B and "
            "where they disagree over the scan"
        )
        self.cancel_button.setToolTip("stop both models; no layer is added")
        self.image_combo.setToolTip("the scan both models read")
        self.mask_combo.setToolTip(
            "the scan's brain mask: both models read it, and only voxels inside it are compared"
        )
        self.summary_label = wrapping_label()
        #: what the colours of the result layers mean, with the two models' names
        self.legend = wrapping_label()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.hide()
        self.notes_label = wrapping_label()
        self.notes_label.setStyleSheet("color: #ffb347;")
        self.notes_label.hide()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Scan", self.image_combo)
        form.addRow("Brain mask", self.mask_combo)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addWidget(self.options.native)
        layout.addWidget(self.thresholds_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.legend)
        layout.addWidget(self.notes_label)
        layout.addStretch(1)

        self.image_combo.currentIndexChanged.connect(lambda *_: self.mask_combo.choose_default())
        for choice in (self.model_a_choice, self.model_b_choice):
            choice.changed.connect(self._show_thresholds)
        self.mask_combo.currentIndexChanged.connect(self._show_thresholds)
        self.mask_combo.choose_default()
        self._show_thresholds()

    def _show_thresholds(self, *args: Any) -> None:
        mask_given = self.mask_combo.current_layer() is not None
        self.thresholds_label.setText(
            "\n".join(
                threshold_note(which, choice.value, mask_given)
                for which, choice in (("A", self.model_a_choice), ("B", self.model_b_choice))
            )
        )

    # ---------------------------------------------------------------------------- run
    def run(self) -> None:
        """Start both models on the chosen scan, off the GUI thread."""
        if self._worker is not None:
            return
        source = self.image_combo.current_layer()
        mask_layer = self.mask_combo.current_layer()
        model_a, model_b = self.model_a_choice.value, self.model_b_choice.value
        if source is None:
            self._fail(ValueError("open a scan first (File > Open, or File > Open Sample)"))
            return
        if not model_a or not model_b:
            self._fail(ValueError("no model that gives an anomaly map is installed"))
            return
        if model_a == model_b:
            self._fail(ValueError(f"choose two different models (both are {model_a})"))
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
            "model_a": model_a,
            "model_b": model_b,
            "threshold_a": float(self.threshold_a_spin.value),
            "threshold_b": float(self.threshold_b_spin.value),
            "device": self.device_choice.value,
            "source_layer": source.name,
            "source_id": str(source.unique_id),
        }
        self._source, self._scan_name = source, source.name
        self._pair = (model_a, model_b)
        self.notes = ()
        self.notes_label.hide()
        self.status.setText(f"{model_a} vs {model_b}: starting...")
        self.start_run(compare_job, job, self._show)

    # ------------------------------------------------------------------------- result
    def _show(self, outcome: ComparisonOutcome | None) -> None:
        from napari_medood.evaluation.compare import summary_lines

        if outcome is None:  # quit before the end
            return
        self.last_summary = outcome.summary
        self.last_error = None
        self.notes = outcome.notes
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.status.setText("Done.")
        self.summary_label.setText("\n".join(summary_lines(outcome.summary)))
        self.legend.setText(
            legend_html(self._scan_name, *(_display_name(model) for model in self._pair))
        )
        self.legend.show()
        if self.notes:
            show_notes(self.notes_label, "Before you read this result:", self.notes)
        source = self._source
        if source not in self.viewer.layers:  # the scan went away during the run
            return
        previous = self.outputs_of(source, self._pair)
        # each layer napari must build a visual for gets its own turn of the event loop,
        # so that the window keeps responding while the result appears
        self._run_steps(
            [
                (lambda key=key: self._place(key, outcome.layers[key], previous.get(key)))
                for key in OUTPUTS
            ]
        )

    def _place(self, key: str, layer: Any, previous: Any) -> None:
        """Add ``layer``, or, after a run of the same pair on the same scan, put its data
        into the layer that run made (which keeps its place, visibility and opacity)."""
        layers = self.viewer.layers
        if (
            previous is not None
            and previous in layers
            and type(previous) is type(layer)
            and previous.data.shape == layer.data.shape
        ):
            previous.data = layer.data
            if hasattr(layer, "contrast_limits"):
                previous.contrast_limits_range = layer.contrast_limits_range
                previous.contrast_limits = layer.contrast_limits
            previous.metadata = layer.metadata
            previous.name = layer.name
            return
        if previous is not None and previous in layers:
            index = layers.index(previous)
            layers.remove(previous)
            layers.insert(index, layer)
        else:
            layers.append(layer)

    def outputs_of(self, source: Any, pair: tuple[str, str]) -> dict[str, Any]:
        """The panel's layers from comparing ``pair`` on ``source``, by output."""
        key = str(source.unique_id)
        found = {}
        for layer in self.viewer.layers:
            made = layer.metadata.get(COMPARISON_KEY)
            if made and made.get("source_id") == key and tuple(made.get("models", ())) == pair:
                found[made.get("output")] = layer
        return found


def _display_name(model: str) -> str:
    """A model's name for layer names (a checkpoint folder by its last part)."""
    from pathlib import Path

    return Path(model).name or model


def compare_job(job: dict, progress=None, cancelled=None) -> ComparisonOutcome:
    """The whole run, off the GUI thread: layers to volumes, both models, layers back."""
    from napari.layers import Image, Labels

    from napari_medood._napari._layers import volume_to_layer_data
    from napari_medood._progress import check_cancelled
    from napari_medood.detectors import get_detector
    from napari_medood.evaluation.compare import compare_models

    def say(message: str) -> None:
        if progress is not None:
            progress(0, 0, message)

    say(READING)
    volume, mask = job_volume(job)
    # the models read a copy: nothing they do can reach the user's layer
    volume = volume.with_data(np.array(volume.data, copy=True))
    check_cancelled(cancelled)
    detectors = []
    for which, key in (("A", "model_a"), ("B", "model_b")):
        # building a model reads its card and weights and, the first time, imports torch
        # and MONAI: seconds with no step of its own to report, so say what is loading
        named = f"model {which} ({_display_name(job[key])})"
        say(f"loading {named}...")
        detectors.append(get_detector(job[key], device=job["device"], extra_maps=False))
        say(f"{named} loaded")
        check_cancelled(cancelled)
    comparison = compare_models(
        *detectors,
        volume,
        mask,
        threshold_a=job["threshold_a"],
        threshold_b=job["threshold_b"],
        progress=progress,
        cancelled=cancelled,
    )
    check_cancelled(cancelled)
    say(PREPARING)
    name_a, name_b = (_display_name(job[key]) for key in ("model_a", "model_b"))
    # each name says the scan: two comparisons on two scans must not look alike
    scan, pair = job["source_layer"], f"({name_a} vs {name_b})"
    placement = {k: v for k, v in job["state"].items() if k != "metadata"}

    def metadata(output: str, role: str, extra: dict) -> dict:
        made = {
            "source_id": job["source_id"],
            "source_layer": job["source_layer"],
            "models": [job["model_a"], job["model_b"]],
            "output": output,
            "summary": comparison.summary,
        }
        return with_role({COMPARISON_KEY: made, **extra}, role)

    def layer_of(output: str, volume, kind: str, name: str, role: str, **style):
        data, kwargs, _ = volume_to_layer_data(volume, kind, name=name)
        # the source's voxel order and affine, so that saving the layer writes them exactly
        kwargs["metadata"] = metadata(output, role, kwargs["metadata"])
        kwargs.update(style)
        kwargs.update(placement)  # exactly over the scan, as it is shown
        return (Labels if kind == "labels" else Image)(data, **kwargs)

    layers = {}
    for output, volume_out, name in (
        ("map_a", comparison.map_a, f"{scan} {name_a} map"),
        ("map_b", comparison.map_b, f"{scan} {name_b} map"),
    ):
        layers[output] = layer_of(
            output,
            volume_out,
            "image",
            name,
            ANOMALY_MAP,
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            visible=False,
        )
    difference = comparison.difference.data
    reach = float(np.abs(difference).max()) if difference.size else 0.0
    reach = reach if reach > 0 else 1.0  # identical maps: any symmetric range shows nothing
    layers["difference"] = layer_of(
        "difference",
        comparison.difference,
        "image",
        f"{scan} A\u2212B {pair}",
        BY_PRODUCT,
        colormap=difference_colormap(),
        contrast_limits=(-reach, reach),
        blending="translucent",
    )
    layers["disagreement"] = layer_of(
        "disagreement",
        comparison.disagreement,
        "labels",
        f"{scan} disagreement {pair}",
        THRESHOLD,
        colormap=disagreement_colormap(),
        opacity=0.6,
    )
    return ComparisonOutcome(comparison.summary, comparison.notes, layers)
