"""Findings: what a map flags at a threshold, as connected regions a reader can list and visit.

The voxels above the threshold (inside the mask, if one is given) are grouped into regions
of face-, edge- or corner-touching voxels (26-connectivity). Each region is one
:class:`Finding`: its size in voxels and ml, its peak and mean map value, where its peak
lies (voxel index and world position in mm, RAS), its centre of mass in mm and, when a
parcellation on the map's grid is given, the structure label it lies in (the label at its
peak, else the label most of its voxels carry; 0 = outside every structure). The table is
sorted by size or by peak. ``medood-predict --findings`` writes it as CSV beside each map;
the napari panels show the same table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, replace

import numpy as np

from napari_medood.errors import look_up_option

#: the threshold of a table when the model has no calibrated one and none is given
DEFAULT_THRESHOLD = 0.5
#: how a table of findings can be sorted (largest first, or highest peak first)
ORDERS = ("size", "peak")
#: the CSV columns, in order
COLUMNS = (
    "finding",
    "voxels",
    "volume_ml",
    "peak",
    "mean",
    "peak_i",
    "peak_j",
    "peak_k",
    "peak_x_mm",
    "peak_y_mm",
    "peak_z_mm",
    "centre_x_mm",
    "centre_y_mm",
    "centre_z_mm",
    "structure",
    "structure_name",
    "threshold",
    "threshold_from",
)


@dataclass(frozen=True)
class Finding:
    """One connected region above the threshold (see the module docstring)."""

    finding: int
    voxels: int
    volume_ml: float
    peak: float
    mean: float
    peak_ijk: tuple[int, int, int]
    peak_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    structure: int | None = None

    def row(self, muse: bool = False) -> dict:
        """The finding as one CSV row (``COLUMNS``); ``muse``: its structure label is
        DLMUSE's, so the row names it (another parcellation's numbers are not named)."""
        values = asdict(self)
        row = {key: values[key] for key in ("finding", "voxels")}
        row.update(volume_ml=f"{self.volume_ml:.4f}", peak=f"{self.peak:.4f}")
        row["mean"] = f"{self.mean:.4f}"
        row.update(zip(("peak_i", "peak_j", "peak_k"), self.peak_ijk, strict=True))
        for prefix, point in (("peak", self.peak_mm), ("centre", self.centre_mm)):
            row.update(
                {f"{prefix}_{axis}_mm": f"{v:.1f}" for axis, v in zip("xyz", point, strict=True)}
            )
        row["structure"] = "" if self.structure is None else self.structure
        row["structure_name"] = (
            structure_name(self.structure) if muse and self.structure is not None else ""
        )
        return row


def find_findings(
    anomaly_map: np.ndarray,
    affine: np.ndarray,
    threshold: float,
    mask: np.ndarray | None = None,
    parcellation: np.ndarray | None = None,
    order: str = "size",
    min_voxels: int = 1,
) -> list[Finding]:
    """The connected regions of ``anomaly_map > threshold`` (inside ``mask``), numbered in
    ``order`` (``size``: most voxels first; ``peak``: highest value first), regions smaller
    than ``min_voxels`` left out."""
    from scipy import ndimage

    look_up_option(order, ORDERS, "order of findings")
    values = np.asarray(anomaly_map, dtype=np.float32)
    above = values > threshold
    if mask is not None:
        above &= np.asarray(mask, dtype=bool)
    regions, count = ndimage.label(above, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    keep = index[sizes >= max(1, int(min_voxels))]
    if keep.size == 0:
        return []
    peaks = ndimage.maximum(values, regions, keep)
    means = ndimage.mean(values, regions, keep)
    peak_positions = ndimage.maximum_position(values, regions, keep)
    centres = ndimage.center_of_mass(above, regions, keep)
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    structures = (
        None
        if parcellation is None
        else _structures_of(np.asarray(parcellation), regions, keep, peak_positions)
    )
    found = []
    for n, label in enumerate(keep):
        peak_ijk = tuple(int(v) for v in peak_positions[n])
        structure = None if structures is None else int(structures[n])
        found.append(
            Finding(
                0,
                int(sizes[label - 1]),
                float(sizes[label - 1]) * voxel_ml,
                float(peaks[n]),
                float(means[n]),
                peak_ijk,
                _to_mm(affine, peak_ijk),
                _to_mm(affine, centres[n]),
                structure,
            )
        )
    if order == "size":
        found.sort(key=lambda f: (-f.voxels, -f.peak))
    else:
        found.sort(key=lambda f: (-f.peak, -f.voxels))
    return [replace(finding, finding=n + 1) for n, finding in enumerate(found)]


def _structures_of(
    parcellation: np.ndarray, regions: np.ndarray, keep: np.ndarray, peaks: list
) -> np.ndarray:
    """Each kept region's structure: the parcellation label at its peak, else the label
    most of its voxels carry (0: outside every structure). One pass over the volume for
    all regions, however many there are."""
    at_peak = np.array([int(parcellation[tuple(peak)]) for peak in peaks], dtype=np.int64)
    missing = keep[at_peak == 0]
    if missing.size:
        inside = (regions > 0) & (parcellation > 0)
        pairs = regions[inside].astype(np.int64) * (int(parcellation.max()) + 1)
        pairs += parcellation[inside].astype(np.int64)
        values, counts = np.unique(pairs, return_counts=True)
        region_of, label_of = np.divmod(values, int(parcellation.max()) + 1)
        most: dict[int, tuple[int, int]] = {}
        for region, label, count in zip(region_of, label_of, counts, strict=True):
            if int(count) > most.get(int(region), (0, 0))[0]:
                most[int(region)] = (int(count), int(label))
        for n in np.flatnonzero(at_peak == 0):
            at_peak[n] = most.get(int(keep[n]), (0, 0))[1]
    return at_peak


def _to_mm(affine: np.ndarray, ijk) -> tuple[float, float, float]:
    point = np.asarray(affine, dtype=np.float64) @ np.array([*map(float, ijk), 1.0])
    return tuple(float(v) for v in point[:3])  # type: ignore[return-value]


def table_threshold(extras: dict, given: float | None = None) -> tuple[float, str]:
    """The threshold a result's table of findings is drawn at, and where it comes from:
    ``given``, else the model's calibrated voxel threshold, else ``DEFAULT_THRESHOLD``."""
    if given is not None:
        return float(given), "given"
    calibration = extras.get("calibration") or {}
    if calibration.get("voxel_threshold") is not None:
        return float(calibration["voxel_threshold"]), "calibrated"
    return DEFAULT_THRESHOLD, "default"


def findings_csv(
    findings: list[Finding], threshold: float, threshold_from: str, muse: bool = False
) -> str:
    """The table as CSV text with a header (``COLUMNS``), one row per finding; each row
    also says the threshold and where it came from (given, calibrated, default), and, with
    ``muse`` (a DLMUSE parcellation), the name of its structure."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for finding in findings:
        writer.writerow(
            {
                **finding.row(muse),
                "threshold": f"{threshold:.4g}",
                "threshold_from": threshold_from,
            }
        )
    return out.getvalue()


# The MUSE/DLMUSE labels (CBICA's MUSE ROI list: the Neuromorphometrics labels of the deep
# structures and gyri, and MUSE's own white-matter lobes). Sides: the deep structures and
# white-matter lobes come right then left; gyri have even labels on the right and odd on the
# left; the accumbens areas are 23 (right) and 30 (left), and the basal forebrain is the one
# pair listed left first.
_MUSE_SINGLE = {
    4: "3rd ventricle",
    11: "4th ventricle",
    35: "brain stem",
    46: "CSF",
    69: "optic chiasm",
    71: "cerebellar vermal lobules I-V",
    72: "cerebellar vermal lobules VI-VII",
    73: "cerebellar vermal lobules VIII-X",
    95: "corpus callosum",
}
_MUSE_RIGHT_LEFT = {
    31: "amygdala",
    36: "caudate",
    38: "cerebellum exterior",
    40: "cerebellum white matter",
    44: "cerebral white matter",
    47: "hippocampus",
    49: "inferior lateral ventricle",
    51: "lateral ventricle",
    55: "pallidum",
    57: "putamen",
    59: "thalamus",
    61: "ventral DC",
    63: "vessel",
    81: "frontal lobe white matter",
    83: "occipital lobe white matter",
    85: "parietal lobe white matter",
    87: "temporal lobe white matter",
    89: "fornix",
    91: "anterior limb of the internal capsule",
    93: "posterior limb of the internal capsule",
}
_MUSE_GYRI = (
    (100, "anterior cingulate gyrus"),
    (102, "anterior insula"),
    (104, "anterior orbital gyrus"),
    (106, "angular gyrus"),
    (108, "calcarine cortex"),
    (112, "central operculum"),
    (114, "cuneus"),
    (116, "entorhinal area"),
    (118, "frontal operculum"),
    (120, "frontal pole"),
    (122, "fusiform gyrus"),
    (124, "gyrus rectus"),
    (128, "inferior occipital gyrus"),
    (132, "inferior temporal gyrus"),
    (134, "lingual gyrus"),
    (136, "lateral orbital gyrus"),
    (138, "middle cingulate gyrus"),
    (140, "medial frontal cortex"),
    (142, "middle frontal gyrus"),
    (144, "middle occipital gyrus"),
    (146, "medial orbital gyrus"),
    (148, "postcentral gyrus, medial segment"),
    (150, "precentral gyrus, medial segment"),
    (152, "superior frontal gyrus, medial segment"),
    (154, "middle temporal gyrus"),
    (156, "occipital pole"),
    (160, "occipital fusiform gyrus"),
    (162, "inferior frontal gyrus, opercular part"),
    (164, "inferior frontal gyrus, orbital part"),
    (166, "posterior cingulate gyrus"),
    (168, "precuneus"),
    (170, "parahippocampal gyrus"),
    (172, "posterior insula"),
    (174, "parietal operculum"),
    (176, "postcentral gyrus"),
    (178, "posterior orbital gyrus"),
    (180, "planum polare"),
    (182, "precentral gyrus"),
    (184, "planum temporale"),
    (186, "subcallosal area"),
    (190, "superior frontal gyrus"),
    (192, "supplementary motor cortex"),
    (194, "supramarginal gyrus"),
    (196, "superior occipital gyrus"),
    (198, "superior parietal lobule"),
    (200, "superior temporal gyrus"),
    (202, "temporal pole"),
    (204, "inferior frontal gyrus, triangular part"),
    (206, "transverse temporal gyrus"),
)


def _muse_names() -> dict[int, str]:
    names = dict(_MUSE_SINGLE)
    for right, name in (*_MUSE_RIGHT_LEFT.items(), *_MUSE_GYRI):
        names[right] = f"right {name}"
        names[right + 1] = f"left {name}"
    names[23], names[30] = "right accumbens area", "left accumbens area"
    names[75], names[76] = "left basal forebrain", "right basal forebrain"
    return names


#: MUSE/DLMUSE parcellation label -> structure name (``structure_name``)
MUSE_NAMES: dict[int, str] = _muse_names()


def structure_name(label: int) -> str:
    """The name of a DLMUSE (MUSE) parcellation label: "outside every structure" for 0,
    "label N" for a number the MUSE list does not hold."""
    label = int(label)
    if label == 0:
        return "outside every structure"
    return MUSE_NAMES.get(label, f"label {label}")


#: a parcellation has at least this many structures (a brain mask has one)
MIN_PARCELLATION_LABELS = 4


def parcellation_kind(labels: np.ndarray) -> tuple[bool, bool]:
    """Is ``labels`` a parcellation (several structures, not a mask), and are its labels
    DLMUSE's (ten or more, nearly all in the MUSE list: DLMUSE files also hold a label or
    two outside it)? A FreeSurfer aseg, say, is a parcellation whose numbers mean other
    structures: it is not named."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iub" or array.size == 0:
        return False, False
    top = int(array.max())
    if top < MIN_PARCELLATION_LABELS or top > 65535 or int(array.min()) < 0:
        return False, False
    present = np.flatnonzero(np.bincount(array.ravel().astype(np.int64, copy=False)))
    present = present[present > 0]
    if present.size < MIN_PARCELLATION_LABELS:
        return False, False
    known = float(np.isin(present, list(MUSE_NAMES)).mean())
    return True, bool(present.size >= 10 and known >= 0.9)
