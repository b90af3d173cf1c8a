"""Build the default lesion shape bank shipped in src/napari_medood/synth/data.

    python tools/make_lesion_bank.py [SHARED_DATA_DIR]

It takes the connected lesions of the public SOOP stroke masks (500-250,000 voxels, at most
128 voxels long) and of the 29 MS lesion masks of Lesjak et al. (>= 50 voxels), keeps a seeded
random subset of each (400 stroke, 200 MS lesions), writes lesion_shapes.npz, and prints its
sha256 for DEFAULT_BANK_SHA256 in synth/lesions.py.

The project's MS test patients (TEST_PATIENTS) are measured on, so none of their lesions is
in the bank: each one the seeded subset drew is swapped, in its place, for a lesion of
another patient the subset left out. Swapping in place rather than drawing again keeps every
other shape at its index, so seeded draws elsewhere take the shapes they took before.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_medood.synth.lesions import DEFAULT_BANK, LesionShapeBank

SEED = 20261122
#: the MS patients the project's tables measure on (tools/make_any_contrast_table.py)
TEST_PATIENTS = ("patient07", "patient19")


def is_test_patient(source: str) -> bool:
    return Path(source).name.startswith(TEST_PATIENTS)


def subset(bank: LesionShapeBank, count: int, rng: np.random.Generator) -> LesionShapeBank:
    keep = np.sort(rng.choice(len(bank), size=min(count, len(bank)), replace=False))
    return LesionShapeBank(
        [bank.masks[i] for i in keep], bank.spacings[keep], [bank.sources[i] for i in keep]
    )


def without_test_patients(
    chosen: LesionShapeBank, pool: LesionShapeBank, rng: np.random.Generator
) -> LesionShapeBank:
    """``chosen`` with each test patient's lesion replaced, at its index, by a lesion of
    ``pool`` from another patient that ``chosen`` does not hold."""
    taken = {(m.shape, m.tobytes()) for m in chosen.masks}
    spare = [
        i
        for i, (mask, source) in enumerate(zip(pool.masks, pool.sources, strict=True))
        if not is_test_patient(source) and (mask.shape, mask.tobytes()) not in taken
    ]
    masks, spacings, sources = list(chosen.masks), chosen.spacings.copy(), list(chosen.sources)
    swap = [i for i, source in enumerate(sources) if is_test_patient(source)]
    for i, j in zip(swap, rng.choice(spare, size=len(swap), replace=False), strict=True):
        masks[i], spacings[i], sources[i] = pool.masks[j], pool.spacings[j], pool.sources[j]
    print(f"swapped {len(swap)} lesions of {', '.join(TEST_PATIENTS)} for other patients'")
    return LesionShapeBank(masks, spacings, sources)


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
    all_ms = ms
    stroke, ms = subset(stroke, 400, rng), subset(ms, 200, rng)
    ms = without_test_patients(ms, all_ms, rng)
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
