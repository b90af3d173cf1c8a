"""napari sample data: a real healthy brain MRI (IXI, 2 mm) with its brain mask."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

SAMPLE_T1 = "ixi048_t1_2mm.nii.gz"
SAMPLE_BRAIN_MASK = "ixi048_brainmask_2mm.nii.gz"
ATTRIBUTION = (
    "IXI dataset (https://brain-development.org/ixi-dataset/), subject IXI048-HH-1326, "
    "CC BY-SA 3.0; downsampled to 2 mm by CBICA (github.com/CBICA/CCL_NMF_Prediction, MIT); "
    "brain mask = DLMUSE parcellation > 0."
)


def sample_path(name: str = SAMPLE_T1):
    """Path of a file shipped in ``napari_medood/samples``."""
    return files("napari_medood") / "samples" / name


def make_sample_brain() -> list[tuple[Any, dict, str]]:
    """The IXI048 T1 scan and its brain mask (hidden), in millimetre world coordinates."""
    from napari_medood._napari._layers import volume_to_layer_data
    from napari_medood._napari._roles import BRAIN_MASK, SCAN, with_role
    from napari_medood.io.readers import read_volume

    provenance = {"attribution": ATTRIBUTION}
    image = read_volume(sample_path(SAMPLE_T1))
    mask = read_volume(sample_path(SAMPLE_BRAIN_MASK))
    return [
        volume_to_layer_data(
            image,
            "image",
            name="IXI048 T1 (2 mm)",
            colormap="gray",
            metadata=with_role(provenance, SCAN),
        ),
        volume_to_layer_data(
            mask,
            "labels",
            name="IXI048 brain mask",
            visible=False,
            opacity=0.4,
            metadata=with_role(provenance, BRAIN_MASK),
        ),
    ]
