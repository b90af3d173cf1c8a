"""medood-eval end to end on a synthetic IXI set, cohort formats, participants, LMDB cache."""

from __future__ import annotations

import csv
import json
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from conftest import shared
from napari_medood.cli import eval_main, predict_main, synth_main
from napari_medood.evaluation import EvalOptions, FolderPredictions, evaluate
from napari_medood.io.cohort import discover_cases


@pytest.fixture(scope="module")
def valset(tmp_path_factory):
    """A small labelled set: 3 IXI scans x (shift, uniform noise, normal), with brain masks."""
    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    root = tmp_path_factory.mktemp("eval")
    scans = root / "scans"
    scans.mkdir()
    for scan in sorted(t1.glob("*.nii.gz"))[:3]:
        shutil.copy(scan, scans / scan.name)
    assert (
        synth_main(
            [
                "--mask",
                str(dlmuse),
                "--kinds",
                "shift,uniform_noise",
                "--seed",
                "2",
                str(scans),
                str(root / "set"),
            ]
        )
        == 0
    )
    return root / "set"


def test_eval_runs_a_detector_and_writes_the_report(valset, tmp_path, capsys):
    report = tmp_path / "report"
    code = eval_main(
        [
            "--model",
            "intensity",
            "--participants",
            str(shared("ixi-t1-2mm", "participants.csv")),
            "--bootstrap",
            "200",
            str(valset),
            "-o",
            str(report),
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((report / "metrics.json").read_text())
    pixel, sample = metrics["pixel"], metrics["sample"]
    assert 0 < pixel["ap"] < 1 and 0 < pixel["auroc"] <= 1
    assert pixel["cases_with_lesions"] == 6
    assert set(pixel["dice"]) == {"bisection", "sweep", "fpr1%", "fpr5%", "fpr10%"}
    assert metrics["calibration"]["source"] == "the 3 normal cases of the evaluated set"
    for name, fpr in (("fpr1%", 0.01), ("fpr5%", 0.05), ("fpr10%", 0.10)):
        assert metrics["calibration"]["healthy_fpr_pooled"][name] < fpr
    assert sample["cases"] == 9 and sample["abnormal"] == 6 and "ci95" in sample
    assert metrics["settings"]["subsampling"].startswith("none")
    assert set(metrics["bias"]) >= {"lesion_size", "age", "sex"}
    with open(report / "cases.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and {"name", "ap", "dice@sweep", "age", "sex"} <= set(rows[0])
    text = (report / "report.md").read_text()
    for picture in ("pr_curve.png", "dice_sweep.png", "dice_per_case.png", "bias.png"):
        assert (report / picture).stat().st_size > 1000 and picture in text
    assert (report / "predictions").is_dir()  # the detector's maps are kept


def test_eval_of_a_predictions_folder_matches_sklearn_and_counts_missing_maps(
    valset, tmp_path, capsys
):
    predictions = tmp_path / "predictions"
    assert (
        predict_main(
            ["--model", "inverted-intensity", str(valset / "pixel" / "data"), str(predictions)]
        )
        == 0
    )
    assert (
        predict_main(
            [
                "--model",
                "inverted-intensity",
                "--task",
                "sample",
                str(valset / "pixel" / "data"),
                str(predictions),
            ]
        )
        == 0
    )
    missing = sorted(predictions.glob("*_shift.nii.gz"))[0]
    missing.unlink()
    report = tmp_path / "report"
    assert (
        eval_main(
            ["--all-voxels", "--bootstrap", "0", str(predictions), str(valset), "-o", str(report)]
        )
        == 0
    )
    metrics = json.loads((report / "metrics.json").read_text())
    # MOOD: every voxel of every case pooled, a missing map counted as zeros
    preds, labels = [], []
    for label_file in sorted((valset / "pixel" / "label").glob("*.nii.gz")):
        label = np.asanyarray(nib.load(label_file).dataobj)
        path = predictions / label_file.name
        pred = (
            nib.load(path).get_fdata(dtype=np.float32) if path.exists() else np.zeros(label.shape)
        )
        preds.append(np.clip(pred.astype(np.float16), 0, 1).ravel())
        labels.append(label.ravel() == 1)
    expected = average_precision_score(np.concatenate(labels), np.concatenate(preds))
    assert metrics["pixel"]["ap"] == pytest.approx(expected, abs=1e-12)
    notes = {row["name"]: row["notes"] for row in metrics["cases"]}
    assert "missing map" in notes[missing.name.replace(".nii.gz", "")]
    assert metrics["sample"]["cases"] == 9


def test_eval_with_separate_healthy_scans_for_calibration(valset, tmp_path):
    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for scan in sorted(t1.glob("*.nii.gz"))[-2:]:
        shutil.copy(scan, healthy / scan.name)
    report = tmp_path / "report"
    assert (
        eval_main(
            [
                "--model",
                "median-residual",
                "--healthy",
                str(healthy),
                "--healthy-mask",
                str(dlmuse),
                "--bootstrap",
                "0",
                str(valset),
                "-o",
                str(report),
            ]
        )
        == 0
    )
    calibration = json.loads((report / "metrics.json").read_text())["calibration"]
    assert calibration["source"] == "2 healthy scans given for calibration"
    assert calibration["healthy_fpr_pooled"]["fpr5%"] < 0.05


def test_eval_errors_are_clear(valset, tmp_path, capsys):
    assert eval_main([str(valset)]) == 2
    assert "give a predictions folder and a labelled set" in capsys.readouterr().err
    assert eval_main(["--model", "intensity", str(tmp_path / "none"), "-o", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_a_failing_case_is_reported_and_the_others_scored(valset, tmp_path):
    broken_set = tmp_path / "set"
    shutil.copytree(valset, broken_set)
    victim = sorted((broken_set / "pixel" / "label").glob("*_shift.nii.gz"))[0]
    victim.write_bytes(b"corrupt label")
    result = evaluate(
        discover_cases(broken_set),
        FolderPredictions(valset / "pixel" / "data"),
        options=EvalOptions(bootstrap=0),
    )
    failed = result.settings["failed"]
    assert len(failed) == 1 and failed[0]["case"] == victim.name.replace(".nii.gz", "")
    assert result.pixel["cases_counted"] == 8


def test_cohort_formats_with_labels(tmp_path, ixi_t1):
    # UAD-IMAG BIDS: the lesion mask sits beside the scan; no mask means healthy
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(ixi_t1, anat / "sub-01_T1w.nii.gz")
    shutil.copy(ixi_t1, anat / "sub-01_seg-anomaly_mask.nii.gz")
    other = tmp_path / "bids" / "sub-02" / "anat"
    other.mkdir(parents=True)
    shutil.copy(ixi_t1, other / "sub-02_T1w.nii.gz")
    cases = discover_cases(tmp_path / "bids")
    assert [(c.name, c.label is not None, c.anomalous) for c in cases] == [
        ("sub-01_T1w", True, True),
        ("sub-02_T1w", False, False),
    ]
    table = tmp_path / "split.csv"
    table.write_text(
        "Path,Label,Anomalous\nbids/sub-01/anat/sub-01_T1w.nii.gz,"
        "bids/sub-01/anat/sub-01_seg-anomaly_mask.nii.gz,1\n"
    )
    [case] = discover_cases(table)
    assert case.label == tmp_path / "bids/sub-01/anat/sub-01_seg-anomaly_mask.nii.gz"
    assert case.anomalous is True


def test_lmdb_slice_cache_round_trip(tmp_path, ixi_t1):
    pytest.importorskip("lmdb")
    from napari_medood.io.lmdb_cache import SliceLMDB, load_slice, write_slice_lmdb

    data = np.asanyarray(nib.load(ixi_t1).dataobj).astype(np.float64)
    count = write_slice_lmdb([ixi_t1, ixi_t1], tmp_path / "cache")
    non_empty = [k for k in range(data.shape[2]) if data[:, :, k].any()]
    assert count == 2 * len(non_empty)
    normalised = (data - data.min()) / (data.max() - data.min())
    with SliceLMDB(tmp_path / "cache") as cache:
        assert len(cache) == count
        first = cache[0]
        assert first.shape == (1, data.shape[0], data.shape[1]) and first.dtype == np.float32
        np.testing.assert_allclose(first[0], normalised[:, :, non_empty[0]], rtol=1e-6)
        np.testing.assert_allclose(cache[len(non_empty)][0], first[0])
        with pytest.raises(IndexError):
            cache[count]
    import lmdb

    env = lmdb.open(str(tmp_path / "cache"), readonly=True, max_dbs=1, lock=False)
    with env.begin(db=env.open_db(b"slices", create=False)) as txn:
        assert txn.get(b"00000000") is not None  # UAD-IMAG's keys
        assert pickle.loads(txn.get(b"00000000")).dtype == np.float64  # and values
    env.close()

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        load_slice(pickle.dumps(Exploit()))


def test_unusable_predictions_are_counted_as_mood_does_and_named(valset, tmp_path, capsys):
    import warnings

    predictions = tmp_path / "predictions"
    data = str(valset / "pixel" / "data")
    assert predict_main(["--model", "intensity", data, str(predictions)]) == 0
    assert predict_main(["--model", "intensity", "--task", "sample", data, str(predictions)]) == 0
    maps = sorted(predictions.glob("*.nii.gz"))
    truncated, misshapen, missing, with_nan, bad_score = maps[:5]
    truncated.write_bytes(truncated.read_bytes()[:200])
    source = nib.load(misshapen)
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), source.affine), misshapen)
    missing.unlink()
    image = nib.load(with_nan)
    values = image.get_fdata(dtype=np.float32)
    values[0, 0, :5] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), with_nan)
    (predictions / f"{bad_score.name}.txt").write_text("n/a\n")
    report = tmp_path / "report"
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw Python warning may escape
        code = eval_main(["--bootstrap", "0", str(predictions), str(valset), "-o", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "0 failed, 5 with unusable predictions" in err
    assert (
        "5 of 9 cases were scored with predictions counted as MOOD's evaluator counts them" in err
    )
    expected = {
        truncated: "unreadable map",
        misshapen: "map of shape (10, 10, 10)",
        missing: "missing map",
        with_nan: "replaced 5 NaN and 0 infinite voxels out of",
        bad_score: "unreadable score",
    }
    lines = err.splitlines()
    for path, problem in expected.items():
        case = path.name.removesuffix(".nii.gz")
        [line] = [line for line in lines if line.startswith(f"medood-eval:   {case}:")]
        assert problem in line
    assert "Warning" not in err  # the NaN map is one line, not a warning with its source line
    text = (report / "report.md").read_text()
    assert "**cases with unusable predictions: 5**" in text
    for path in expected:
        assert path.name.removesuffix(".nii.gz") in text


def test_a_plain_folder_of_labels_is_taken_as_moods_evaluator_takes_it(valset, tmp_path, capsys):
    predictions = tmp_path / "predictions"
    data = str(valset / "pixel" / "data")
    assert predict_main(["--model", "intensity", data, str(predictions)]) == 0
    assert predict_main(["--model", "intensity", "--task", "sample", data, str(predictions)]) == 0
    labels = tmp_path / "labels"
    shutil.copytree(valset / "pixel" / "label", labels)
    for flag in (valset / "sample" / "label").iterdir():
        shutil.copy(flag, labels / flag.name)
    mood, plain = tmp_path / "mood", tmp_path / "plain"
    assert (
        eval_main(
            ["--all-voxels", "--bootstrap", "0", str(predictions), str(valset), "-o", str(mood)]
        )
        == 0
    )
    assert (
        eval_main(
            ["--all-voxels", "--bootstrap", "0", str(predictions), str(labels), "-o", str(plain)]
        )
        == 0
    )
    expected = json.loads((mood / "metrics.json").read_text())
    got = json.loads((plain / "metrics.json").read_text())
    assert got["pixel"]["ap"] == pytest.approx(expected["pixel"]["ap"], abs=1e-12)
    assert got["sample"]["auroc"] == pytest.approx(expected["sample"]["auroc"])
    assert got["sample"]["cases"] == 9
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert eval_main([str(predictions), str(empty), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{empty}: holds no labels: expected a MOOD layout" in err
    assert "a folder of <case>.nii.gz label maps" in err


def test_an_unwritable_report_folder_is_named_before_any_case(valset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert eval_main(["--model", "intensity", str(valset), "-o", str(blocker / "report")]) == 2
    assert f"{blocker / 'report'}: cannot write into this output folder" in capsys.readouterr().err


def test_a_folder_of_scans_is_not_taken_for_labels(valset, tmp_path, capsys):
    from napari_medood.io.cohort import discover_labels

    predictions = tmp_path / "predictions"
    data = valset / "pixel" / "data"
    assert predict_main(["--model", "intensity", str(data), str(predictions)]) == 0
    capsys.readouterr()
    assert eval_main([str(predictions), str(data), "-o", str(tmp_path / "r")]) == 2
    assert f"{data}: holds scans, not label maps" in capsys.readouterr().err
    # sample labels without maps count too, beside maps
    labels = tmp_path / "labels"
    shutil.copytree(valset / "pixel" / "label", labels)
    (labels / "extra.nii.gz.txt").write_text("1\n")
    cases = {c.name: c for c in discover_labels(labels)}
    assert cases["extra"].anomalous is True and cases["extra"].label is None
    assert len(cases) == 10


def test_eval_scores_a_chosen_sample_score_of_a_calibrated_model(
    valset, tmp_path, capsys, tiny_unet
):
    """--sample-score uncalibrated: a calibrated U-Net's (the tiny one's) own top-100 mean,
    not its calibrated flagged-volume score (which its written score files keep)."""
    from napari_medood.detectors import topk_mean
    from napari_medood.io import read_volume
    from napari_medood.io.mood import output_path, read_score

    report = tmp_path / "report"
    args = ["--model", str(tiny_unet), "--device", "cpu", "--bootstrap", "0"]
    code = eval_main([*args, "--sample-score", "uncalibrated", str(valset), "-o", str(report)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["settings"]["predictions"]["sample_score"] == "uncalibrated"
    with open(report / "cases.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    cases = discover_cases(valset)
    assert len(rows) == len(cases) == 9
    for case in cases:
        anomaly_map = read_volume(output_path(report / "predictions", case.image, "pixel")).data
        written = read_score(output_path(report / "predictions", case.image, "sample"))
        score = float(rows[case.name]["score"])
        assert score == pytest.approx(topk_mean(anomaly_map, 100), abs=2e-3)
        assert score != pytest.approx(written, abs=1e-3)  # the calibrated one was written
    # a score the detector does not give fails the case, naming those it gives
    from napari_medood.detectors import get_detector
    from napari_medood.errors import MedoodError
    from napari_medood.evaluation import DetectorPredictions

    detector = get_detector("intensity", device="cpu")
    with pytest.raises(MedoodError, match="gives no sample score 'topk'.*none besides its own"):
        DetectorPredictions(detector, score="topk")(cases[0])
    assert eval_main(["--sample-score", "topk_mean", str(valset), str(valset)]) == 2
    assert "give --model too" in capsys.readouterr().err
    # refused before any case runs: a model without a calibrated score has no 'uncalibrated'
    out = tmp_path / "refused"
    refused = [
        "--model",
        "intensity",
        "--sample-score",
        "uncalibrated",
        str(valset),
        "-o",
        str(out),
    ]
    assert eval_main(refused) == 2
    assert "has no calibrated sample score" in capsys.readouterr().err
    assert not (out / "predictions").exists()


def test_eval_reports_dice_and_healthy_volume_at_a_fixed_threshold(valset, tmp_path, capsys):
    from napari_medood.detectors import get_detector
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    t1, dlmuse = shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for scan in sorted(t1.glob("*.nii.gz"))[-2:]:
        shutil.copy(scan, healthy / scan.name)
    report = tmp_path / "report"
    argv = ["--model", "median-residual", "--healthy", str(healthy), "--healthy-mask", str(dlmuse)]
    argv += ["--thresholds", "0.3,0.6", "--bootstrap", "0", str(valset), "-o", str(report)]
    assert eval_main(argv) == 0
    pixel = json.loads((report / "metrics.json").read_text())["pixel"]
    assert set(pixel["fixed"]) == {"at0.3", "at0.6"}
    detector = get_detector("median-residual")
    for name, value in (("at0.3", 0.3), ("at0.6", 0.6)):
        entry = pixel["fixed"][name]
        assert entry["threshold"] == value
        assert pixel["dice"][name]["dice_mean"] == pytest.approx(entry["dice_mean"])
        # each healthy scan's volume above the threshold, counted here from its own map
        for scan in sorted(healthy.iterdir()):
            volume = read_volume(scan)
            mask = load_mask(next(dlmuse.glob(scan.name.split("_")[0] + "*")), volume.grid)
            values = detector.predict(volume, mask).anomaly_map.data
            ml = np.count_nonzero(values[mask] > value) * np.prod(volume.spacing) / 1000
            key = scan.name.replace(".nii.gz", "")
            assert entry["healthy_flagged_ml"][key] == pytest.approx(ml, rel=0.03, abs=0.05)
    # a higher threshold flags less and the report says so
    assert (
        pixel["fixed"]["at0.6"]["healthy_flagged_ml_mean"]
        <= (pixel["fixed"]["at0.3"]["healthy_flagged_ml_mean"])
    )
    assert "At the fixed threshold 0.6" in (report / "report.md").read_text()
    # the lesion level: each healthy scan's findings at each fixed threshold, counted here
    # from its own map as a reader counts them
    from scipy import ndimage

    lesion = json.loads((report / "metrics.json").read_text())["lesion"]
    # the set's own normal cases are healthy scans too; the two given come last
    normal = sum(
        1
        for c in json.loads((report / "metrics.json").read_text())["cases"]
        if c["anomalous"] is False
    )
    assert lesion["healthy_scans"] == normal > 2 and set(lesion["froc"]) == {"1", "2", "4", "8"}
    for name, value in (("at0.3", 0.3), ("at0.6", 0.6)):
        counted = []
        for scan in sorted(healthy.iterdir()):
            volume = read_volume(scan)
            mask = load_mask(next(dlmuse.glob(scan.name.split("_")[0] + "*")), volume.grid)
            values = np.clip(detector.predict(volume, mask).anomaly_map.data, 0, 1)
            above = (values.astype(np.float16).astype(np.float32) >= value) & mask
            counted.append(ndimage.label(above, structure=np.ones((3, 3, 3)))[1])
        assert lesion["at"][name]["healthy_false_findings"][-2:] == counted
    assert "## Lesion level" in (report / "report.md").read_text()
    assert "at 1 false finding per scan" in capsys.readouterr().err
    bad = [*argv[:-3], "--thresholds", "half", str(valset), "-o", str(tmp_path / "bad")]
    assert eval_main(bad) == 2
    assert "--thresholds takes numbers" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any case ran
