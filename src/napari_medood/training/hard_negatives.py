"""Hard negatives for the self-supervised U-Net (Med-OoD's idea, methods.md section 4, for a
detector that trains on synthetic anomalies).

A baseline checkpoint of the same model space reads clean patches of healthy scans (no
anomaly implanted), drawn as training draws them; those where it still fires are kept, and
training mixes them in with an all-background target. The share of the mix is set by hand, or
by the reference's ratio rule (:func:`ratio_rule_share`).

The candidates may be smoothed as a lower-resolution acquisition would show them
(``ood_blur``): a healthy brain blurred by 1.4 mm is what the shipped U-Nets mistake for an
anomaly, and only the patches where the baseline actually fires are kept, unlike resolution
augmentation, which teaches every smoothed patch as normal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError

#: ``ood_supervision: auto``: the share comes from the reference's ratio rule
AUTO = "auto"


@dataclass
class HardNegatives:
    """Clean patches (image, brain mask) on which the baseline fired, and how they were found."""

    patches: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    candidates: int = 0
    flagged_voxels: list[int] = field(default_factory=list)

    def record(self) -> dict:
        return {
            "candidates": self.candidates,
            "hard": len(self.patches),
            "median_flagged_voxels": (
                float(np.median(self.flagged_voxels)) if self.flagged_voxels else 0.0
            ),
        }


def ratio_rule_share(positives: int, candidates: int, hard: int) -> tuple[float, float]:
    """``(r, share)``: Med-OoD's rule for a stream of patches. Of one pass of ``candidates``
    training patches, ``positives`` hold foreground (an anomaly, a lesion) and all hold
    background; r is the fraction of the ``hard`` negatives whose addition brings
    positive/negative closest to 0.65 (``synth.choose_ood_fraction``), and ``share`` is the
    part of the mix those added patches make."""
    from napari_medood.synth.ood_supervision import choose_ood_fraction

    r = choose_ood_fraction([True] * int(positives), [True] * int(candidates), hard)
    added = int(round(r * hard))
    return r, added / (candidates + added) if candidates + added else 0.0


def check_same_space(baseline_card: dict, space_card: dict, where: str) -> None:
    """The baseline must see patches as this run makes them: same spacing and normalisation."""
    mine = baseline_card.get("preprocessing", {})
    for key in ("spacing", "normalisation"):
        if mine.get(key) != space_card.get(key):
            raise MedoodError(
                f"{where}: the baseline's {key} is {mine.get(key)}, this run's "
                f"{space_card.get(key)}; mining needs a baseline of the same model space"
            )


def mine_hard_negatives(
    network,
    execution,
    draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    count: int,
    seed: int,
    threshold: float = 0.5,
    min_voxels: int = 1,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> HardNegatives:
    """The patches among ``count`` candidates (``draw(rng) -> (image, brain mask)``, clean
    patches of the patch size) where ``network`` (the baseline, already on ``execution``'s
    device) puts at least ``min_voxels`` brain voxels above ``threshold``. The candidates come
    from their own seeded generator, so every process of a run finds the same ones."""
    import torch

    from napari_medood.synth.ood_supervision import hard_negatives

    def probability_of(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), execution.autocast():
            logits = network.predict(execution.inputs(torch.from_numpy(x)[None, None]))
        return torch.sigmoid(logits.float())[0, 0].cpu().numpy()

    rng = np.random.default_rng([int(seed), 0x0D])
    found = HardNegatives(candidates=int(count))
    network.eval()
    for index in range(int(count)):
        check_cancelled(cancelled)
        report(progress, index, count, "mining hard negatives")
        image, mask = draw(rng)
        probability = probability_of(image)
        (sample,) = hard_negatives(
            [image], lambda _x, p=probability: p, threshold, masks=[mask], min_voxels=min_voxels
        )
        if sample.hard:
            found.patches.append((image, mask))
            found.flagged_voxels.append(int(np.count_nonzero((probability > threshold) & mask)))
    report(progress, count, count, f"{len(found.patches)} hard negatives of {count}")
    return found


def clean_patch_draw(scans: Sequence, patch: Sequence[int], p_blur: float, blur: Sequence[float]):
    """Candidates for the U-Net: a clean patch of a random scan (``ModelSpaceScan``), a share
    ``p_blur`` of them smoothed by a Gaussian of ``blur`` voxels (drawn per axis)."""
    from napari_medood.training.data import random_patch, smoothed

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scan = scans[int(rng.integers(len(scans)))]
        image, mask = random_patch(scan, patch, rng)
        if p_blur > 0 and rng.random() < p_blur:
            image = smoothed(image, mask, rng.uniform(*blur, size=3))
        return image, mask

    return draw
