"""The foreign-patch memory bank: textures cut from other training images.

mood22 keeps up to 50 patches; every call pushes random crops of the current (augmented)
training image, at most 5 per call so one image cannot fill the bank, and pops one at random
for the anomaly, so each patch is used once and comes, in steady state, from an earlier image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_medood.synth._common import Seed, as_rng, as_shape3, crop_clamped, rotation_matrix


class ForeignPatchBank:
    """Random crops of earlier images (50 x 128^3 float32 = 400 MB; ``dtype=np.float16``
    halves that at the cost of a slower conversion per push)."""

    def __init__(
        self,
        capacity: int = 50,
        max_push_per_call: int = 5,
        patch_size: int | Sequence[int] = 128,
        dtype=np.float32,
    ):
        if capacity < 1 or max_push_per_call < 1:
            raise ValueError("capacity and max_push_per_call must be >= 1")
        self.capacity = int(capacity)
        self.max_push_per_call = int(max_push_per_call)
        self.patch_size = as_shape3(patch_size, "patch_size")
        self.dtype = np.dtype(dtype)
        self._patches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._patches)

    def push_from(self, image: np.ndarray, rng: Seed = None) -> int:
        """Add random crops of ``image`` until full or ``max_push_per_call``; returns how many."""
        rng = as_rng(rng)
        size = np.minimum(np.asarray(self.patch_size), np.asarray(image.shape))
        count = min(self.max_push_per_call, self.capacity - len(self._patches))
        for _ in range(count):
            start = [
                int(rng.integers(0, n - s + 1)) for n, s in zip(image.shape, size, strict=True)
            ]
            crop = image[tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))]
            self._patches.append(np.array(crop, dtype=self.dtype))
        return count

    def pop(self, rng: Seed = None) -> np.ndarray:
        """Remove and return a uniformly random patch."""
        if not self._patches:
            raise IndexError("the foreign-patch bank is empty; push_from() an image first")
        return self._patches.pop(int(as_rng(rng).integers(len(self._patches))))


class PatchTexture:
    """Foreign values for anomaly voxels, read from a patch laid over the anomaly's box, with
    mood22's patch augmentations, each with probability ``p``: an intensity shift in
    [-shift, shift], Gaussian noise with a std drawn from [0, noise], and a rotation about
    the patch centre by up to ``rotate`` radians per axis; values are clipped to ``clip``.
    Only the anomaly's own box is computed."""

    def __init__(
        self,
        patch: np.ndarray,
        box_start: Sequence[int],
        rng: Seed = None,
        augment: bool = True,
        p: float = 0.2,
        shift: float = 0.2,
        noise: float = 0.2,
        rotate: float = 1.0,
        clip: tuple[float, float] | None = (0.0, 1.0),
    ):
        rng = as_rng(rng)
        self.patch = patch
        self.box_start = np.asarray(box_start)
        self.rng = rng
        self.clip = clip
        draw = (lambda: rng.random() < p) if augment else (lambda: False)
        self.shift = float(rng.uniform(-shift, shift)) if draw() else 0.0
        self.noise = float(rng.uniform(0.0, noise)) if draw() else 0.0
        self.rotation = rotation_matrix(rng.uniform(-rotate, rotate, 3)) if draw() else None

    def params(self) -> dict:
        return {"shift": self.shift, "noise_std": self.noise, "rotated": self.rotation is not None}

    def __call__(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Foreign values over the image box ``[start, stop)``."""
        from scipy import ndimage

        local_start = np.asarray(start) - self.box_start
        local_stop = np.asarray(stop) - self.box_start
        if self.rotation is None:
            values = crop_clamped(self.patch, local_start, local_stop)
        else:
            # source = R^T (local - c) + c with local = output index + local_start
            centre = (np.asarray(self.patch.shape) - 1) / 2.0
            inverse = self.rotation.T
            values = ndimage.affine_transform(
                self.patch.astype(np.float32, copy=False),
                inverse,
                offset=inverse @ (local_start - centre) + centre,
                output_shape=tuple(int(n) for n in local_stop - local_start),
                output=np.float32,
                order=1,
                mode="nearest",
            )
        if self.shift:
            values += np.float32(self.shift)
        if self.noise:
            values += self.rng.standard_normal(values.shape, dtype=np.float32) * np.float32(
                self.noise
            )
        if self.clip is not None:
            np.clip(values, *self.clip, out=values)
        return values
