"""Pieces shared by the dock widgets: role-aware layer pickers, compact scrolling panels,
elided labels, moving the view to a voxel, and the generator that runs core work off the GUI
thread with progress and cancel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from napari_medood._napari._roles import DERIVED_KEY, role_of

if TYPE_CHECKING:
    import napari


class LayerComboBox(QComboBox):
    """The viewer's layers of some types, following additions, removals and renames.

    Args:
        roles: roles this picker is for (``_roles``), best first: the default choice is the
            newest layer with the first of them that fits ``like`` (same shape).
        exclude: roles never listed (a lesion mask is never a brain mask).
        none_label: a first item that stands for "no layer" (``current_layer()`` is None);
            it is the default when no layer has one of ``roles``.
        like: a callable giving the layer whose shape the choice must match.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        layer_types: tuple[type, ...],
        parent: QWidget | None = None,
        none_label: str | None = None,
        roles: Sequence[str] = (),
        exclude: Sequence[str] = (),
        like: Callable[[], Any] | None = None,
    ):
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types
        self._none_label = none_label
        self._roles = tuple(roles)
        self._exclude = tuple(exclude)
        self._like = like
        self._chosen_by_user = False
        self._choosing = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.currentIndexChanged.connect(self._user_chose)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.refresh()

    def layers(self) -> list[Any]:
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._types) and role_of(layer) not in self._exclude
        ]

    def _user_chose(self, index: int) -> None:
        # a choice made outside refresh/choose_default (by the user, or by code on their
        # behalf) is kept while its layer exists
        if not self._choosing:
            self._chosen_by_user = True

    def default_layer(self) -> Any | None:
        """The layer this picker would choose: the newest with the best role that fits."""
        layers = self.layers()
        like = self._like() if self._like is not None else None
        fits = [
            layer for layer in layers if like is None or np.shape(layer.data) == np.shape(like.data)
        ]
        for role in self._roles:
            matching = [layer for layer in fits if role_of(layer) == role]
            if matching:
                return matching[-1]
        if self._none_label is not None:
            return None
        return (fits or layers or [None])[-1]

    def keep_current(self) -> None:
        """Hold the current choice while layers come and go (as if the user had made it)."""
        self._chosen_by_user = self.current_layer() is not None

    def choose_default(self) -> None:
        """Select :meth:`default_layer` (after the layer it must match changed)."""
        layer = self.default_layer()
        index = self.findData(layer) if layer is not None else (0 if self._none_label else -1)
        self._choosing = True
        try:
            if index != self.currentIndex():
                self.setCurrentIndex(index)
        finally:
            self._choosing = False
        self._chosen_by_user = False

    def refresh(self, event: Any = None) -> None:
        current = self.current_layer()
        layers = self.layers()
        self.blockSignals(True)
        previous = self.currentData()
        self.clear()
        if self._none_label is not None:
            self.addItem(self._none_label, None)
        for layer in layers:
            self.addItem(layer.name, layer)
            self.setItemData(self.count() - 1, layer.name, Qt.ItemDataRole.ToolTipRole)
            # napari's event emitters hold bound methods weakly: no leak either way
            layer.events.name.connect(self.refresh)
        keep = current in layers and (self._chosen_by_user or current is self.default_layer())
        if current not in layers:
            self._chosen_by_user = False
        target = current if keep else self.default_layer()
        index = self.findData(target) if target is not None else (0 if self._none_label else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.currentData() is not previous:
            self._choosing = True
            try:
                self.currentIndexChanged.emit(self.currentIndex())
            finally:
                self._choosing = False

    def current_layer(self) -> Any | None:
        layer = self.currentData()
        return layer if layer is not None and layer in self._viewer.layers else None


#: the brain-mask pickers' choice of none: what the detectors then work in
NO_MASK = "none: a skull-stripped scan's own brain, else an Otsu head mask"


def scan_and_mask_pickers(
    viewer: napari.viewer.Viewer, parent: QWidget, no_mask: str = NO_MASK
) -> tuple[LayerComboBox, LayerComboBox]:
    """A scan picker (never an anomaly map) and a brain-mask picker that follows it (same
    shape, never a ground truth or a threshold; ``no_mask`` names the choice of none)."""
    from napari.layers import Image, Labels

    from napari_medood._napari._roles import (
        ANOMALY_MAP,
        BRAIN_MASK,
        BY_PRODUCT,
        GROUND_TRUTH,
        SCAN,
        THRESHOLD,
    )

    scans = LayerComboBox(
        viewer, (Image,), parent, roles=(SCAN,), exclude=(ANOMALY_MAP, BY_PRODUCT)
    )
    masks = LayerComboBox(
        viewer,
        (Labels,),
        parent,
        none_label=no_mask,
        roles=(BRAIN_MASK,),
        exclude=(GROUND_TRUTH, THRESHOLD),
        like=scans.current_layer,
    )
    return scans, masks


class Panel(QWidget):
    """A dock panel whose content scrolls up and down: docked panels then never force the
    window taller than the screen, whatever else is docked beside them. Across, the panel
    is as wide as its content needs, so nothing is cut at the right edge."""

    #: the tallest a panel asks to be; more scrolls
    PREFERRED_HEIGHT = 640

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.body = QWidget()
        self.body.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self._scroll = QScrollArea(self)
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._scroll)

    def _across(self, width: int) -> int:
        return width + self._scroll.verticalScrollBar().sizeHint().width() + 2

    def minimumSizeHint(self):  # noqa: N802 - Qt's name
        from qtpy.QtCore import QSize

        return QSize(self._across(self.body.minimumSizeHint().width()), 120)

    def sizeHint(self):  # noqa: N802 - Qt's name
        from qtpy.QtCore import QSize

        hint = self.body.sizeHint()
        return QSize(self._across(hint.width()), min(hint.height(), self.PREFERRED_HEIGHT))


class ElidedLabel(QLabel):
    """One line that never widens its panel: long text ends in "..." and the whole text is
    its tooltip (file paths, model descriptions)."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        self._full = str(text)
        self.setToolTip(self._full)
        self._elide()

    def full_text(self) -> str:
        return self._full

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        metrics = self.fontMetrics()
        width = max(self.width(), 40)
        shown = metrics.elidedText(self._full, Qt.TextElideMode.ElideMiddle, width)
        super().setText(shown)


def wrapping_label(text: str = "") -> QLabel:
    """A label that wraps onto several lines and can be selected and copied."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def unwrap(layer: Any) -> Any:
    """The layer itself behind napari's plugin proxy (``viewer.add_*`` hands plugins a proxy;
    the viewer's layer list and its events give the layer itself), so identity holds."""
    return getattr(layer, "__wrapped__", layer)


def placement_of(layer: Any) -> dict[str, Any]:
    """The keywords that put a new layer exactly where ``layer`` is shown."""
    placement = {
        key: getattr(layer, key)
        for key in ("scale", "translate", "rotate", "shear", "units", "axis_labels")
    }
    placement["affine"] = layer.affine.affine_matrix
    return placement


def show_labels(
    viewer: Any,
    existing: Any,
    data: Any,
    like: Any,
    name: str,
    metadata: dict,
    colormap: Any = None,
    opacity: float = 0.5,
) -> Any:
    """Put ``data`` into ``existing`` (a Labels layer still in the viewer, same shape), or
    into a new Labels layer placed exactly over ``like``; returns the layer, renamed."""
    if existing is not None and existing in viewer.layers and existing.data.shape == data.shape:
        existing.data = data
        layer = existing
    else:
        extra = {} if colormap is None else {"colormap": colormap}
        layer = unwrap(
            viewer.add_labels(
                data, name=name, opacity=opacity, metadata=metadata, **extra, **placement_of(like)
            )
        )
    layer.name = name
    return layer


def remove_derived(viewer: Any, layer: Any) -> None:
    """Remove the layers made from ``layer`` (its threshold layers)."""
    key = str(layer.unique_id)
    for other in [x for x in viewer.layers if x.metadata.get(DERIVED_KEY) == key]:
        viewer.layers.remove(other)


def go_to_voxel(viewer: Any, layer: Any, voxel: Sequence[float]) -> None:
    """Show the slice through ``voxel`` (data coordinates of ``layer``) and centre the view
    on it."""
    world = np.asarray(layer.data_to_world(np.asarray(voxel, dtype=float)), dtype=float)
    displayed = list(viewer.dims.displayed)
    # napari right-aligns layers of fewer dimensions (a 3D scan beside a 4D stack of
    # reconstructions): the layer's axes are the viewer's last ones
    offset = max(viewer.dims.ndim - world.size, 0)
    for axis in range(offset, viewer.dims.ndim):
        if axis not in displayed:
            viewer.dims.set_point(axis, float(world[axis - offset]))
    centre = [float(world[axis - offset]) for axis in displayed if axis >= offset]
    camera_of(viewer).center = tuple(centre)


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


#: the pause between the steps that show a result, so the window draws and answers
STEP_PAUSE_MS = 30


class CancellableRun:
    """What a panel with Run and Cancel buttons shares (``run_button``, ``cancel_button``,
    ``progress_bar``, ``status``): its job runs in a napari worker through
    :func:`progress_generator`, with a cancel event the core checks; Run is off and Cancel
    on until the worker finishes. A panel names what its status line says when a run is
    cancelled or fails (``cancelled_text``, ``failure_text``) and the title of its error
    notification (``title``), and may override the slots."""

    _worker: Any = None
    _pending_steps: int = 0
    last_error: str | None = None
    cancelled_text = "Cancelled."
    failure_text = "Could not run"
    title = ""

    def run_controls(self, run_text: str = "Run"):
        """Make the panel's ``run_button``, ``cancel_button`` (off until a run starts),
        ``progress_bar`` and ``status`` label, connected to ``run`` and :meth:`cancel`;
        returns the row of the two buttons for the panel's layout."""
        from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton

        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = wrapping_label()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        return buttons

    def start_run(self, job_function, job, returned, aborted) -> None:
        import threading

        from napari.qt.threading import create_worker

        self._cancel = threading.Event()
        self.progress_bar.setRange(0, 0)  # busy until the first count
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._worker = create_worker(
            progress_generator,
            job_function,
            job,
            cancel_event=self._cancel,
            _connect={
                "yielded": self._progress,
                "returned": returned,
                "errored": self._fail,
                "finished": self._finished,
                "aborted": aborted,
            },
        )

    def cancel(self) -> None:
        """Stop the running job at its next check (the core checks between steps)."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("cancelling...")

    def end_run(self) -> None:
        """The worker is done: Run on, Cancel off."""
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    @property
    def busy(self) -> bool:
        """A run, or the showing of its result, is under way."""
        return self._worker is not None or self._pending_steps > 0

    def _reset_progress(self) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

    def _finished(self) -> None:
        self.end_run()
        if self.progress_bar.maximum() == 0:
            self._reset_progress()

    def _aborted(self) -> None:
        self.status.setText(self.cancelled_text)
        self.last_error = "cancelled"
        self._reset_progress()

    def _fail(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from napari_medood.errors import Cancelled

        if isinstance(exc, Cancelled):
            self._aborted()
            return
        self.last_error = str(exc)
        self._reset_progress()
        self.status.setText(f"{self.failure_text}: {exc}")
        if self.title:
            show_error(f"{self.title}: {exc}")

    def _run_steps(self, steps: list) -> None:
        """Call ``steps`` one at a time with a pause between them (adding large layers),
        so that the window keeps drawing and answering while a result appears."""
        from qtpy.QtCore import QTimer

        self._pending_steps = len(steps)
        if not steps:
            return
        first, rest = steps[0], steps[1:]
        try:
            first()
        finally:
            self._pending_steps = len(rest)
        if rest:
            QTimer.singleShot(STEP_PAUSE_MS, lambda: self._run_steps(rest))


def progress_generator(function, *args, cancel_event=None, **kwargs):
    """Run ``function(*args, progress=..., cancelled=..., **kwargs)`` in a helper thread and
    yield its ``(done, total, message)`` progress reports; return its result.

    Made for napari's generator workers: they yield progress to the GUI, and quitting them
    sets ``cancel_event``, which the core checks between windows or cases.
    """
    import queue
    import threading

    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    event = cancel_event or threading.Event()

    def target() -> None:
        try:
            outcome["value"] = function(
                *args,
                progress=lambda d, t, m: reports.put((d, t, m)),
                cancelled=event.is_set,
                **kwargs,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's errored signal
            outcome["error"] = exc
        finally:
            reports.put(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            yield item
    finally:
        event.set()  # a quit worker stops the helper at its next check
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def scan_job(source: Any, mask_layer: Any | None) -> dict[str, Any]:
    """A scan layer and its mask layer as a worker reads them: references to the arrays and
    small state, taken on the GUI thread (no copy); :func:`job_volume` builds the volume."""

    def state(layer: Any) -> dict[str, Any]:
        return {**placement_of(layer), "metadata": dict(layer.metadata)}

    return {
        "data": source.data,
        "state": state(source),
        "mask_data": None if mask_layer is None else mask_layer.data,
        "mask_state": None if mask_layer is None else state(mask_layer),
    }


def job_volume(job: dict[str, Any]):
    """``(Volume, mask or None)`` of a :func:`scan_job`, built off the GUI thread."""
    from napari_medood._napari._layers import layer_data_to_volume

    volume = layer_data_to_volume(np.asarray(job["data"]), job["state"])
    mask = None
    if job["mask_data"] is not None:
        mask = layer_data_to_volume(np.asarray(job["mask_data"]), job["mask_state"]).data > 0
    return volume, mask
