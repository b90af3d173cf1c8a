"""The Evaluate panel on a real MS patient: FLAIR intensity map against the lesion consensus."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medood._napari._layers import volume_to_layer_data
from napari_medood.detectors import get_detector
from napari_medood.evaluation.metrics import VoxelHistogram
from napari_medood.io import read_volume

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"


@pytest.fixture
def flair_case(make_napari_viewer, ms_lesions):
    from conftest import shared

    flair = read_volume(
        shared(
            "open-ms-lesjak-mni",
            "patient07",
            "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        )
    )
    result = get_detector("intensity").predict(flair, flair.data > 0)
    viewer = make_napari_viewer()
    viewer.open(ms_lesions, plugin=PLUGIN)
    data, kwargs, kind = volume_to_layer_data(result.anomaly_map, "image", name="FLAIR anomaly map")
    map_layer = viewer.add_image(data, **kwargs)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    return viewer, widget, map_layer


def test_evaluate_panel_metrics_and_live_threshold(flair_case, qtbot):
    viewer, widget, map_layer = flair_case
    truth_layer = widget.truth_combo.current_layer()
    assert widget.map_combo.current_layer() is map_layer and truth_layer is not None
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.counts is not None, timeout=30_000)
    reference = VoxelHistogram()
    reference.add(map_layer.data, truth_layer.data > 0)
    metrics = widget.metrics()
    assert metrics["ap"] == pytest.approx(reference.average_precision())
    assert metrics["auroc"] == pytest.approx(reference.auroc())
    prevalence = reference.n_pos / (reference.n_pos + reference.n_neg)
    assert metrics["ap"] > 10 * prevalence  # hyperintense MS lesions stand out on FLAIR
    # the slider moves the threshold; the metrics and the Labels layer follow it
    widget.slider.setValue(800)
    assert widget.threshold == pytest.approx(0.8)
    assert widget.metrics()["dice"] == pytest.approx(reference.dice_at(0.8))
    qtbot.waitUntil(
        lambda: (
            widget._threshold_layer is not None and widget._threshold_layer.name.endswith("0.800")
        ),
        timeout=5_000,
    )
    flagged = widget._threshold_layer.data
    # the map is read as the metrics read it (float16, clipped), then compared with 0.8
    expected = np.clip(map_layer.data.astype(np.float16), 0, 1).astype(np.float64) >= 0.8
    np.testing.assert_array_equal(flagged.astype(bool), expected)
    np.testing.assert_allclose(widget._threshold_layer.scale, map_layer.scale)
    np.testing.assert_allclose(widget._threshold_layer.translate, map_layer.translate)
    assert "Dice" in widget.metrics_label.text()
    # Best Dice picks the threshold with the highest Dice
    widget.best_button.click()
    best = widget.metrics()["dice"]
    for t in (0.3, 0.5, 0.7, 0.9):
        assert best >= reference.dice_at(t) - 1e-9


def test_evaluate_panel_refuses_mismatched_layers(flair_case, qtbot):
    viewer, widget, map_layer = flair_case
    viewer.add_labels(np.zeros((5, 5, 5), np.uint8), name="tiny truth")
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findText("tiny truth"))
    widget.run_button.click()
    assert "has shape" in widget.last_error and widget.counts is None


def test_without_an_anomaly_map_evaluate_picks_none(make_napari_viewer):
    """The raw scan is never pre-selected as the anomaly map, nor its brain mask as truth."""
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    assert widget.map_combo.current_layer() is None
    assert widget.map_combo.currentText() == "choose the anomaly map"
    assert widget.truth_combo.current_layer() is None
    assert widget.truth_combo.findData(mask) == -1  # a brain mask is not a ground truth
    widget.run_button.click()
    assert "choose an anomaly map" in widget.last_error


@pytest.fixture
def small_case(make_napari_viewer):
    """A made-up map and its ground truth (no shared data), chosen in the panel."""
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 24, 24), np.uint8)
    truth[20:30, 8:16, 8:16] = 1
    anomaly_map = np.clip(rng.normal(0.3, 0.1, truth.shape) + 0.5 * truth, 0, 1)
    viewer = make_napari_viewer()
    map_layer = viewer.add_image(anomaly_map.astype(np.float32), name="made-up map")
    truth_layer = viewer.add_labels(truth, name="made-up truth")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    widget.map_combo.setCurrentIndex(widget.map_combo.findData(map_layer))
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findData(truth_layer))
    return viewer, widget, map_layer, truth_layer


def test_cancel_stops_the_count_and_keeps_the_numbers_shown(small_case, qtbot, monkeypatch):
    import time

    import napari_medood._napari._widgets.evaluate as evaluate

    viewer, widget, map_layer, truth_layer = small_case
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert widget.last_error is None, widget.last_error
    counts, threshold_layer = widget.counts, widget._threshold_layer
    reference = VoxelHistogram()
    reference.add(map_layer.data, truth_layer.data > 0)
    assert widget.metrics()["ap"] == pytest.approx(reference.average_precision())
    assert widget.progress_bar.value() == widget.progress_bar.maximum() > 1  # counted in slabs
    layers = list(viewer.layers)

    class SlowHistogram(VoxelHistogram):
        """Counts a slab in a tenth of a second: long enough to press Cancel mid-count."""

        def add(self, *args, **kwargs):
            time.sleep(0.1)
            return super().add(*args, **kwargs)

    monkeypatch.setattr(evaluate, "VoxelHistogram", SlowHistogram)
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "counting the voxels: 2/" in widget.status.text(), timeout=10_000)
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert widget.status.text() == "Cancelled: the voxels were not counted."
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.value() == 0
    # the numbers and the threshold layer of the earlier count stay, nothing was added
    assert widget.counts is counts and widget._threshold_layer is threshold_layer
    assert list(viewer.layers) == layers
