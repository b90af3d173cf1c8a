"""Build the default lesion shape bank shipped in src/napari_medood/synth/data.

    python tools/make_lesion_bank.py [SHARED_DATA_DIR]

It takes the connected lesions of the public SOOP stroke masks (500-250,000 voxels, at most
128 voxels long) and of the 29 MS lesion masks of Lesjak et al. (>= 50 voxels), keeps a seeded
random subset of each (400 stroke, 200 MS lesions), writes lesion_shapes.npz, and prints its
sha256 for DEFAULT_BANK_SHA256 in synth/lesions.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_medood.synth.lesions import DEFAULT_BANK, LesionShapeBank

SEED = 20261122


def subset(bank: LesionShapeBank, count: int, rng: np.random.Generator) -> LesionShapeBank:
    keep = np.sort(rng.choice(len(bank), size=min(count, len(bank)), replace=False))
    return LesionShapeBank(
        [bank.masks[i] for i in keep], bank.spacings[keep], [bank.sources[i] for i in keep]
    )


def main(shared: Path) -> None:
    rng = np.random.default_rng(SEED)
    stroke = LesionShapeBank.from_mask_files(
        sorted((shared / "soop-stroke-lesion-masks" / "lesions").glob("*.nii.gz")),
        min_voxels=500,
        max_voxels=250_000,
        max_extent=128,
    )
    ms = LesionShapeBank.from_mask_files(
        sorted((shared / "open-ms-lesjak-mni" / "lesion-masks").glob("*.nii.gz")),
        min_voxels=50,
        max_extent=128,
    )
    print(f"found {len(stroke)} stroke and {len(ms)} MS lesions")
    stroke, ms = subset(stroke, 400, rng), subset(ms, 200, rng)
    bank = LesionShapeBank(
        stroke.masks + ms.masks,
        np.vstack([stroke.spacings, ms.spacings]),
        stroke.sources + ms.sources,
    )
    digest = bank.save(DEFAULT_BANK)
    counts = bank.voxel_counts()
    print(
        f"wrote {DEFAULT_BANK} ({DEFAULT_BANK.stat().st_size / 1e6:.2f} MB): {len(bank)} "
        f"lesions, voxels median {int(np.median(counts))} (min {counts.min()}, "
        f"max {counts.max()})"
    )
    print(f"sha256 {digest}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
