"""The ``feature-ood`` family (MedOODFlow): is this scan like the ones a model was trained on?

A checkpoint holds a frozen feature network (a 3D ResNet classifier's weights under
``backbone.``, or a reference to a shipped detector whose encoder it reads, pinned by that
model's sha256), the fitted OOD heads (``heads.<name>.<tensor>``; settings in the card) and,
for each head, the confidences of in-distribution reference scans. The sample score follows
MOOD: ``1 - percentile / 100`` of the scan's confidence among the reference scans, so higher =
more out of distribution, in [0, 1]. Variants are the heads: ``flow`` (the default) and the
baselines the backbone can feed.

The ``classifier3d`` family (a checkpoint of ``medood-train classifier``) scores by its
maximum softmax probability, rescaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from napari_medood._progress import CancelledPredicate, Stages, check_cancelled
from napari_medood.detectors.base import (
    SCORE,
    BaseDetector,
    DetectorOptions,
    DetectorOutput,
    ScoreInfo,
)
from napari_medood.errors import MedoodError
from napari_medood.io.volume import Volume

FAMILY = "feature-ood"
CLASSIFIER_FAMILY = "classifier3d"
HEAD_NAMES = ("flow", "msp", "energy", "react", "mds", "vim", "knn")
DEFAULT_THRESHOLD_PERCENTILE = 5.0


@dataclass(frozen=True)
class TrustReport:
    """One scan against a feature-OOD model's reference scans.

    Attributes:
        model: the feature-OOD model's name; head: the head that scored.
        confidence: the head's raw confidence (higher = more like the reference).
        percentile: where it falls among the reference scans (0..100).
        score: ``1 - percentile / 100`` (MOOD: higher = more out of distribution).
        threshold: the percentile below which a scan is called out of distribution.
        reference: the reference scans' confidences (for the histogram).
        trained_on: what the reference scans were, in a few words.
    """

    model: str
    head: str
    confidence: float
    percentile: float
    score: float
    threshold: float
    reference: np.ndarray
    trained_on: str = ""

    @property
    def in_distribution(self) -> bool:
        return self.percentile >= self.threshold

    def verdict(self) -> str:
        where = f"{self.percentile:.0f}{_ordinal(self.percentile)} percentile of {self.trained_on or 'the training scans'}"
        if self.in_distribution:
            return f"in distribution: {where}"
        return (
            f"NOT like the training data: {where} (below the {self.threshold:g}th); "
            "read any anomaly map of this scan with caution"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "head": self.head,
            "confidence": self.confidence,
            "percentile": self.percentile,
            "score": self.score,
            "threshold_percentile": self.threshold,
            "in_distribution": self.in_distribution,
            "verdict": self.verdict(),
        }


def _ordinal(value: float) -> str:
    n = int(round(value))
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def load_backbone(checkpoint, state: dict, device: str = "cpu"):
    """``(network, kind)``: the card's frozen feature network on ``device``, in eval mode."""
    from napari_medood.models.checkpoint import Checkpoint, CheckpointError
    from napari_medood.models.features import build_classifier

    card_path = checkpoint.folder / "card.json"
    spec = checkpoint.card.get("backbone")
    if not isinstance(spec, dict) or spec.get("kind") not in ("resnet", "unet-encoder"):
        raise CheckpointError(
            f"{card_path}: the card needs a 'backbone' of kind resnet or unet-encoder"
        )
    if spec["kind"] == "resnet":
        network = build_classifier(spec["architecture"])
        weights = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        try:
            network.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{checkpoint.weights_path}: backbone weights do not fit ({exc})"
            ) from exc
        return network.to(device).eval(), "resnet"
    source = Checkpoint.open(_relative(spec["model"], checkpoint.folder))
    if source.card["weights"].get("sha256") != spec.get("sha256"):
        raise CheckpointError(
            f"{card_path}: the backbone model {spec['model']!r} is not the one this model was "
            "fitted on (its weights' sha256 differs); refit it with medood-train flow"
        )
    return source.build_model(device), "unet-encoder"


def _relative(name: str, folder) -> str:
    from pathlib import Path

    from napari_medood.models.checkpoint import bundled_models

    if name in bundled_models() or Path(name).is_absolute():
        return name
    return str(Path(folder) / name)


def restore_heads(card: dict, state: dict, where: str) -> dict[str, Any]:
    """The fitted heads of a card, with their tensors from ``state``."""
    from napari_medood.models.checkpoint import CheckpointError
    from napari_medood.ood.heads import HEADS

    heads = {}
    for name, entry in card.get("heads", {}).items():
        if name not in HEADS:
            raise CheckpointError(f"{where}: unknown OOD head {name!r} (valid: {', '.join(HEADS)})")
        prefix = f"heads.{name}."
        tensors = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        heads[name] = HEADS[name].restore(entry.get("settings", {}), tensors)
    if not heads:
        raise CheckpointError(f"{where}: the card lists no fitted OOD heads")
    return heads


class FeatureOODDetector(BaseDetector):
    """A frozen feature network + one fitted OOD head + its reference scores."""

    outputs: ClassVar[tuple[str, ...]] = (SCORE,)
    variants: ClassVar[tuple[str, ...]] = HEAD_NAMES
    score_info: ClassVar[ScoreInfo] = ScoreInfo(
        "1 - percentile of the scan's confidence among the in-distribution reference scans"
    )
    stages: ClassVar[tuple[str, ...]] = ("preprocessing", "features", "scoring")

    def __init__(self, checkpoint, options: DetectorOptions | None = None):
        from napari_medood.device import choose_device
        from napari_medood.execution import plan_execution
        from napari_medood.ood.reference import ReferenceScores

        options = options or DetectorOptions()
        self.checkpoint = checkpoint
        self.card = checkpoint.card
        where = str(checkpoint.folder / "card.json")
        self.device = choose_device(options.device)
        # features in float32: the reference scores were computed so, and a percentile must
        # not move with the precision a user picks for the map
        self.execution = plan_execution(self.device, "float32")
        state = checkpoint.load_state()
        network, self.backbone_kind = load_backbone(checkpoint, state, "cpu")
        self.network = self.execution.prepare(network)
        self.heads = restore_heads(self.card, state, where)
        self.head_name = options.variant or self.card.get("default_head", "flow")
        if self.head_name not in self.heads:
            raise MedoodError(
                f"{checkpoint.name} has no fitted {self.head_name!r} head "
                f"(fitted: {', '.join(self.heads)})"
            )
        entry = self.card["heads"][self.head_name]
        self.reference = ReferenceScores.of(entry["reference"])
        self.threshold = float(self.card.get("threshold_percentile", DEFAULT_THRESHOLD_PERCENTILE))
        self.input_spec = self.card["input"]

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Any], options: DetectorOptions):
        if len(checkpoints) != 1:
            raise MedoodError("a feature-OOD model is used alone, not in an ensemble")
        return cls(checkpoints[0], options)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    def features(self, array: np.ndarray):
        """The backbone's :class:`FeatureBatch` of one prepared 3D input (or a stack)."""
        import torch

        from napari_medood.models.features import BACKBONES

        array = np.ascontiguousarray(array, dtype=np.float32)
        x = torch.as_tensor(array)
        x = x[:, None] if x.ndim == 4 else x[None, None]  # (n, 1, D, H, W)
        with torch.no_grad(), self.execution.autocast():
            batch = BACKBONES[self.backbone_kind](self.network, self.execution.inputs(x))
        return batch.to("cpu")

    def report(self, confidence: float) -> TrustReport:
        percentile = float(self.reference.percentile(confidence))
        return TrustReport(
            self.name,
            self.head_name,
            float(confidence),
            percentile,
            1.0 - percentile / 100.0,
            self.threshold,
            self.reference.values,
            str(self.card.get("reference_scans", "")),
        )

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        from napari_medood.preprocessing.feature_input import feature_inputs

        stages.report("preprocessing")
        arrays = feature_inputs(volume, mask, self.input_spec)
        check_cancelled(cancelled)
        stages.report("features")
        batch = self.features_of(arrays)
        stages.report("scoring")
        # a scan's confidence: the mean over its windows (one window: itself)
        confidence = float(self.heads[self.head_name].confidence(batch).mean())
        report = self.report(confidence)
        extras = {"trust": report, "confidence": confidence, "windows": len(arrays)}
        return DetectorOutput(None, report.score, extras)

    def features_of(self, arrays, batch_size: int = 8):
        """Feature batches of prepared inputs, up to ``batch_size`` of one shape at a time."""
        from napari_medood.models.features import FeatureBatch

        batches, run = [], []
        for array in arrays:
            if run and (len(run) == batch_size or array.shape != run[0].shape):
                batches.append(self.features(np.stack(run)))
                run = []
            run.append(array)
        if run:
            batches.append(self.features(np.stack(run)))
        return FeatureBatch.cat(batches)


class ClassifierDetector(BaseDetector):
    """A ``medood-train classifier`` checkpoint on its own: 1 - maximum softmax probability,
    rescaled so that a uniform prediction gives 1."""

    outputs: ClassVar[tuple[str, ...]] = (SCORE,)
    score_info: ClassVar[ScoreInfo] = ScoreInfo("1 - maximum softmax probability, rescaled")
    stages: ClassVar[tuple[str, ...]] = ("preprocessing", "classifying")

    def __init__(self, checkpoint, options: DetectorOptions | None = None):
        from napari_medood.device import choose_device

        options = options or DetectorOptions()
        self.checkpoint = checkpoint
        self.card = checkpoint.card
        self.device = choose_device(options.device)
        self.network = checkpoint.build_model(self.device)

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Any], options: DetectorOptions):
        if len(checkpoints) != 1:
            raise MedoodError("a classifier is used alone, not in an ensemble")
        return cls(checkpoints[0], options)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    def run(self, volume, mask, stages, cancelled) -> DetectorOutput:
        import torch

        from napari_medood.preprocessing.feature_input import feature_inputs

        stages.report("preprocessing")
        array = feature_inputs(volume, mask, self.card["input"])[0]
        stages.report("classifying")
        x = torch.as_tensor(array)[None, None].to(self.device)
        with torch.no_grad():
            probabilities = torch.softmax(self.network(x).float(), dim=1)[0].cpu().numpy()
        classes = probabilities.size
        score = (1.0 - probabilities.max()) * classes / max(classes - 1, 1)
        return DetectorOutput(None, float(np.clip(score, 0, 1)), {"probabilities": probabilities})
