"""Scans with lesion masks for the segmenter demo: real MS lesion shapes implanted into the
white matter of healthy IXI T1 brains, darker than the tissue under them (MS lesions are
hypointense in T1), with soft edges.

    python tools/make_lesion_training_set.py [--shared ../shared/data] [--out work/seg-data]
                                             [--copies 3] [--seed 0]

The shapes are the MS lesion masks of open-ms-lesjak-mni/lesion-masks, less those of the two
test patients (07 and 19), whose own lesions must not be seen in training. Six IXI subjects give ``copies`` lesioned scans each
(``train.csv``: Path, Mask, Label); the two held-out subjects (IXI039, IXI048) give one
lesioned copy each for validation (``val.csv``) and stay healthy in ``healthy.csv``;
``ood_healthy.csv`` lists the six training subjects as they are (healthy scans for OoD
supervision). Test: the real MS patients (work/baselines/ms-t1/cohort.csv).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("IXI039-HH-1261", "IXI048-HH-1326")
#: the MS patients the segmenters are tested on (tools/make_ood_supervision_table.py)
TEST_PATIENTS = ("patient07", "patient19")


def white_matter(parcellation: np.ndarray) -> np.ndarray:
    from napari_medood.synth.contrast import DLMUSE_STRUCTURES

    # DLMUSE's white-matter group (the lobes' white matter and the corpus callosum: label 81)
    group = DLMUSE_STRUCTURES[81]
    labels = [label for label, g in DLMUSE_STRUCTURES.items() if g == group]
    return np.isin(np.round(parcellation).astype(int), labels)


def lesioned(image, brain, wm, affine, bank, rng, count):
    """``(image with lesions, label)``: ``count`` shapes, each centred on a white-matter
    voxel, blended towards a darker copy of the tissue (factor 0.45-0.8) with a 3-voxel soft
    edge; the label is where a lesion's opacity reaches half its peak."""
    import nibabel as nib

    from napari_medood.synth.anomaly import implant

    axcodes = nib.aff2axcodes(affine)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = np.array(image, dtype=np.float32)
    label = np.zeros(image.shape, bool)
    centres = np.flatnonzero(wm)
    for _ in range(count):
        shape = bank.sample(24, rng, spacing=spacing, axcodes=axcodes)
        centre = np.asarray(np.unravel_index(int(centres[rng.integers(len(centres))]), wm.shape))
        corner = centre - np.asarray(shape.box_shape) // 2
        factor = float(rng.uniform(0.45, 0.8))

        def darker(start, stop, f=factor):
            box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
            return out[box] * f

        placed = implant(out, shape, corner, 1.0, darker, kernel_size=3, foreground=brain, out=out)
        label[placed.region] |= placed.label
    return out, label & brain


def main() -> None:
    from napari_medood.io.cohort import discover_cases
    from napari_medood.io.readers import read_volume
    from napari_medood.io.volume import Volume
    from napari_medood.io.writers import write_nifti
    from napari_medood.synth.lesions import LesionShapeBank

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "seg-data")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--lesions", type=int, nargs=2, default=(8, 24), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    masks = [
        path
        for path in sorted((args.shared / "open-ms-lesjak-mni" / "lesion-masks").glob("*.nii.gz"))
        if not path.name.startswith(TEST_PATIENTS)
    ]
    bank = LesionShapeBank.from_mask_files(masks, min_voxels=150)
    ixi = args.shared / "ixi-t1-2mm"
    cases = discover_cases(ixi / "t1", masks=ixi / "dlmuse")
    rng = np.random.default_rng(args.seed)
    for folder in ("images", "labels", "masks"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"train": [], "val": [], "healthy": [], "ood_healthy": []}
    for case in cases:
        volume = read_volume(case.image)
        parcellation = read_volume(case.mask).data
        brain = parcellation > 0
        mask_path = write_nifti(
            Volume(brain.astype(np.uint8), volume.affine),
            args.out / "masks" / f"{case.name}_brain.nii.gz",
            "labels",
        )
        held_out = case.name.startswith(HELD_OUT)
        rows["healthy" if held_out else "ood_healthy"].append([case.image.resolve(), mask_path])
        for copy in range(1 if held_out else args.copies):
            count = int(rng.integers(args.lesions[0], args.lesions[1] + 1))
            image, label = lesioned(
                volume.data, brain, white_matter(parcellation), volume.affine, bank, rng, count
            )
            stem = f"{case.name}_lesions{copy}"
            image_path = write_nifti(
                Volume(image, volume.affine), args.out / "images" / f"{stem}.nii.gz"
            )
            label_path = write_nifti(
                Volume(label.astype(np.uint8), volume.affine),
                args.out / "labels" / f"{stem}.nii.gz",
                "labels",
            )
            ml = float(label.sum()) * float(np.prod(volume.spacing)) / 1000
            rows["val" if held_out else "train"].append([image_path, mask_path, label_path])
            print(f"{stem}: {count} lesions, {ml:.1f} ml", flush=True)
    print(f"lesion shapes: {len(bank)} from {len(masks)} patients' masks")
    for name, table in rows.items():
        with open(args.out / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Path", "Mask", "Label"][: len(table[0])] if table else ["Path"])
            writer.writerows([[str(v) for v in row] for row in table])
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
