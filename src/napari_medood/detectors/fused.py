"""A fused detector (the ``fused`` family): the maps of calibrated member models, each read
against its own calibration, combined into one map in [0, 1].

A member's map means little beside another's until each is put on a common scale: every
member is a calibrated map model, and its map ``p`` becomes its *calibrated exceedance*
``e``, a piecewise-linear function that is 0 at 0, 0.5 at the member's calibrated voxel
threshold ``t`` (the value that flags its calibration share, 1 %, of healthy brain voxels)
and 1 at 1. The fused map is then, as the card's ``rule`` says:

- ``max``: the larger exceedance: a voxel is flagged when either member flags it;
- ``mean``: their mean: flagged when the members flag it together, on average;
- ``lesion`` or ``anomaly`` (any member's role): that member's exceedance alone.

Each rule is also a variant (``DetectorOptions.variant``), so one card can be measured
under every rule (tools/make_any_contrast_table.py does). The fused card names its members
by name (or by folders relative to its own) and by the sha256 of their weights; a member
whose weights changed is refused, since the fused calibration was measured with those. The
fused map has its own calibration (``medood-eval --calibrate``), as any map model has.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from napari_medood._progress import CancelledPredicate, Stages, check_cancelled
from napari_medood.detectors.base import (
    MAP,
    BaseDetector,
    DetectorOptions,
    DetectorOutput,
    ScoreInfo,
    sample_scores,
)
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.io.volume import Volume

FAMILY = "fused"
#: how the members' exceedances are combined, besides one member's alone (its role)
RULES = ("max", "mean")


def exceedance(values: np.ndarray, threshold: float) -> np.ndarray:
    """A member's map on the common scale: linear from 0 to 0.5 below its calibrated
    ``threshold``, from 0.5 to 1 above it (so 0.5 flags what the member flags)."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    t = float(np.clip(threshold, 1e-6, 1.0 - 1e-6))
    low = 0.5 * values / t
    high = 0.5 + 0.5 * (values - t) / (1.0 - t)
    return np.where(values < t, low, high).astype(np.float32)


def fuse(exceedances: Mapping[str, np.ndarray], rule: str) -> np.ndarray:
    """The fused map of the members' exceedances (by role) under ``rule``."""
    if rule in exceedances:
        return exceedances[rule]
    stack = np.stack(list(exceedances.values()))
    if rule == "max":
        return stack.max(axis=0)
    if rule == "mean":
        return stack.mean(axis=0)
    look_up_option(rule, [*RULES, *exceedances], "fusion rule")
    raise AssertionError("unreachable")


def member_path(name: str, card_folder: Path | None) -> str:
    """A member as a card names it: a shipped model's name, an absolute path, or a folder
    relative to the fused card's own folder (a suite moved together)."""
    from napari_medood.detectors.base import gate_path

    return gate_path(name, card_folder)


@dataclass
class FusedDetector(BaseDetector):
    """One fused checkpoint: its card and its members' detectors, by role.

    Attributes:
        checkpoint: the fused checkpoint (its card names the members and the rule).
        members: role -> the member's detector (built without its gate: the fused card's
            gate runs once, before every member).
        variant: the rule used (None: the card's).
    """

    checkpoint: Any = None
    members: dict[str, BaseDetector] = field(default_factory=dict, repr=False)
    variant: str | None = None
    keep_maps: bool = True
    score_info: ClassVar[ScoreInfo] = ScoreInfo(
        "mean of the 100 highest voxels of the fused map (0.5 = a member's calibrated threshold)"
    )
    variants: ClassVar[tuple[str, ...]] = (*RULES, "lesion", "anomaly")
    #: flip TTA is passed to the members (their exceedances keep their plain calibrations;
    #: the fused calibration holds for plain maps only, as every calibration records)
    flip_tta: ClassVar[bool] = True
    tta: bool = False

    @classmethod
    def from_checkpoints(cls, checkpoints: Sequence[Any], options: DetectorOptions):
        """The family's factory (``napari_medood.registry``): one fused checkpoint; its
        members are built with ``options`` (their own gates off)."""
        from dataclasses import replace

        from napari_medood.detectors.base import detector_from_checkpoints
        from napari_medood.detectors.calibration import calibrated_threshold
        from napari_medood.models.checkpoint import Checkpoint

        if len(checkpoints) != 1:
            names = ", ".join(c.name for c in checkpoints)
            raise MedoodError(
                f"fused models are not ensembled ({names}): give one, or ensemble its members"
            )
        checkpoint = checkpoints[0]
        card_path = checkpoint.folder / "card.json"
        entries = checkpoint.card.get("members")
        if not isinstance(entries, dict) or not entries:
            raise MedoodError(f"{card_path}: a fused card names its members ('members')")
        member_options = replace(options, gate=False, variant=None)
        members = {}
        for role, entry in entries.items():
            if not isinstance(entry, dict) or "model" not in entry:
                raise MedoodError(f"{card_path}: member {role!r} names no model")
            try:
                member = Checkpoint.open(member_path(str(entry["model"]), checkpoint.folder))
            except ValueError as exc:
                raise MedoodError(f"{card_path}: member {role} ({entry['model']}): {exc}") from None
            if member.card.get("weights", {}).get("sha256") != entry.get("sha256"):
                raise MedoodError(
                    f"{card_path}: member {role} ({entry['model']}) is not the model the fused "
                    "card was made with (its weights' sha256 differs); make the fused model "
                    "again (tools/make_fused_model.py) and calibrate it"
                )
            if member.family == FAMILY:
                raise MedoodError(f"{card_path}: member {role} is itself a fused model")
            detector = detector_from_checkpoints([member], member_options, member.name)
            if MAP not in detector.outputs:
                raise MedoodError(f"{card_path}: member {role} ({member.name}) gives no map")
            if calibrated_threshold(member.card) is None:
                raise MedoodError(
                    f"{card_path}: member {role} ({member.name}) has no calibration; calibrate "
                    "it first (medood-eval --calibrate)"
                )
            members[role] = detector
        detector = cls(
            checkpoint=checkpoint,
            members=members,
            variant=options.variant,
            keep_maps=options.extra_maps,
            tta=options.tta,
        )
        _ = detector.rule  # an unknown rule in the card is named now, not at the first scan
        return detector

    @property
    def card(self) -> dict:
        return self.checkpoint.card

    @property
    def name(self) -> str:
        return str(self.card.get("name", "fused"))

    @property
    def rule(self) -> str:
        rule = self.variant or str(self.card.get("rule", "max"))
        try:
            look_up_option(rule, [*RULES, *self.members], "fusion rule")
        except ValueError as exc:
            raise MedoodError(f"{self.name}: {exc}") from None
        return rule

    @property
    def stages(self) -> tuple[str, ...]:
        return (*(m.name for m in self.members.values()), "fusing")

    @property
    def device(self) -> str:
        return str(getattr(next(iter(self.members.values())), "device", "cpu"))

    @property
    def tta_method(self) -> str | None:
        methods = {getattr(m, "tta_method", None) for m in self.members.values()}
        return next(iter(methods)) if len(methods) == 1 else None

    @property
    def execution(self):
        """How the members run (one device and precision for all: they share the options)."""
        plans = [m.execution for m in self.members.values() if hasattr(m, "execution")]
        return plans[0] if plans else None

    def describe_execution(self) -> str:
        """Device and precision, as a map's header records them."""
        how = self.execution.describe() if self.execution is not None else self.device
        return how + (", flip TTA" if self.tta_method else "")

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        from napari_medood.detectors.calibration import (
            calibrated_score,
            calibrated_score_reference,
            calibrated_threshold,
            flagged_ml,
        )

        exceedances, maps, members = {}, {}, {}
        count = len(self.members)
        for number, (role, member) in enumerate(self.members.items(), start=1):
            check_cancelled(cancelled)
            # "brain-any-seg (1 of 2): windows: ... (step 2 of 3)": the member's own stages
            where = f"{member.name} ({number} of {count})"
            inner = Stages(_prefixed(stages.progress, where), member.stages)
            output = member.run(volume, mask, inner, cancelled)
            values = np.clip(np.asarray(output.values, dtype=np.float32), 0.0, 1.0)
            values[~mask] = 0.0
            threshold = calibrated_threshold(member.card)
            exceedances[role] = exceedance(values, threshold)
            maps[role] = values
            volume_ml = flagged_ml(values, volume.affine, threshold, mask)
            reference = calibrated_score_reference(member.card)
            members[role] = {
                "model": member.name,
                "threshold": threshold,
                "flagged_ml": round(volume_ml, 3),
                "score": (
                    calibrated_score(volume_ml, reference)
                    if reference is not None
                    else output.score
                ),
            }
        if stages.progress is not None:
            stages.progress(0, 0, f"fusing the members' maps ({self.rule})")
        fused = fuse(exceedances, self.rule)
        fused[~mask] = 0.0
        scores = sample_scores(fused, volume.affine, mask)
        scores.update({role: float(m["score"]) for role, m in members.items()})
        extras: dict[str, Any] = {
            "scores": scores,
            "members": members,
            "rule": self.rule,
            "variant": self.variant,
            "device": self.device,
            "precision": getattr(self.execution, "precision", None),
            "tta": self.tta_method,
            "execution": self.describe_execution(),
        }
        if self.keep_maps:
            extras["maps"] = maps
            extras["map_labels"] = {
                role: f"{members[role]['model']} ({role})" for role in self.members
            }
        return DetectorOutput(fused, scores["topk_mean"], extras)


def _prefixed(progress, prefix: str):
    """A ``progress(done, total, message)`` that puts ``prefix`` before each message."""
    if progress is None:
        return None
    return lambda done, total, message="": progress(done, total, f"{prefix}: {message}")


def fused_card(
    name: str,
    members: Mapping[str, str | os.PathLike],
    rule: str = "max",
    description: str = "",
    gate: str | None = None,
) -> dict[str, Any]:
    """The card of a fused model of ``members`` (role -> shipped name or folder), each
    recorded with its weights' sha256; what scans it expects is its most permissive
    member's (any contrast when one reads any). Calibrate it before use."""
    from napari_medood.detectors.calibration import calibrated_threshold
    from napari_medood.models.checkpoint import CARD_VERSION, Checkpoint

    look_up_option(rule, [*RULES, *members], "fusion rule")
    entries, expects = {}, None
    for role, model in members.items():
        checkpoint = Checkpoint.open(model)
        if calibrated_threshold(checkpoint.card) is None:
            raise MedoodError(f"member {role} ({model}) has no calibration; calibrate it first")
        entries[role] = {
            "model": str(model),
            "sha256": checkpoint.card["weights"]["sha256"],
            "description": checkpoint.card.get("description", ""),
            "voxel_threshold": calibrated_threshold(checkpoint.card),
        }
        their = checkpoint.card.get("expects")
        if isinstance(their, dict) and (expects is None or their.get("contrast") == "any"):
            expects = their
    return {
        "name": name,
        "detector": FAMILY,
        "description": description
        or f"fused map ({rule}) of {', '.join(str(m) for m in members.values())}",
        "method": "calibrated exceedances of member models, fused "
        + ("by their maximum" if rule == "max" else f"by {rule}"),
        "members": entries,
        "rule": rule,
        "exceedance": "per member: 0 at 0, 0.5 at its calibrated voxel threshold, 1 at 1, "
        "linear in between",
        **({"gate": gate} if gate else {}),
        **({"expects": expects} if expects else {}),
        "card_version": CARD_VERSION,
        # no weights of its own: its members' are checked by the sha256 above
        "weights": {"members": sorted(entries)},
    }
