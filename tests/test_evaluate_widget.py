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
    # lesions as a reader counts them: the ground truth's components, found by the findings
    from napari_medood.evaluation.lesions import lesion_components, lesion_counts

    _, lesions = lesion_components(truth_layer.data > 0)
    at_08 = lesion_counts(np.clip(map_layer.data, 0, 1), truth_layer.data > 0, thresholds=(0.8,))
    values = widget.metrics()
    assert values["lesions"] == lesions > 3  # patient 07's MS lesions
    assert values["lesion_threshold"] == pytest.approx(0.8)
    assert (values["lesions_found"], values["findings"]) == (at_08.found[0], at_08.findings[0])
    assert f"{lesions} lesions; at 0.800: {values['lesions_found']} found" in (
        widget.metrics_label.text()
    )
    # Best Dice picks the threshold with the highest Dice
    widget.best_button.click()
    best = widget.metrics()["dice"]
    for t in (0.3, 0.5, 0.7, 0.9):
        assert best >= reference.dice_at(t) - 1e-9


def test_evaluate_panel_refuses_mismatched_layers(flair_case, qtbot):
    viewer, widget, map_layer = flair_case
    tiny = viewer.add_labels(np.zeros((5, 5, 5), np.uint8), name="tiny truth")
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findData(tiny))
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


def compute(qtbot, widget):
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert widget.last_error is None, widget.last_error
    assert widget.counts is not None and widget._threshold_layer is not None


def test_choosing_another_layer_clears_the_numbers(small_case, qtbot):
    viewer, widget, map_layer, truth_layer = small_case
    compute(qtbot, widget)
    threshold_layer = widget._threshold_layer
    assert "AP" in widget.metrics_label.text()
    # another map: the numbers and the threshold layer were the old map's
    other_map = viewer.add_image(np.asarray(map_layer.data)[::-1].copy(), name="second map")
    assert widget.map_combo.current_layer() is map_layer  # added, not chosen
    assert widget.counts is not None
    widget.map_combo.setCurrentIndex(widget.map_combo.findData(other_map))
    assert widget.counts is None and not widget.best_button.isEnabled()
    assert widget.metrics_label.text() == "map changed: press Compute"
    assert threshold_layer not in viewer.layers and widget._threshold_layer is None
    assert widget.metrics() == {}
    # another ground truth
    widget.map_combo.setCurrentIndex(widget.map_combo.findData(map_layer))
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findData(truth_layer))
    compute(qtbot, widget)
    other_truth = viewer.add_labels(np.asarray(truth_layer.data)[::-1].copy(), name="second truth")
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findData(other_truth))
    assert widget.counts is None
    assert widget.metrics_label.text() == "ground truth changed: press Compute"
    # a brain mask the picker takes as it is opened: the voxels counted would change
    widget.truth_combo.setCurrentIndex(widget.truth_combo.findData(truth_layer))
    compute(qtbot, widget)
    brain = viewer.add_labels(np.ones(truth_layer.data.shape, np.uint8), name="brain mask")
    assert widget.mask_combo.current_layer() is brain
    assert widget.counts is None
    assert widget.metrics_label.text() == "brain mask changed: press Compute"
    # the same choice again, and a Compute, shows numbers again
    compute(qtbot, widget)
    assert "AP" in widget.metrics_label.text()
    # a layer counted that goes away is named, though its picker moves too
    viewer.layers.remove(truth_layer)
    assert widget.counts is None
    assert widget.metrics_label.text().startswith("'made-up truth' was removed")


def test_the_plot_is_drawn_in_the_viewers_theme(small_case, qtbot):
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    viewer, widget, map_layer, truth_layer = small_case
    compute(qtbot, widget)
    figure, axes = widget.canvas.figure, widget.axes
    for theme in ("dark", "light"):
        viewer.theme = theme
        colours = get_theme(theme)
        background = colours.background.as_hex().lower()
        assert to_hex(figure.get_facecolor()) == background
        assert to_hex(axes.get_facecolor()) == background
        text = colours.text.as_hex().lower()
        assert to_hex(axes.xaxis.label.get_color()) == text
        assert to_hex(axes.title.get_color()) == text
        assert axes.get_title().startswith("AP ")  # the curve is redrawn, not lost
    # the dark theme's plot is dark: no white box in a dark window
    viewer.theme = "dark"
    red, green, blue, _ = figure.get_facecolor()
    assert max(red, green, blue) < 0.3


def test_every_control_of_the_evaluate_panel_says_what_it_does(small_case):
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractSlider,
        QAbstractSpinBox,
        QComboBox,
        QScrollBar,
    )

    viewer, widget, map_layer, truth_layer = small_case
    kinds = (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox)
    silent = [
        getattr(control, "text", lambda: "")() or type(control).__name__
        for kind in kinds
        for control in widget.findChildren(kind)
        # the panel's own scroll bars are Qt's, not actions of the panel
        if not isinstance(control, QScrollBar) and not control.toolTip().strip()
    ]
    assert silent == []
    for control in (widget.run_button, widget.best_button, widget.slider, widget.threshold_spin):
        assert control.toolTip()
