"""Build a labelled validation set of synthetic outliers in the MOOD folder layout.

::

    OUT/pixel/data/<case>.nii.gz         the scan, with or without an outlier (source grid)
    OUT/pixel/label/<case>.nii.gz        binary label map (uint8, same grid)
    OUT/sample/data/<case>.nii.gz        the same scan (a hard link when possible)
    OUT/sample/label/<case>.nii.gz.txt   1 if the case holds an outlier, else 0
    OUT/pixel/mask/<case>.nii.gz         the brain/foreground mask used (not part of MOOD's
                                         layout; medood-eval counts voxels inside it)
    OUT/manifest.json                    per case: source, mask, kind, parameters, seed

Each normal scan gives ``repeats`` cases per outlier kind and ``normal`` unchanged cases.
Every case draws from its own generator seeded with ``[seed, crc32(case name)]``, so the
same seed gives the same set, whatever the order or the subset of scans. Cases whose files
all exist are kept (an interrupted run resumes); a scan that cannot be read, or that no
detector would read (too few voxels along an axis, a constant scan: the rule medood-predict
applies, ``preprocessing.profile.check_scan``), is reported and the others go on. A build
that writes and keeps nothing leaves no manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.io.cohort import Case
from napari_medood.synth.validation import EDGE_MODES, OUTLIER_KINDS, make_outlier

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ValidationSetConfig:
    """What to generate. ``edges`` is ``hard``, ``smooth`` or ``mixed`` (drawn per case)."""

    kinds: Sequence[str] = OUTLIER_KINDS
    repeats: int = 1
    normal: int = 1
    edges: str = "mixed"
    edge_width: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in self.kinds:
            look_up_option(kind, OUTLIER_KINDS, "outlier kind")
        look_up_option(self.edges, (*EDGE_MODES, "mixed"), "edge mode")
        if self.repeats < 0 or self.normal < 0 or (self.repeats == 0 and self.normal == 0):
            raise ValueError("repeats and normal must be >= 0 and not both 0")


@dataclass
class BuildReport:
    """What a build did."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path | None = None


def case_plan(case: Case, config: ValidationSetConfig) -> list[tuple[str, str | None]]:
    """``(output case name, outlier kind or None)`` for one scan."""
    plan: list[tuple[str, str | None]] = []
    for kind in config.kinds:
        for k in range(config.repeats):
            suffix = f"_{k + 1}" if config.repeats > 1 else ""
            plan.append((f"{case.name}_{kind}{suffix}", kind))
    for k in range(config.normal):
        suffix = f"_{k + 1}" if config.normal > 1 else ""
        plan.append((f"{case.name}_normal{suffix}", None))
    return plan


def _paths(out: Path, name: str) -> dict[str, Path]:
    file = f"{name}.nii.gz"
    return {
        "pixel_data": out / "pixel" / "data" / file,
        "pixel_label": out / "pixel" / "label" / file,
        "sample_data": out / "sample" / "data" / file,
        "sample_label": out / "sample" / "label" / f"{file}.txt",
        "mask": out / "pixel" / "mask" / file,
    }


def _link_or_copy(source: Path, target: Path) -> None:
    from napari_medood.io.atomic import atomic_path

    with atomic_path(target, ".nii.gz") as temp:
        temp.unlink()
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)


def build_validation_set(
    cases: Sequence[Case],
    out_dir: str | os.PathLike,
    config: ValidationSetConfig | None = None,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> BuildReport:
    """Write the validation set for ``cases`` into ``out_dir`` (see the module docstring)."""
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask, mask_from_threshold
    from napari_medood.preprocessing.profile import check_scan

    config = config or ValidationSetConfig()
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    previous = _read_manifest(manifest_path, config)
    entries: dict[str, dict[str, Any]] = {}
    summary = BuildReport(manifest=manifest_path)
    plans = [(case, case_plan(case, config)) for case in cases]
    total = sum(len(plan) for _, plan in plans)
    done = 0
    for case, plan in plans:
        check_cancelled(cancelled)
        todo = []
        for name, kind in plan:
            if name in previous and all(p.exists() for p in _paths(out, name).values()):
                entries[name] = previous[name]
                summary.kept.append(name)
            else:
                todo.append((name, kind))
        if todo:
            try:
                volume = read_volume(case.image)
                check_scan(volume)  # a case predict would refuse is no validation case
                if case.mask is not None:
                    foreground = load_mask(case.mask, volume.grid)
                    mask_rule = str(case.mask)
                else:
                    foreground = mask_from_threshold(volume.data, "otsu")
                    mask_rule = "otsu"
            except MedoodError as exc:
                summary.failed.append((case.name, str(exc)))
                todo = []
        for step, (name, kind) in enumerate(todo):
            check_cancelled(cancelled)
            entries[name] = _write_case(
                out, name, kind, case, volume, foreground, mask_rule, config
            )
            summary.written.append(name)
            report(progress, done + step + 1, total, name)
        done += len(plan)
        report(progress, done, total, case.name)
    if not entries and not manifest_path.exists():  # every scan failed: nothing to describe
        summary.manifest = None
        return summary
    manifest = {
        "version": MANIFEST_VERSION,
        "config": _config_dict(config),
        "cases": [entries[n] for n in sorted(entries)],
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return summary


def _write_case(
    out: Path,
    name: str,
    kind: str | None,
    case: Case,
    volume,
    foreground,
    mask_rule: str,
    config: ValidationSetConfig,
) -> dict[str, Any]:
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.io.writers import write_nifti

    case_seed = [int(config.seed), zlib.crc32(name.encode())]
    rng = np.random.default_rng(case_seed)
    if kind is None:
        data, label, params = volume.data, np.zeros(volume.shape, bool), {}
    else:
        edges = config.edges if config.edges != "mixed" else str(rng.choice(EDGE_MODES))
        reflect_axis = int(np.argmax(np.abs(volume.direction[0])))  # the left-right axis
        data, label, params = make_outlier(
            volume.data,
            kind,
            rng,
            foreground=foreground,
            edges=edges,
            edge_width=config.edge_width,
            reflect_axis=reflect_axis,
        )
    paths = _paths(out, name)
    write_nifti(volume.with_data(data), paths["pixel_data"])
    write_nifti(volume.with_data(label.astype(np.uint8)), paths["pixel_label"], kind="labels")
    _link_or_copy(paths["pixel_data"], paths["sample_data"])
    write_nifti(volume.with_data(foreground.astype(np.uint8)), paths["mask"], kind="labels")
    write_text_atomic(paths["sample_label"], f"{int(kind is not None)}\n")
    return {
        "case": name,
        "source": str(case.image),
        "mask": mask_rule,
        "kind": kind or "normal",
        "anomalous": kind is not None,
        "seed": case_seed,
        "params": params,
    }


def _config_dict(config: ValidationSetConfig) -> dict[str, Any]:
    return {**asdict(config), "kinds": list(config.kinds)}


def _read_manifest(path: Path, config: ValidationSetConfig) -> dict[str, dict[str, Any]]:
    """Entries of an earlier build with the same configuration (else none: rebuild all)."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("config") != _config_dict(
        config
    ):
        return {}
    return {entry["case"]: entry for entry in manifest.get("cases", [])}
