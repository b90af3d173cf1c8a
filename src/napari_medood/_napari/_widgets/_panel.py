"""The frame of a dock panel and the text in it: a :class:`Panel` that scrolls up and down,
and labels that wrap or elide, so that no panel forces napari's window taller or wider than
the screen."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget


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


def show_notes(label: QLabel, title: str, notes) -> None:
    """``title`` over ``notes`` as bullets, one per line (so that notes never run together)
    in ``label``; the label is hidden when there are none."""
    notes = list(notes)
    if notes:
        label.setText(title + "\n" + "\n".join(f"\u2022 {note}" for note in notes))
    label.setVisible(bool(notes))
