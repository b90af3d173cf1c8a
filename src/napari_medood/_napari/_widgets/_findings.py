"""The table of findings under a map: what it flags at the slider's threshold, as connected
regions a reader steps through (``detectors.findings``).

Each row is one region: its size in ml, its peak and mean map value, where its peak lies (in
mm, as R/L, A/P, S/I of the scanner's RAS frame) and, when a parcellation lies on the scan,
the structure there (DLMUSE names; other parcellations give their label numbers). The rows
are sorted largest first or highest peak first. Clicking a row, or "Next finding", takes the
view to the region's peak. The table is computed off the GUI thread (:func:`findings_job`):
with the map by the detector's worker, and again in a small worker of its own whenever the
threshold moves, the last request winning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

#: the sort orders offered, as ``find_findings`` names them
ORDER_TEXTS = {"size": "largest first", "peak": "highest peak first"}
#: the table's columns
HEADERS = ("#", "ml", "peak", "mean", "peak at (mm)", "structure")
#: rows shown before the table scrolls
VISIBLE_ROWS = 6
#: the most rows the table holds (a noisy map at a low threshold has tens of thousands of
#: specks: Qt would stall filling them; the summary counts them all)
MAX_ROWS = 200


def ras_text(point: Sequence[float]) -> str:
    """A RAS position in mm as a reader says it: ``12 R, 30 A, 45 S``."""
    letters = (("R", "L"), ("A", "P"), ("S", "I"))
    return ", ".join(
        f"{abs(v):.0f} {pos if v >= 0 else neg}"
        for v, (pos, neg) in zip(point, letters, strict=True)
    )


def parcellation_of(candidates: Sequence[Any]) -> tuple[np.ndarray | None, bool]:
    """The first of ``candidates`` (label arrays on the map's grid) that is a parcellation
    (several structures, not a brain mask), and whether its labels are DLMUSE's."""
    from napari_medood.detectors.findings import parcellation_kind

    for data in candidates:
        array = np.asarray(data)
        is_parcellation, muse = parcellation_kind(array)
        if is_parcellation:
            return array, muse
    return None, False


def findings_job(job: dict, progress=None, cancelled=None) -> dict:
    """Off the GUI thread: the findings of ``job["map"]`` above ``job["threshold"]`` (its
    voxel grid placed by ``job["affine"]``, RAS mm), sorted by ``job["order"]``, with the
    parcellation among ``job["parcellations"]`` when there is one."""
    from napari_medood.detectors.findings import find_findings

    parcellation, muse = job.get("parcellation"), job.get("muse", False)
    if parcellation is None and job.get("parcellations"):
        parcellation, muse = parcellation_of(job["parcellations"])
    findings = find_findings(
        np.asarray(job["map"]),
        job["affine"],
        job["threshold"],
        parcellation=parcellation,
        order=job.get("order", "size"),
    )
    return {
        "findings": findings,
        "threshold": job["threshold"],
        "parcellation": parcellation,
        "muse": muse,
        "generation": job.get("generation", 0),
    }


class FindingsTable(QWidget):
    """The findings of the shown map (see the module docstring); ``chosen(finding)`` is
    called when a row is clicked or "Next finding" steps to it."""

    def __init__(self, chosen: Callable[[Any], None], parent: QWidget | None = None):
        super().__init__(parent)
        self._chosen = chosen
        self.findings: list = []
        self.muse = False
        self.summary = QLabel("No map yet: Run lists what it flags here.")
        self.summary.setWordWrap(True)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.order_combo = QComboBox()
        for order, text in ORDER_TEXTS.items():
            self.order_combo.addItem(text, order)
        self.order_combo.setToolTip("list the findings largest first, or highest peak first")
        self.next_button = QPushButton("Next finding")
        self.next_button.setToolTip(
            "show the slice through the next finding's peak, centred (the first: the top row)"
        )
        self.next_button.setEnabled(False)
        self.next_button.clicked.connect(self.next_finding)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setToolTip("click a finding to show the slice through its peak")
        # Qt's corner button would select all rows: one finding is shown at a time
        self.table.setCornerButtonEnabled(False)
        for corner in self.table.findChildren(QAbstractButton):
            corner.setToolTip("one finding is shown at a time: click its row")
        header = self.table.horizontalHeader()
        for column in range(len(HEADERS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(HEADERS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        row_height = self.table.verticalHeader().defaultSectionSize()
        self.table.setFixedHeight(header.sizeHint().height() + VISIBLE_ROWS * row_height + 4)
        self.table.cellClicked.connect(lambda row, column: self.choose(row))
        controls = QHBoxLayout()
        controls.addWidget(self.next_button)
        controls.addWidget(QLabel("sort"))
        controls.addWidget(self.order_combo, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addLayout(controls)
        layout.addWidget(self.table)

    @property
    def order(self) -> str:
        return str(self.order_combo.currentData())

    def show_findings(self, findings: list, threshold: float, muse: bool = False) -> None:
        """List ``findings`` (found above ``threshold``)."""
        from napari_medood.detectors.findings import structure_name

        total = sum(f.volume_ml for f in findings)
        count = len(findings)
        self.findings = list(findings[:MAX_ROWS])
        self.muse = muse
        self.summary.setText(
            f"{count} finding{'s' if count != 1 else ''} above {threshold:.3f}: {total:.1f} ml"
            + (f" (the first {MAX_ROWS} listed)" if count > MAX_ROWS else "")
            if count
            else f"Nothing above {threshold:.3f}."
        )
        self.table.setRowCount(len(self.findings))
        with_structure = any(f.structure is not None for f in self.findings)
        self.table.setColumnHidden(len(HEADERS) - 1, not with_structure)
        for row, finding in enumerate(self.findings):
            structure = ""
            if finding.structure is not None:
                structure = (
                    structure_name(finding.structure)
                    if muse or finding.structure == 0
                    else f"label {finding.structure}"
                )
            cells = (
                str(finding.finding),
                f"{finding.volume_ml:.2f}",
                f"{finding.peak:.3f}",
                f"{finding.mean:.3f}",
                ras_text(finding.peak_mm),
                structure,
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                if column < 4:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(row, column, item)
        self.next_button.setEnabled(count > 0)

    def clear(self, why: str) -> None:
        """No table: ``why`` says what happened to it (its map was removed, say)."""
        self.findings = []
        self.table.setRowCount(0)
        self.summary.setText(why)
        self.next_button.setEnabled(False)

    def current_row(self) -> int:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else -1

    def choose(self, row: int) -> None:
        """Select row ``row`` and show its finding."""
        if not 0 <= row < len(self.findings):
            return
        self.table.selectRow(row)
        self.table.scrollToItem(self.table.item(row, 0))
        self._chosen(self.findings[row])

    def next_finding(self) -> None:
        """The row after the selected one (the first after the last)."""
        if self.findings:
            self.choose((self.current_row() + 1) % len(self.findings))
