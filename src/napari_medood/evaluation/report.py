"""Write an evaluation as JSON, CSV and a Markdown report with PNG plots."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood.evaluation.evaluate import EvaluationResult
from napari_medood.io.atomic import write_atomic, write_text_atomic


def _plain(value: Any) -> Any:
    """JSON-friendly copies of numpy scalars, arrays and NaN (as null)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    write_atomic(path, lambda temp: temp.write_bytes(buffer.getvalue()), suffix=".png")
    return path


def plot_pr_curve(result: EvaluationResult, path: Path) -> Path | None:
    histogram = result.histogram
    if histogram is None or histogram.n_pos == 0:
        return None
    precision, recall, _ = histogram.precision_recall()
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(recall, precision, lw=1.5, label=f"AP {result.pixel.get('ap', 0):.3f}")
    prevalence = histogram.n_pos / (histogram.n_pos + histogram.n_neg)
    axes.axhline(prevalence, color="grey", ls=":", lw=1, label=f"chance {prevalence:.4f}")
    axes.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Voxel precision-recall (all voxels pooled)",
    )
    axes.legend(loc="upper right")
    return _save(figure, path)


def plot_dice(result: EvaluationResult, path: Path) -> Path | None:
    lesion = [c for c in result.cases if c.lesion_voxels and c.dice]
    if not lesion:
        return None
    names = [n for n in ("sweep", "bisection", "fpr5%") if n in lesion[0].dice]
    figure = _figure(max(5.0, 0.35 * len(lesion) + 2), 4.0)
    axes = figure.add_subplot()
    x = np.arange(len(lesion))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        threshold = result.pixel["dice"][name]["threshold"]
        axes.bar(
            x + k * width,
            [c.dice[name] for c in lesion],
            width,
            label=f"{name} (t={threshold:.3g})",
        )
    axes.set_xticks(
        x + width * (len(names) - 1) / 2, [c.name[-24:] for c in lesion], rotation=70, fontsize=7
    )
    axes.set(ylabel="Dice", ylim=(0, 1), title="Dice per case")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_sweep(result: EvaluationResult, sweep: np.ndarray, path: Path) -> Path | None:
    if result.sweep_curve is None:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(sweep, result.sweep_curve, lw=1.5, label="mean Dice over lesion cases")
    for name, entry in result.pixel.get("dice", {}).items():
        axes.axvline(entry["threshold"], ls="--", lw=0.8, color="grey")
        axes.text(entry["threshold"], 0.98, name, rotation=90, va="top", fontsize=7)
    axes.set(
        xlabel="threshold",
        ylabel="Dice",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Dice against the threshold",
    )
    return _save(figure, path)


def plot_bias(tables: dict[str, Any], path: Path) -> Path | None:
    panels = [(name, table) for name, table in tables.items() if table.get("groups")]
    if not panels:
        return None
    figure = _figure(4.2 * len(panels), 3.6)
    for k, (name, table) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), k)
        groups = list(table["groups"])
        values = [table["groups"][g]["dice_mean"] for g in groups]
        metric = "Dice"
        if all(v is None for v in values):
            values = [table["groups"][g]["healthy_fpr_mean"] for g in groups]
            metric = "healthy voxel FPR"
        if all(v is None for v in values):
            values = [table["groups"][g]["score_mean"] for g in groups]
            metric = "mean sample score"
        axes.bar(groups, [0 if v is None else v for v in values], color="#4c72b0")
        for i, g in enumerate(groups):
            axes.text(
                i,
                0,
                f"n={table['groups'][g]['cases']}",
                ha="center",
                va="bottom",
                fontsize=7,
                color="white",
            )
        axes.set(title=f"by {name.replace('_', ' ')}", ylabel=metric)
        axes.tick_params(axis="x", labelsize=8)
    return _save(figure, path)


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    title: str = "napari-medood evaluation",
    bias: dict[str, Any] | None = None,
    sweep: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``cases.csv``, ``report.md`` and the PNG plots; returns paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = {
        "title": title,
        **result.summary(),
        "bias": bias or {},
        "cases": [c.row() for c in result.cases],
    }
    written["json"] = write_text_atomic(
        out / "metrics.json", json.dumps(_plain(payload), indent=1) + "\n"
    )
    rows = [_plain(c.row()) for c in result.cases]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    written["csv"] = write_text_atomic(out / "cases.csv", buffer.getvalue())
    plots = {
        "pr_curve": plot_pr_curve(result, out / "pr_curve.png"),
        "dice_per_case": plot_dice(result, out / "dice_per_case.png"),
        "dice_sweep": plot_sweep(
            result,
            np.asarray(sweep if sweep is not None else np.arange(0, 1, 0.01)),
            out / "dice_sweep.png",
        ),
        "bias": plot_bias(bias or {}, out / "bias.png"),
    }
    written.update({k: v for k, v in plots.items() if v is not None})
    written["markdown"] = write_text_atomic(
        out / "report.md", markdown(result, title, bias or {}, plots)
    )
    return written


def lesion_markdown(lesion: dict[str, Any]) -> list[str]:
    """The lesion-level section: FROC points, F1, false findings per healthy scan."""
    if not lesion:
        return []
    lines = [
        "## Lesion level",
        "",
        f"Lesions and findings are 26-connected components; a finding is true when at least "
        f"a tenth of it lies in lesions. {lesion['lesions']} lesions in "
        f"{lesion['lesion_scans']} scans; {lesion['scans']} scans read "
        f"({lesion['healthy_scans']} healthy).",
        "",
    ]
    if lesion.get("froc"):
        points = lesion["froc"]
        lines += [
            "| false findings per scan | "
            + " | ".join(f"{k}" for k in points)
            + " | best lesion F1 |",
            "|---|" + "---|" * (len(points) + 1),
            "| lesion sensitivity | "
            + " | ".join(_fmt(v["sensitivity"]) for v in points.values())
            + f" | {_fmt(lesion.get('best_f1', {}).get('f1'))} |",
            "| at threshold | "
            + " | ".join(_fmt(v["threshold"], 3) for v in points.values())
            + f" | {_fmt(lesion.get('best_f1', {}).get('threshold'), 3)} |",
            "",
        ]
    at = lesion.get("at", {})
    if at:
        lines += [
            "| threshold | value | false findings per scan | lesion sensitivity | lesion F1 "
            "| false findings per healthy scan | ml per healthy scan |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in at.items():
            lines.append(
                f"| {name} | {_fmt(entry['threshold'], 4)} | "
                f"{_fmt(entry['false_findings_per_scan'], 2)} | {_fmt(entry['sensitivity'])} | "
                f"{_fmt(entry['f1'])} | {_fmt(entry.get('healthy_false_findings_mean'), 2)} | "
                f"{_fmt(entry.get('healthy_flagged_ml_mean'), 2)} |"
            )
        lines += [
            "",
            "Each threshold is read at the nearest threshold of the grid at or above it "
            "(`read_at` in metrics.json).",
            "",
        ]
    return lines


def markdown(
    result: EvaluationResult, title: str, bias: dict[str, Any], plots: dict[str, Path | None]
) -> str:
    """The report's text."""
    pixel, sample, calibration = result.pixel, result.sample, result.calibration
    lines = [f"# {title}", ""]
    settings = result.settings
    lines += [
        f"- cases: {settings['cases']} (+ {settings['healthy_cases']} healthy for calibration)",
        f"- voxels: {settings['voxels']}",
        f"- subsampling: {settings['subsampling']}",
    ]
    if settings["failed"]:
        lines.append(
            f"- **failed cases: {len(settings['failed'])}**: "
            + "; ".join(f"{f['case']} ({f['error']})" for f in settings["failed"][:10])
        )
    problems = settings.get("prediction_problems", [])
    if problems:
        lines.append(
            f"- **cases with unusable predictions: {len(problems)}** (scored as MOOD's "
            "evaluator scores them: a missing or unreadable map as zeros, an unreadable "
            "score as 0): "
            + "; ".join(f"{p['case']} ({', '.join(p['problems'])})" for p in problems[:20])
            + (f"; and {len(problems) - 20} more (see cases.csv)" if len(problems) > 20 else "")
        )
    lines += ["", "## Voxel level", ""]
    if "ap" in pixel:
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| MOOD pixel AP (all voxels pooled) | {_fmt(pixel.get('ap'))} |",
            f"| AUROC | {_fmt(pixel.get('auroc'))} |",
            f"| AUPRC, per-volume mean | {_fmt(pixel.get('auprc_per_volume_mean'))} |",
            f"| abnormal / normal voxels | {pixel['abnormal_voxels']} / {pixel['normal_voxels']} |",
            "",
        ]
    else:
        lines += ["No voxel-level predictions were scored.", ""]
    if pixel.get("dice"):
        lines += ["| threshold | value | mean Dice (lesion cases) |", "|---|---|---|"]
        for name, entry in pixel["dice"].items():
            how = {
                "bisection": "best, Zimmerer bisection (pooled)",
                "sweep": "best, sweep (oracle)",
            }.get(
                name,
                f"fixed, {name[2:]}" if name.startswith("at") else f"calibrated, {name} voxel FPR",
            )
            lines.append(
                f"| {how} | {_fmt(entry['threshold'], 4)} | {_fmt(entry.get('dice_mean'))} |"
            )
        lines.append("")
    if calibration.get("thresholds"):
        per_scan = calibration.get("healthy_fpr_mean_per_scan", {})
        lines += [
            f"Thresholds calibrated on {calibration['source']} "
            f"({calibration['healthy_voxels']} voxels). Voxel FPR there, pooled (mean "
            "per scan): "
            + ", ".join(
                f"{k} -> {_fmt(v, 4)} ({_fmt(per_scan.get(k), 4)})"
                for k, v in calibration["healthy_fpr_pooled"].items()
            ),
            "",
        ]
    for entry in pixel.get("fixed", {}).values():
        flagged = ", ".join(f"{k} {v:.1f}" for k, v in entry["healthy_flagged_ml"].items())
        lines += [
            f"At the fixed threshold {_fmt(entry['threshold'], 4)}: healthy scans flagged "
            f"{_fmt(entry['healthy_flagged_ml_mean'], 2)} ml on average ({flagged or 'none'}).",
            "",
        ]
    lines += lesion_markdown(result.lesion)
    lines += ["## Sample level", ""]
    if "auroc" in sample or "ap_mood" in sample:
        ci = sample.get("ci95", {})
        lines += [
            "| metric | value | 95 % bootstrap interval |",
            "|---|---|---|",
            f"| MOOD sample AP | {_fmt(sample.get('ap_mood'))} | |",
        ]
        for key, label in (
            ("auroc", "AUROC"),
            ("fpr_at_95_tpr", "FPR at 95 % TPR"),
            ("aupr_in", "AUPR-In"),
            ("aupr_out", "AUPR-Out"),
        ):
            interval = ci.get(key)
            text = f"{_fmt(interval[0])} - {_fmt(interval[1])}" if interval else ""
            lines.append(f"| {label} | {_fmt(sample.get(key))} | {text} |")
        lines += ["", f"{sample['cases']} cases, {sample['abnormal']} abnormal.", ""]
    else:
        lines += [sample.get("note", "No sample-level scores."), ""]
    for key, caption in (
        ("pr_curve", "Voxel precision-recall"),
        ("dice_sweep", "Dice sweep"),
        ("dice_per_case", "Dice per case"),
        ("bias", "Bias"),
    ):
        if plots.get(key):
            lines += [f"![{caption}]({plots[key].name})", ""]
    if bias:
        lines += ["## Bias", ""]
        for name, table in bias.items():
            lines += [
                f"### By {name.replace('_', ' ')}",
                "",
                "| group | cases | AP mean | Dice mean | healthy FPR mean |",
                "|---|---|---|---|---|",
            ]
            for group, row in table["groups"].items():
                lines.append(
                    f"| {group} | {row['cases']} | {_fmt(row['ap_mean'])} | "
                    f"{_fmt(row['dice_mean'])} | {_fmt(row['healthy_fpr_mean'], 4)} |"
                )
            if "edges_voxels" in table:
                lines.append(
                    f"\nQuartile edges (lesion voxels): "
                    f"{', '.join(f'{e:g}' for e in table['edges_voxels'])}"
                )
            lines.append("")
    lines += ["## Cases", "", "See `cases.csv` for every number per case.", ""]
    return "\n".join(lines)
