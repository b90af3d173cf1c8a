"""Hard negatives for the map networks trained on patches (Med-OoD, methods.md section 4):
the self-supervised U-Net and the supervised segmenter.

A baseline checkpoint of the same model space reads anomaly-free candidate patches (clean
healthy patches for the U-Net; for the segmenter also its scans with the lesions removed);
those where it still fires are kept, and training mixes them in with an all-background
target. The share of the mix is set by hand, or by the reference's ratio rule
(:func:`ratio_rule_share`). Under torchrun the first process mines and the others redraw the
kept candidates from the same seeded stream (:func:`mine_for_run`), so every process trains on
the same negatives even where two devices would round a borderline voxel differently.

The candidates may be smoothed as a lower-resolution acquisition would show them
(``ood_blur``): a healthy brain blurred by 1.4 mm is what the shipped U-Nets mistake for an
anomaly, and only the patches where the baseline actually fires are kept, unlike resolution
augmentation, which teaches every smoothed patch as normal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    kept: list[int] = field(default_factory=list)  # which candidates, in drawing order

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
    from their own seeded generator (:func:`redraw` gives the same ones again)."""
    import torch

    from napari_medood.synth.ood_supervision import hard_negatives

    def probability_of(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), execution.autocast():
            logits = network.predict(execution.inputs(torch.from_numpy(x)[None, None]))
        return torch.sigmoid(logits.float())[0, 0].cpu().numpy()

    rng = candidate_stream(seed)
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
            found.kept.append(index)
            found.flagged_voxels.append(int(np.count_nonzero((probability > threshold) & mask)))
    report(progress, count, count, f"{len(found.patches)} hard negatives of {count}")
    return found


def candidate_stream(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0x0D])


def redraw(draw, count: int, seed: int, kept: Sequence[int]) -> list:
    """The candidates ``kept`` (indices) of the stream :func:`mine_hard_negatives` read."""
    rng, wanted, patches = candidate_stream(seed), set(kept), []
    for index in range(int(count)):
        patch = draw(rng)
        if index in wanted:
            patches.append(patch)
    return patches


def open_baseline(name: str, family: str, space_card: dict):
    """The checkpoint that mines, checked: of ``family`` and of this run's model space."""
    from napari_medood.models.checkpoint import Checkpoint

    baseline = Checkpoint.open(name)
    if baseline.family != family:
        raise MedoodError(f"ood_baseline={name}: a {baseline.family} checkpoint, not {family}")
    check_same_space(baseline.card, space_card, f"ood_baseline={name}")
    return baseline


def baseline_record(baseline) -> dict:
    return {"model": baseline.name, "sha256": baseline.card["weights"].get("sha256")}


def mine_for_run(
    config,
    family: str,
    space_card: dict,
    execution,
    draw,
    positives_of: Callable[[int], int],
    world: int = 1,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> tuple[list, float, dict]:
    """``(hard negatives, their share of the mix, the card's record)`` for a run's
    ``ood_supervision``: the baseline (``ood_baseline``, else ``init``) reads
    ``ood_candidates`` candidates of ``draw``; ``positives_of(n)`` says how many of ``n``
    training patches hold foreground, for the ratio rule (``ood_supervision: auto``)."""
    from napari_medood.distributed import from_first_process, rank_of

    baseline = open_baseline(config.ood_baseline or config.init, family, space_card)
    count, seed = int(config.ood_candidates), int(config.seed)

    def mine() -> HardNegatives:
        network = execution.prepare(baseline.build_model("cpu"))
        return mine_hard_negatives(
            network,
            execution,
            draw,
            count,
            seed,
            config.ood_threshold,
            config.ood_min_voxels,
            progress,
            cancelled,
        )

    found = mine() if rank_of(world) == 0 else None
    kept, flagged = from_first_process(
        world, lambda: (found.kept, found.flagged_voxels) if found is not None else None
    )
    if found is None:  # another process: the same candidates, without a network
        found = HardNegatives(redraw(draw, count, seed, kept), count, list(flagged), list(kept))
    record = {
        "baseline": baseline_record(baseline),
        "threshold": config.ood_threshold,
        "min_voxels": config.ood_min_voxels,
        **found.record(),
    }
    if config.ood_supervision == AUTO:
        positives = int(positives_of(count))
        r, share = ratio_rule_share(positives, count, len(found.patches))
        record.update(
            rule="Med-OoD ratio rule (positive/negative closest to 0.65)",
            r=r,
            positive_share=round(positives / count, 4),
        )
    else:
        share = float(config.ood_supervision) if found.patches else 0.0
    record["share"] = round(share, 4)
    return found.patches, share, record


def check_same_baseline(last_card: Path, record: dict | None, out: Path) -> None:
    """A resumed run must mine with the baseline it started with (its weights' sha256, as
    ``OUT/last``'s card recorded it): another would change the mix halfway."""
    import json

    if not last_card.is_file():
        return
    before = (json.loads(last_card.read_text()).get("training") or {}).get("ood_supervision")
    then = (before or {}).get("baseline")
    now = (record or {}).get("baseline")
    if then != now:
        raise MedoodError(
            f"{out}: this run started with hard negatives from {then or 'no baseline'}, now "
            f"{now or 'none'}; resume with the same ood_baseline, or train into another folder"
        )


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
