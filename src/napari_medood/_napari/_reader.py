"""napari reader: NIfTI, NRRD, MetaImage and DICOM series folders, placed in physical space."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from typing import Any

from napari_medood.io.formats import volume_format
from napari_medood.io.volume import Volume

LayerData = tuple[Any, dict[str, Any], str]
#: Names that mark an integer volume as a label map rather than an image.
_LABEL_NAME = re.compile(
    r"(seg|label|mask|gold_standard|dlmuse|parc|aseg|lesion|roi)", re.IGNORECASE
)


def looks_like_labels(volume: Volume) -> bool:
    """True for label maps: the NIfTI "label" intent, or integer voxels in a file whose name
    says seg/label/mask/lesion/..."""
    header = volume.meta.get("nifti_header")
    if header is not None and header.get_intent()[0] == "label":
        return True
    if volume.data.dtype.kind not in "iub":
        return False
    return volume.source is not None and bool(_LABEL_NAME.search(volume.source.name))


def layer_style(volume: Volume, kind: str) -> dict[str, Any]:
    """The role a file's layer plays (``_roles``), and how it is drawn: scans grey, lesion
    masks (ground truth) green."""
    from napari_medood._napari._roles import (
        ANOMALY_MAP,
        GROUND_TRUTH,
        label_colormap,
        role_from_name,
    )

    name = volume.source.name if volume.source is not None else ""
    if kind == "image":
        role = role_from_name(name, is_labels=False)
        colormap = "inferno" if role == ANOMALY_MAP else "gray"
        return {"colormap": colormap, "metadata": {"medood_role": role}}
    role = role_from_name(name, is_labels=True)
    style: dict[str, Any] = {"metadata": {"medood_role": role} if role else {}}
    if role == GROUND_TRUTH:
        style["colormap"] = label_colormap(GROUND_TRUTH)
    return style


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for ``path`` if napari-medood can read it, else None (never raises)."""
    paths = path if isinstance(path, list) else [path]
    if not paths:
        return None
    try:
        if all(volume_format(os.fspath(p)) is not None for p in paths):
            return read_layers
    except (OSError, TypeError, ValueError):
        return None
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read each volume into an Image or Labels layer in millimetre world coordinates.

    A file that cannot be read gives an error notification naming the file and the problem
    (no layer, no crash); warnings (NaN voxels replaced, oblique scan, several DICOM series)
    are shown as warning notifications.
    """
    from napari.utils.notifications import show_error, show_warning

    from napari_medood._napari._layers import volume_to_layer_data
    from napari_medood.errors import VolumeError
    from napari_medood.io.readers import read_volume

    paths = path if isinstance(path, list) else [path]
    layers: list[LayerData] = []
    for one in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                volume = read_volume(one, nonfinite="zero")
                kind = "labels" if looks_like_labels(volume) else "image"
                layers.append(volume_to_layer_data(volume, kind, **layer_style(volume, kind)))
            except VolumeError as exc:
                show_error(str(exc))
        for warning in caught:
            show_warning(str(warning.message))
    # napari's "read fine, nothing to add" value: the error was already shown.
    return layers or [(None,)]  # type: ignore[list-item]
