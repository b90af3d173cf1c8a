"""MedOODFlow's transformation shifts: the corrupted scans its OOD benchmark is built from.

The parameters are the reference's (``medood/transformations.py``); the transforms are
TorchIO's, as there, except registration error (the reference perturbs an ANTs rigid
registration; here the same perturbation, N(0, 0.1) on the 3 x 3 part and U(-5, 5) mm on the
translation, is applied about the volume's centre with SciPy, no atlas needed) and
truncation (half of one axis zeroed, a few lines of numpy). Every corruption keeps the
array's shape and spacing; each output is re-normalised like the in-distribution data by
the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SHIFTS = (
    "motion",
    "ghosting",
    "bias",
    "spike",
    "noise",
    "downsampling",
    "scaling",
    "gamma",
    "truncation",
    "registration",
)


def _subject(array: np.ndarray, spacing: Sequence[float]):
    import torch
    import torchio as tio

    affine = np.diag([*map(float, spacing), 1.0])
    image = tio.ScalarImage(
        tensor=torch.as_tensor(np.asarray(array, np.float32))[None], affine=affine
    )
    return tio.Subject(image=image)


def _run(transform, array, spacing) -> np.ndarray:
    out = transform(_subject(array, spacing))
    return out["image"].data[0].numpy().astype(np.float32)


def motion(array, spacing, rng):
    import torchio as tio

    return _run(tio.RandomMotion(degrees=10, translation=10), array, spacing)


def ghosting(array, spacing, rng):
    import torchio as tio

    axes = rng.choice(3, size=int(rng.integers(1, 4)), replace=False)
    return _run(
        tio.Compose(
            [tio.RandomGhosting(num_ghosts=(1, 3), axes=int(a), intensity=(0.4, 0.6)) for a in axes]
        ),
        array,
        spacing,
    )


def bias(array, spacing, rng):
    import torchio as tio

    return _run(tio.RandomBiasField(coefficients=1), array, spacing)


def spike(array, spacing, rng):
    import torchio as tio

    # exactly one spike: TorchIO reads num_spikes=1 (the reference's) as 0 or 1
    return _run(tio.RandomSpike(num_spikes=(1, 1), intensity=(0.2, 0.5)), array, spacing)


def noise(array, spacing, rng):
    import torchio as tio

    return _run(
        tio.Compose([tio.ZNormalization(), tio.RandomNoise(mean=0, std=(0.5, 0.5))]), array, spacing
    )


def downsampling(array, spacing, rng):
    import torchio as tio

    while True:
        xy, z = (int(f) for f in rng.choice([1, 2, 3], size=2))
        if (xy, z) != (1, 1):
            break
    spacing = tuple(float(s) for s in spacing)
    coarse = (spacing[0] * xy, spacing[1] * xy, spacing[2] * z)
    subject = _subject(array, spacing)
    original = subject["image"]
    down = tio.Resample(coarse)(subject)
    back = tio.Resample(original)(down)  # onto the original grid exactly
    return back["image"].data[0].numpy().astype(np.float32)


def scaling(array, spacing, rng):
    import torchio as tio

    factor = 2.0 if rng.random() < 0.5 else 0.5
    return _run(tio.Affine(scales=factor, degrees=0, translation=0), array, spacing)


def gamma(array, spacing, rng):
    import torchio as tio

    value = float(rng.choice([-1.5, 1.5]))
    return _run(tio.RandomGamma(log_gamma=(value, value)), array, spacing)


def truncation(array, spacing, rng):
    out = np.array(array, dtype=np.float32, copy=True)
    axis = int(rng.integers(0, 3))
    half = out.shape[axis] // 2
    start = 0 if rng.random() < 0.5 else out.shape[axis] - half
    index = [slice(None)] * 3
    index[axis] = slice(start, start + half)
    out[tuple(index)] = 0.0
    return out


def registration(array, spacing, rng):
    from scipy.ndimage import affine_transform

    spacing = np.asarray(spacing, dtype=np.float64)
    matrix = np.eye(3) + rng.normal(0.0, 0.1, size=(3, 3))
    shift_mm = rng.uniform(-5.0, 5.0, size=3)
    # the perturbation acts in mm about the centre; in voxels it is S^-1 M S
    voxel_matrix = np.diag(1 / spacing) @ matrix @ np.diag(spacing)
    centre = (np.asarray(array.shape) - 1) / 2.0
    offset = centre - voxel_matrix @ centre + shift_mm / spacing
    return affine_transform(
        np.asarray(array, np.float32), voxel_matrix, offset=offset, order=1, mode="constant"
    ).astype(np.float32)


CORRUPTIONS: dict[str, Callable] = {name: globals()[name] for name in SHIFTS}


def corrupt(
    array: np.ndarray, kind: str, spacing: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0
) -> np.ndarray:
    """``array`` (3D) under the shift ``kind`` (one of :data:`SHIFTS`), reproducibly for a
    ``seed``; same shape, float32."""
    import torch

    from napari_medood.errors import MedoodError, look_up_option

    try:
        look_up_option(kind, CORRUPTIONS, "corruption")
    except ValueError as exc:
        raise MedoodError(str(exc)) from None
    array = np.asarray(array)
    if array.ndim != 3:
        raise MedoodError(f"a corruption takes a 3D volume, got shape {array.shape}")
    rng = np.random.default_rng(seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # TorchIO draws its parameters from torch's generator
    try:
        out = CORRUPTIONS[kind](array, spacing, rng)
    finally:
        torch.random.set_rng_state(state)
    if out.shape != array.shape:
        raise AssertionError(f"{kind} changed the shape {array.shape} -> {out.shape}")
    return out
