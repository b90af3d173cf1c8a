"""Compare two models on one scan: the arithmetic on small arrays, both baselines on the
bundled sample, medood-compare end to end, and the napari panel."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import sha256
from helpers import controls_without_a_tooltip
from napari_medood.errors import Cancelled, MedoodError
from napari_medood.evaluation.compare import (
    A_ONLY,
    B_ONLY,
    BOTH,
    NEITHER,
    compare_maps,
    compare_models,
    map_models,
    summary_lines,
    threshold_of,
)

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
SCAN = SAMPLE / "ixi048_t1_2mm.nii.gz"
BRAIN = SAMPLE / "ixi048_brainmask_2mm.nii.gz"
PLUGIN = "napari-medood"


# ------------------------------------------------------------------------ compare_maps
def small_case():
    """2 x 2 x 3 maps on 2 x 1 x 3 mm voxels (6 µl each), one voxel outside the mask."""
    map_a = np.array(
        [[[0.9, 0.9, 0.1], [0.6, 0.5, 0.0]], [[0.2, 0.7, 0.95], [0.3, 0.0, 0.8]]],
        dtype=np.float32,
    )
    map_b = np.array(
        [[[0.8, 0.1, 0.7], [0.6, 0.9, 0.0]], [[0.2, 0.75, 0.1], [0.5, 0.0, 0.3]]],
        dtype=np.float32,
    )
    mask = np.ones(map_a.shape, bool)
    mask[1, 1, 2] = False  # A flags it (0.8), but it lies outside: never counted
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    return map_a, map_b, mask, affine


def test_compare_maps_labels_counts_volumes_and_difference():
    map_a, map_b, mask, affine = small_case()
    found = compare_maps(map_a, map_b, 0.5, 0.4, mask, affine)
    # A > 0.5 and B > 0.4, inside the mask; a value equal to its threshold is not flagged
    expected = np.array(
        [
            [[BOTH, A_ONLY, B_ONLY], [BOTH, B_ONLY, NEITHER]],
            [[NEITHER, BOTH, A_ONLY], [B_ONLY, NEITHER, NEITHER]],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(found.disagreement, expected)
    assert found.disagreement.dtype == np.uint8
    assert found.difference.dtype == np.float32
    np.testing.assert_array_equal(found.difference, map_a - map_b)  # outside the mask too
    voxel = 2 * 1 * 3 / 1000
    summary = found.summary
    assert summary["voxel_ml"] == pytest.approx(voxel)
    assert summary["voxels"] == {
        "a": 5,
        "b": 6,
        "a_only": 2,
        "b_only": 3,
        "both": 3,
        "compared": 11,
    }
    assert summary["model_a"] == {"threshold": 0.5, "flagged_ml": pytest.approx(5 * voxel)}
    assert summary["model_b"] == {"threshold": 0.4, "flagged_ml": pytest.approx(6 * voxel)}
    assert summary["a_only_ml"] == pytest.approx(2 * voxel)
    assert summary["b_only_ml"] == pytest.approx(3 * voxel)
    assert summary["both_ml"] == pytest.approx(3 * voxel)
    assert summary["compared_ml"] == pytest.approx(11 * voxel)
    assert summary["dice"] == pytest.approx(2 * 3 / (5 + 6))
    r = np.corrcoef(map_a[mask].astype(float), map_b[mask].astype(float))[0, 1]
    assert summary["pearson"] == pytest.approx(r)


def test_compare_maps_without_a_mask_counts_every_voxel_and_takes_the_voxel_size_from_the_affine():
    map_a, map_b, _, _ = small_case()
    tilted = np.eye(4)
    angle = np.radians(30)
    tilted[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([1.5, 1.5, 4.0])
    found = compare_maps(map_a, map_b, 0.5, 0.4, None, tilted)
    assert found.disagreement[1, 1, 2] == A_ONLY  # counted now
    assert found.summary["voxels"]["compared"] == map_a.size
    assert found.summary["voxel_ml"] == pytest.approx(1.5 * 1.5 * 4.0 / 1000)
    assert found.summary["a_only_ml"] == pytest.approx(3 * 9 / 1000)


def test_compare_maps_when_nothing_is_flagged_or_a_map_is_constant():
    map_a, map_b, mask, affine = small_case()
    found = compare_maps(map_a, np.zeros_like(map_b), 1.0, 0.5, mask, affine)
    assert not found.disagreement.any()
    assert found.summary["dice"] == 1.0  # two empty sets agree (the house's Dice convention)
    assert found.summary["pearson"] is None  # B is constant: no correlation to speak of
    assert "n/a" in summary_lines({**found.summary, "region": "mask"})[-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"map_b": np.zeros((2, 2, 2))}, "the two maps differ in shape: A (2, 2, 3), B (2, 2, 2)"),
        ({"mask": np.ones((3, 2, 2), bool)}, "the mask has shape (3, 2, 2), the maps (2, 2, 3)"),
        ({"threshold_a": 1.5}, "the threshold of model A must be within [0, 1], got 1.5"),
        ({"threshold_b": float("nan")}, "the threshold of model B must be within [0, 1]"),
    ],
)
def test_compare_maps_refuses_what_does_not_fit(change, message):
    map_a, map_b, mask, affine = small_case()
    arguments = {
        "map_a": map_a,
        "map_b": map_b,
        "threshold_a": 0.5,
        "threshold_b": 0.5,
        "mask": mask,
        "affine": affine,
        **change,
    }
    with pytest.raises(MedoodError) as raised:
        compare_maps(**arguments)
    assert message in str(raised.value)


# ----------------------------------------------------------------------- compare_models
@pytest.fixture(scope="module")
def sample():
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask

    volume = read_volume(SCAN)
    return volume, load_mask(BRAIN, volume.grid)


def baseline(name):
    from napari_medood.detectors import get_detector

    return get_detector(name)


def test_compare_models_on_the_sample_gives_each_models_own_map(sample):
    volume, mask = sample
    before = volume.data.copy()
    reports = []
    comparison = compare_models(
        baseline("intensity"),
        baseline("inverted-intensity"),
        volume,
        mask,
        threshold_a=0.6,
        progress=lambda done, total, message: reports.append(message),
    )
    own_a = baseline("intensity").predict(volume, mask).anomaly_map
    own_b = baseline("inverted-intensity").predict(volume, mask).anomaly_map
    np.testing.assert_array_equal(comparison.map_a.data, own_a.data)
    np.testing.assert_array_equal(comparison.map_b.data, own_b.data)
    for part in (comparison.map_a, comparison.difference, comparison.disagreement):
        np.testing.assert_array_equal(part.affine, volume.affine)  # the scan's grid
        assert part.shape == volume.shape
    np.testing.assert_array_equal(comparison.difference.data, own_a.data - own_b.data)
    np.testing.assert_array_equal(volume.data, before)  # the scan is only read
    summary = comparison.summary
    assert summary["model_a"] == {
        "name": "intensity",
        "threshold": 0.6,
        "threshold_from": "given",
        "flagged_ml": pytest.approx(np.count_nonzero(own_a.data > 0.6) * 0.008),
    }
    assert summary["model_b"]["name"] == "inverted-intensity"
    assert (summary["model_b"]["threshold"], summary["model_b"]["threshold_from"]) == (
        0.5,
        "default",
    )
    assert summary["region"] == "mask"
    # the volumes add up: each model's flagged volume is its own part plus the shared one
    a, b = summary["model_a"]["flagged_ml"], summary["model_b"]["flagged_ml"]
    assert a == pytest.approx(summary["a_only_ml"] + summary["both_ml"])
    assert b == pytest.approx(summary["b_only_ml"] + summary["both_ml"])
    assert summary["compared_ml"] == pytest.approx(np.count_nonzero(mask) * 0.008)
    labels = comparison.disagreement.data
    counts = {label: np.count_nonzero(labels[mask] == label) for label in range(4)}
    assert sum(counts.values()) == summary["voxels"]["compared"]
    assert not labels[~mask].any()
    # bright (> 0.6) and dark (< 0.5) voxels: no voxel is both, every other one is neither
    assert counts[BOTH] == 0 and summary["dice"] == 0.0
    assert summary["pearson"] < -0.99  # one map is the other upside down
    json.dumps(summary)  # ready for summary.json as it is
    # progress: model A's stages, then B's, then the comparison
    assert reports[0].startswith("model A (intensity): normalising")
    assert any(m.startswith("model B (inverted-intensity): ") for m in reports)
    assert reports[-1] == "comparing the maps"


def test_a_calibration_that_holds_sets_the_threshold(sample):
    volume, mask = sample
    calibrated = baseline("intensity")
    calibrated.card = {"calibration": {"voxel_threshold": 0.8, "made_with": {"mask": "given"}}}
    comparison = compare_models(calibrated, baseline("median-residual"), volume, mask, 0.3, 0.7)
    assert comparison.summary["model_a"]["threshold"] == 0.8  # the card's, not the given 0.3
    assert comparison.summary["model_a"]["threshold_from"] == "calibration"
    assert comparison.summary["model_b"]["threshold"] == 0.7
    flagged = np.count_nonzero(comparison.map_a.data[mask] > 0.8) * 0.008
    assert comparison.summary["model_a"]["flagged_ml"] == pytest.approx(flagged)
    # measured with brain masks, it does not hold for maps made inside the Otsu foreground
    assert threshold_of(calibrated, mask_given=False, given=0.3) == (0.3, "given")
    assert threshold_of(calibrated, mask_given=False, given=None) == (0.5, "default")


class ScoreOnly:
    name = "toy-score"
    outputs = ("score",)

    def predict(self, *args, **kwargs):
        raise AssertionError("a score-only model must be refused before anything runs")


def test_a_score_only_model_is_refused_before_anything_runs(sample):
    volume, mask = sample
    with pytest.raises(MedoodError, match="model B, toy-score, gives a sample score but no"):
        compare_models(baseline("intensity"), ScoreOnly(), volume, mask)


def test_cancelling_after_model_a_stops_before_model_b(sample):
    volume, mask = sample
    stop = threading.Event()
    ran = []

    class Recording:
        def __init__(self, name):
            self.inner = baseline(name)
            self.name, self.outputs = self.inner.name, self.inner.outputs

        def predict(self, *args, **kwargs):
            ran.append(self.name)
            result = self.inner.predict(*args, **kwargs)
            stop.set()  # the user presses Cancel while A finishes
            return result

    with pytest.raises(Cancelled):
        compare_models(
            Recording("intensity"), Recording("inverted-intensity"), volume, mask,
            cancelled=stop.is_set,
        )  # fmt: skip
    assert ran == ["intensity"]


def test_a_mask_on_another_grid_is_named_before_any_model_runs(sample):
    volume, _ = sample
    with pytest.raises(MedoodError, match="the mask has shape"):
        compare_models(NeverRun(), NeverRun(), volume, np.ones((4, 4, 4), bool))


class NeverRun:
    """Declares a map and must never be asked for one (the mask is refused first)."""

    name = "never-run"
    outputs = ("map",)

    def predict(self, *args, **kwargs):
        raise AssertionError("the mask should have been refused first")


def test_map_models_lists_only_models_that_give_maps():
    models = map_models()
    assert {"intensity", "inverted-intensity", "median-residual"} <= set(models)
    assert "brain-t1-gate" not in models and "adrenal3d-flow" not in models  # score-only
    assert map_models(["brain-t1-gate", "intensity", "/no/such/checkpoint"]) == ["intensity"]


# ------------------------------------------------------------------------------ the CLI
def test_medood_compare_end_to_end_on_the_sample(tmp_path, capsys, sample):
    from napari_medood.cli import compare_main

    before = sha256(SCAN), sha256(BRAIN)
    out = tmp_path / "cmp"
    argv = [
        str(SCAN),
        "--models",
        "intensity,inverted-intensity",
        "--mask",
        str(BRAIN),
        "--out",
        str(out),
        "--threshold-a",
        "0.6",
        "--device",
        "cpu",
    ]
    assert compare_main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert (sha256(SCAN), sha256(BRAIN)) == before  # the inputs are only read
    assert sorted(p.name for p in out.iterdir()) == [
        "difference.nii.gz",
        "disagreement.nii.gz",
        "map_a.nii.gz",
        "map_b.nii.gz",
        "summary.json",
    ]
    source = nib.load(SCAN)
    images = {name: nib.load(out / f"{name}.nii.gz") for name in ("map_a", "map_b")}
    images["difference"] = nib.load(out / "difference.nii.gz")
    images["disagreement"] = nib.load(out / "disagreement.nii.gz")
    for image in images.values():
        np.testing.assert_allclose(image.affine, source.affine, atol=1e-6)
        assert image.shape == source.shape
    volume, mask = sample
    own_a = baseline("intensity").predict(volume, mask).anomaly_map.data
    own_b = baseline("inverted-intensity").predict(volume, mask).anomaly_map.data
    map_a = np.asanyarray(images["map_a"].dataobj)
    np.testing.assert_array_equal(map_a, own_a)
    np.testing.assert_array_equal(np.asanyarray(images["map_b"].dataobj), own_b)
    np.testing.assert_array_equal(np.asanyarray(images["difference"].dataobj), own_a - own_b)
    labels = images["disagreement"]
    assert labels.get_data_dtype().kind == "u" and labels.header.get_intent()[0] == "label"
    labels = np.asanyarray(labels.dataobj)
    expected = (own_a > 0.6) & mask
    np.testing.assert_array_equal(labels == 1, expected & ~((own_b > 0.5) & mask))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_a"]["name"] == "intensity"
    assert summary["model_a"]["threshold_from"] == "given"
    assert summary["model_b"]["threshold_from"] == "default"
    assert summary["image"] == str(SCAN) and summary["mask"] == str(BRAIN)
    assert summary["files"]["disagreement"] == "disagreement.nii.gz"
    voxel = summary["voxel_ml"]
    assert summary["a_only_ml"] == pytest.approx(np.count_nonzero(labels == 1) * voxel)
    assert summary["b_only_ml"] == pytest.approx(np.count_nonzero(labels == 2) * voxel)
    assert summary["both_ml"] == pytest.approx(np.count_nonzero(labels == 3) * voxel)
    assert summary["model_a"]["flagged_ml"] == pytest.approx(np.count_nonzero(expected) * voxel)
    # what was printed is that summary
    assert printed.splitlines() == summary_lines(summary)
    assert f"A only {summary['a_only_ml']:.1f} ml" in printed


def test_medood_compare_without_out_prints_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from napari_medood.cli import compare_main

    monkeypatch.chdir(tmp_path)
    code = compare_main([str(SCAN), "--models", "intensity, median-residual"])
    assert code == 0, capsys.readouterr().err
    assert "Pearson r" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{scan}", "--models", "intensity"], "--models takes two models as A,B, got 'intensity'"),
        (["{scan}", "--models", "intensity,brain-t1-gate"], "model B, brain-t1-gate, gives a"),
        (["{missing}", "--models", "intensity,median-residual"], "{missing}: "),
        (
            ["{scan}", "--models", "intensity,median-residual", "--mask", "{scan_4mm}"],
            "{scan_4mm}: ",
        ),
        (
            ["{scan}", "--models", "intensity,median-residual", "--threshold-a", "2"],
            "the threshold of model A must be within [0, 1], got 2.0",
        ),
        (
            ["{inside}", "--models", "intensity,median-residual", "--out", "{folder}"],
            "{inside}: map_a.nii.gz in {folder} would overwrite this input",
        ),
    ],
)
def test_medood_compare_errors_name_the_file_and_the_problem(argv, message, tmp_path, capsys):
    from napari_medood.cli import compare_main

    small = tmp_path / "scan_4mm.nii.gz"  # the sample at half the resolution: another grid
    source = nib.load(SCAN)
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj)[::2, ::2, ::2], source.affine), small)
    folder = tmp_path / "out"
    folder.mkdir()
    inside = folder / "map_a.nii.gz"
    inside.write_bytes(SCAN.read_bytes())
    names = {
        "scan": SCAN,
        "missing": tmp_path / "missing.nii.gz",
        "scan_4mm": small,
        "inside": inside,
        "folder": folder,
    }
    before = sha256(inside)
    assert compare_main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sha256(inside) == before


# ----------------------------------------------------------------------------- the panel
@pytest.fixture
def compare(make_napari_viewer):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare two models")
    widget.device_choice.value = "cpu"
    return viewer, widget, scan, mask


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)


def snapshot(layer):
    return (
        layer.data.copy(),
        dict(layer.metadata),
        layer.name,
        np.array(layer.scale),
        np.array(layer.translate),
    )


def assert_untouched(layer, before):
    data, metadata, name, scale, translate = before
    np.testing.assert_array_equal(layer.data, data)
    assert dict(layer.metadata).keys() == metadata.keys()
    assert all(layer.metadata[k] is v for k, v in metadata.items())
    assert layer.name == name
    np.testing.assert_array_equal(layer.scale, scale)
    np.testing.assert_array_equal(layer.translate, translate)


@pytest.mark.gui
def test_the_panel_shows_both_maps_their_difference_and_disagreement(compare, qtbot, sample):
    from napari.layers import Image, Labels

    from napari_medood._napari._layers import to_display
    from napari_medood._napari._roles import ANOMALY_MAP, BY_PRODUCT, THRESHOLD, role_of
    from napari_medood.detectors import default_model

    viewer, widget, scan, mask = compare
    # two different models from the start, the default detector first
    assert widget.model_a_choice.value == default_model()
    assert widget.model_b_choice.value != widget.model_a_choice.value
    assert widget.image_combo.current_layer() is scan
    assert widget.mask_combo.current_layer() is mask
    widget.model_a_choice.value = "intensity"
    widget.model_b_choice.value = "inverted-intensity"
    user_layers = {layer: snapshot(layer) for layer in viewer.layers}
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    names = [layer.name for layer in viewer.layers]
    # each result names the scan it was made over and the two models
    assert names == [
        scan.name,
        mask.name,
        f"{scan.name} intensity map",
        f"{scan.name} inverted-intensity map",
        f"{scan.name} A\u2212B (intensity vs inverted-intensity)",
        f"{scan.name} disagreement (intensity vs inverted-intensity)",
    ]
    map_a, map_b, difference, disagreement = list(viewer.layers)[2:]
    for layer in user_layers:
        assert_untouched(layer, user_layers[layer])
    # each map is the model's own, shown as napari shows the scan
    volume, brain = sample
    for layer, name in ((map_a, "intensity"), (map_b, "inverted-intensity")):
        assert isinstance(layer, Image) and role_of(layer) == ANOMALY_MAP
        own = baseline(name).predict(volume, brain).anomaly_map
        np.testing.assert_array_equal(layer.data, to_display(own)[0])
        assert layer.colormap.name == "inferno" and not layer.visible
    np.testing.assert_array_equal(difference.data, map_a.data - map_b.data)
    assert isinstance(difference, Image) and role_of(difference) == BY_PRODUCT
    low, high = difference.contrast_limits
    assert low == pytest.approx(-high) and high == pytest.approx(np.abs(difference.data).max())
    colours = difference.colormap.map(np.array([0.0, 0.5, 1.0]))
    assert colours[0, 2] > colours[0, 0]  # B higher: blue
    assert colours[1, 3] == 0  # no difference: transparent, the scan shows through
    assert colours[2, 0] > colours[2, 2]  # A higher: red
    assert isinstance(disagreement, Labels) and role_of(disagreement) == THRESHOLD
    shown_brain = mask.data > 0
    only_a = (map_a.data > 0.5) & shown_brain
    only_b = (map_b.data > 0.5) & shown_brain
    np.testing.assert_array_equal(disagreement.data == 1, only_a & ~only_b)
    np.testing.assert_array_equal(disagreement.data == 2, only_b & ~only_a)
    # all placed exactly over the scan
    for layer in (map_a, map_b, difference, disagreement):
        assert layer.data.shape == scan.data.shape
        np.testing.assert_allclose(layer.scale, scan.scale)
        np.testing.assert_allclose(layer.translate, scan.translate)
        np.testing.assert_allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)
    summary = widget.last_summary
    text = widget.summary_label.text()
    assert f"A only {summary['a_only_ml']:.1f} ml, B only {summary['b_only_ml']:.1f} ml" in text
    assert f"Dice {summary['dice']:.3f}" in text
    # the legend says which colour is which model
    assert widget.legend.isVisibleTo(widget)
    legend = widget.legend.text()
    assert "A only: intensity<br>" in legend and "B only: inverted-intensity<br>" in legend
    assert "both" in legend and "intensity higher" in legend
    assert summary["a_only_ml"] == pytest.approx(np.count_nonzero(disagreement.data == 1) * 0.008)
    # the panel's own layers are never offered as the scan or the brain mask
    assert widget.image_combo.current_layer() is scan
    assert widget.mask_combo.current_layer() is mask
    assert widget.mask_combo.findData(disagreement) == -1

    # a second run of the pair replaces its layers in place
    widget.threshold_a_spin.value = 0.7
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert list(viewer.layers)[2:] == [map_a, map_b, difference, disagreement]
    assert len(viewer.layers) == 6
    np.testing.assert_array_equal(disagreement.data == 1, (map_a.data > 0.7) & shown_brain)
    assert widget.last_summary["model_a"]["threshold"] == pytest.approx(0.7)
    for layer in user_layers:
        assert_untouched(layer, user_layers[layer])


@pytest.mark.gui
def test_the_panel_refuses_the_same_model_twice(compare, qtbot):
    viewer, widget, scan, mask = compare
    widget.model_a_choice.value = widget.model_b_choice.value = "intensity"
    count = len(viewer.layers)
    widget.run_button.click()
    assert "choose two different models" in widget.last_error
    assert len(viewer.layers) == count and widget.run_button.isEnabled()


@pytest.mark.gui
def test_cancel_stops_the_run_and_adds_nothing(compare, qtbot, monkeypatch):
    import napari_medood.detectors as detectors
    from napari_medood._progress import check_cancelled

    viewer, widget, scan, mask = compare
    real = detectors.get_detector

    class WaitsForCancel:
        """Model A, slow until the user cancels: the panel's Cancel must reach it."""

        def __init__(self, inner):
            self.inner, self.name, self.outputs = inner, inner.name, inner.outputs

        def predict(self, volume, mask=None, progress=None, cancelled=None):
            progress(0, 0, "waiting")
            while True:  # until Cancel: check_cancelled raises then
                time.sleep(0.01)
                check_cancelled(cancelled)

    asked = []

    def slow_a(name, options=None, **values):
        asked.append(name)
        detector = real(name, options, **values)
        return WaitsForCancel(detector) if name == "intensity" else detector

    monkeypatch.setattr(detectors, "get_detector", slow_a)
    widget.model_a_choice.value = "intensity"
    widget.model_b_choice.value = "inverted-intensity"
    count = len(viewer.layers)
    widget.run_button.click()
    qtbot.waitUntil(lambda: "model A (intensity): waiting" in widget.status.text(), timeout=30_000)
    widget.cancel_button.click()
    wait(qtbot, widget)
    assert "Cancelled" in widget.status.text()
    assert len(viewer.layers) == count
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.value() == 0


@pytest.mark.gui
def test_the_dock_has_a_compare_tab(make_napari_viewer):
    from napari_medood._napari._widgets.compare import CompareWidget

    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "MedOOD (all panels)")
    tabs = [dock.tabText(i) for i in range(dock.count())]
    assert "Compare" in tabs
    assert isinstance(dock.widget(tabs.index("Compare")), CompareWidget)


@pytest.mark.gui
def test_every_control_of_the_compare_panel_says_what_it_does(compare):
    viewer, widget, scan, mask = compare
    assert controls_without_a_tooltip(widget) == []


@pytest.mark.gui
def test_every_control_in_the_dock_says_what_it_does(make_napari_viewer):
    """Every tab of the MedOOD dock: Scan, Detect, Compare, Trust, Playground, Evaluate."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "MedOOD (all panels)")
    panels = (dock.inspector, dock.detect, dock.compare, dock.trust, dock.playground)
    for panel in (*panels, dock.evaluate):
        assert controls_without_a_tooltip(panel) == [], panel.objectName()


@pytest.mark.gui
def test_a_calibrated_model_is_read_at_its_cards_threshold(compare, qtbot):
    from napari_medood.models.checkpoint import read_card, resolve_model

    viewer, widget, scan, mask = compare
    calibrated = "brain-any-unet-cpu"
    card_threshold = read_card(resolve_model(calibrated))["calibration"]["voxel_threshold"]
    widget.model_a_choice.value = calibrated
    widget.model_b_choice.value = "intensity"
    assert widget.mask_combo.current_layer() is mask
    # before Run the panel says which threshold each model will be read at
    notes = widget.thresholds_label.text().splitlines()
    assert notes[0] == f"A: {calibrated} at its calibrated threshold {card_threshold:.4g}"
    assert notes[1] == "B: intensity has no calibration: Threshold B"
    messages = []
    show = widget._progress
    widget._progress = lambda report: (messages.append(report[2]), show(report))
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    # loading each model is said before and after, before it maps the scan
    loading = f"loading model A ({calibrated})..."
    loaded = f"model A ({calibrated}) loaded"
    assert loading in messages and loaded in messages
    first_step = next(i for i, m in enumerate(messages) if m.startswith(f"model A ({calibrated}):"))
    assert messages.index(loading) < messages.index(loaded) < first_step
    assert "loading model B (intensity)..." in messages
    summary = widget.last_summary
    assert summary["model_a"]["threshold"] == pytest.approx(card_threshold)
    assert summary["model_a"]["threshold_from"] == "calibration"
    assert summary["model_b"]["threshold"] == pytest.approx(0.5)
    map_a, disagreement = viewer.layers[2], viewer.layers[5]
    flagged_a = (map_a.data > card_threshold) & (mask.data > 0)
    np.testing.assert_array_equal(np.isin(disagreement.data, (1, 3)), flagged_a)
    assert f"above {card_threshold:.3f} (calibrated)" in widget.summary_label.text()
    # without a mask the calibration (made in brain masks) does not hold: Threshold A
    widget.mask_combo.setCurrentIndex(0)
    assert widget.thresholds_label.text().splitlines()[0].endswith("else Threshold A")
