"""Synthetic anomalies: training anomalies (foreign patches in random and real-lesion shapes)
and FPI/MOOD-style validation outliers, and images of random contrast drawn from a
parcellation (SynthSeg-style), all seeded and deterministic; and anomaly-free samples made by
removing labelled objects, for OoD supervision (Med-OoD)."""

from napari_medood.synth.anomaly import (
    Implant,
    SyntheticAnomaly3D,
    SyntheticResult,
    image_texture,
    implant,
    uniform_noise_texture,
)
from napari_medood.synth.blending import blend
from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser, ContrastSample
from napari_medood.synth.lesions import LesionShapeBank
from napari_medood.synth.ood_supervision import (
    OoDSample,
    choose_ood_fraction,
    hard_negatives,
    remove_objects,
)
from napari_medood.synth.patches import ForeignPatchBank, PatchTexture
from napari_medood.synth.shapes import (
    SHAPE_KINDS,
    BrushParameters,
    Shape,
    brush_mask,
    cuboid_mask,
    sphere_mask,
)
from napari_medood.synth.smoothing import gaussian_kernel_1d, sample_kernel_size, smooth_alpha

__all__ = [
    "DLMUSE_STRUCTURES",
    "SHAPE_KINDS",
    "BrushParameters",
    "ContrastRandomiser",
    "ContrastSample",
    "ForeignPatchBank",
    "Implant",
    "LesionShapeBank",
    "OoDSample",
    "PatchTexture",
    "Shape",
    "SyntheticAnomaly3D",
    "SyntheticResult",
    "blend",
    "brush_mask",
    "choose_ood_fraction",
    "cuboid_mask",
    "gaussian_kernel_1d",
    "hard_negatives",
    "image_texture",
    "implant",
    "remove_objects",
    "sample_kernel_size",
    "smooth_alpha",
    "sphere_mask",
    "uniform_noise_texture",
]
