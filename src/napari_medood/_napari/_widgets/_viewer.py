"""Helpers over the napari viewer and its layers: the layer behind napari's plugin proxy,
where a layer is placed, showing a Labels result over a layer, removing the layers made from
one, and moving the view to a voxel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_medood._napari._roles import DERIVED_KEY


def unwrap(layer: Any) -> Any:
    """The layer itself behind napari's plugin proxy (``viewer.add_*`` hands plugins a proxy;
    the viewer's layer list and its events give the layer itself), so identity holds."""
    return getattr(layer, "__wrapped__", layer)


def placement_of(layer: Any) -> dict[str, Any]:
    """The keywords that put a new layer exactly where ``layer`` is shown."""
    placement = {
        key: getattr(layer, key)
        for key in ("scale", "translate", "rotate", "shear", "units", "axis_labels")
    }
    placement["affine"] = layer.affine.affine_matrix
    return placement


def show_labels(
    viewer: Any,
    existing: Any,
    data: Any,
    like: Any,
    name: str,
    metadata: dict,
    colormap: Any = None,
    opacity: float = 0.5,
) -> Any:
    """Put ``data`` into ``existing`` (a Labels layer still in the viewer, same shape), or
    into a new Labels layer placed exactly over ``like``; returns the layer, renamed."""
    if existing is not None and existing in viewer.layers and existing.data.shape == data.shape:
        existing.data = data
        layer = existing
    else:
        extra = {} if colormap is None else {"colormap": colormap}
        layer = unwrap(
            viewer.add_labels(
                data, name=name, opacity=opacity, metadata=metadata, **extra, **placement_of(like)
            )
        )
    layer.name = name
    return layer


def remove_derived(viewer: Any, layer: Any) -> None:
    """Remove the layers made from ``layer`` (its threshold layers)."""
    key = str(layer.unique_id)
    for other in [x for x in viewer.layers if x.metadata.get(DERIVED_KEY) == key]:
        viewer.layers.remove(other)


def go_to_voxel(viewer: Any, layer: Any, voxel: Sequence[float]) -> None:
    """Show the slice through ``voxel`` (data coordinates of ``layer``) and centre the view
    on it."""
    world = np.asarray(layer.data_to_world(np.asarray(voxel, dtype=float)), dtype=float)
    displayed = list(viewer.dims.displayed)
    # napari right-aligns layers of fewer dimensions (a 3D scan beside a 4D stack of
    # reconstructions): the layer's axes are the viewer's last ones
    offset = max(viewer.dims.ndim - world.size, 0)
    for axis in range(offset, viewer.dims.ndim):
        if axis not in displayed:
            viewer.dims.set_point(axis, float(world[axis - offset]))
    centre = [float(world[axis - offset]) for axis in displayed if axis >= offset]
    camera_of(viewer).center = tuple(centre)


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
