"""The Detect anomalies panel, driven with pytest-qt on the bundled sample and shipped model."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"


@pytest.fixture
def detect(make_napari_viewer):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_combo.setCurrentIndex(widget.device_combo.findData("cpu"))
    return viewer, widget, scan, mask


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=120_000)


def test_run_shows_a_map_over_the_scan_with_its_score(detect, qtbot):
    viewer, widget, scan, mask = detect
    source = scan.data.copy()
    assert widget.model_combo.currentData() == "brain-t1-unet"
    assert "validation pixel AP" in widget.card_label.text()
    assert widget.mask_combo.current_layer() is mask  # the brain mask was picked for the scan
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    assert widget._napari_progress is not None  # napari's progress bar runs too
    wait(qtbot, widget)
    assert widget._napari_progress is None
    assert widget.last_error is None, widget.last_error
    layer = widget.map_layer
    assert layer in viewer.layers and layer.colormap.name == "inferno"
    assert layer.blending == "additive"
    np.testing.assert_allclose(layer.scale, scan.scale)
    np.testing.assert_allclose(layer.translate, scan.translate)
    assert layer.data.shape == scan.data.shape
    assert layer.data.min() >= 0 and layer.data.max() <= 1
    assert not layer.data[mask.data == 0].any()  # nothing outside the brain
    score = layer.metadata["medood_detection"]["score"]
    assert 0 <= score <= 1 and f"{score:.3f}" in widget.status.text()
    np.testing.assert_array_equal(scan.data, source)  # the scan is never modified
    # the threshold slider makes a Labels layer of the flagged voxels
    widget.slider.setValue(30)
    flagged = widget.threshold_layer
    np.testing.assert_array_equal(flagged.data.astype(bool), layer.data > 0.3)
    # a second run replaces the result layers by default, adds them when asked
    widget.run_button.click()
    wait(qtbot, widget)
    maps = [x for x in viewer.layers if x.name.startswith("IXI048 T1 (2 mm) anomaly")]
    assert len(maps) == 1
    widget.replace_check.setChecked(False)
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("intensity"))
    widget.run_button.click()
    wait(qtbot, widget)
    maps = [x for x in viewer.layers if x.name.startswith("IXI048 T1 (2 mm) anomaly")]
    assert len(maps) == 2


def test_cancel_stops_the_run_without_a_result(detect, qtbot):
    viewer, widget, scan, mask = detect
    layers_before = len(viewer.layers)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress_bar.maximum() > 1, timeout=60_000)  # windows began
    widget.cancel_button.click()
    wait(qtbot, widget)
    assert widget.map_layer is None and len(viewer.layers) == layers_before
    assert "Cancelled" in widget.status.text()
    assert widget.run_button.isEnabled()


def test_checkpoint_folders_can_be_added_and_bad_ones_are_reported(detect, qtbot, tmp_path):
    viewer, widget, scan, mask = detect
    (tmp_path / "card.json").write_text("{not json")
    widget.add_checkpoint(str(tmp_path))
    assert widget.model_combo.currentData() == str(tmp_path)
    widget.run_button.click()
    wait(qtbot, widget)
    assert "not valid JSON" in widget.last_error and widget.map_layer is None
