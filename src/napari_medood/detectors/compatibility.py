"""Is this scan one a detector can read, and one like those its model was trained on?

:func:`check_scan` refuses what no detector can use (a few voxels, a constant scan), naming
the file. :func:`scan_notes` returns what the user should know before reading a map: the
scan is oblique (read along its nearest axes), or unlike the model card's ``expects``
entry (another contrast or modality, much coarser voxels, a foreground far larger or smaller
than the training brains, a tissue contrast unlike the training scans'). These are rules on
cheap facts; a learned trust score comes with the OOD gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_medood.io.volume import Volume

# the one check of a scan no detector can use, shared with medood-synth
from napari_medood.preprocessing.profile import MIN_VOXELS, check_scan  # noqa: F401

#: how far outside the training scans' range a value may fall before a note (x or /)
TOLERANCE = 1.25
#: a foreground this many times smaller than the training brains is a partial field of view
#: (an Otsu mask of a skull-stripped brain leaves out CSF and can be 30 % smaller)
PARTIAL = 2.0
#: voxels this many times coarser than the model's are noted
COARSER = 1.5


def scan_notes(
    volume: Volume, mask: np.ndarray, mask_given: bool, card: Mapping[str, Any] | None
) -> list[str]:
    """Sentences the user should read before the map (empty: nothing to say), starting with
    what the reader noted about the file (``volume.meta["notes"]``: a header without voxel
    sizes, a DICOM file left out, ...)."""
    notes = [str(note) for note in volume.meta.get("notes", ())]
    grid = volume.grid
    if grid.obliquity_degrees > 1e-3 or not grid.is_orthogonal:
        notes.append(
            f"the scan is oblique (axes tilted by up to "
            f"{grid.obliquity_degrees:.1f} degrees); the detector reads it along its nearest "
            "axes without reslicing, so it sees the anatomy tilted"
        )
    expects = (card or {}).get("expects")
    if expects:
        notes += card_mismatches(volume, mask, mask_given, card)
    if mask_given and not (expects or {}).get("foreground_ml"):
        # every family, with a card that sets a brain volume or not (baselines have no card)
        small = small_mask_note(volume, mask)
        if small is not None:
            notes.append(small)
    return notes


#: a given mask smaller than this share of the scan's foreground is no brain/body mask
SMALL_MASK_SHARE = 0.01


def small_mask_note(volume: Volume, mask: np.ndarray) -> str | None:
    """What to say when a given mask is a sliver of the scan's foreground (a lesion or
    label map passed as the brain mask): anomalies are looked for only inside it."""
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.preprocessing.masks import mask_from_threshold

    inside = int(np.count_nonzero(mask))
    foreground = int(np.count_nonzero(mask_from_threshold(volume.data, "otsu")))
    if foreground == 0 or inside >= SMALL_MASK_SHARE * foreground:
        return None
    return (
        f"the mask holds only {inside * voxel_ml(volume.affine):,.1f} ml ({inside:,} voxels), "
        f"{inside / foreground:.2%} of the scan's foreground: is it a lesion or label map "
        "rather than a brain mask? Anomalies are looked for only inside it"
    )


def card_mismatches(
    volume: Volume, mask: np.ndarray, mask_given: bool, card: Mapping[str, Any]
) -> list[str]:
    """How the scan differs from the scans the card's model was trained on."""
    from napari_medood.preprocessing.profile import scan_profile

    expects = card["expects"]
    model = card.get("name", "the model")
    profile = scan_profile(volume, mask, mask_given)
    notes = []
    contrast = expects.get("contrast")
    if profile.looks_like_ct and expects.get("modality", "MR") != "CT":
        modality = expects.get("modality", "MR")
        scans = (
            f"{modality} scans of any contrast"
            if contrast == "any"
            else f"{modality} {contrast or ''}".rstrip() + " scans"
        )
        notes.append(
            f"intensities go below -500 like CT Hounsfield units; {model} was trained on {scans}"
        )
    elif (
        contrast
        and contrast != "any"  # contrast-randomised training: every MR contrast is expected
        and profile.named_contrast
        and profile.named_contrast != contrast
    ):
        notes.append(
            f"the name or header says {profile.named_contrast}; {model} was trained "
            f"on {contrast} scans, so expect false alarms on normal tissue"
        )
    spacing = expects.get("spacing_mm")
    if spacing:
        finest_expected = max(float(v) for v in np.atleast_1d(spacing))
        coarse = [
            f"{s:g} mm along {axis}"
            for s, axis in zip(profile.spacing_mm, volume.axcodes, strict=True)
            if s > COARSER * finest_expected
        ]
        if coarse:
            notes.append(
                f"voxels of {', '.join(coarse)} are coarser than the "
                f"{_fmt_list(spacing)} mm {model} works at: the scan is upsampled and small "
                "findings are blurred"
            )
    volume_range = expects.get("foreground_ml")
    if volume_range:
        low, high = volume_range
        what = "the brain mask" if mask_given else "the foreground (no brain mask given)"
        if profile.foreground_ml > TOLERANCE * high:
            notes.append(
                f"{what} holds {profile.foreground_ml:,.0f} ml, {model} was trained "
                f"inside brain masks of {low:,.0f}-{high:,.0f} ml"
                + ("; give a brain mask" if not mask_given else "")
            )
        elif profile.foreground_ml < low / PARTIAL:
            notes.append(
                f"{what} holds only {profile.foreground_ml:,.0f} ml, {model} was "
                f"trained on whole brains of {low:,.0f}-{high:,.0f} ml (a partial field of view)"
            )
    ratio_range = expects.get("deep_to_superficial")
    ratio = profile.deep_to_superficial
    if ratio_range and ratio is not None:
        low, high = ratio_range
        if not low / TOLERANCE <= ratio <= high * TOLERANCE:
            notes.append(
                f"the tissue contrast is unlike {model}'s training scans (deep/"
                f"superficial brain intensity {ratio:.2f}, training {low:.2f}-{high:.2f}; on "
                "T1w white matter is brighter than cortex, on T2w and FLAIR darker)"
            )
    return notes


def _fmt_list(values: Any) -> str:
    values = [f"{float(v):g}" for v in np.atleast_1d(values)]
    return values[0] if len(set(values)) == 1 else " x ".join(values)
