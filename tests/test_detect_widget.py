"""The Detect anomalies panel, driven with pytest-qt on the bundled sample and shipped model."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"


@pytest.fixture
def detect(make_napari_viewer):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    return viewer, widget, scan, mask


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)


def calibrated_ml_is_shown(qtbot, widget, calibration):
    """The slider's label calls its threshold calibrated and gives the millilitres of the
    2 mm map above it, those the detector counted give or take the slider's rounding to
    thousandths."""
    qtbot.waitUntil(lambda: "ml" in widget.threshold_label.text(), timeout=10_000)
    label = widget.threshold_label.text()
    assert "(calibrated: 1 % of healthy brain voxels)" in label
    above = (widget.map_layer.data > widget.threshold).sum() * 8 / 1000
    assert f"{above:.1f} ml" in label
    assert calibration["flagged_ml"] == pytest.approx(above, abs=0.5)


def maps_of(viewer, source_name):
    return [x for x in viewer.layers if x.name.startswith(f"{source_name} anomaly")]


def test_run_shows_a_map_over_the_scan_with_its_score(detect, qtbot):
    from napari_medood._napari._roles import ANOMALY_MAP, LABEL_COLOURS, THRESHOLD, role_of

    viewer, widget, scan, mask = detect
    source = scan.data.copy()
    assert widget.model_choice.value == "brain-any"  # the default (the fused model)
    widget.model_choice.value = "brain-any-unet-gpu"  # the U-Net's own card and map
    assert "validation pixel AP" in widget.card_label.text()
    assert "for MR scans of any contrast" in widget.card_label.text()
    assert "trained on NVIDIA H200" in widget.card_label.text()
    assert widget.mask_combo.current_layer() is mask  # the brain mask was picked by its role
    # the slider starts at the card's calibrated threshold (1 % of healthy brain voxels)
    from napari_medood.models.checkpoint import Checkpoint

    calibrated = Checkpoint.open("brain-any-unet-gpu").card["calibration"]["voxel_threshold"]
    assert widget.threshold == pytest.approx(calibrated, abs=0.0005)
    assert "calibrated threshold" in widget.card_label.text()
    widget.run_button.click()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    # the flagged volume at that threshold, as the detector counted it
    calibration = widget.map_layer.metadata["medood_detection"]["calibration"]
    assert calibration["voxel_threshold"] == calibrated
    calibrated_ml_is_shown(qtbot, widget, calibration)
    assert widget.notes == ()  # a T1 brain with its mask: nothing to warn about
    assert not widget.notes_label.isVisible()
    layer = widget.map_layer
    assert layer in viewer.layers and layer.colormap.name == "inferno"
    assert role_of(layer) == ANOMALY_MAP
    assert widget.colour_bar.isVisibleTo(widget)  # what the map's colours mean, by the slider
    assert layer.blending == "additive"
    np.testing.assert_allclose(layer.scale, scan.scale)
    np.testing.assert_allclose(layer.translate, scan.translate)
    assert layer.data.shape == scan.data.shape
    assert layer.data.min() >= 0 and layer.data.max() <= 1
    assert not layer.data[mask.data == 0].any()  # nothing outside the brain
    detection = layer.metadata["medood_detection"]
    from napari_medood.execution import resolve_precision

    assert widget.precision_choice.value == "auto"  # the default, resolved for this CPU:
    assert detection["precision"] == resolve_precision("auto", "cpu")
    score = detection["score"]
    assert 0 <= score <= 1 and f"Sample score {score:.3f}" in widget.status.text()
    # the calibrated model scores the volume it flags, against its healthy scans
    calibration = detection["calibration"]
    healthy = " and ".join(f"{v:.1f}" for v in calibration["healthy_flagged_ml"])
    assert (
        f"{calibration['flagged_ml']:.1f} ml above the calibrated threshold, against "
        f"{healthy} ml in healthy scans (0.5 = as much as an average healthy brain; "
        "higher = more abnormal)"
    ) in widget.status.text()
    assert score == pytest.approx(
        calibration["flagged_ml"]
        / (calibration["flagged_ml"] + np.mean(calibration["healthy_flagged_ml"])),
        abs=1e-4,
    )
    np.testing.assert_array_equal(scan.data, source)  # the scan is never modified
    assert role_of(scan) == "scan" and "medood_detection" not in scan.metadata
    # the threshold slider makes an orange Labels layer of the flagged voxels, in ml
    widget.slider.setValue(300)
    assert widget.colour_bar.marker == pytest.approx(0.3)
    flagged = widget.threshold_layer
    assert role_of(flagged) == THRESHOLD
    np.testing.assert_array_equal(flagged.data.astype(bool), layer.data > 0.3)
    np.testing.assert_allclose(
        flagged.colormap.map(np.array([1]))[0, :3], [1.0, 0x8C / 255, 0x1A / 255], atol=0.01
    )
    assert LABEL_COLOURS[THRESHOLD] == "#ff8c1a"
    ml = (layer.data > 0.3).sum() * 8 / 1000
    assert f"{ml:.1f} ml" in widget.threshold_label.text()
    # the findings once the slider rests: the voxels above it, region by region
    widget.slider.setValue(int(layer.data.max() * 900))  # 90 % of the map's highest value
    qtbot.waitUntil(lambda: not widget.findings_busy, timeout=10_000)
    findings = widget.findings_table.findings
    assert findings and sum(f.voxels for f in findings) == int(
        (layer.data > widget.threshold).sum()
    )
    ml = sum(f.voxels for f in findings) * 8 / 1000
    assert widget.findings_table.summary.text().endswith(
        f"above {widget.threshold:.3f}: {ml:.1f} ml"
    )
    # next finding: the slice through the largest one's peak, centred
    widget.findings_table.next_finding()
    peak = findings[0].peak_ijk
    assert layer.data[peak] == pytest.approx(findings[0].peak)
    world = layer.data_to_world(np.asarray(peak, dtype=float))
    assert viewer.dims.point[0] == pytest.approx(world[0], abs=1.0)
    from napari_medood._napari._widgets._viewer import camera_of

    np.testing.assert_allclose(camera_of(viewer).center[-2:], world[1:], atol=1.0)


def test_a_second_run_replaces_only_this_scans_result_from_this_model(detect, qtbot):
    viewer, widget, scan, mask = detect
    other = viewer.add_image(scan.data.copy(), name="second scan", **_placement(scan))
    widget.model_choice.value = "intensity"
    for value, source in ((600, scan), (700, other)):
        widget.image_combo.setCurrentIndex(widget.image_combo.findData(source))
        widget.run_button.click()
        wait(qtbot, widget)
        widget.slider.setValue(value)  # the slider makes the threshold layer
    first, second = maps_of(viewer, scan.name)[0], maps_of(viewer, "second scan")[0]
    thresholds = [x for x in viewer.layers if "anomalies >" in x.name]
    assert len(thresholds) == 2
    # again on the first scan: its result is replaced, the second scan's result stays
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(scan))
    widget.run_button.click()
    wait(qtbot, widget)
    assert maps_of(viewer, scan.name) == [first]  # the same layer took the new map
    assert second in viewer.layers
    # the replaced map's threshold layer went with it: none is orphaned
    thresholds = [x for x in viewer.layers if "anomalies >" in x.name]
    sources = {x.metadata["medood_derived_from"] for x in thresholds}
    assert sources <= {str(x.unique_id) for x in viewer.layers}
    # another model adds its result beside
    widget.model_choice.value = "median-residual"
    widget.run_button.click()
    wait(qtbot, widget)
    assert len(maps_of(viewer, scan.name)) == 2
    # removing a map by hand removes its threshold layer too
    viewer.layers.remove(second)
    assert not [x for x in viewer.layers if x.name.startswith("second scan anomalies")]


def _placement(layer):
    from napari_medood._napari._widgets._viewer import placement_of

    return placement_of(layer)


def test_progress_is_honest_and_cancel_resets_it(detect, qtbot):
    viewer, widget, scan, mask = detect
    widget.model_choice.value = "brain-any-unet-gpu"  # a U-Net's stages (brain-any: test_fused)
    reports = []
    original = widget._progress
    widget._progress = lambda report: (reports.append(report), original(report))  # Run connects it
    widget.run_button.click()
    wait(qtbot, widget)
    messages = [m for _, _, m in reports]
    assert messages[0] == "reading the layers"
    preprocessing = [m for m in messages if m.startswith("preprocessing")]
    assert preprocessing and all(m.endswith("(step 1 of 3)") for m in preprocessing)
    windows = [(d, t) for d, t, m in reports if m.startswith("windows")]
    total = windows[-1][1]
    assert windows[-1] == (total, total) and all(t == total for _, t in windows)
    assert [d for d, _ in windows] == sorted(d for d, _ in windows)
    order = [m.split(":")[0].split(" (")[0] for m in messages]
    stages = list(dict.fromkeys(order))
    assert stages[-4:] == [
        "windows",
        "back to the input grid",
        "preparing the result layers",
        "listing the findings",
    ]
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 1
    # cancel during the windows: no result, and the bar goes back to zero
    layers_before = len(viewer.layers)
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.progress_bar.maximum() > 1, timeout=60_000)  # windows began
    widget.cancel_button.click()
    wait(qtbot, widget)
    assert len(viewer.layers) == layers_before
    assert "Cancelled" in widget.status.text()
    assert widget.progress_bar.value() == 0 and widget.progress_bar.maximum() == 1
    assert widget.run_button.isEnabled()


def test_checkpoint_folders_can_be_added_and_bad_ones_are_reported(detect, qtbot, tmp_path):
    viewer, widget, scan, mask = detect
    (tmp_path / "card.json").write_text("{not json")
    widget.add_checkpoint(str(tmp_path))
    assert widget.model_choice.value == str(tmp_path)
    assert "Cannot read this checkpoint" in widget.card_label.text()
    widget.run_button.click()
    wait(qtbot, widget)
    assert "not valid JSON" in widget.last_error and widget.map_layer is None
    assert widget.progress_bar.value() == 0


def test_a_score_only_family_shows_its_score_and_no_map(detect, qtbot, tmp_path):
    import toy_family

    viewer, widget, scan, mask = detect
    toy_family.register()
    try:
        toy_family.write_checkpoint(tmp_path / "toy")
        widget.add_checkpoint(str(tmp_path / "toy"))
        assert "gives: score" in widget.card_label.text()
        layers_before = len(viewer.layers)
        widget.run_button.click()
        wait(qtbot, widget)
        assert widget.last_error is None, widget.last_error
        assert len(viewer.layers) == layers_before and widget.map_layer is None
        assert widget.last_result.anomaly_map is None
        text = widget.status.text()
        assert f"Sample score {widget.last_result.score:.3f}" in text
        assert "distance of the mean brain intensity" in text
        assert not widget.findings_table.next_button.isEnabled() and not widget.slider.isEnabled()
    finally:
        toy_family.unregister()


def test_a_flair_scan_and_its_lesions(make_napari_viewer, qtbot, ms_t1, ms_lesions, tiny_unet):
    """The MS lesion layer is never the brain mask; a T1 model on a FLAIR scan says so (the
    tiny shared U-Net, whose card expects T1w scans as the shipped T1 models' do)."""
    viewer = make_napari_viewer()
    flair_path = ms_t1.parent / ms_t1.name.replace("T1_", "FLAIR_")
    [flair] = viewer.open(flair_path, plugin=PLUGIN)
    [lesions] = viewer.open(ms_lesions, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    assert widget.image_combo.current_layer() is flair
    assert widget.mask_combo.current_layer() is None  # its own brain, not the lesions
    assert widget.mask_combo.findData(lesions) == -1  # not even offered
    widget.add_checkpoint(str(tiny_unet))
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert any("says FLAIR; tiny-unet was trained on T1w scans" in n for n in widget.notes)
    assert widget.notes_label.isVisibleTo(widget) and "FLAIR" in widget.notes_label.text()
    # Evaluate starts from the map and the lesions, and never offers thresholds as truth
    widget.slider.setValue(450)
    _, evaluate = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    assert evaluate.map_combo.current_layer() is widget.map_layer
    assert evaluate.truth_combo.current_layer() is lesions
    assert evaluate.truth_combo.findData(widget.threshold_layer) == -1
    # lesions green, flagged voxels orange
    green = lesions.colormap.map(np.array([1]))[0, :3]
    orange = widget.threshold_layer.colormap.map(np.array([1]))[0, :3]
    assert green[1] > green[0] and orange[0] > orange[1]
    # the panel clears when a layer it scored goes away
    evaluate.run_button.click()
    qtbot.waitUntil(lambda: evaluate.counts is not None, timeout=30_000)
    evaluate.slider.setValue(500)
    qtbot.waitUntil(lambda: evaluate._threshold_layer is not None, timeout=5_000)
    own = evaluate._threshold_layer
    viewer.layers.remove(lesions)
    assert evaluate.counts is None and "was removed" in evaluate.metrics_label.text()
    assert own not in viewer.layers


class EventLoopTicks:
    """Timestamps of a 5 ms QTimer: the gaps between them are how long the GUI froze."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def largest_gap(self, start: float, stop: float = float("inf")) -> float:
        ticks = [t for t in self.ticks if start <= t <= stop]
        return float(np.diff(ticks).max()) if len(ticks) > 1 else 0.0


def test_the_gui_never_stalls(detect, qtbot):
    """Measured with a 5 ms QTimer. Pressing Run and everything until the result arrives
    (reading the layers, the detector, preparing the result layers) leaves the event loop
    free: no gap over 100 ms. Showing the result adds layers, one per turn of the event
    loop; napari's own insertion and first drawing of a layer is the floor there, measured
    in the same test by adding a bare layer of each kind: no gap exceeds it by 50 ms."""
    import gc

    from napari.layers import Image, Labels

    viewer, widget, scan, mask = detect
    widget.model_choice.value = "brain-t1-unet"
    get_detector_warm = __import__("napari_medood.detectors", fromlist=["x"]).get_detector
    get_detector_warm("brain-t1-unet", device="cpu")  # torch imported before measuring
    gc.collect()
    gc.freeze()  # a full collection of napari's heap pauses every thread: not ours to time
    try:
        qtbot.wait(300)
        ticks = EventLoopTicks()
        floor = 0.0
        for layer in (
            Image(
                np.random.rand(*scan.data.shape).astype(np.float32),
                colormap="inferno",
                blending="additive",
                contrast_limits=(0, 1),
                **_placement(scan),
            ),
            Labels((np.random.rand(*scan.data.shape) > 0.9).astype(np.uint8), **_placement(scan)),
        ):
            qtbot.wait(200)
            before = time.perf_counter()
            viewer.layers.append(layer)
            qtbot.wait(400)
            floor = max(floor, ticks.largest_gap(before - 0.01))
            viewer.layers.remove(layer)
        qtbot.wait(300)
        arrived = []
        original = widget._show
        widget._show = lambda outcome: (arrived.append(time.perf_counter()), original(outcome))
        clicked = time.perf_counter()
        widget.run_button.click()
        pressed = time.perf_counter() - clicked
        wait(qtbot, widget)
        qtbot.waitUntil(lambda: "ml" in widget.threshold_label.text(), timeout=10_000)
        qtbot.wait(1000)  # the view draws the new layers
        ticks.timer.stop()
    finally:
        gc.unfreeze()
    during = ticks.largest_gap(clicked - 0.01, arrived[0] - 0.001)
    after = ticks.largest_gap(arrived[0] - 0.01)
    print(
        f"Run press {pressed * 1000:.0f} ms, largest gap during the run {during * 1000:.0f} ms, "
        f"after {after * 1000:.0f} ms (napari's own layer insertion {floor * 1000:.0f} ms)"
    )
    assert pressed < 0.100
    assert during < 0.100, f"the event loop stalled for {during * 1000:.0f} ms during the run"
    assert after < floor + 0.050, (
        f"showing the result froze the GUI for {after * 1000:.0f} ms; napari's own insertion "
        f"of one layer takes {floor * 1000:.0f} ms"
    )


def test_all_panels_fit_a_1000_px_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    window = viewer.window._qt_window
    window.resize(1200, 900)
    docks = {}
    for name in (
        "MedOOD (all panels)",
        "Anomaly inspector",
        "Detect anomalies",
        "Anomaly playground",
        "Evaluate",
        "Is this scan in distribution?",
    ):
        _, docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    qtbot.wait(300)
    assert window.frameGeometry().height() <= 1000, window.frameGeometry().height()
    # nothing is cut at the right edge: each panel is as wide as its content needs
    for name, panel in docks.items():
        if name != "MedOOD (all panels)":
            assert panel.width() >= panel.body.minimumSizeHint().width(), name
    # long texts wrap or elide (with the whole text as tooltip), they are never cut
    dock = docks["MedOOD (all panels)"]
    assert [dock.tabText(i) for i in range(dock.count())] == [
        "Scan",
        "Detect",
        "Compare",
        "Trust",
        "Playground",
        "Evaluate",
    ]
    detect = docks["Detect anomalies"]
    assert detect.card_label.wordWrap() and detect.status.wordWrap()
    from napari_medood._napari._widgets._panel import ElidedLabel

    inspector = docks["Anomaly inspector"]
    path_labels = inspector.body.findChildren(ElidedLabel)
    assert path_labels and all(w.toolTip() == w.full_text() for w in path_labels)
    assert inspector.scan_rows()["File"].endswith("ixi048_t1_2mm.nii.gz")


def test_the_flagged_volume_follows_a_slider_moved_during_the_run(detect, qtbot):
    viewer, widget, scan, mask = detect
    widget.model_choice.value = "intensity"
    widget.run_button.click()
    widget.slider.setValue(
        700
    )  # before the result arrives: the worker computed at the earlier value
    wait(qtbot, widget)
    layer = widget.map_layer
    ml = (layer.data > 0.7).sum() * float(np.prod(layer.scale)) / 1000
    assert widget.threshold_label.text() == f"threshold 0.700: {ml:.1f} ml"
    np.testing.assert_array_equal(widget.threshold_layer.data.astype(bool), layer.data > 0.7)


def test_a_diffusion_model_shows_its_reconstructions_and_maps_and_cancels(
    detect, qtbot, diffusion_checkpoint
):
    from napari_medood._napari._roles import ANOMALY_MAP, BY_PRODUCT, role_of

    viewer, widget, scan, mask = detect
    widget.add_checkpoint(str(diffusion_checkpoint))
    reports = []
    original = widget._progress
    widget._progress = lambda report: (reports.append(report), original(report))
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    stages = list(dict.fromkeys(m.split(":")[0].split(" (")[0] for _, _, m in reports))
    assert "reconstructions" in stages and "Mahalanobis map" in stages
    layer = widget.map_layer
    assert role_of(layer) == ANOMALY_MAP
    extras = widget.extras_of(scan, widget.model_choice.value)
    kinds = {x.metadata["medood_detection"]["extra"]: x for x in extras}
    order = list(viewer.layers)
    assert all(order.index(x) < order.index(layer) for x in extras)  # the map over them
    assert set(kinds) == {"residual", "mahalanobis", "mean", "std", "reconstructions"}
    for key, extra in kinds.items():
        assert not extra.visible  # under the map, a click away
        if key == "reconstructions":  # N on a slider, every volume over the scan
            assert extra.data.shape == (4, *scan.data.shape)
            np.testing.assert_allclose(extra.scale[1:], scan.scale)
            np.testing.assert_allclose(extra.translate[1:], scan.translate)
            assert not np.array_equal(extra.data[0], extra.data[1])
        else:
            assert extra.data.shape == scan.data.shape
            np.testing.assert_allclose(extra.scale, scan.scale)
            np.testing.assert_allclose(extra.translate, scan.translate)
        expected = ANOMALY_MAP if key == "residual" else BY_PRODUCT
        assert role_of(extra) == expected
    # results_of finds the map alone, so a rerun replaces it and its extras
    assert widget.results_of(scan, widget.model_choice.value) == [layer]
    widget.slider.setValue(300)  # a threshold layer over the map
    threshold = widget.threshold_layer
    count = len(viewer.layers)
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.image_combo.current_layer() is scan  # extras are never taken for the scan
    assert widget.last_error is None and len(viewer.layers) == count
    order = list(viewer.layers)
    assert order.index(threshold) > order.index(widget.map_layer)  # still visible on top
    assert "maps" not in widget.last_result.extras  # held once, by the layers
    # go to peak works beside the 4D stack of reconstructions (napari right-aligns axes)
    widget.go_to_peak()
    peak = np.unravel_index(int(np.argmax(widget.map_layer.data)), widget.map_layer.data.shape)
    world = widget.map_layer.data_to_world(peak)
    assert viewer.dims.point[1] == pytest.approx(world[0], abs=2.1)
    # cancel during the reconstructions: nothing is added
    show_progress = widget._progress

    def cancel_on_reconstructions(report):
        show_progress(report)
        if report[2].startswith("reconstructions") and not widget._cancel.is_set():
            widget.cancel()

    widget._progress = cancel_on_reconstructions
    widget.run_button.click()
    wait(qtbot, widget)
    assert len(viewer.layers) == count and "Cancelled" in widget.status.text()


def test_the_flip_tta_box_reaches_the_detector(detect, qtbot, monkeypatch):
    import napari_medood.detectors as detectors

    viewer, widget, scan, mask = detect
    asked = []
    real = detectors.get_detector

    def recording(name, options=None, **values):
        asked.append((name, values.get("tta")))
        return real(name, options, **values)

    monkeypatch.setattr(detectors, "get_detector", recording)
    widget.model_choice.value = "brain-any-unet-gpu"
    assert widget.tta_check.enabled and widget.tta_check.value is False  # off by default
    assert "mirror left-right" in widget.tta_check.text and "2x time" in widget.tta_check.text
    widget.gate_check.setChecked(False)
    widget.tta_check.value = True
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert asked == [("brain-any-unet-gpu", True)]
    assert widget.last_result.extras["tta"] == "left-right flip"
    assert widget.map_layer.metadata["medood_detection"]["tta"] == "left-right flip"
    assert "flip TTA" in widget.status.text()  # "N windows (cpu, ..., flip TTA)."
    # a baseline has no TTA: the box is greyed out and the run goes without it
    widget.model_choice.value = "intensity"
    assert not widget.tta_check.enabled and widget.tta_check.value is True
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert asked[-1] == ("intensity", False)
    # back on the U-Net the box is offered again, as the user left it
    widget.model_choice.value = "brain-any-unet-gpu"
    assert widget.tta_check.enabled and widget.tta_check.value is True


def test_a_skull_stripped_scan_opened_without_a_mask_shows_the_calibrated_ml(
    make_napari_viewer, qtbot, tmp_path
):
    """The commonest research input: a brain-extracted scan, opened alone. The default
    model takes its non-zero voxels as the brain, says so, and reads the map against its
    calibration: the slider's label says "calibrated" and gives the millilitres the detector
    counted, as for the whole head with its brain mask."""
    import nibabel as nib

    from conftest import REPO

    samples = REPO / "src" / "napari_medood" / "samples"
    head = nib.load(samples / "ixi048_t1_2mm.nii.gz")
    brain = np.asarray(nib.load(samples / "ixi048_brainmask_2mm.nii.gz").dataobj) > 0
    stripped = np.where(brain, np.asarray(head.dataobj), 0).astype(np.float32)
    path = tmp_path / "ixi048_t1_2mm_brain.nii.gz"
    nib.save(nib.Nifti1Image(stripped, head.affine, head.header), path)
    viewer = make_napari_viewer()
    [scan] = viewer.open(path, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    assert widget.image_combo.current_layer() is scan
    assert widget.mask_combo.current_layer() is None  # no mask layer: none is given
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    result = widget.last_result
    assert result.extras["mask"] == "skull-stripped"
    assert any("looks skull-stripped" in note for note in widget.notes)
    assert "looks skull-stripped" in widget.notes_label.text()
    calibration = result.extras["calibration"]
    calibrated_ml_is_shown(qtbot, widget, calibration)
    assert f"{calibration['flagged_ml']:.1f} ml above the calibrated threshold" in (
        widget.status.text()
    )
    # a whole head opened without its mask: its map is not read against the calibration,
    # and the label does not call the threshold calibrated for it
    [whole] = viewer.open(samples / "ixi048_t1_2mm.nii.gz", plugin=PLUGIN)
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(whole))
    assert widget.mask_combo.current_layer() is None
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.last_result.extras["mask"] == "foreground"
    assert "calibration" not in widget.last_result.extras
    qtbot.waitUntil(lambda: "ml" in widget.threshold_label.text(), timeout=10_000)
    assert "it does not hold for this map" in widget.threshold_label.text()
