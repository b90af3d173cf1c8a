"""Participants tables (BIDS ``participants.tsv``, IXI/UAD-IMAG CSVs) matched to case names."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from napari_medood.errors import VolumeError

ID_COLUMNS = ("participant_id", "subject", "subject_id", "mrid", "id", "case", "name")
FIELD_COLUMNS = {
    "age": ("age", "age_years", "age_at_scan"),
    "sex": ("sex", "gender"),
    "site": ("site", "scanner", "center", "centre", "manufacturer"),
}


def read_participants(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Rows of a CSV/TSV keyed by participant id, with ``age``, ``sex`` and ``site`` under
    those names when the table has them (other columns are kept as they are)."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "no such participants table")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle, delimiter=delimiter))
    if not rows:
        return {}
    lowered = {h.strip().lower(): h for h in rows[0]}
    id_column = next((lowered[c] for c in ID_COLUMNS if c in lowered), None)
    if id_column is None:
        raise VolumeError(path, f"no participant id column (one of {', '.join(ID_COLUMNS)})")
    table = {}
    for row in rows:
        entry = dict(row)
        for field, options in FIELD_COLUMNS.items():
            column = next((lowered[c] for c in options if c in lowered), None)
            if column is not None:
                entry[field] = row[column].strip()
        table[row[id_column].strip()] = entry
    return table


def match_participant(case_name: str, table: dict[str, dict[str, str]]) -> dict[str, str] | None:
    """The row whose id is the longest prefix of the case name (``sub-01`` for
    ``sub-01_ses-1_T1w``, ``IXI012-HH-1211`` for ``IXI012-HH-1211-T1_ds_shift``)."""
    best = None
    for participant, row in table.items():
        if (
            participant
            and case_name.startswith(participant)
            and (best is None or len(participant) > len(best[0]))
        ):
            best = (participant, row)
    return None if best is None else best[1]
