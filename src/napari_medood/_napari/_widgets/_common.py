"""Pieces shared by the dock widgets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QComboBox, QWidget

if TYPE_CHECKING:
    import napari


class LayerComboBox(QComboBox):
    """The viewer's layers of some types, following additions, removals and renames.

    With ``none_label`` the first item stands for "no layer" (``current_layer()`` is None).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        layer_types: tuple[type, ...],
        parent: QWidget | None = None,
        none_label: str | None = None,
    ):
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types
        self._none_label = none_label
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.refresh()

    def layers(self) -> list[Any]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._types)]

    def refresh(self, event: Any = None) -> None:
        previous = self.currentData()  # may be a layer that was just removed
        current = self.current_layer()
        layers = self.layers()
        self.blockSignals(True)
        self.clear()
        if self._none_label is not None:
            self.addItem(self._none_label, None)
        for layer in layers:
            self.addItem(layer.name, layer)
            # napari's event emitters hold bound methods weakly: no leak either way
            layer.events.name.connect(self.refresh)
        if current not in layers and self._none_label is None:
            # default: the newest layer of the first type (a scan before its labels)
            preferred = [layer for layer in layers if isinstance(layer, self._types[0])]
            current = (preferred or layers or [None])[-1]
        index = self.findData(current) if current is not None else (0 if self._none_label else -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.currentData() is not previous:
            self.currentIndexChanged.emit(self.currentIndex())

    def current_layer(self) -> Any | None:
        layer = self.currentData()
        return layer if layer is not None and layer in self._viewer.layers else None


def placement_of(layer: Any) -> dict[str, Any]:
    """The keywords that put a new layer exactly where ``layer`` is shown."""
    placement = {
        key: getattr(layer, key)
        for key in ("scale", "translate", "rotate", "shear", "units", "axis_labels")
    }
    placement["affine"] = layer.affine.affine_matrix
    return placement


def show_labels(
    viewer: Any, existing: Any, data: Any, like: Any, name: str, opacity: float = 0.5
) -> Any:
    """Put ``data`` into ``existing`` (a Labels layer still in the viewer, same shape), or
    into a new Labels layer placed exactly over ``like``; returns the layer, renamed."""
    if existing is not None and existing in viewer.layers and existing.data.shape == data.shape:
        existing.data = data
        layer = existing
    else:
        layer = viewer.add_labels(
            data, name=name, opacity=opacity, metadata=dict(like.metadata), **placement_of(like)
        )
    layer.name = name
    return layer


def pick_matching_mask(mask_combo: LayerComboBox, image: Any) -> None:
    """Select the first Labels layer of the same shape as ``image`` (a brain mask, most
    likely); the combo's first item must be its "no mask" entry."""
    if image is None:
        return
    for index, layer in enumerate(mask_combo.layers()):
        if layer.data.shape == image.data.shape:
            mask_combo.setCurrentIndex(index + 1)
            return


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
