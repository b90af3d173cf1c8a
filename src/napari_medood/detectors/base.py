"""What every detector is, declares and returns.

A detector takes one :class:`~napari_medood.io.Volume` (and optionally a brain/foreground
mask on its grid) and returns an :class:`AnomalyResult`: an anomaly map on the input's own
grid with values in [0, 1], a sample-level score, or both, as its ``outputs`` declare. Its
``score_info`` says what the score means. The CLI, the napari panels and the evaluation call
only this interface.

:class:`BaseDetector` writes the part every ``predict`` shares once: the scan is checked
(too small, constant, oblique, unlike what the model's card expects), the mask is checked
or made, cancellation is honoured, the map is clipped to [0, 1], zeroed outside the mask
and wrapped into a Volume on the input grid. A family only writes :meth:`BaseDetector.run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, Stages, check_cancelled
from napari_medood.errors import (
    MedoodError,
    NonFiniteOutputError,
    PreprocessingError,
    VolumeError,
    look_up_option,
)
from napari_medood.io.volume import Volume

MAP = "map"
SCORE = "score"
OUTPUT_KINDS = (MAP, SCORE)


@dataclass(frozen=True)
class ScoreInfo:
    """What a detector's sample score means.

    Attributes:
        description: how it is computed, in a few words.
        low, high: its range.
        higher_is_abnormal: its direction (MOOD: higher = more abnormal).
    """

    description: str
    low: float = 0.0
    high: float = 1.0
    higher_is_abnormal: bool = True

    def describe(self) -> str:
        direction = "higher = more abnormal" if self.higher_is_abnormal else "lower = more abnormal"
        return f"{self.description} ({direction}, {self.low:g} to {self.high:g})"


@dataclass(frozen=True)
class DetectorOptions:
    """Options a user can set for any detector; each family uses those that apply to it.

    Attributes:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        overlap: sliding-window overlap (None: the card's).
        batch_size: windows or slices per forward pass (None: the family's default).
        precision: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (``execution``).
        variant: which of its maps a family gives as the anomaly map, for families that
            give several (their detector class lists them in ``variants``; None: its default).
        extra_maps: also return the by-product maps a family can give (reconstructions,
            their mean and spread; the Detect panel shows them); batch runs skip them.
        gate: run the trust gate a model's card names (``"gate"``: a feature-OOD model)
            before its map, and report whether the scan is like the training data.
        tta: flip test-time augmentation: the model also sees the scan mirrored left-right,
            and its map of the mirror, mirrored back, is averaged with the plain map (about
            twice the time); families without it (all but ``unet3d``) ignore it.
    """

    device: str = "auto"
    overlap: float | None = None
    batch_size: int | None = None
    precision: str = "auto"
    variant: str | None = None
    extra_maps: bool = True
    gate: bool = True
    tta: bool = False

    def __post_init__(self) -> None:
        from napari_medood.execution import PRECISIONS

        try:
            look_up_option(self.precision, PRECISIONS, "precision")
        except ValueError as exc:
            raise MedoodError(str(exc)) from None
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise MedoodError(f"overlap must be within [0, 1), got {self.overlap}")
        if self.batch_size is not None and self.batch_size < 1:
            raise MedoodError(f"batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True, eq=False)
class AnomalyResult:
    """A detector's answer for one volume.

    Attributes:
        anomaly_map: per-voxel abnormality in [0, 1] on the input's grid (None for
            image-level-only detectors).
        score: sample-level abnormality (see the detector's ``score_info``), or None.
        extras: named by-products (other scores, reconstructions, window counts, ...).
        notes: what the user should know about this scan (oblique, unlike the training
            scans, ...), one sentence each.
    """

    anomaly_map: Volume | None = None
    score: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass
class DetectorOutput:
    """What :meth:`BaseDetector.run` returns: a map on the input grid (unclipped), a score,
    by-products."""

    values: np.ndarray | None = None
    score: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """The interface every anomaly detector implements."""

    name: str
    outputs: tuple[str, ...]
    score_info: ScoreInfo

    def predict(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelledPredicate | None = None,
    ) -> AnomalyResult:
        """Score ``volume``; ``mask`` (bool, on the volume's grid) limits where anomalies count."""
        ...


class BaseDetector:
    """The shared ``predict``; subclasses set the class attributes and write :meth:`run`.

    Attributes:
        outputs: ``("map", "score")``, ``("map",)`` or ``("score",)``.
        score_info: what the score means.
        variants: the maps it can give as its anomaly map (``DetectorOptions.variant``);
            empty for one.
        stages: the named stages :meth:`run` reports progress in, in order.
        card: the checkpoint card (None for detectors without one); its ``expects`` entry is
            what scans are compared with before they are read.
    """

    name: str = "detector"
    outputs: ClassVar[tuple[str, ...]] = (MAP, SCORE)
    score_info: ClassVar[ScoreInfo] = ScoreInfo("mean of the 100 highest voxels")
    stages: ClassVar[tuple[str, ...]] = ("computing",)
    variants: ClassVar[tuple[str, ...]] = ()
    card: Mapping[str, Any] | None = None
    #: run the card's trust gate (``DetectorOptions.gate``; set by ``get_detector``)
    gate_enabled: bool = True
    _gate: Any = None
    #: the folder of the checkpoint the card came from (set by ``detector_from_checkpoints``)
    card_folder: Path | None = None

    @property
    def gate_name(self) -> str | None:
        """The feature-OOD model the card names as this model's trust gate, if it is used."""
        name = (self.card or {}).get("gate")
        return str(name) if name and self.gate_enabled else None

    def made_with(self, mask: bool | str = True) -> dict[str, Any]:
        """How this detector makes its maps, as a calibration records it: test-time
        augmentation, variant, and whether it read them in a brain mask (``given``) or in
        the foreground (``mask``: how :func:`working_mask` found it, or True for a given
        mask and False for the foreground). A skull-stripped scan's own brain is a brain
        mask, as a given one is."""
        brain = mask in (True, MASK_GIVEN, MASK_SKULL_STRIPPED)
        return {
            "tta": getattr(self, "tta_method", None),
            "variant": getattr(self, "variant", None),
            "mask": MASK_GIVEN if brain else MASK_FOREGROUND,
        }

    def describe_score(self) -> ScoreInfo:
        """What this detector's sample score means: the family's ``score_info``, or the
        calibrated flagged-volume score when its card's calibration names one."""
        from napari_medood.detectors.calibration import calibrated_score_reference

        reference = calibrated_score_reference(self.card)
        if reference is None or SCORE not in self.outputs:
            return self.score_info
        return ScoreInfo(
            f"volume v above the calibrated threshold relative to healthy scans, "
            f"v / (v + {reference:.1f} ml): 0.5 = as much as an average healthy brain"
        )

    def trust(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        cancelled: CancelledPredicate | None = None,
    ):
        """Is ``volume`` like this model's training scans? The gate's
        :class:`~napari_medood.detectors.feature_ood.TrustReport`, or None without a gate."""
        name = self.gate_name
        if name is None:
            return None
        if self._gate is None:
            from napari_medood.models.checkpoint import Checkpoint

            device = getattr(self, "device", "auto")
            try:
                try:
                    checkpoint = Checkpoint.open(gate_path(name, self.card_folder))
                except ValueError as exc:  # an unknown name; the message lists the known
                    raise MedoodError(str(exc)) from None
                options = DetectorOptions(device=str(device), gate=False)
                self._gate = detector_from_checkpoints([checkpoint], options, name)
            except MedoodError as exc:  # a missing gate must not stop the map
                import warnings

                warnings.warn(
                    f"the trust gate {name} named by {self.name}'s card cannot be used: {exc}",
                    stacklevel=2,
                )
                self.gate_enabled = False
                return None
        return self._gate.predict(volume, mask, cancelled=cancelled).extras.get("trust")

    def run(
        self, volume: Volume, mask: np.ndarray, stages: Stages, cancelled: CancelledPredicate | None
    ) -> DetectorOutput:
        raise NotImplementedError

    def predict(
        self,
        volume: Volume,
        mask: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        cancelled: CancelledPredicate | None = None,
        trust: Any = None,
    ) -> AnomalyResult:
        """The shared preamble, the trust gate (unless ``trust``, its report, is given), the
        family's :meth:`run`, and the shared checks of what it returned."""
        from napari_medood.detectors.compatibility import check_scan

        check_scan(volume)
        mask, mask_kind, notes = scan_preamble(volume, mask, self.card)
        brain = mask_kind != MASK_FOREGROUND  # a brain mask: given, or a skull-stripped scan's
        check_cancelled(cancelled)
        if trust is None and self.gate_name is not None:
            trust = self.trust(volume, mask, cancelled)
        if trust is not None and not trust.in_distribution:
            notes.append(trust.verdict())
        try:
            output = self.run(volume, mask, Stages(progress, self.stages), cancelled)
        except PreprocessingError as exc:  # name the file, not only the problem
            raise VolumeError(volume.source, str(exc)) from exc
        except NonFiniteOutputError as exc:
            raise self._broken(exc) from None
        anomaly_map = None
        if MAP in self.outputs:
            if output.values is None:
                raise MedoodError(f"the {self.name} detector declares a map but returned none")
            try:  # np.clip keeps NaN: a broken model's map must fail here, not pass as 0
                check_finite(np.asarray(output.values), "its map")
            except NonFiniteOutputError as exc:
                raise self._broken(exc) from None
            values = np.clip(np.asarray(output.values, dtype=np.float32), 0.0, 1.0)
            values[~mask] = 0.0
            how = output.extras.get("execution")
            meta = {
                "detector": self.name,
                # kept in the written file's header (NIfTI descrip): which model, how it ran
                "description": f"napari-medood {self.name}" + (f" ({how})" if how else ""),
            }
            anomaly_map = Volume(values, volume.affine, volume.source, meta)
        score = None
        if SCORE in self.outputs:
            if output.score is None:
                raise MedoodError(f"the {self.name} detector declares a score but returned none")
            score = float(output.score)
            if not np.isfinite(score):
                raise self._broken(NonFiniteOutputError(f"its score is {score}"))
        extras = {**output.extras, "mask": mask_kind}
        if trust is not None:
            extras["trust"] = trust
        if anomaly_map is not None:
            from napari_medood.detectors.calibration import calibration_extras, widespread_note

            calibration = calibration_extras(
                self.card, anomaly_map.data, volume.affine, mask, self.made_with(mask_kind)
            )
            if calibration is not None:
                extras["calibration"] = calibration
                note = widespread_note(calibration, "the brain" if brain else "the foreground")
                if note is not None:
                    notes.append(note)
            if calibration is not None and "sample_score" in calibration and SCORE in self.outputs:
                # the family's own score stays beside the calibrated one
                extras["scores"] = {**extras.get("scores", {}), "uncalibrated": score}
                score = calibration["sample_score"]
        return AnomalyResult(anomaly_map, score, extras, tuple(notes))

    def _broken(self, problem: Exception) -> MedoodError:
        """The error for a model that computed NaN or infinite values: nothing is made of
        them (a NaN map clipped would read as "nothing abnormal")."""
        return NonFiniteOutputError(
            f"the {self.name} model's output is unusable ({problem}): its weights "
            "are probably damaged or from a training run that diverged (a matching sha256 "
            "proves only that the file is the one its card was written for); nothing was made "
            "of this scan"
        )


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse ``values`` holding NaN or infinite numbers (:class:`NonFiniteOutputError`)."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = values.size - int(np.count_nonzero(finite))
        raise NonFiniteOutputError(f"{what}: {bad:,} of {values.size:,} values are NaN or infinite")


def score_info_of(detector) -> ScoreInfo | None:
    """What ``detector``'s sample score means: its calibrated score's when it has one
    (``describe_score``), else its ``score_info``."""
    describe = getattr(detector, "describe_score", None)
    return describe() if callable(describe) else getattr(detector, "score_info", None)


#: how a detector's working mask was found (``working_mask``; ``made_with["mask"]``)
MASK_GIVEN, MASK_SKULL_STRIPPED, MASK_FOREGROUND = "given", "skull-stripped", "foreground"


def working_mask(volume: Volume, mask: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The mask a detector works in and how it was found: the given one (checked against
    the scan's grid); else, for a skull-stripped scan, its non-background voxels, which are
    its brain (``preprocessing.masks.skull_stripped_brain``); else an Otsu head/body mask."""
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.preprocessing.masks import (
        check_mask,
        mask_from_threshold,
        skull_stripped_brain,
    )

    if mask is not None:
        return check_mask(mask, volume.grid, volume.source), MASK_GIVEN
    brain = skull_stripped_brain(volume.data, voxel_ml(volume.affine))
    if brain is not None:
        return brain, MASK_SKULL_STRIPPED
    return mask_from_threshold(volume.data, "otsu"), MASK_FOREGROUND


def scan_preamble(
    volume: Volume, mask: np.ndarray | None, card: Mapping[str, Any] | None
) -> tuple[np.ndarray, str, list[str]]:
    """What every run starts from: the mask it works in, how that was found
    (:func:`working_mask`), and the notes on the scan against ``card`` (``scan_notes``, and
    the skull-stripped scan's brain taken for a mask). The panels ask it before Run too, so
    a warning is read before the map."""
    from napari_medood.detectors.compatibility import scan_notes

    mask, mask_kind = working_mask(volume, mask)
    notes = scan_notes(volume, mask, mask_kind != MASK_FOREGROUND, card)
    if mask_kind == MASK_SKULL_STRIPPED:
        notes.append(skull_stripped_note(volume, mask))
    return mask, mask_kind, notes


def foreground_of(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """The mask a detector works in (:func:`working_mask`, without how it was found)."""
    return working_mask(volume, mask)[0]


def skull_stripped_note(volume: Volume, brain: np.ndarray) -> str:
    """What a run without a brain mask on a skull-stripped scan should say."""
    from napari_medood.detectors.calibration import voxel_ml

    brain_ml = float(np.count_nonzero(brain)) * voxel_ml(volume.affine)
    outside = 100.0 * (1.0 - float(np.count_nonzero(brain)) / brain.size)
    return (
        f"no brain mask given: the scan looks skull-stripped ({outside:.0f} % of its voxels "
        f"are background), so its {brain_ml:,.0f} ml of non-background voxels were taken as "
        "the brain"
    )


def topk_mean(anomaly_map: np.ndarray, k: int = 100, mask: np.ndarray | None = None) -> float:
    """Sample score: the mean of the ``k`` highest voxels (inside ``mask`` if given)."""
    values = np.asarray(
        anomaly_map if mask is None else anomaly_map[mask], dtype=np.float64
    ).ravel()
    if values.size == 0:
        return 0.0
    k = max(1, min(int(k), values.size))
    return float(np.partition(values, values.size - k)[values.size - k :].mean())


def fpi_slice_score(anomaly_map: np.ndarray, axis: int) -> float:
    """FPI's sample score: per-slice mean along ``axis`` (the axial axis of the scan),
    smoothed by a Savitzky-Golay filter (window 10 % of the slices, odd, order 3), then the
    mean of the top quartile."""
    from scipy.signal import savgol_filter

    means = np.asarray(anomaly_map, dtype=np.float64).mean(
        axis=tuple(a for a in range(anomaly_map.ndim) if a != axis)
    )
    window = max(int(round(0.1 * means.size)) // 2 * 2 + 1, 5)
    if means.size >= window:
        means = savgol_filter(means, window, 3)
    top = np.sort(means)[-max(means.size // 4, 1) :]
    return float(np.clip(top.mean(), 0.0, 1.0))


def sample_scores(
    anomaly_map: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None, k: int = 100
) -> dict[str, float]:
    """The sample scores of methods.md R13 for a map in [0, 1] with its ``affine``:
    ``topk_mean`` (mean of the k highest voxels), ``mean_in_mask`` (cDDPM/MHD) and
    ``fpi_slices`` (FPI, over axial slices)."""
    from napari_medood.preprocessing.model_space import axial_axis

    check_finite(anomaly_map, "its map")
    inside = anomaly_map[mask] if mask is not None else anomaly_map.ravel()
    return {
        "topk_mean": topk_mean(anomaly_map, k, mask),
        "mean_in_mask": float(inside.mean()) if inside.size else 0.0,
        "fpi_slices": fpi_slice_score(anomaly_map, axial_axis(affine)),
    }


def gate_path(name: str, card_folder: Path | None) -> str:
    """A card's ``gate``: a shipped model's name, an absolute path, or a folder relative to
    the card's own folder (else to the working directory, where older cards meant it)."""
    from napari_medood.models.checkpoint import bundled_models

    if card_folder is None or name in bundled_models() or Path(name).is_absolute():
        return name
    beside = Path(card_folder) / name
    if beside.is_dir() or not Path(name).is_dir():
        return str(beside)  # where it should be: a missing gate's warning names this path
    return name


def detector_from_checkpoints(checkpoints: list, options: DetectorOptions, name: str):
    """The detector of ``checkpoints`` (one, or an ensemble of one family) through its
    family's factory, with ``options``; ``name`` is what the user asked for, for errors."""
    from napari_medood.registry import declared_variants, get_family, resolve

    families = {c.family for c in checkpoints}
    if len(families) > 1:
        listed = ", ".join(f"{c.name} ({c.family})" for c in checkpoints)
        raise MedoodError(f"an ensemble needs checkpoints of one family; got {listed}")
    family = get_family(checkpoints[0].family, str(checkpoints[0].folder / "card.json"))
    if options.variant is not None:
        variants = declared_variants(family)
        if not variants:
            raise MedoodError(
                f"{name} ({family.name}) gives one map and has no variants "
                f"(got {options.variant!r})"
            )
        try:
            look_up_option(options.variant, variants, f"variant of {name}")
        except ValueError as exc:
            raise MedoodError(str(exc)) from None
    detector = resolve(family.detector)(checkpoints, options)
    detector.gate_enabled = options.gate
    # a card's gate may be a folder named relative to the card's own (a suite trained and
    # moved together: medood-train zoo)
    detector.card_folder = Path(checkpoints[0].folder)
    return detector
