"""Bias tables (UAD-IMAG): metrics by lesion-size quartile, age bin, sex and site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_AGE_BINS = (0, 30, 45, 60, 75, 200)


def _age_label(age: float, edges: Sequence[float]) -> str | None:
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        if low <= age < high:
            return f"{low:g}-{high - 1:g}" if high < 200 else f">={low:g}"
    return None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def group_metrics(rows: list[Any], dice_key: str | None, fpr_key: str | None) -> dict[str, Any]:
    """Count and mean metrics of a group of case results."""
    lesion = [r for r in rows if r.lesion_voxels]
    healthy = [r for r in rows if r.anomalous is False]
    return {
        "cases": len(rows),
        "lesion_cases": len(lesion),
        "ap_mean": _mean([r.ap for r in lesion]),
        "dice_mean": _mean([r.dice.get(dice_key) for r in lesion]) if dice_key else None,
        "healthy_cases": len(healthy),
        "healthy_fpr_mean": _mean([r.fpr.get(fpr_key) for r in healthy]) if fpr_key else None,
        "score_mean": _mean([r.score for r in rows if r.score is not None]),
    }


def bias_tables(
    cases: Sequence[Any],
    dice_key: str | None,
    fpr_key: str | None,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
) -> dict[str, dict[str, Any]]:
    """Group metrics by lesion-size quartile (25/50/75 % of lesion voxel counts among cases
    with lesions), age bin, sex and site (the last three from participants tables)."""
    tables: dict[str, dict[str, Any]] = {}
    sizes = np.array([r.lesion_voxels for r in cases if r.lesion_voxels])
    if sizes.size >= 4:
        edges = np.percentile(sizes, [25, 50, 75])
        groups: dict[str, list] = {}
        for r in cases:
            if r.lesion_voxels:
                quartile = int(np.searchsorted(edges, r.lesion_voxels, side="right"))
                groups.setdefault(f"Q{quartile + 1}", []).append(r)
        tables["lesion_size"] = {
            "edges_voxels": [float(e) for e in edges],
            "groups": {k: group_metrics(v, dice_key, fpr_key) for k, v in sorted(groups.items())},
        }
    for field in ("age", "sex", "site"):
        groups = {}
        for r in cases:
            value = r.info.get(field)
            if value in (None, ""):
                continue
            if field == "age":
                try:
                    value = _age_label(float(value), age_bins)
                except ValueError:
                    continue
            groups.setdefault(str(value), []).append(r)
        if groups:
            tables[field] = {
                "groups": {
                    k: group_metrics(v, dice_key, fpr_key) for k, v in sorted(groups.items())
                }
            }
    return tables
