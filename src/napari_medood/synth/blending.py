"""Blend foreign content into an image through a soft alpha map."""

from __future__ import annotations

import numpy as np

from napari_medood.errors import look_up_option

BLEND_MODES = ("linear",)


def blend(
    image: np.ndarray, foreign: np.ndarray, alpha: np.ndarray, mode: str = "linear"
) -> np.ndarray:
    """``image * (1 - alpha) + foreign * alpha`` (a new float32 array; exact at 0 and 1).

    Only linear blending is built in; mood22's Poisson (gradient-domain) blending is an open
    option for a later version.
    """
    look_up_option(mode, BLEND_MODES, "blend mode")
    alpha = np.asarray(alpha, dtype=np.float32)
    return (
        np.asarray(image, dtype=np.float32) * (np.float32(1) - alpha)
        + np.asarray(foreign, dtype=np.float32) * alpha
    )
