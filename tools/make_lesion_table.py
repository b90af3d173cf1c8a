"""Lesions in any contrast, in one command: every brain model and the intensity baselines on
the held-out IXI synthetic set and on MS patients 07 and 19 in T1, T2, FLAIR and T1POST.

    python tools/make_lesion_table.py [--shared ../shared/data] [--work work/lesion-table]
                                      [--fused brain-any] [--cards]

Rows: the intensity baselines (bright and dark voxels abnormal), brain-t1-unet,
brain-t1-seg, and the fused model's members and rules: its anomaly U-Net alone (the
default, brain-any-unet-gpu), its lesion segmenter alone (brain-any-seg), and the fused map
under each rule (``max``, the card's; ``mean``). The members run once per scan; every rule
is computed from their maps, exactly as the fused detector computes it
(``detectors.fused``).

Every row is read at one kind of threshold, so that the rows compare: the value that flags
1 % of the voxels of the two held-out healthy IXI brains (IXI039, IXI048; DLMUSE brain
masks), computed here for each row as ``medood-eval --calibrate`` computes it (for the
calibrated shipped models it is their card's threshold); the intensity baselines, whose maps
sit at their ceiling of 1 over more than 1 % of a healthy brain, are read at 1. For each set:
- pixel AP over the brain voxels of all its scans (as ``medood-eval``), and per MS patient;
- Dice at that threshold, pooled over the set's voxels;
- the volume above it outside the lesions (or outliers), per scan: healthy tissue flagged;
- lesions as a reader counts them (``evaluation.lesions``: lesions and findings as connected
  components, a finding true when a tenth of it lies in lesions): the share of lesions
  found at 1 false finding per scan (the FROC point), and the false findings per scan at
  the row's threshold; and the findings each held-out healthy brain gets there.

The synthetic set is tools/make_baseline_table.py's (medood-synth outliers in IXI039 and
IXI048, seed 1, two of each kind: 22 scans): those two brains are also the calibration
scans, so its flagged volume is near 1 % of a brain by construction. Nothing here was trained on patients 07 and 19 or on
their lesion shapes (tools/make_lesion_bank.py). Prints Markdown tables and writes
WORK/lesion-table.json; ``--cards`` writes each shipped model's figures into its card
(``metrics.lesion_table``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONTRASTS = ("T1", "T2", "FLAIR", "T1POST")
FPR = 0.01
HELD_OUT = ("IXI039", "IXI048")


class Tally:
    """One row on one set: its voxel histogram (AP), per-case APs, and the counts at its
    threshold."""

    def __init__(self):
        from napari_medood.evaluation.metrics import VoxelHistogram

        self.histogram = VoxelHistogram()
        self.case_ap: dict[str, float] = {}
        self.tp = self.fp = self.fn = 0
        self.fp_ml: list[float] = []
        self.lesion_ml: list[float] = []
        self.lesion_counts: list = []

    def add(self, name, values, label, mask, threshold, voxel_ml) -> None:
        from napari_medood.evaluation.metrics import VoxelHistogram

        own = VoxelHistogram()
        own.add(values, label, mask)
        self.histogram.add(values, label, mask)
        if own.n_pos:
            self.case_ap[name] = float(own.average_precision())
        # at 1, a saturated baseline's ceiling, the voxels at 1 are the ones it flags
        flagged = ((values >= threshold) if threshold >= 1.0 else (values > threshold)) & mask
        truth = (label > 0.5) & mask
        self.tp += int(np.count_nonzero(flagged & truth))
        self.fp += int(np.count_nonzero(flagged & ~truth))
        self.fn += int(np.count_nonzero(~flagged & truth))
        self.fp_ml.append(float(np.count_nonzero(flagged & ~truth)) * voxel_ml)
        self.lesion_ml.append(float(np.count_nonzero(truth)) * voxel_ml)
        self.lesion_counts.append(lesion_counts_at(values, label, mask, threshold))

    def figures(self, threshold: float) -> dict:
        from napari_medood.evaluation.lesions import cohort_lesion_figures

        dice = 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)
        lesion = cohort_lesion_figures(
            self.lesion_counts, [False] * len(self.lesion_counts), {"row": threshold}
        )
        return {
            "pixel_ap": float(self.histogram.average_precision()),
            "ap_per_case": {k: round(v, 4) for k, v in self.case_ap.items()},
            "dice": float(dice),
            "healthy_ml_flagged": float(np.mean(self.fp_ml)),
            "lesion_ml": float(np.mean(self.lesion_ml)),
            "lesions": lesion.get("lesions"),
            "sensitivity_at_1_false_finding": lesion.get("froc", {})
            .get("1", {})
            .get("sensitivity"),
            "false_findings_per_scan": lesion["at"]["row"]["false_findings_per_scan"],
            "lesion_f1": lesion["at"]["row"]["f1"],
        }


def lesion_counts_at(values, label, mask, threshold: float):
    """The scan's findings on the lesion grid and at ``threshold`` (a saturated baseline's
    1 included: its findings are its voxels at 1)."""
    from napari_medood.evaluation.lesions import GRID, lesion_counts

    return lesion_counts(
        np.clip(values, 0, 1),
        label if label is not None and label.any() else None,
        mask,
        sorted({*GRID, float(threshold)}),
    )


def healthy_findings(values, mask, threshold: float) -> int:
    """The findings a healthy brain's map lists at ``threshold``."""
    from napari_medood.evaluation.lesions import lesion_counts

    return int(lesion_counts(np.clip(values, 0, 1), None, mask, (threshold,)).findings[0])


def row_maps(detector_name: str, result, fused_rules) -> dict[str, np.ndarray]:
    """The rows one detector's result gives: itself, or a fused model's members and rules."""
    from napari_medood.detectors.fused import exceedance, fuse

    members = result.extras.get("members")
    if not members:
        return {detector_name: result.anomaly_map.data}
    maps = result.extras["maps"]
    rows = {m["model"]: maps[role] for role, m in members.items()}
    exceed = {role: exceedance(maps[role], m["threshold"]) for role, m in members.items()}
    for rule in fused_rules:
        rows[f"{detector_name} ({rule})"] = fuse(exceed, rule)
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from make_baseline_table import ms_cohort

    from napari_medood.detectors import get_detector
    from napari_medood.detectors.calibration import voxel_ml
    from napari_medood.detectors.fused import RULES
    from napari_medood.evaluation.metrics import VoxelHistogram, threshold_at_fpr
    from napari_medood.io import read_volume
    from napari_medood.io.cohort import discover_cases
    from napari_medood.preprocessing.masks import load_mask
    from napari_medood.synth.dataset import ValidationSetConfig, build_validation_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "lesion-table")
    parser.add_argument("--fused", default="brain-any", help="none: no fused model's rows")
    parser.add_argument(
        "--add", action="store_true", help="keep WORK/lesion-table.json's other rows"
    )
    parser.add_argument(
        "--models",
        default="intensity,inverted-intensity,brain-t1-unet,brain-t1-seg",
        help="the other rows: names, checkpoint folders, or LABEL=FOLDER",
    )
    parser.add_argument("--cards", action="store_true", help="write the figures into cards")
    parser.add_argument(
        "--cards-only", action="store_true", help="write WORK/lesion-table.json into cards"
    )
    args = parser.parse_args()
    if args.cards_only:
        write_cards(json.loads((args.work / "lesion-table.json").read_text())["rows"])
        return
    args.work.mkdir(parents=True, exist_ok=True)
    ixi = args.shared / "ixi-t1-2mm"
    held_out = [
        c for c in discover_cases(ixi / "t1", masks=ixi / "dlmuse") if c.name.startswith(HELD_OUT)
    ]
    synthetic = args.work / "ixi-held-out-synthetic"
    build_validation_set(held_out, synthetic, ValidationSetConfig(seed=1, repeats=2))
    sets = {"IXI synthetic": discover_cases(synthetic)}
    for contrast in CONTRASTS:
        sets[f"MS {contrast}"] = discover_cases(ms_cohort(args.shared, args.work, contrast))

    def read(case):
        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid) if case.mask is not None else volume.data > 0
        if case.label is not None:
            label = np.asarray(read_volume(case.label).data, dtype=np.float32)
        else:
            label = np.zeros(volume.shape, np.float32)
        return volume, mask, label

    figures: dict[str, dict] = {}
    thresholds: dict[str, float] = {}
    seconds: dict[str, float] = {}
    if args.add:  # measured before: new rows replace theirs in place
        before = json.loads((args.work / "lesion-table.json").read_text())
        figures, seconds = before["rows"], before["seconds"]
    fused = [] if args.fused == "none" else [args.fused]
    for entry in [*args.models.split(","), *fused]:
        # LABEL=MODEL names a checkpoint folder's row (its card may share a shipped name)
        row_label, _, name = entry.rpartition("=")
        started = time.perf_counter()
        detector = get_detector(name, device="cpu", gate=False, extra_maps=name == args.fused)
        healthy: dict[str, VoxelHistogram] = {}
        healthy_maps: dict[str, list] = {}
        for case in held_out:
            volume, mask, _ = read(case)
            result = detector.predict(volume, mask)
            for row, values in row_maps(row_label or name, result, RULES).items():
                healthy.setdefault(row, VoxelHistogram()).add(
                    values, np.zeros(values.shape, np.float32), mask
                )
                healthy_maps.setdefault(row, []).append((values, mask))
        for row, histogram in healthy.items():
            # a baseline's map saturates at 1 over more than 1 % of a healthy brain (its
            # percentile normalisation clips there): it is read at 1, those saturated voxels
            thresholds[row] = min(float(threshold_at_fpr(histogram, FPR)), 1.0)
            figures[row] = {
                "threshold": round(thresholds[row], 5),
                # what each held-out healthy brain lists at the row's threshold
                "healthy_false_findings": [
                    int(healthy_findings(values, mask, thresholds[row]))
                    for values, mask in healthy_maps[row]
                ],
            }
        for set_name, cases in sets.items():
            tallies: dict[str, Tally] = {}
            for case in cases:
                volume, mask, label = read(case)
                result = detector.predict(volume, mask)
                for row, values in row_maps(row_label or name, result, RULES).items():
                    tallies.setdefault(row, Tally()).add(
                        case.name, values, label, mask, thresholds[row], voxel_ml(volume.affine)
                    )
            for row, tally in tallies.items():
                figures[row][set_name] = tally.figures(thresholds[row])
        seconds[row_label or name] = round(time.perf_counter() - started, 1)
        print(f"{row_label or name}: {seconds[row_label or name]:.0f} s", flush=True)

    columns = list(sets)
    tables = []
    for title, key, digits in (
        ("pixel AP", "pixel_ap", 3),
        (f"Dice at the threshold flagging {100 * FPR:g} % of healthy brain voxels", "dice", 3),
        ("healthy tissue flagged (ml per scan, outside the lesions)", "healthy_ml_flagged", 1),
        ("lesions found at 1 false finding per scan (FROC)", "sensitivity_at_1_false_finding", 2),
        ("false findings per scan at the threshold", "false_findings_per_scan", 1),
    ):
        lines = [
            f"**{title}**",
            "",
            "| model | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for row, measured in figures.items():
            cells = [
                "-" if measured[c].get(key) is None else f"{measured[c][key]:.{digits}f}"
                for c in columns
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    tables.append(
        "\n".join(
            [
                "**false findings per held-out healthy brain (IXI039, IXI048) at the threshold**",
                "",
                "| model | findings |",
                "|---|---|",
                *(
                    f"| {row} | {', '.join(str(n) for n in measured.get('healthy_false_findings', []))} |"
                    for row, measured in figures.items()
                ),
            ]
        )
    )
    lesions = " / ".join(
        f"{c}: {next(iter(figures.values()))[c]['lesion_ml']:.1f}" for c in columns
    )
    text = "\n\n".join(tables) + f"\n\nlesion (outlier) ml per scan: {lesions}\n"
    print(text)
    (args.work / "lesion-table.md").write_text(text)
    record = {
        "command": "python tools/make_lesion_table.py",
        "fpr": FPR,
        "seconds": seconds,
        "rows": figures,
    }
    (args.work / "lesion-table.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.cards:
        write_cards(figures)


def write_cards(figures: dict) -> None:
    """Each shipped model's figures into its card (``metrics.lesion_table``)."""
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.models.checkpoint import bundled_models, read_card

    shipped = bundled_models()
    for row, measured in figures.items():
        # a fused model's row under its card's own rule ("brain-any (mean)") is its own
        name, _, rule = row.partition(" (")
        if name not in shipped or (rule and read_card(shipped[name]).get("rule") != rule[:-1]):
            continue
        card_path = shipped[name] / "card.json"
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["lesion_table"] = {
            "command": "python tools/make_lesion_table.py --cards",
            "note": "MS = patients 07 and 19 (Lesjak et al.), 1 mm MNI, consensus lesions; "
            "IXI synthetic = medood-synth outliers in the held-out IXI039/IXI048; threshold = "
            "1 % of the held-out healthy IXI brain voxels; Dice pooled over a set's voxels; "
            "healthy_ml_flagged = ml above the threshold outside the lesions, per scan",
            **measured,
        }
        write_text_atomic(card_path, json.dumps(card, indent=1) + "\n")
        print(f"updated {card_path}")


if __name__ == "__main__":
    main()
