"""The OOD tables of docs/ood.md, on the shared data, in one command.

    python tools/make_ood_table.py [--shared ../shared/data] [--work work/ood]
                                   [--adrenal MODEL] [--gate MODEL] [--any-gate MODEL]
                                   [--only adrenal|gate|any_gate]

adrenal3d-flow (MedOODFlow's MedMNIST protocol on AdrenalMNIST3D 64^3):
  in distribution: the test split (298 volumes); out of distribution: the reference's ten
  transformation shifts applied to that split (TorchIO, methods.md section 3; spacing taken
  as 1 mm; each output min-max re-normalised like the ID data), and cross-domain volumes
  (the 8 IXI and 8 MS brain MRIs, the CT and 8 random half-size CT crops) resized to 64^3.
brain-t1-gate (the trust gate of the brain T1 detectors), or another brain gate (--gate):
  in distribution: the held-out IXI T1 scans (IXI039, IXI048) and the MS patients' T1;
  out: the MS FLAIR, T2 and T1-post, the CT, and each in-distribution T1 under every shift.
  A gate whose detector reads any MR contrast (its card expects "any", brain-any-gate) has
  the MS FLAIR, T2 and T1-post in distribution too: out are the CT and the shifts.

Every head scores the same features; OOD = positive, score = -confidence (OpenOOD). The
tables go to docs/ood.md and the numbers into both models' cards (``metrics.test``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MS = {
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T1POST": "T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T2": "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
HEAD_ORDER = ("flow", "msp", "energy", "react", "mds", "vim", "knn")


def all_confidences(detector, inputs) -> dict[str, np.ndarray]:
    """Each fitted head's confidence of each scan (features computed once); an input is
    one array or a scan's list of windows, whose confidences are averaged as the detector
    does."""
    windows = [x if isinstance(x, list) else [x] for x in inputs]
    batch = detector.features_of([w for scan in windows for w in scan])
    owner = np.repeat(np.arange(len(windows)), [len(scan) for scan in windows])
    out = {}
    for name, head in detector.heads.items():
        values = head.confidence(batch).numpy()
        out[name] = np.array([values[owner == i].mean() for i in range(len(windows))])
    return out


def table(
    rows: dict[str, dict[str, dict]], heads, metric_names=("auroc", "fpr95", "aupr_in", "aupr_out")
):
    """Markdown: one row per OOD set, per head AUROC (FPR@95, AUPR-In/Out in a second table)."""
    lines = []
    for metric in metric_names:
        label = {
            "auroc": "AUROC",
            "fpr95": "FPR@95 (lower is better)",
            "aupr_in": "AUPR-In",
            "aupr_out": "AUPR-Out",
        }[metric]
        lines += [
            f"**{label}** (%)",
            "",
            "| OOD set | n | " + " | ".join(heads) + " |",
            "|---|---|" + "---|" * len(heads),
        ]
        for name, row in rows.items():
            best = (min if metric == "fpr95" else max)(row[h][metric] for h in heads)
            cells = []
            for h in heads:
                value = 100 * row[h][metric]
                text = f"{value:.1f}"
                cells.append(f"**{text}**" if row[h][metric] == best else text)
            lines.append(f"| {name} | {row[heads[0]]['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def score_sets(confidence_id: dict, sets: dict[str, dict]) -> dict[str, dict[str, dict]]:
    from napari_medood.ood.metrics import openood_metrics

    rows = {}
    for name, confidences in sets.items():
        rows[name] = {}
        for head, values in confidences.items():
            scores = -np.r_[confidence_id[head], values]
            labels = np.r_[np.zeros(len(confidence_id[head])), np.ones(len(values))]
            rows[name][head] = {**openood_metrics(scores, labels), "n": int(len(values))}
    return rows


def with_mean(rows):
    heads = list(next(iter(rows.values())))
    rows["**mean**"] = {
        h: {
            m: float(np.mean([rows[s][h][m] for s in rows]))
            for m in ("auroc", "fpr95", "aupr_in", "aupr_out")
        }
        | {"n": int(sum(rows[s][h]["n"] for s in rows))}
        for h in heads
    }
    return rows


def adrenal(shared: Path, work: Path, model: str) -> tuple[str, dict]:
    from tqdm import tqdm

    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.ood.corruptions import SHIFTS, corrupt
    from napari_medood.preprocessing.feature_input import minmax01, resize_to
    from napari_medood.training.ood_data import load_npz

    detector = get_detector(model)
    test = load_npz(str(shared / "medmnist-adrenalmnist3d" / "adrenalmnist3d_64.npz") + ":test")
    confidence_id = all_confidences(detector, test.arrays)
    sets = {}
    for kind in SHIFTS:
        cache = work / f"adrenal-{kind}.npy"
        if cache.exists():
            arrays = list(np.load(cache))
        else:
            arrays = [
                minmax01(corrupt(a, kind, (1.0, 1.0, 1.0), seed=i))
                for i, a in enumerate(tqdm(test.arrays, desc=kind, leave=False))
            ]
            np.save(cache, np.stack(arrays))
        sets[f"shift: {kind}"] = all_confidences(detector, arrays)
    brains = [read_volume(p).data for p in sorted((shared / "ixi-t1-2mm" / "t1").glob("*.nii.gz"))]
    brains += [
        read_volume(shared / "open-ms-lesjak-mni" / p / f).data
        for p in ("patient07", "patient19")
        for f in MS.values()
    ]
    sets["cross-domain: brain MRI"] = all_confidences(
        detector, [minmax01(resize_to(b, (64, 64, 64))) for b in brains]
    )
    ct = read_volume(shared / "totalsegmentator-example" / "example_ct.nii.gz").data
    rng = np.random.default_rng(0)
    crops = [ct, read_volume(shared / "totalsegmentator-example" / "example_ct_sm.nii.gz").data]
    for _ in range(8):
        size = [s // 2 for s in ct.shape]
        start = [int(rng.integers(0, s - z + 1)) for s, z in zip(ct.shape, size, strict=True)]
        crops.append(ct[tuple(slice(a, a + z) for a, z in zip(start, size, strict=True))])
    sets["cross-domain: CT"] = all_confidences(
        detector, [minmax01(resize_to(c, (64, 64, 64))) for c in crops]
    )
    rows = with_mean(score_sets(confidence_id, sets))
    heads = [h for h in HEAD_ORDER if h in confidence_id]
    return table(rows, heads), {"in_distribution": f"test split ({len(test)})", "sets": rows}


def gate(shared: Path, work: Path, model: str) -> tuple[str, dict, list]:
    from napari_medood.detectors import get_detector
    from napari_medood.io import read_volume
    from napari_medood.ood.corruptions import SHIFTS, corrupt
    from napari_medood.preprocessing.feature_input import feature_inputs
    from napari_medood.preprocessing.masks import load_mask

    detector = get_detector(model)
    spec = detector.input_spec

    def prepared(volume, mask):
        if mask is None:  # as the detector does: an Otsu foreground
            from napari_medood.detectors.base import foreground_of

            mask = foreground_of(volume, None)
        return feature_inputs(volume, mask, spec)

    ixi = shared / "ixi-t1-2mm"
    scans_id = []  # (name, volume, mask)
    for subject in ("IXI039-HH-1261", "IXI048-HH-1326"):
        image = next((ixi / "t1").glob(f"{subject}*.nii.gz"))
        volume = read_volume(image)
        mask = load_mask(next((ixi / "dlmuse").glob(f"{subject}*.nii.gz")), volume.grid)
        scans_id.append((f"IXI {subject[:6]} T1", volume, mask))
    ms_scans = {}
    for patient in ("patient07", "patient19"):
        for contrast, name in MS.items():
            volume = read_volume(shared / "open-ms-lesjak-mni" / patient / name)
            ms_scans[(patient, contrast)] = (
                f"MS {patient[-2:]} {contrast}",
                volume,
                volume.data > 0,
            )
    any_contrast = gated_contrast(detector) == "any"
    id_contrasts = ("T1", "FLAIR", "T2", "T1POST") if any_contrast else ("T1",)
    scans_id += [ms_scans[(p, c)] for c in id_contrasts for p in ("patient07", "patient19")]
    per_scan = []

    def confidences(scans):
        arrays = [prepared(v, m) for _, v, m in scans]
        values = all_confidences(detector, arrays)
        for index, (name, _, _) in enumerate(scans):
            if " + " in name:  # corrupted copies are summarised by the table
                continue
            report = detector.report(values[detector.head_name][index])
            per_scan.append((name, report.percentile, report.in_distribution))
        return values

    confidence_id = confidences(scans_id)
    sets = {}
    for contrast in () if any_contrast else ("FLAIR", "T2", "T1POST"):
        sets[f"modality: MS {contrast}"] = confidences(
            [ms_scans[(p, contrast)] for p in ("patient07", "patient19")]
        )
    ct = read_volume(shared / "totalsegmentator-example" / "example_ct.nii.gz")
    sets["modality: CT"] = confidences([("CT (trunk)", ct, None)])
    shifted = [scan for scan in scans_id if scan[0].endswith(" T1")]  # the T1 scans
    for kind in SHIFTS:
        corrupted = []
        for index, (name, volume, mask) in enumerate(shifted):
            data = corrupt(volume.data.astype(np.float32), kind, volume.grid.spacing, seed=index)
            corrupted.append((f"{name} + {kind}", volume.with_data(data), mask))
        sets[f"shift: T1 + {kind}"] = confidences(corrupted)
    rows = with_mean(score_sets(confidence_id, sets))
    heads = [h for h in HEAD_ORDER if h in confidence_id]
    return (
        table(rows, heads, ("auroc", "fpr95")),
        {"in_distribution": [n for n, _, _ in scans_id], "sets": rows},
        per_scan,
    )


def gated_contrast(detector) -> str | None:
    """The contrast the gate's detector expects (its backbone's card), e.g. ``T1w`` or
    ``any``."""
    from napari_medood.models.checkpoint import read_card, resolve_model

    backbone = (detector.card or {}).get("backbone", {}).get("model")
    if not backbone:
        return None
    return read_card(resolve_model(backbone)).get("expects", {}).get("contrast")


def write_card_metrics(model: str, metrics: dict) -> None:
    from napari_medood.io.atomic import write_text_atomic
    from napari_medood.models.checkpoint import resolve_model

    folder = resolve_model(model)
    card = json.loads((folder / "card.json").read_text())
    card.setdefault("metrics", {})["test"] = metrics
    write_text_atomic(folder / "card.json", json.dumps(card, indent=1) + "\n")
    shipped = REPO / "models" / folder.name / "card.json"
    if shipped.exists() and shipped.resolve() != (folder / "card.json").resolve():
        write_text_atomic(shipped, json.dumps(card, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "work" / "ood")
    parser.add_argument("--adrenal", default="adrenal3d-flow")
    parser.add_argument("--gate", default="brain-t1-gate")
    parser.add_argument(
        "--any-gate", default="brain-any-gate", help="the gate of the any-contrast U-Net"
    )
    parser.add_argument("--only", choices=("adrenal", "gate", "any_gate"))
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "ood.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # every part measured so far, so that one part can be measured again alone
    cached = args.work / "tables.json"
    parts = json.loads(cached.read_text()) if cached.exists() else {}
    if args.only in (None, "adrenal"):
        text, metrics = adrenal(args.shared, args.work, args.adrenal)
        write_card_metrics(args.adrenal, {"protocol": "tools/make_ood_table.py", **metrics})
        parts["adrenal"] = text
        print(text)
    for part, model in (("gate", args.gate), ("any_gate", args.any_gate)):
        if args.only not in (None, part):
            continue
        text, metrics, per_scan = gate(args.shared, args.work, model)
        write_card_metrics(
            model,
            {
                "protocol": "tools/make_ood_table.py",
                **metrics,
                "per_scan_percentile": {n: round(p, 1) for n, p, _ in per_scan},
            },
        )
        lines = ["| scan | percentile | verdict |", "|---|---|---|"]
        lines += [f"| {n} | {p:.1f} | {'in' if ok else '**out**'} |" for n, p, ok in per_scan]
        parts[part] = (
            text
            + "\n\nPer scan (flow head, threshold: the card's percentile):\n\n"
            + "\n".join(lines)
        )
        print(parts[part])
    cached.write_text(json.dumps(parts, indent=1))
    if {"adrenal", "gate", "any_gate"} <= set(parts):
        write_doc(args.doc, parts)


def write_doc(path: Path, parts: dict) -> None:
    text = (REPO / "docs" / "ood.template.md").read_text()
    for name, part in parts.items():
        text = text.replace("{{" + name + "}}", part)
    path.write_text(text)


if __name__ == "__main__":
    main()
