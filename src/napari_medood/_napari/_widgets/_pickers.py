"""The layer pickers of the dock panels: combo boxes of the viewer's layers that choose by
role (a scan, its brain mask, an anomaly map, a ground truth) and follow the layer list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

from napari_medood._napari._roles import role_of

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
