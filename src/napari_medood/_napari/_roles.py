"""What a layer is for: a scan, a brain mask, an anomaly map, a ground truth or a threshold.

The panels pick their default layers by role, never by position or shape alone: a lesion
mask is never offered as a brain mask, a threshold layer never as ground truth. A layer the
plugin makes or reads carries its role in ``metadata["medood_role"]``; for any other layer
the role is guessed from its type and name (and is None when the name says nothing).
"""

from __future__ import annotations

import re
from typing import Any

SCAN = "scan"
BRAIN_MASK = "brain mask"
ANOMALY_MAP = "anomaly map"
GROUND_TRUTH = "ground truth"
THRESHOLD = "threshold"
#: what a model makes on the way to its map (reconstructions, raw distances): shown, never
#: picked as a scan or as a map in [0, 1]
BY_PRODUCT = "by-product"
ROLES = (SCAN, BRAIN_MASK, ANOMALY_MAP, GROUND_TRUTH, THRESHOLD, BY_PRODUCT)
ROLE_KEY = "medood_role"
#: the layer a derived layer (a threshold) was made from: its ``unique_id``
DERIVED_KEY = "medood_derived_from"

_TRUTH_NAME = re.compile(
    r"(lesion|gold.?standard|ground.?truth|(^|[^a-z])gt([^a-z]|$)|tumou?r|anomal|infarct|wmh)",
    re.IGNORECASE,
)
_MASK_NAME = re.compile(r"(brain|mask|dlmuse|parc|aseg|skull|head|foreground)", re.IGNORECASE)
_SEGMENTATION_NAME = re.compile(r"(seg|label)", re.IGNORECASE)
#: an anomaly map by its name: "... anomaly map", "heatmap", "score map", "<scan> anomaly (model)"
_MAP_NAME = re.compile(
    r"(anomal\w*[ _-]*map|heat[ _-]*map|score[ _-]*map|anomaly \()", re.IGNORECASE
)

#: colours of label layers by role: predictions orange, ground truth green
LABEL_COLOURS = {THRESHOLD: "#ff8c1a", GROUND_TRUTH: "#2ecc40"}


def role_from_name(name: str, is_labels: bool) -> str | None:
    """The role a layer's (or file's) name suggests: for label maps, lesion or anomaly words
    first (a lesion mask is ground truth), then brain-mask words (a parcellation such as
    DLMUSE or FreeSurfer's aseg is a brain mask), then any other segmentation (ground
    truth); for images, an anomaly map only when the name says so."""
    if is_labels:
        if _TRUTH_NAME.search(name):
            return GROUND_TRUTH
        if _MASK_NAME.search(name):
            return BRAIN_MASK
        if _SEGMENTATION_NAME.search(name):
            return GROUND_TRUTH
        return None
    return ANOMALY_MAP if _MAP_NAME.search(name) else SCAN


def role_of(layer: Any) -> str | None:
    """The layer's recorded role, else the one its type and name suggest."""
    from napari.layers import Labels

    role = (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)
    if role in ROLES:
        return role
    return role_from_name(str(getattr(layer, "name", "")), isinstance(layer, Labels))


def with_role(metadata: dict | None, role: str, derived_from: Any = None) -> dict:
    """A copy of ``metadata`` that records ``role`` (and the layer it was derived from)."""
    out = {k: v for k, v in (metadata or {}).items() if k not in (ROLE_KEY, DERIVED_KEY)}
    out[ROLE_KEY] = role
    if derived_from is not None:
        out[DERIVED_KEY] = str(derived_from)
    return out


def label_colormap(role: str, extra: dict[int, str] | None = None):
    """One colour for every label of a prediction (orange) or a ground truth (green);
    ``extra`` colours single labels otherwise."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: LABEL_COLOURS[role], 0: "transparent", **(extra or {})}
    return DirectLabelColormap(color_dict=colours)
