"""The "Anomaly playground" dock widget: make anomalies by hand and see what detectors learn.

Pick a healthy scan (and its brain mask), a shape (cuboid, sphere, random brush, real lesion),
its size in mm, opacity, edge softness and texture, then click in the 2D view or press
"Random place". The anomaly is previewed in two new layers (the corrupted scan and its label
map, placed exactly over the source); Commit keeps it, Discard drops it, Undo and Clear take
committed ones back, Save writes both layers as NIfTI with the source's geometry.

"Random contrast" shows what the contrast-agnostic detector trains on: from a parcellation of
the scan (DLMUSE, say: a Labels layer on the scan's grid), every tissue gets a random
intensity, lesion-like blobs are drawn in, then blur, a bias field, gamma and noise
(:class:`~napari_medood.synth.contrast.ContrastRandomiser`, seeded by the panel's seed). The
image and its blobs appear as a scan and its ground truth over the source, ready for Detect.

The work runs off the GUI thread, with a progress bar and a Cancel button (a cancelled
anomaly or contrast adds nothing), and the source layers are never modified.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_medood._napari._layers import DISPLAY_AXCODES, METADATA_KEY, _layer_world_affine
from napari_medood._napari._roles import _TRUTH_NAME as _LESION_NAME
from napari_medood._napari._roles import (
    GROUND_TRUTH,
    ROLE_KEY,
    SCAN,
    THRESHOLD,
    label_colormap,
    role_of,
    with_role,
)
from napari_medood._napari._widgets._panel import Panel
from napari_medood._napari._widgets._pickers import (
    LayerComboBox,
    check_pairing,
    pairing_problem,
    scan_and_mask_pickers,
    world_matrix,
)
from napari_medood._napari._widgets._runs import CancellableRun
from napari_medood._napari._widgets._viewer import go_to_voxel, placement_of, unwrap
from napari_medood._progress import check_cancelled, report
from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser, ContrastSample
from napari_medood.synth.playground import TEXTURE_LABELS, AnomalySettings, Placement, Playground

if TYPE_CHECKING:
    import napari

SHAPE_LABELS = {
    "sphere": "sphere",
    "cuboid": "rotated cuboid",
    "brush": "random brush",
    "lesion": "real lesion shape",
}
#: each shape's default size (mm), chosen so that the default anomaly is a few millilitres,
#: plainly visible and within what the shipped detectors find, on the 2 mm sample: a sphere
#: of 20 mm is 528 voxels (4.2 ml). A real lesion's size is its longest side, and lesions
#: are long and thin: at 20 mm the median of 60 draws is 17 labelled voxels (0.1 ml, a
#: tenth under 1 voxel), at 50 mm 573 (4.6 ml; a tenth under 78); a random brush at 20 mm
#: is 11 voxels, at 50 mm 363 (2.9 ml)
DEFAULT_SIZE_MM = {"sphere": 20.0, "cuboid": 20.0, "brush": 50.0, "lesion": 50.0}
EDGE_LABELS = {1: "hard", 3: "soft (3 voxels)", 5: "softer (5 voxels)", 7: "softest (7 voxels)"}
PENDING_LABEL = 99  # label value of an anomaly shown but not committed
#: the tissue groups of a random contrast: DLMUSE's structures, or one per label (SynthSeg)
GROUP_LABELS = {"dlmuse": "DLMUSE structures", "labels": "every label its own"}
#: the lesions a random contrast gets: the U-Net's lesion-like blobs, or the segmenter's
#: implanted real lesions (darker or brighter, one tumour-like in a halo at times)
LESION_KINDS = {
    "blobs": "lesion-like blobs (the U-Net's)",
    "implanted": "implanted lesions (the segmenter's)",
}
#: the segmenter's recipe (configs/brain-any-seg.yaml) as the playground shows it: its
#: lesion count, and a tumour-like lesion twice as often, so that one is seen
IMPLANTED_COUNT, IMPLANTED_TUMOUR_P = (1, 4), 0.5
#: metadata keys of the layers this panel makes (never offered as a parcellation)
PLAYGROUND_KEY = "medood_playground"
CONTRAST_KEY = "medood_random_contrast"
_PARCELLATION_NAME = re.compile(r"(dlmuse|muse|parc|aseg|synthseg|atlas)", re.IGNORECASE)
#: what the status line says when a random contrast, or reading lesion masks, fails or is
#: cancelled (placing an anomaly says the panel's own texts)
CONTRAST_TEXTS = {
    "failure_text": "Could not draw a random contrast",
    "cancelled_text": "Cancelled: no random contrast was drawn.",
}
LESION_TEXTS = {
    "failure_text": "Could not read the lesion masks",
    "cancelled_text": "Cancelled: the lesion shapes are unchanged.",
}


#: the fewest distinct labels (besides 0) a label map needs to count as a parcellation when
#: its name does not say so: a brain mask has one, a lesion mask one (or a few lesion
#: classes), a DLMUSE parcellation some 150
MIN_PARCELLATION_LABELS = 4
#: the most voxels read to count a layer's labels (a strided sample: a parcellation's
#: labels are large structures, and counting must not stall the GUI on a large volume)
LABEL_COUNT_VOXELS = 1_000_000
#: the parcellation picker's choice of none
NO_PARCELLATION = "none: open a parcellation (DLMUSE, aseg, ...)"


def distinct_labels(data: Any) -> int:
    """How many distinct non-zero labels a label array holds, counted on a strided sample
    of at most :data:`LABEL_COUNT_VOXELS` voxels (0 for what is not a 3D integer array)."""
    shape = np.shape(data)
    if len(shape) != 3 or not shape[0]:
        return 0
    step = max(1, int(np.ceil((np.prod(shape, dtype=float) / LABEL_COUNT_VOXELS) ** (1 / 3))))
    try:
        sample = np.asarray(data[::step, ::step, ::step])
    except (TypeError, ValueError, IndexError):  # multiscale or otherwise not an array
        return 0
    if sample.dtype.kind not in "biu":
        return 0
    values = np.unique(sample)
    return int(np.count_nonzero(values))


def is_parcellation(layer: Any, label_count: Callable[[Any], int] | None = None) -> bool:
    """Whether a Labels layer can be a parcellation of a scan: its name says so (DLMUSE,
    aparc, aseg, SynthSeg, an atlas), or else it holds at least
    :data:`MIN_PARCELLATION_LABELS` labels (``label_count(layer)``, by default
    :func:`distinct_labels` of its data) and is no lesion mask (ground truth by its recorded
    role or its lesion words). A brain mask, a lesion mask, a threshold and this panel's own
    layers are not."""
    metadata = layer.metadata or {}
    if PLAYGROUND_KEY in metadata or CONTRAST_KEY in metadata or role_of(layer) == THRESHOLD:
        return False
    if _PARCELLATION_NAME.search(layer.name):
        return True
    # "seg" or "labels" alone make napari's guess ground truth; only a recorded role or
    # lesion words in the name mark a lesion mask, which may hold several lesion labels
    if metadata.get(ROLE_KEY) == GROUND_TRUTH or _LESION_NAME.search(layer.name):
        return False
    count = label_count(layer) if label_count is not None else distinct_labels(layer.data)
    return count >= MIN_PARCELLATION_LABELS


class ParcellationComboBox(LayerComboBox):
    """The viewer's Labels layers that are parcellations (:func:`is_parcellation`); by
    default the newest on the scan's grid whose name says parcellation, else the newest
    on it, else none (a brain mask or an MS patient's lesion mask is never a parcellation)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget, like: Any):
        from napari.layers import Labels

        super().__init__(
            viewer,
            (Labels,),
            parent,
            none_label=NO_PARCELLATION,
            exclude=(THRESHOLD,),
            like=like,
        )

    #: layer id -> (its array, how many labels it holds): an array's labels are counted
    #: once, not on every layer event the picker refreshes on
    _label_counts: dict[int, tuple[Any, int]] | None = None

    def _label_count(self, layer: Any) -> int:
        if self._label_counts is None:
            self._label_counts = {}
        known = self._label_counts.get(id(layer))
        if known is not None and known[0] is layer.data:
            return known[1]
        count = distinct_labels(layer.data)
        self._label_counts[id(layer)] = (layer.data, count)
        return count

    def layers(self) -> list[Any]:
        layers = super().layers()
        if self._label_counts:  # forget the layers that left the viewer
            alive = {id(layer) for layer in layers}
            self._label_counts = {k: v for k, v in self._label_counts.items() if k in alive}
        return [layer for layer in layers if is_parcellation(layer, self._label_count)]

    def default_layer(self, problems: dict[int, str | None] | None = None) -> Any | None:
        layers = self.layers()
        if problems is None:
            problems = {id(layer): self.problem_of(layer) for layer in layers}
        fits = [layer for layer in layers if problems.get(id(layer)) is None]
        named = [layer for layer in fits if _PARCELLATION_NAME.search(layer.name)]
        return (named or fits or [None])[-1]


def check_same_grid(parcellation: Any, source: Any) -> None:
    """Raise ValueError unless ``parcellation`` lies voxel for voxel on ``source``'s grid
    (the pickers' rule, :func:`pairing_problem`)."""
    if parcellation.ndim != 3:
        raise ValueError(f"the parcellation '{parcellation.name}' is not 3D")
    problem = pairing_problem(parcellation, source)
    if problem is not None:
        raise ValueError(
            f"the parcellation '{parcellation.name}' is not on the grid of the scan "
            f"'{source.name}' ({problem}): pick the parcellation made for this scan"
        )


def preview_anomaly(job: dict[str, Any], progress=None, cancelled=None) -> Placement:
    """Off the GUI thread: the anomaly ``job["settings"]`` describe, previewed on the session
    at ``job["centre"]`` (None: a random place); nothing changes until Commit."""
    report(progress, 0, 0, "computing the anomaly")
    return job["session"].preview(job["settings"], job["centre"], job["other"])


def read_lesion_shapes(paths: list[str], progress=None, cancelled=None):
    """Off the GUI thread: the lesions of these mask files, as a lesion shape bank."""
    from napari_medood.synth.lesions import LesionShapeBank

    report(progress, 0, 0, f"reading {len(paths)} lesion mask files")
    return LesionShapeBank.from_mask_files(paths, min_voxels=10)


def draw_random_contrast(job: dict[str, Any], progress=None, cancelled=None) -> dict[str, Any]:
    """One :class:`ContrastRandomiser` draw from a parcellation layer's data (run off the GUI
    thread: the labels are copied here, never written); returns the sample, the number of
    tissue groups present and the lesion bank used."""
    report(progress, 0, 0, "reading the parcellation")
    labels = np.array(job["labels"])  # a private copy: the layer is never written
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"the parcellation '{job['name']}' does not hold integer labels")
    if not labels.any():
        raise ValueError(f"the parcellation '{job['name']}' has no labels (all voxels are 0)")
    groups = job["groups"]
    implanted = job.get("lesions") == "implanted"
    randomiser = ContrastRandomiser(
        groups=groups,
        spacing=job["spacing"],
        lesion_bank=job["lesion_bank"],
        **({"lesions": (0, 0)} if implanted else {}),
    )
    check_cancelled(cancelled)
    report(progress, 0, 0, f"drawing a random contrast (seed {job['seed']})")
    sample = randomiser(labels, job["seed"], foreground=labels > 0)
    if implanted:
        check_cancelled(cancelled)
        report(progress, 0, 0, "implanting lesions")
        sample = implant_lesions(sample, labels > 0, job)
    present = np.unique(labels[labels > 0])
    if groups is None:
        structures, known = len(present), len(present)
    else:
        structures = len({groups.get(int(v), ("label", int(v))) for v in present})
        known = sum(int(v) in groups for v in present)
    return {
        "sample": sample,
        "structures": structures,
        "known": known,
        "bank": randomiser.lesion_bank,
    }


def implant_lesions(sample: ContrastSample, brain: np.ndarray, job: dict[str, Any]):
    """``sample`` with real lesion shapes implanted as the lesion segmenter trains on them
    (``synth.lesion_implants``, seeded by the panel's seed); its ``params["lesions"]`` list
    them as the blobs are listed, each with a voxel to go to."""
    from dataclasses import replace

    from scipy import ndimage

    from napari_medood.synth.lesion_implants import LesionImplanter

    rng = np.random.default_rng([int(job["seed"]), 24])
    implanter = LesionImplanter(
        spacing=job["spacing"], bank=job["lesion_bank"], tumour_p=IMPLANTED_TUMOUR_P
    )
    count = int(rng.integers(IMPLANTED_COUNT[0], IMPLANTED_COUNT[1] + 1))
    image, target, drawn = implanter(sample.image, brain, count, rng)
    labelled, found = ndimage.label(target > 0)
    centres = ndimage.center_of_mass(target > 0, labelled, range(1, found + 1))
    lesions = [
        {"voxels": int(d["voxels"]), "brighter": drawn["brighter"], "factor": d["factor"]}
        for d in drawn["lesions"]
    ]
    if "tumour" in drawn:
        tumour = drawn["tumour"]
        lesions.append(
            {
                "voxels": tumour["core_voxels"] + tumour["halo_voxels"],
                "brighter": drawn["brighter"],
                "factor": tumour["factor"],
                "tumour": True,
                "halo_mm": tumour["halo_mm"],
            }
        )
    # a voxel of each labelled region to go to (implanted lesions may touch)
    for index, lesion in enumerate(lesions):
        centre = centres[min(index, len(centres) - 1)] if centres else (0, 0, 0)
        lesion["centre"] = [int(round(c)) for c in centre]
    params = {**sample.params, "lesions": lesions, "implanted": True}
    return replace(sample, image=image, target=target, params=params)


class PlaygroundWidget(CancellableRun, Panel):
    """Dock widget over :class:`~napari_medood.synth.playground.Playground`."""

    cancelled_text = "Cancelled: no anomaly was placed."
    failure_text = "Could not place the anomaly"
    title = "Anomaly playground"

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        from napari.layers import Image

        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("medood-anomaly-playground")
        self.session: Playground | None = None
        self.pending: Placement | None = None
        self.last_error: str | None = None
        self._source = None
        self._mask_layer = None
        self._image_layer = None
        self._labels_layer = None
        self.lesion_bank = None  # None: the bank shipped with napari-medood
        self._default_bank = None  # the shipped bank, once a random contrast has read it
        self._contrast_layer = None
        self._blobs_layer = None
        self.last_contrast: ContrastSample | None = None

        form = QFormLayout()
        self.source_combo, self.mask_combo = scan_and_mask_pickers(
            napari_viewer, self, "voxels > 0"
        )
        self.source_combo.setToolTip("the healthy scan the anomalies are drawn into (a copy)")
        self.mask_combo.setToolTip(
            "the brain mask: anomalies are cut to it and random places are drawn inside it"
        )
        self.shape_combo = self._combo(SHAPE_LABELS)
        self.shape_combo.setToolTip(
            "the anomaly's shape: a sphere, a rotated cuboid, a random brush stroke, or a real "
            "lesion's shape from the lesion bank"
        )
        first_shape = self.shape_combo.currentData()
        self.size_spin = QDoubleSpinBox(
            minimum=1.0, maximum=500.0, value=DEFAULT_SIZE_MM[first_shape], suffix=" mm"
        )
        self.size_spin.setToolTip(
            "the diameter of a sphere, the side of a cuboid, or the longest side of a brush "
            "or real lesion (which are long and thin, so they start larger)"
        )
        self.alpha_spin = QDoubleSpinBox(minimum=0.05, maximum=1.0, value=0.8, singleStep=0.05)
        self.alpha_spin.setToolTip(
            "how much of the new texture replaces the scan inside the anomaly (1: all of it)"
        )
        self.edge_combo = self._combo(EDGE_LABELS)
        self.edge_combo.setCurrentIndex(1)
        self.edge_combo.setToolTip("how gradually the anomaly blends into the tissue at its edge")
        self.texture_combo = self._combo(TEXTURE_LABELS)
        self.texture_combo.setToolTip(
            "what fills the anomaly: this scan from elsewhere, another scan, or noise"
        )
        self.other_combo = LayerComboBox(napari_viewer, (Image,), self)
        self.other_combo.setToolTip(
            "the scan whose tissue fills the anomaly when Texture is 'another scan' (its "
            "shape must be the healthy scan's)"
        )
        self.lesion_button = QPushButton("built-in bank (600 real lesions)")
        self.lesion_button.setToolTip("Load your own lesion mask files for 'real lesion shape'")
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.seed_spin.setToolTip(
            "the random seed of the next anomaly or random contrast: the same seed and "
            "settings give the same result"
        )
        self.new_seed_check = QCheckBox("new seed after each anomaly", checked=True)
        self.new_seed_check.setToolTip(
            "add 1 to the seed after each committed anomaly or random contrast, so the next "
            "one differs"
        )
        form.addRow("Healthy scan", self.source_combo)
        form.addRow("Brain mask", self.mask_combo)
        form.addRow("Shape", self.shape_combo)
        form.addRow("Size", self.size_spin)
        form.addRow("Opacity (alpha)", self.alpha_spin)
        form.addRow("Edges", self.edge_combo)
        form.addRow("Texture", self.texture_combo)
        form.addRow("Texture scan", self.other_combo)
        form.addRow("Lesion shapes", self.lesion_button)
        form.addRow("Seed", self.seed_spin)
        form.addRow("", self.new_seed_check)

        self.click_button = QPushButton("Place by clicking", checkable=True)
        self.random_button = QPushButton("Random place")
        self.commit_button = QPushButton("Commit")
        self.discard_button = QPushButton("Discard")
        self.undo_button = QPushButton("Undo")
        self.clear_button = QPushButton("Clear")
        self.save_button = QPushButton("Save...")
        self.cancel_controls()
        for button, tip in (
            (
                self.click_button,
                "while on, a click in the view previews an anomaly at that point of the scan",
            ),
            (self.random_button, "preview an anomaly at a random place inside the brain mask"),
            (self.commit_button, "keep the previewed anomaly (its label becomes permanent)"),
            (self.discard_button, "drop the previewed anomaly; the scan is as it was before it"),
            (self.undo_button, "drop the preview, or else take back the last committed anomaly"),
            (self.clear_button, "take back every anomaly: the copy is the healthy scan again"),
            (
                self.save_button,
                "write the corrupted scan and its labels (NIfTI, the scan's geometry) and a "
                "JSON list of the anomalies into a folder",
            ),
            (self.cancel_button, "stop the computation under way; nothing is added"),
        ):
            button.setToolTip(tip)
        buttons = QGridLayout()
        for index, button in enumerate(
            (
                self.click_button,
                self.random_button,
                self.commit_button,
                self.discard_button,
                self.undo_button,
                self.clear_button,
                self.save_button,
                self.cancel_button,
            )
        ):
            buttons.addWidget(button, index // 2, index % 2)
        self.go_check = QCheckBox("go to each new anomaly", checked=True)
        self.go_check.setToolTip("move the view's slices to each new anomaly or lesion")

        # what the contrast-agnostic detector trains on, drawn from a parcellation
        contrast_box = QGroupBox("Random contrast")
        contrast_box.setToolTip(
            "The training images of the contrast-agnostic detector: every tissue of a "
            "parcellation gets a random intensity, lesion-like blobs are drawn in, then blur, "
            "a bias field, gamma and noise. Uses the Seed above."
        )
        self.parcellation_combo = ParcellationComboBox(
            napari_viewer, self, self.source_combo.current_layer
        )
        self.parcellation_combo.follow(self.source_combo)
        self.parcellation_combo.setToolTip(
            "A parcellation of the healthy scan (DLMUSE, say), on the scan's grid: a label map "
            "whose name says so or with several labels; a brain or lesion mask is none"
        )
        self.groups_combo = self._combo(GROUP_LABELS)
        self.groups_combo.setToolTip(
            "DLMUSE structures: the labels of one structure (the cortex, the white-matter "
            "lobes, ...) share an intensity. Every label its own: one intensity per label."
        )
        self.lesions_combo = self._combo(LESION_KINDS)
        self.lesions_combo.setToolTip(
            "The U-Net's lesion-like blobs, or the lesion segmenter's training lesions: real "
            "lesion shapes darker or brighter than the tissue they replace, and at times a "
            "tumour-like lesion, a core inside a milder halo (brain-any-seg)"
        )
        self.contrast_button = QPushButton("Draw a random contrast")
        self.contrast_button.setToolTip(
            "draw a training image of random contrast from the parcellation (with the Seed); "
            "it appears over the healthy scan, its lesions as ground truth"
        )
        contrast_form = QFormLayout()
        contrast_form.addRow("Parcellation", self.parcellation_combo)
        contrast_form.addRow("Tissue groups", self.groups_combo)
        contrast_form.addRow("Lesions", self.lesions_combo)
        contrast_layout = QVBoxLayout(contrast_box)
        contrast_layout.addLayout(contrast_form)
        contrast_layout.addWidget(self.contrast_button)

        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.go_check)
        layout.addWidget(contrast_box)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.click_button.toggled.connect(self._toggle_clicking)
        self.random_button.clicked.connect(lambda: self.place(None))
        self.commit_button.clicked.connect(self.commit)
        self.discard_button.clicked.connect(self.discard)
        self.undo_button.clicked.connect(self.undo)
        self.clear_button.clicked.connect(self.clear)
        self.save_button.clicked.connect(self._ask_save)
        self.lesion_button.clicked.connect(self._ask_lesion_masks)
        self.contrast_button.clicked.connect(self.draw_contrast)
        self.texture_combo.currentIndexChanged.connect(self._update_enabled)
        self._shape = first_shape
        self.shape_combo.currentIndexChanged.connect(self._shape_changed)
        self.source_combo.currentIndexChanged.connect(self._source_changed)
        self.mask_combo.currentIndexChanged.connect(self._source_changed)
        self._pick_matching_mask()
        self._update_enabled()

    # ------------------------------------------------------------------------ settings
    @staticmethod
    def _combo(labels: dict) -> QComboBox:
        combo = QComboBox()
        for key, text in labels.items():
            combo.addItem(text, key)
        return combo

    def settings(self) -> AnomalySettings:
        """The anomaly the controls describe now."""
        return AnomalySettings(
            kind=self.shape_combo.currentData(),
            size_mm=self.size_spin.value(),
            alpha=self.alpha_spin.value(),
            kernel_size=self.edge_combo.currentData(),
            texture=self.texture_combo.currentData(),
            seed=self.seed_spin.value(),
        )

    def _shape_changed(self, *args: Any) -> None:
        """A new shape starts at its own default size, unless the user set the size."""
        shape = self.shape_combo.currentData()
        if self.size_spin.value() == DEFAULT_SIZE_MM[self._shape]:
            self.size_spin.setValue(DEFAULT_SIZE_MM[shape])
        self._shape = shape

    def _pick_matching_mask(self) -> None:
        self.mask_combo.choose_default()
        self.parcellation_combo.choose_default()

    def _show_running(self) -> None:
        # several buttons start runs here, and others wait for them
        self._update_enabled()

    def _update_enabled(self, *args: Any) -> None:
        busy = self.busy
        has_pending = self.pending is not None
        has_history = self.session is not None and self.session.count > 0
        self.other_combo.setEnabled(self.texture_combo.currentData() == "layer")
        self.random_button.setEnabled(not busy)
        self.contrast_button.setEnabled(not busy)
        self.lesion_button.setEnabled(not busy)
        self.cancel_button.setEnabled(self._worker is not None)
        self.commit_button.setEnabled(has_pending and not busy)
        self.discard_button.setEnabled(has_pending and not busy)
        self.undo_button.setEnabled((has_pending or has_history) and not busy)
        self.clear_button.setEnabled((has_pending or has_history) and not busy)
        self.save_button.setEnabled(has_history and not busy)

    def _source_changed(self, *args: Any) -> None:
        if self.sender() is self.source_combo:
            self._pick_matching_mask()
        if (
            self.source_combo.current_layer() is not self._source
            or self.mask_combo.current_layer() is not self._mask_layer
        ):
            self.session = None
            self.pending = None
            self._image_layer = self._labels_layer = None
        self._update_enabled()

    # ------------------------------------------------------------------------- session
    def _ensure_session(self) -> Playground:
        source = self.source_combo.current_layer()
        if source is None:
            raise ValueError("open a healthy scan first (File > Open, or File > Open Sample)")
        if source.data.ndim != 3:
            raise ValueError(f"'{source.name}' is {source.data.ndim}D; the playground needs 3D")
        mask_layer = self.mask_combo.current_layer()
        if self.session is not None and source is self._source and mask_layer is self._mask_layer:
            return self.session
        mask = None
        if mask_layer is not None:
            check_pairing(mask_layer, source, "brain mask")  # by place, not shape alone
            mask = np.asarray(mask_layer.data)
        from_reader = (
            METADATA_KEY in source.metadata
            and source.rotate is not None
            and np.allclose(np.asarray(source.rotate), np.eye(3))
        )
        # a private copy: the source layer's array is never written
        self.session = Playground(
            np.array(source.data),
            np.abs(np.asarray(source.scale)),
            mask,
            DISPLAY_AXCODES if from_reader else None,
        )
        self._source, self._mask_layer = source, mask_layer
        self.pending = None
        self._image_layer = self._labels_layer = None
        return self.session

    def place(self, centre: tuple[int, int, int] | None) -> None:
        """Preview an anomaly at a voxel of the source layer (None: a random place)."""
        if self.busy:
            return
        try:
            session = self._ensure_session()
            settings = self.settings()
            other = None
            if settings.texture == "layer":
                other_layer = self.other_combo.current_layer()
                if other_layer is None or other_layer.data.shape != session.image.shape:
                    raise ValueError(
                        "choose a texture scan with the same shape as the healthy scan"
                    )
                other = np.asarray(other_layer.data)
        except ValueError as exc:
            self._fail(exc)
            return
        self.status.setText("computing...")
        job = {"session": session, "settings": settings, "centre": centre, "other": other}
        self.start_run(preview_anomaly, job, self._show_preview)

    def _show_preview(self, placement: Placement) -> None:
        self._restore_pending_region()
        self.pending = placement
        image, labels = self._output_layers()
        image.data[placement.region] = placement.values
        shown = labels.data[placement.region]
        shown[placement.label] = PENDING_LABEL
        image.refresh()
        labels.refresh()
        if self.go_check.isChecked():
            go_to_voxel(self.viewer, self._image_layer, placement.centre)
        self.last_error = None
        self.status.setText(
            f"Preview at voxel {list(placement.centre)}: {placement.params['voxels']} voxels "
            f"changed. Commit to keep it, Discard to drop it."
        )
        self._update_enabled()

    def _output_layers(self):
        """The corrupted-scan and label layers, created over the source on first use."""
        session = self.session
        source = self._source
        alive = [
            layer
            for layer in (self._image_layer, self._labels_layer)
            if layer is not None and layer in self.viewer.layers
        ]
        if len(alive) == 2:
            return self._image_layer, self._labels_layer
        placement = placement_of(source)
        # the new scan must not take the place of its source in the pickers
        self.source_combo.keep_current()
        self.mask_combo.keep_current()
        metadata = dict(source.metadata)
        metadata["medood_playground"] = {"source_layer": source.name}
        self._image_layer = unwrap(
            self.viewer.add_image(
                session.result.copy(),
                name=f"{source.name} + anomalies",
                colormap="gray",
                contrast_limits=source.contrast_limits,
                metadata=with_role(metadata, SCAN),
                **placement,
            )
        )
        self._labels_layer = unwrap(
            self.viewer.add_labels(
                session.labels.copy(),
                name=f"{source.name} anomaly labels",
                opacity=0.8,
                metadata=with_role(metadata, GROUND_TRUTH),
                colormap=label_colormap(GROUND_TRUTH, {PENDING_LABEL: "#ffdc00"}),
                **placement,
            )
        )
        self._labels_layer.contour = 1  # outlines: the anomaly itself stays visible
        return self._image_layer, self._labels_layer

    def _restore_pending_region(self) -> None:
        if self.pending is None or self.session is None or self._image_layer is None:
            self.pending = None
            return
        region = self.pending.region
        self._image_layer.data[region] = self.session.result[region]
        self._labels_layer.data[region] = self.session.labels[region]
        self._image_layer.refresh()
        self._labels_layer.refresh()
        self.pending = None

    def _sync_all(self) -> None:
        if self._image_layer is not None and self.session is not None:
            self._image_layer.data[...] = self.session.result
            self._labels_layer.data[...] = self.session.labels
            self._image_layer.refresh()
            self._labels_layer.refresh()

    # --------------------------------------------------------------------- the actions
    def commit(self) -> None:
        """Keep the previewed anomaly."""
        if self.pending is None or self.session is None:
            return
        placement, self.pending = self.pending, None
        value = self.session.commit(placement)
        self._labels_layer.data[placement.region] = self.session.labels[placement.region]
        self._labels_layer.refresh()
        if self.new_seed_check.isChecked():
            self.seed_spin.setValue(self.seed_spin.value() + 1)
        self.status.setText(f"{self.session.count} anomalies (last: label {value}).")
        self._update_enabled()

    def discard(self) -> None:
        """Drop the previewed anomaly."""
        self._restore_pending_region()
        self._update_enabled()

    def undo(self) -> None:
        """Drop the preview, or else take back the last committed anomaly."""
        if self.pending is not None:
            self.discard()
            return
        if self.session is not None and self.session.undo():
            self._sync_all()
            self.status.setText(f"{self.session.count} anomalies.")
        self._update_enabled()

    def clear(self) -> None:
        """Take back every anomaly."""
        self._restore_pending_region()
        if self.session is not None:
            self.session.clear()
            self._sync_all()
            self.status.setText("No anomalies.")
        self._update_enabled()

    def save_to(self, folder: str | Path) -> list[Path]:
        """Write the committed corrupted scan, its labels (NIfTI, through the plugin writer,
        with the source's geometry) and a JSON list of the anomalies into ``folder``."""
        from napari_medood._napari._writer import write_image, write_labels
        from napari_medood.io.atomic import write_text_atomic

        if self.session is None or self._image_layer is None:
            raise ValueError("place and commit an anomaly first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self._source.name)
        image_meta = self._image_layer.as_layer_data_tuple()[1]
        labels_meta = self._labels_layer.as_layer_data_tuple()[1]
        written = [
            Path(
                write_image(
                    str(folder / f"{stem}_anomalies.nii.gz"), self.session.result, image_meta
                )[0]
            ),
            Path(
                write_labels(
                    str(folder / f"{stem}_anomaly_labels.nii.gz"), self.session.labels, labels_meta
                )[0]
            ),
        ]
        record = folder / f"{stem}_anomalies.json"
        write_text_atomic(
            record,
            json.dumps(
                {"source": self._source.name, "anomalies": self.session.placements()}, indent=1
            )
            + "\n",
        )
        written.append(record)
        self.status.setText(f"Saved {len(written)} files to {folder}.")
        return written

    def _ask_save(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the corrupted scan and labels to")
        if folder:
            try:
                self.save_to(folder)
            except (OSError, ValueError) as exc:
                self._fail(exc, failure_text="Could not save")

    def load_lesion_masks(self, paths: list[str | Path]) -> None:
        """Use the lesions of these mask files for "real lesion shape", read off the GUI
        thread (an unreadable file is reported by name and the current shapes are kept)."""
        from napari_medood.synth.lesions import LesionShapeBank

        if self.busy:
            return
        paths = [str(p) for p in paths]
        self.status.setText(f"reading {len(paths)} lesion mask files...")

        def use(bank: LesionShapeBank) -> None:
            self.lesion_bank = bank
            if self.session is not None:
                self.session.lesion_bank = bank
            self.lesion_button.setText(f"{len(bank)} lesions from {len(paths)} files")
            self.status.setText(f"Lesion shapes: {len(bank)} lesions from {len(paths)} files.")

        self.start_run(read_lesion_shapes, paths, use, **LESION_TEXTS)

    def _ask_lesion_masks(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Lesion mask files", "", "NIfTI (*.nii *.nii.gz);;All files (*)"
        )
        if paths:
            self.load_lesion_masks(paths)

    # ----------------------------------------------------------------- random contrast
    def draw_contrast(self) -> None:
        """Draw a training image of random contrast from the chosen parcellation (with the
        panel's seed), off the GUI thread; it appears over the healthy scan."""
        if self.busy:
            return
        source = self.source_combo.current_layer()
        parcellation = self.parcellation_combo.current_layer()
        try:
            if source is None:
                raise ValueError("open a healthy scan first (File > Open, or File > Open Sample)")
            if source.data.ndim != 3:
                raise ValueError(f"'{source.name}' is {source.data.ndim}D; the playground needs 3D")
            if parcellation is None:
                raise ValueError(
                    "open a parcellation of the scan (a Labels layer such as its DLMUSE "
                    "label map) and pick it under Random contrast"
                )
            check_same_grid(parcellation, source)
        except ValueError as exc:
            self._fail(exc, **CONTRAST_TEXTS)
            return
        seed = self.seed_spin.value()
        grouping = self.groups_combo.currentData()
        # only references and small state here: the labels are copied in the worker
        job = {
            "labels": parcellation.data,
            "name": parcellation.name,
            "groups": DLMUSE_STRUCTURES if grouping == "dlmuse" else None,
            "spacing": tuple(float(s) for s in np.abs(np.asarray(source.scale, dtype=float))),
            "seed": seed,
            "lesion_bank": self._default_bank if self.lesion_bank is None else self.lesion_bank,
            "lesions": self.lesions_combo.currentData(),
        }
        context = {
            "source": source,
            "parcellation": parcellation.name,
            "placement": placement_of(source),
            "metadata": dict(source.metadata),
            "seed": seed,
            "grouping": grouping,
        }
        self.status.setText(f"drawing a random contrast (seed {seed})...")
        self.start_run(
            draw_random_contrast,
            job,
            lambda outcome: self._show_contrast(outcome, context),
            **CONTRAST_TEXTS,
        )

    def _show_contrast(self, outcome: dict[str, Any], context: dict[str, Any]) -> None:
        sample: ContrastSample = outcome["sample"]
        source, seed = context["source"], context["seed"]
        if self.lesion_bank is None and outcome["bank"] is not None:
            self._default_bank = outcome["bank"]
        self.last_contrast = sample
        blobs = [b for b in sample.params["lesions"] if b.get("voxels", 0) > 0]
        metadata = dict(context["metadata"])
        metadata.pop(PLAYGROUND_KEY, None)
        metadata[CONTRAST_KEY] = {
            "source_layer": source.name,
            "parcellation_layer": context["parcellation"],
            "seed": seed,
            "groups": GROUP_LABELS[context["grouping"]],
            "lesions": blobs,
        }
        placement = context["placement"]
        # the new scan must not take the place of its source in the pickers
        for combo in (self.source_combo, self.mask_combo, self.parcellation_combo):
            combo.keep_current()
        self._contrast_layer = self._put_layer(
            self._contrast_layer,
            "image",
            sample.image,
            f"{source.name} random contrast (seed {seed})",
            with_role(metadata, SCAN),
            placement,
            colormap="gray",
            # brighter implanted lesions may pass 1, the top of a random contrast's tissue
            contrast_limits=(0.0, max(1.0, float(np.max(sample.image)))),
        )
        target = (sample.target > 0.5).astype(np.uint8)
        if target.any():
            self._blobs_layer = self._put_layer(
                self._blobs_layer,
                "labels",
                target,
                f"{source.name} random-contrast blobs",
                with_role(metadata, GROUND_TRUTH),
                placement,
                colormap=label_colormap(GROUND_TRUTH),
                opacity=0.8,
            )
            self._blobs_layer.contour = 1  # outlines: the blob itself stays visible
            if self.go_check.isChecked():
                go_to_voxel(self.viewer, self._contrast_layer, blobs[0]["centre"])
        else:
            if self._blobs_layer is not None and self._blobs_layer in self.viewer.layers:
                self.viewer.layers.remove(self._blobs_layer)
            self._blobs_layer = None
        if self.new_seed_check.isChecked() and self.seed_spin.value() == seed:
            self.seed_spin.setValue(seed + 1)
        self.last_error = None
        self.status.setText(contrast_summary(seed, outcome, context["grouping"], blobs))
        self._update_enabled()

    def _put_layer(self, existing, kind, data, name, metadata, placement, **style):
        """``existing`` (still in the viewer, same shape and place) given ``data``, or else a
        new layer placed with ``placement`` in its stead."""
        if existing is not None and existing in self.viewer.layers:
            same_place = existing.data.shape == data.shape and np.allclose(
                world_matrix(existing), _layer_world_affine(placement, ndim=3)
            )
            if same_place:
                existing.data = data
                existing.name = name
                existing.metadata = metadata
                if kind == "image":
                    existing.contrast_limits = style["contrast_limits"]
                return existing
            self.viewer.layers.remove(existing)
        add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
        return unwrap(add(data, name=name, metadata=metadata, **style, **placement))

    # ------------------------------------------------------------------------ clicking
    def _toggle_clicking(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not on and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer: Any, event: Any) -> None:
        """Mouse press in the viewer: place the anomaly at the clicked voxel of the scan."""
        if getattr(event, "type", "mouse_press") != "mouse_press":
            return
        source = self.source_combo.current_layer()
        if source is None:
            return
        voxel = np.round(np.asarray(source.world_to_data(event.position))[-3:]).astype(int)
        if np.any(voxel < 0) or np.any(voxel >= np.asarray(source.data.shape)):
            self.status.setText("Click inside the scan.")
            return
        self.place(tuple(int(v) for v in voxel))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self._toggle_clicking(False)
        super().closeEvent(event)


def contrast_summary(seed: int, outcome: dict[str, Any], grouping: str, blobs: list) -> str:
    """One line on a random contrast: its seed, its tissue groups, its blobs."""
    count = outcome["structures"]
    if grouping == "dlmuse":
        tissues = f"{count} structure{'s' * (count != 1)}"
        if outcome["known"] == 0:
            tissues += " (no DLMUSE label in this parcellation: one intensity per label)"
    else:
        tissues = f"{count} label{'s' * (count != 1)}, each its own intensity"
    tumours = [b for b in blobs if b.get("tumour")]
    if tumours or any("factor" in b for b in blobs):  # the segmenter's implanted lesions
        lesions = len(blobs) - len(tumours)
        polarity = "brighter" if blobs[0]["brighter"] else "darker"
        found = f"{lesions} implanted lesion{'s' * (lesions != 1)} ({polarity})"
        if tumours:
            found += f" and a tumour-like lesion in a {tumours[0]['halo_mm']:g} mm halo"
    elif blobs:
        kinds = ", ".join("brighter" if b["brighter"] else "darker" for b in blobs)
        found = f"{len(blobs)} lesion-like blob{'s' * (len(blobs) != 1)} ({kinds})"
    else:
        found = "no lesion-like blob"
    return f"random contrast, seed {seed}: {tissues}, {found}"
