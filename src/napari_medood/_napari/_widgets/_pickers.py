"""The layer pickers of the dock panels: combo boxes of the viewer's layers that choose by
role (a scan, its brain mask, an anomaly map, a ground truth) and follow the layer list.

A picker that pairs with another layer (a mask with its scan, a ground truth with its map)
pairs by place, not by array shape alone: a layer is offered only where its voxels lie on
the other's in the world (same shape, same voxel size and axes, same position within a
tenth of a voxel). Two subjects' scans resampled to one array shape are still centimetres
apart; a mask of one read over the other would silently cut the wrong brain. A layer that
does not pair stays in the list, greyed, with the reason as its text and tooltip, and a
panel refuses a pairing forced past that (:func:`check_pairing`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget

from napari_medood._napari._roles import role_of
from napari_medood.errors import MedoodError

if TYPE_CHECKING:
    import napari


#: how far (in voxels of the layer paired with) two layers' voxels may lie apart and still pair:
#: header rounding is far below it, a subject's different placement far above it
PAIRING_TOLERANCE_VOXELS = 0.1


def world_matrix(layer: Any) -> np.ndarray:
    """The 4x4 matrix from the layer's voxel indices to napari's world (mm)."""
    from napari_medood._napari._layers import _layer_world_affine
    from napari_medood._napari._widgets._viewer import placement_of

    return _layer_world_affine(placement_of(layer), ndim=int(layer.ndim))


def _is_unplaced(layer: Any) -> bool:
    """A layer with no placement of its own (drawn or loaded without any geometry: unit
    voxels at the origin, no header): it is taken to lie on whatever grid it pairs with."""
    from napari_medood._napari._layers import METADATA_KEY

    if METADATA_KEY in (getattr(layer, "metadata", None) or {}):
        return False
    return bool(np.allclose(world_matrix(layer), np.eye(int(layer.ndim) + 1)))


def pairing_problem(layer: Any, other: Any) -> str | None:
    """Why ``layer``'s voxels do not lie on ``other``'s in the world (None: they do)."""
    shape, other_shape = np.shape(layer.data), np.shape(other.data)
    if shape != other_shape:
        return f"it has shape {shape}, '{other.name}' has {other_shape}"
    if layer is other or _is_unplaced(layer) or _is_unplaced(other):
        return None
    ndim = len(shape)
    mine, theirs = world_matrix(layer), world_matrix(other)
    if mine.shape != theirs.shape:
        return f"it has {mine.shape[0] - 1} world axes, '{other.name}' {theirs.shape[0] - 1}"
    spacing = np.linalg.norm(theirs[:ndim, :ndim], axis=0)
    my_spacing = np.linalg.norm(mine[:ndim, :ndim], axis=0)
    # every corner of the grid, in the world: a stretch, a turn or a shift moves some corner
    corners = np.array(
        [[*(c * (n - 1) for c, n in zip(bits, shape, strict=True)), 1.0] for bits in _corners(ndim)]
    ).T
    apart = np.linalg.norm((mine @ corners - theirs @ corners)[:ndim], axis=0)
    if apart.max() <= PAIRING_TOLERANCE_VOXELS * float(spacing.min()):
        return None
    if not np.allclose(my_spacing, spacing, rtol=1e-3):
        mine_mm, theirs_mm = (
            " x ".join(f"{x:g}" for x in np.round(v, 3)) for v in (my_spacing, spacing)
        )
        return f"its voxels are {mine_mm} mm, those of '{other.name}' {theirs_mm} mm"
    cosines = np.sum((mine[:ndim, :ndim] / my_spacing) * (theirs[:ndim, :ndim] / spacing), axis=0)
    turned = float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())
    if turned > 0.5:
        return f"its axes are turned {turned:.0f} degrees against those of '{other.name}'"
    return f"it lies {float(apart.max()):.1f} mm away from '{other.name}' in the world"


def _corners(ndim: int) -> list[tuple[int, ...]]:
    return [tuple((n >> axis) & 1 for axis in range(ndim)) for n in range(2**ndim)]


class PairingError(MedoodError, ValueError):
    """A layer chosen for another it does not lie on (a mask of another subject)."""


def pairing_message(layer: Any | None, other: Any | None, what: str) -> str | None:
    """One line on why ``layer`` (the ``what``: "brain mask", "ground truth") cannot be
    read over ``other`` (None: it can, or there is no pair)."""
    if layer is None or other is None:
        return None
    problem = pairing_problem(layer, other)
    if problem is None:
        return None
    return f"the {what} '{layer.name}' cannot be read over '{other.name}': {problem}"


def check_pairing(layer: Any | None, other: Any | None, what: str) -> None:
    """Refuse ``layer`` for ``other`` unless their voxels lie on each other in the world."""
    message = pairing_message(layer, other, what)
    if message is not None:
        raise PairingError(message)


class LayerComboBox(QComboBox):
    """The viewer's layers of some types, following additions, removals and renames.

    Args:
        roles: roles this picker is for (``_roles``), best first: the default choice is the
            newest layer with the first of them that fits ``like`` (same shape).
        exclude: roles never listed (a lesion mask is never a brain mask).
        none_label: a first item that stands for "no layer" (``current_layer()`` is None);
            it is the default when no layer has one of ``roles``.
        like: a callable giving the layer the choice must pair with (:func:`pairing_problem`);
            the layers that do not are listed greyed, with the reason.
        refuse: a callable giving why a layer cannot be chosen here (None: it can); such
            layers are listed greyed with that reason too.

    Long names are elided in the middle, where two maps of one scan differ least (their
    scan's name first, the model's last), and the whole name is the item's tooltip.
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
        refuse: Callable[[Any], str | None] | None = None,
    ):
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types
        self._none_label = none_label
        self._roles = tuple(roles)
        self._exclude = tuple(exclude)
        self._like = like
        self._refuse = refuse
        self._chosen_by_user = False
        self._choosing = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
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

    def follow(self, other: LayerComboBox) -> None:
        """Pair with ``other``'s layer: list again (greying what does not pair) and choose
        again whenever ``other``'s choice changes."""
        other.currentIndexChanged.connect(self.follow_pairing)

    def follow_pairing(self, *args: Any) -> None:
        """The layer to pair with changed: grey what no longer pairs, and choose the default
        unless the user's own choice (none, or a layer that still pairs) still holds."""
        current = self.current_layer()
        holds = self._chosen_by_user and (
            self._none_chosen() or (current is not None and self.problem_of(current) is None)
        )
        if not holds:
            self._chosen_by_user = False
        self.refresh()
        if not holds:
            self.choose_default()

    def _none_chosen(self) -> bool:
        """The "no layer" item is the current choice."""
        return self._none_label is not None and self.currentIndex() == 0

    def problem_of(self, layer: Any) -> str | None:
        """Why ``layer`` cannot be chosen here (None: it can)."""
        if self._refuse is not None and (reason := self._refuse(layer)) is not None:
            return reason
        like = self._like() if self._like is not None else None
        return None if like is None else pairing_problem(layer, like)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        # the style elides at the end; the end is what tells two maps of one scan apart
        from qtpy.QtWidgets import QStyle, QStyleOptionComboBox, QStylePainter

        painter = QStylePainter(self)
        option = QStyleOptionComboBox()
        self.initStyleOption(option)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
        field = self.style().subControlRect(
            QStyle.ComplexControl.CC_ComboBox,
            option,
            QStyle.SubControl.SC_ComboBoxEditField,
            self,
        )
        option.currentText = self.fontMetrics().elidedText(
            option.currentText, Qt.TextElideMode.ElideMiddle, max(field.width() - 4, 20)
        )
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)

    def _user_chose(self, index: int) -> None:
        # a choice made outside refresh/choose_default (by the user, or by code on their
        # behalf) is kept while its layer exists
        if not self._choosing:
            self._chosen_by_user = True

    def default_layer(self, problems: dict[int, str | None] | None = None) -> Any | None:
        """The layer this picker would choose: the newest with the best role that fits
        (``problems``: each layer's :meth:`problem_of` by ``id``, when already known)."""
        layers = self.layers()
        if problems is None:
            problems = {id(layer): self.problem_of(layer) for layer in layers}
        fits = [layer for layer in layers if problems.get(id(layer)) is None]
        for role in self._roles:
            matching = [layer for layer in fits if role_of(layer) == role]
            if matching:
                return matching[-1]
        if self._none_label is not None:
            return None
        return (fits or [None])[-1]

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
        # the user's "no layer" is kept like a layer they chose
        keep_none = self._chosen_by_user and self._none_chosen() and current is None
        self.blockSignals(True)
        previous = self.currentData()
        self.clear()
        if self._none_label is not None:
            self.addItem(self._none_label, None)
        problems: dict[int, str | None] = {}
        unpaired = set()
        for layer in layers:
            problem = problems[id(layer)] = self.problem_of(layer)
            index = self.count()
            if problem is None:
                self.addItem(layer.name, layer)
                self.setItemData(index, layer.name, Qt.ItemDataRole.ToolTipRole)
            else:  # listed, so the user sees why it is not offered
                unpaired.add(id(layer))
                self.addItem(f"{layer.name} (not here: {problem})", layer)
                self.setItemData(index, f"not offered: {problem}", Qt.ItemDataRole.ToolTipRole)
                item = self.model().item(index)
                if item is not None:
                    item.setEnabled(False)
            # napari's event emitters hold bound methods weakly: no leak either way
            layer.events.name.connect(self.refresh)
        usable = current in layers and id(current) not in unpaired
        default = self.default_layer(problems)
        keep = usable and (self._chosen_by_user or current is default)
        if not usable and not keep_none:
            self._chosen_by_user = False
        target = None if keep_none else (current if keep else default)
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
    """A scan picker (never an anomaly map) and a brain-mask picker that follows it (pairs
    with it by place, never a ground truth or a threshold; ``no_mask`` names the choice of
    none)."""
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
    masks.follow(scans)  # every panel's mask follows its scan
    return scans, masks


def not_a_map(layer: Any) -> str | None:
    """Why an Image layer is no anomaly map in [0, 1] (None: it may be one): a layer taken
    for a scan whose values reach far beyond 1 (napari's range of its data, known without
    reading it again)."""
    from napari_medood._napari._roles import SCAN

    if role_of(layer) != SCAN:
        return None
    low, high = (float(v) for v in getattr(layer, "contrast_limits_range", (0.0, 1.0)))
    if low < -0.01 or high > 1.01:
        return f"a scan (values {low:g} to {high:g}), not a map of values in [0, 1]"
    return None
