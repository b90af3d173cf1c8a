"""Rebuild the sample scan shipped in src/napari_medood/samples from ../shared/data.

    python tools/make_samples.py [SHARED_DATA_DIR]

The T1 scan is stored as float32 (the source is float64); the brain mask is DLMUSE > 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_medood.io import read_volume, write_nifti

SUBJECT = "IXI048-HH-1326"


def main(shared: Path) -> None:
    out = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
    t1 = read_volume(shared / "ixi-t1-2mm" / "t1" / f"{SUBJECT}-T1_ds.nii.gz")
    parcellation = read_volume(shared / "ixi-t1-2mm" / "dlmuse" / f"{SUBJECT}-T1_ds_DLMUSE.nii.gz")
    write_nifti(t1, out / "ixi048_t1_2mm.nii.gz", kind="image")
    mask = parcellation.with_data((parcellation.data > 0).astype(np.uint8))
    write_nifti(mask, out / "ixi048_brainmask_2mm.nii.gz", kind="labels")
    print(f"wrote samples to {out}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[2] / "shared" / "data"
    )
