"""Shared fixtures: paths into ../shared/data (real public scans) and small helpers.

Tests that need the shared data skip with a reason when it is absent; CI always has it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDOOD_SHARED_DATA", REPO.parent / "shared" / "data"))

IXI_SUBJECT = "IXI048-HH-1326"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set MEDOOD_SHARED_DATA)")
    return path


@pytest.fixture
def ixi_t1() -> Path:
    return shared("ixi-t1-2mm", "t1", f"{IXI_SUBJECT}-T1_ds.nii.gz")


@pytest.fixture
def ixi_parcellation() -> Path:
    return shared("ixi-t1-2mm", "dlmuse", f"{IXI_SUBJECT}-T1_ds_DLMUSE.nii.gz")


@pytest.fixture
def ms_t1() -> Path:
    return shared(
        "open-ms-lesjak-mni",
        "patient07",
        "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    )


@pytest.fixture
def ms_lesions() -> Path:
    return shared(
        "open-ms-lesjak-mni",
        "patient07",
        "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
    )


@pytest.fixture
def ct_scan() -> Path:
    return shared("totalsegmentator-example", "example_ct_sm.nii.gz")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
