"""The viewer a reader trusts (issue 26): layers paired by place, findings to step through,
numbers that belong to their map, warnings before Run. Driven in a real napari window."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import shared

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
OTHER_SUBJECT_PARCELLATION = shared("ixi-t1-2mm", "dlmuse", "IXI012-HH-1211-T1_ds_DLMUSE.nii.gz")


def wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=180_000)
    qtbot.waitUntil(lambda: not widget.findings_busy, timeout=30_000)


def test_a_mask_of_another_subject_with_the_same_shape_is_not_offered(
    make_napari_viewer, qtbot, ixi_parcellation
):
    """IXI012's parcellation has the sample's array shape but lies 12 mm away in the world:
    listed greyed with the reason in every panel, never chosen, and refused when forced."""
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    [other] = viewer.open(OTHER_SUBJECT_PARCELLATION, plugin=PLUGIN)
    [own] = viewer.open(ixi_parcellation, plugin=PLUGIN)  # the sample's subject: it pairs
    assert other.data.shape == scan.data.shape
    panels = {}
    for name in ("Detect anomalies", "Is this scan in distribution?", "Compare two models"):
        _, panels[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    for name, panel in panels.items():
        combo = panel.mask_combo
        index = combo.findData(other)
        assert index >= 0, name  # listed, so the user sees why it is not offered
        assert not combo.model().item(index).isEnabled(), name
        assert "mm away from 'IXI048 T1 (2 mm)'" in combo.itemText(index), name
        assert "not offered" in combo.itemData(index, 3)  # its tooltip (Qt's ToolTipRole)
        assert combo.model().item(combo.findData(own)).isEnabled(), name
        assert combo.model().item(combo.findData(mask)).isEnabled(), name
        assert combo.current_layer() is own, name  # the newest brain mask that pairs
    # the scan itself is never offered as an anomaly map
    _, evaluate = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    index = evaluate.map_combo.findData(scan)
    assert not evaluate.map_combo.model().item(index).isEnabled()
    assert "a scan (values 0 to" in evaluate.map_combo.itemText(index)
    assert evaluate.map_combo.current_layer() is None
    # a pairing forced past the greyed item is refused in one line, and nothing is added
    detect = panels["Detect anomalies"]
    detect.model_choice.value = "intensity"
    detect.mask_combo.setCurrentIndex(detect.mask_combo.findData(other))
    count = len(viewer.layers)
    detect.run_button.click()
    qtbot.waitUntil(lambda: not detect.busy, timeout=30_000)
    assert detect.last_error is not None
    assert "cannot be read over 'IXI048 T1 (2 mm)'" in detect.last_error
    assert "mm away" in detect.last_error and "\n" not in detect.last_error
    assert len(viewer.layers) == count
    # switching the scan to the other subject's own grid makes its parcellation pair
    [other_scan] = viewer.open(
        shared("ixi-t1-2mm", "t1", "IXI012-HH-1211-T1_ds.nii.gz"), plugin=PLUGIN
    )
    for name, panel in panels.items():
        panel.image_combo.setCurrentIndex(panel.image_combo.findData(other_scan))
        combo = panel.mask_combo
        assert combo.current_layer() is other, name  # every panel's mask follows its scan
        assert not combo.model().item(combo.findData(own)).isEnabled(), name


def implanted_scan(tmp_path: Path, ms_lesions: Path) -> tuple[Path, dict]:
    """The sample T1 with a bright sphere (radius 8 voxels) and, 40 mm away, the largest
    of MS patient 07's real lesions (its 1 mm shape taken every other voxel) at the same
    brightness, ten times the brain's: together they are more than 1 % of the brain, so
    the intensity baseline maps them to 1 and the rest of the brain below 0.2."""
    head = nib.load(SAMPLES / "ixi048_t1_2mm.nii.gz")
    data = np.asarray(head.dataobj).astype(np.float32)
    brain = np.asarray(nib.load(SAMPLES / "ixi048_brainmask_2mm.nii.gz").dataobj) > 0
    lesions = np.asarray(nib.load(ms_lesions).dataobj) > 0
    labels, _ = ndimage.label(lesions, np.ones((3, 3, 3)))
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    box = ndimage.find_objects((labels == largest).astype(np.int32))[0]
    shape = (labels[box] == largest)[::2, ::2, ::2]
    pieces, _ = ndimage.label(shape, np.ones((3, 3, 3)))
    shape = pieces == int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    sphere_centre = np.array([60, 66, 44])
    grid = np.indices(data.shape).transpose(1, 2, 3, 0)
    sphere = np.linalg.norm(grid - sphere_centre, axis=-1) <= 8
    lesion = np.zeros_like(brain)
    corner = np.array([80, 66, 44])
    lesion[tuple(slice(c, c + n) for c, n in zip(corner, shape.shape, strict=True))] = shape
    assert (sphere <= brain).all() and (lesion <= brain).all() and not (sphere & lesion).any()
    bright = 10 * float(data[brain].max())
    data[sphere | lesion] = bright
    path = tmp_path / "ixi048_t1_implanted.nii.gz"
    nib.save(nib.Nifti1Image(data, head.affine, head.header), path)
    return path, {
        "sphere": sphere,
        "lesion": lesion,
        "affine": head.affine,
        "centre": sphere_centre,
    }


def voxel_of(affine: np.ndarray, point_mm) -> tuple[int, int, int]:
    ijk = np.linalg.inv(affine) @ np.array([*point_mm, 1.0])
    return tuple(int(round(v)) for v in ijk[:3])


def test_the_findings_table_lists_an_implanted_sphere_and_a_real_lesion_and_shows_each(
    make_napari_viewer, qtbot, tmp_path, ms_lesions, ixi_parcellation
):
    from napari_medood._napari._widgets._viewer import camera_of
    from napari_medood.detectors.findings import structure_name

    path, truth = implanted_scan(tmp_path, ms_lesions)
    viewer = make_napari_viewer()
    [scan] = viewer.open(path, plugin=PLUGIN)
    [parcellation] = viewer.open(ixi_parcellation, plugin=PLUGIN)  # DLMUSE, the same subject
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "intensity"
    assert widget.mask_combo.current_layer() is parcellation  # brain mask = labels > 0
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    table = widget.findings_table
    findings = table.findings
    assert len(findings) == 2 and table.table.rowCount() == 2
    sphere, lesion = findings  # largest first
    assert sphere.voxels == int(truth["sphere"].sum())
    assert lesion.voxels == int(truth["lesion"].sum())
    assert sphere.centre_mm == pytest.approx(
        tuple((truth["affine"] @ [*truth["centre"], 1])[:3]), abs=0.01
    )
    assert truth["lesion"][voxel_of(truth["affine"], lesion.peak_mm)]
    assert table.summary.text() == (
        f"2 findings above {widget.threshold:.3f}: {sphere.volume_ml + lesion.volume_ml:.1f} ml"
    )
    # the structure each lies in, by its DLMUSE name
    labels = np.asarray(nib.load(ixi_parcellation).dataobj)
    assert not table.table.isColumnHidden(5)
    for row, finding in enumerate(findings):
        expected = structure_name(labels[voxel_of(truth["affine"], finding.peak_mm)])
        assert not expected.startswith("label ")
        assert table.table.item(row, 5).text() == expected
    # a click on a row shows the slice through its peak, centred; "Next finding" steps on
    layer = widget.map_layer
    for row in (1, 0):
        table.table.cellClicked.emit(row, 2)
        world = layer.data_to_world(np.asarray(findings[row].peak_ijk, dtype=float))
        assert viewer.dims.point[0] == pytest.approx(world[0], abs=1.0)
        np.testing.assert_allclose(camera_of(viewer).center[-2:], world[1:], atol=1.0)
        assert table.current_row() == row
    table.next_button.click()
    assert table.current_row() == 1
    # sorted by peak, and above another threshold: computed again off the GUI thread
    table.order_combo.setCurrentIndex(table.order_combo.findData("peak"))
    widget.slider.setValue(990)
    qtbot.waitUntil(lambda: not widget.findings_busy, timeout=30_000)
    assert table.summary.text().startswith("2 findings above 0.990")
    assert [f.peak for f in table.findings] == sorted(
        (f.peak for f in table.findings), reverse=True
    )
    # the map removed: its table, volume and colour bar go with it
    viewer.layers.remove(layer)
    assert table.findings == [] and not table.next_button.isEnabled()
    assert "removed" in table.summary.text()
    assert "ml" not in widget.threshold_label.text()
    assert not widget.colour_bar.isVisibleTo(widget)
    assert "was removed" in widget.status.text()


def test_switching_the_model_leaves_the_map_its_own_threshold(make_napari_viewer, qtbot):
    """A calibrated map's numbers stay its own when another model is chosen: the slider
    does not move, the flagged layer is not re-thresholded, and the label stops calling the
    threshold calibrated and says whose map it reads."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "brain-any-unet-gpu"
    calibrated = widget.threshold
    widget.run_button.click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    widget.slider.setValue(widget.slider.value() + 1)  # a threshold layer over the map
    widget.slider.setValue(widget.slider.value() - 1)
    assert widget.threshold == pytest.approx(calibrated)
    assert "(calibrated: 1 % of healthy brain voxels)" in widget.threshold_label.text()
    flagged = widget.threshold_layer.data.copy()
    widget.model_choice.value = "intensity"  # no calibration of its own
    assert widget.threshold == pytest.approx(calibrated)
    np.testing.assert_array_equal(widget.threshold_layer.data, flagged)
    text = widget.threshold_label.text()
    assert "calibrated" not in text
    assert "on the map of brain-any-unet-gpu (Run to see intensity's)" in text
    assert text.endswith(" ml")
    # a model with another calibration does not move it either
    widget.model_choice.value = "brain-t1-unet"
    assert widget.threshold == pytest.approx(calibrated)
    assert "calibrated" not in widget.threshold_label.text()
    # back to the map's own model: calibrated again
    widget.model_choice.value = "brain-any-unet-gpu"
    assert "(calibrated: 1 % of healthy brain voxels)" in widget.threshold_label.text()


def test_warnings_are_shown_before_run(make_napari_viewer, qtbot, ms_t1):
    """A FLAIR scan for a T1 model, and a whole head without a mask, are named as soon as
    they are chosen: before Run (the check runs while the panel is shown)."""
    viewer = make_napari_viewer(show=True)
    flair_path = ms_t1.parent / ms_t1.name.replace("T1_", "FLAIR_")
    [flair] = viewer.open(flair_path, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    widget.model_choice.value = "brain-t1-unet"
    qtbot.waitUntil(lambda: not widget.preflight_busy, timeout=60_000)
    qtbot.waitUntil(lambda: widget.before_label.isVisibleTo(widget), timeout=5_000)
    text = widget.before_label.text()
    assert text.startswith("Before you run:")
    assert "says FLAIR; brain-t1-unet was trained on T1w scans" in text
    assert "looks skull-stripped" in text  # no mask: its own brain is taken
    assert widget.last_result is None  # nothing was run
    # a whole head, no mask: the note says what the model will read instead
    [head] = viewer.open(SAMPLES / "ixi048_t1_2mm.nii.gz", plugin=PLUGIN)
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(head))
    qtbot.waitUntil(lambda: "no brain mask chosen" in widget.before_label.text(), timeout=60_000)
    assert "FLAIR" not in widget.before_label.text()


def clipped_children(panel) -> list[str]:
    """The visible children of a panel wider than its viewport, and one-line labels whose
    text is wider than the label: what a reader would find cut."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QLabel, QWidget

    from napari_medood._napari._widgets._panel import ElidedLabel

    viewport = panel._scroll.viewport()
    cut = []
    for child in panel.body.findChildren(QWidget):
        if not child.isVisibleTo(panel) or child.width() <= 0:
            continue
        right = child.mapTo(viewport, QPoint(child.width(), 0)).x()
        name = f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r:.60}"
        if right > viewport.width() + 1:
            cut.append(f"{name} ends at {right} px in a {viewport.width()} px viewport")
        if (
            isinstance(child, QLabel)
            and not child.wordWrap()
            and not isinstance(child, ElidedLabel)
        ):
            lines = child.text().splitlines() if child.textFormat() != 1 else []  # not rich text
            needed = max((child.fontMetrics().horizontalAdvance(x) for x in lines), default=0)
            if needed > child.contentsRect().width() + 1:
                cut.append(f"{name} needs {needed} px, has {child.contentsRect().width()} px")
    return cut


def test_no_number_is_clipped_in_the_all_panels_dock_at_two_screen_sizes(
    make_napari_viewer, qtbot, tmp_path, ms_lesions
):
    """After a run in each panel (Detect calibrated, Trust, Compare, Evaluate), no child of
    any tab is wider than its viewport and no one-line label is cut, at 1600x1000 and at
    1280x800."""
    from napari.layers import Labels

    path, truth = implanted_scan(tmp_path, ms_lesions)
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    [scan] = viewer.open(path, plugin=PLUGIN)
    [mask] = viewer.open(SAMPLES / "ixi048_brainmask_2mm.nii.gz", plugin=PLUGIN)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "MedOOD (all panels)")
    from napari_medood._napari._layers import to_display
    from napari_medood.io.volume import Volume

    lesion = to_display(Volume(truth["sphere"] | truth["lesion"], truth["affine"]))[0]
    viewer.add_layer(
        Labels(
            lesion.astype(np.uint8),
            name="implanted lesion",
            scale=scan.scale,
            translate=scan.translate,
        )
    )
    detect = dock.detect
    detect.device_choice.value = "cpu"
    detect.model_choice.value = "brain-any-unet-gpu"
    detect.image_combo.setCurrentIndex(detect.image_combo.findData(scan))
    detect.run_button.click()
    wait(qtbot, detect)
    assert detect.last_error is None, detect.last_error
    assert "calibrated" in detect.threshold_label.text()
    compare = dock.compare
    compare.model_a_choice.value, compare.model_b_choice.value = "intensity", "median-residual"
    compare.device_choice.value = "cpu"
    compare.run_button.click()
    qtbot.waitUntil(lambda: not compare.busy, timeout=120_000)
    assert compare.last_error is None, compare.last_error
    dock.trust.run_button.click()
    qtbot.waitUntil(lambda: not dock.trust.busy, timeout=120_000)
    assert dock.trust.last_error is None, dock.trust.last_error
    evaluate = dock.evaluate
    evaluate.map_combo.setCurrentIndex(evaluate.map_combo.findData(detect.map_layer))
    evaluate.run_button.click()
    qtbot.waitUntil(lambda: not evaluate.busy, timeout=120_000)
    assert evaluate.last_error is None, evaluate.last_error
    for size in ((1600, 1000), (1280, 800)):
        window.resize(*size)
        for index in range(dock.count()):
            dock.setCurrentIndex(index)
            qtbot.wait(150)
            panel = dock.widget(index)
            assert clipped_children(panel) == [], (size, dock.tabText(index))


def test_a_chosen_none_stays_chosen_as_layers_come_and_go(make_napari_viewer, qtbot):
    """ "No mask" chosen by the user is a choice like a layer: a new layer (Evaluate's own
    threshold layer, say) does not swap the brain mask in, nor clear the numbers."""
    from napari.layers import Image

    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, detect = viewer.window.add_plugin_dock_widget(PLUGIN, "Detect anomalies")
    assert detect.mask_combo.current_layer() is mask
    detect.mask_combo.setCurrentIndex(0)  # the user: no mask
    viewer.add_labels(np.zeros(scan.data.shape, np.uint8), name="drawn", **_placement(scan))
    assert detect.mask_combo.currentIndex() == 0 and detect.mask_combo.current_layer() is None
    # Evaluate over all voxels keeps its numbers when its threshold layer is added
    values = (np.asarray(scan.data, dtype=np.float32) / float(np.max(scan.data))).clip(0, 1)
    made = Image(values, name="made-up anomaly map", **_placement(scan))
    viewer.add_layer(made)
    truth = viewer.add_labels(
        (values > 0.6).astype(np.uint8), name="lesion truth", **_placement(scan)
    )
    _, evaluate = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    evaluate.map_combo.setCurrentIndex(evaluate.map_combo.findData(made))
    assert evaluate.truth_combo.current_layer() is truth
    evaluate.mask_combo.setCurrentIndex(0)  # all voxels
    evaluate.run_button.click()
    qtbot.waitUntil(lambda: evaluate.counts is not None, timeout=60_000)
    evaluate.slider.setValue(evaluate.slider.value() + 10)  # its threshold layer is added
    qtbot.waitUntil(lambda: evaluate._threshold_layer is not None, timeout=10_000)
    assert evaluate.mask_combo.currentIndex() == 0
    assert evaluate.counts is not None, evaluate.metrics_label.text()


def _placement(layer) -> dict:
    return {"scale": layer.scale, "translate": layer.translate}
