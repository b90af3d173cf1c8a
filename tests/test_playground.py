"""The anomaly playground: the headless session, and the napari widget driven with pytest-qt."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from helpers import controls_without_a_tooltip
from napari_medood.errors import GridMismatchError, PreprocessingError
from napari_medood.io import read_volume
from napari_medood.synth.playground import AnomalySettings, Playground

SAMPLE = "src/napari_medood/samples"
PLUGIN = "napari-medood"


@pytest.fixture
def sample():
    from conftest import REPO

    image = read_volume(REPO / SAMPLE / "ixi048_t1_2mm.nii.gz")
    brain = read_volume(REPO / SAMPLE / "ixi048_brainmask_2mm.nii.gz").data > 0
    return image, brain


# ------------------------------------------------------------------ headless session
@pytest.mark.parametrize("kind", ["sphere", "cuboid", "brush", "lesion"])
@pytest.mark.parametrize("texture", ["scan", "noise", "layer"])
def test_preview_commit_undo_for_every_kind(kind, texture, sample):
    image, brain = sample
    original = image.data.copy()
    playground = Playground(image.data, image.spacing, brain, image.axcodes)
    settings = AnomalySettings(
        kind=kind, size_mm=30, alpha=1.0, kernel_size=1, texture=texture, seed=4
    )
    placement = playground.preview(settings, (60, 62, 45), other=image.data[::-1].copy())
    assert playground.count == 0 and not playground.labels.any()  # a preview changes nothing
    assert placement.label.any() and not placement.label[~brain[placement.region]].any()
    value = playground.commit(placement)
    assert value == 1 and playground.count == 1
    labelled = playground.labels > 0
    assert labelled.sum() == placement.label.sum()
    # the anomaly sits around the requested voxel, within its 30 mm (15 voxel) box
    centroid = np.argwhere(labelled).mean(axis=0)
    assert np.all(np.abs(centroid - (60, 62, 45)) <= 8)
    changed = playground.result != image.data.astype(np.float32)
    assert changed[labelled].mean() > 0.5 and not changed[~brain].any()
    np.testing.assert_array_equal(image.data, original)  # the healthy scan is never written
    assert playground.undo() and playground.count == 0
    np.testing.assert_array_equal(playground.result, original.astype(np.float32))
    assert not playground.labels.any()


def test_several_anomalies_keep_their_own_labels(sample):
    image, brain = sample
    playground = Playground(image.data, image.spacing, brain)
    for seed in range(3):
        playground.commit(playground.preview(AnomalySettings(seed=seed, size_mm=16)))
    assert playground.count == 3 and set(np.unique(playground.labels)) == {0, 1, 2, 3}
    assert [p["label"] for p in playground.placements()] == [1, 2, 3]
    playground.undo()
    assert set(np.unique(playground.labels)) == {0, 1, 2}
    playground.clear()
    assert playground.count == 0 and not playground.labels.any()
    np.testing.assert_array_equal(playground.result, image.data.astype(np.float32))


def test_same_settings_same_anomaly(sample):
    image, brain = sample
    playground = Playground(image.data, image.spacing, brain, image.axcodes)
    settings = AnomalySettings(kind="brush", size_mm=40, seed=11)
    a, b = playground.preview(settings), playground.preview(settings)
    assert a.centre == b.centre and a.region == b.region
    np.testing.assert_array_equal(a.values, b.values)


def test_playground_refuses_bad_input(sample):
    image, brain = sample
    with pytest.raises(GridMismatchError, match="mask has shape"):
        Playground(image.data, image.spacing, brain[:, :, :40])
    with pytest.raises(PreprocessingError, match="mask is empty"):
        Playground(image.data, image.spacing, np.zeros_like(brain))
    playground = Playground(image.data, image.spacing, brain)
    with pytest.raises(ValueError, match=r"300 mm anomaly is larger than the scan \(240 x 240"):
        playground.preview(AnomalySettings(size_mm=300))
    with pytest.raises(ValueError, match=r"alpha must be within \[0, 1\]"):
        AnomalySettings(alpha=1.2)
    with pytest.raises(ValueError, match="unknown shape kind 'star'"):
        AnomalySettings(kind="star")
    with pytest.raises(ValueError, match="outside the scan"):
        playground.preview(AnomalySettings(), (500, 0, 0))
    with pytest.raises(ValueError, match="choose the other scan"):
        playground.preview(AnomalySettings(texture="layer"))
    assert playground.count == 0 and not playground.labels.any()  # nothing half-done


# ------------------------------------------------------------------------ the widget
@pytest.fixture
def playground_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    scan, mask = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly playground")
    return viewer, widget, scan, mask


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget._worker is None, timeout=20_000)


def click(viewer, widget, world):
    assert widget._on_click in viewer.mouse_drag_callbacks
    for callback in list(viewer.mouse_drag_callbacks):
        callback(viewer, SimpleNamespace(type="mouse_press", position=tuple(world)))


@pytest.mark.gui
def test_click_places_an_anomaly_at_that_point(playground_widget, qtbot, tmp_path):
    viewer, widget, scan, mask = playground_widget
    source = scan.data.copy()
    assert widget.mask_combo.current_layer() is mask  # the brain mask was picked for the scan
    widget.shape_combo.setCurrentIndex(widget.shape_combo.findData("sphere"))
    widget.size_spin.setValue(20.0)
    widget.click_button.setChecked(True)
    voxel = (60, 55, 45)
    click(viewer, widget, scan.data_to_world(voxel))
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.pending is not None and widget.pending.centre == voxel
    image_layer, labels_layer = widget._image_layer, widget._labels_layer
    # both new layers sit exactly over the source, at its scale
    for layer in (image_layer, labels_layer):
        np.testing.assert_allclose(layer.scale, scan.scale)
        np.testing.assert_allclose(layer.translate, scan.translate)
        assert layer.data.shape == scan.data.shape
    assert labels_layer.data[voxel] == 99  # the preview is shown as pending
    widget.commit_button.click()
    assert labels_layer.data[voxel] == 1 and widget.session.count == 1
    assert image_layer.data[voxel] != source[voxel]
    np.testing.assert_array_equal(scan.data, source)  # the source layer is unchanged

    # a random place, then undo it; then save through the plugin writer
    widget.random_button.click()
    wait_idle(qtbot, widget)
    widget.commit_button.click()
    assert widget.session.count == 2
    widget.undo_button.click()
    assert widget.session.count == 1 and set(np.unique(labels_layer.data)) == {0, 1}
    written = widget.save_to(tmp_path)
    assert [p.name for p in written] == [
        "IXI048_T1__2_mm__anomalies.nii.gz",
        "IXI048_T1__2_mm__anomaly_labels.nii.gz",
        "IXI048_T1__2_mm__anomalies.json",
    ]
    sample_file = nib.load(f"{SAMPLE}/ixi048_t1_2mm.nii.gz")
    saved_image, saved_labels = nib.load(written[0]), nib.load(written[1])
    np.testing.assert_array_equal(saved_image.affine, sample_file.affine)
    np.testing.assert_array_equal(saved_labels.affine, sample_file.affine)
    labels = np.asanyarray(saved_labels.dataobj)
    assert labels.sum() == (labels_layer.data == 1).sum() and labels.max() == 1
    # in the file's own voxel order the label sits where it was clicked in the world
    stored = np.argwhere(labels == 1).mean(axis=0)
    from napari_medood._napari._layers import RAS_TO_WORLD

    world = RAS_TO_WORLD[:3, :3] @ nib.affines.apply_affine(sample_file.affine, stored)
    np.testing.assert_allclose(world, scan.data_to_world(voxel), atol=4.0)
    record = json.loads(written[2].read_text())
    assert record["anomalies"][0]["centre"] == list(voxel)
    widget.clear_button.click()
    assert widget.session.count == 0 and not labels_layer.data.any()
    np.testing.assert_array_equal(image_layer.data, source)


@pytest.mark.gui
def test_widget_reports_bad_input_without_changing_anything(
    playground_widget, qtbot, tmp_path, ms_lesions
):
    viewer, widget, scan, mask = playground_widget
    widget.size_spin.setValue(400.0)
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert "larger than the scan" in widget.last_error
    assert widget.pending is None and widget._image_layer is None
    # a mask from another scan
    other_mask = viewer.add_labels(np.zeros((10, 10, 10), np.uint8), name="other mask")
    widget.mask_combo.setCurrentIndex(widget.mask_combo.findData(other_mask))
    widget.size_spin.setValue(20.0)
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert "the brain mask 'other mask' cannot be read over" in widget.last_error
    # an unreadable lesion mask file is named, and the built-in shapes stay in use
    broken = tmp_path / "lesion.nii.gz"
    broken.write_bytes(b"not a mask")
    widget.load_lesion_masks([ms_lesions, broken])
    wait_idle(qtbot, widget)
    assert str(broken) in widget.last_error and widget.lesion_bank is None
    assert widget.status.text().startswith("Could not read the lesion masks: ")
    widget.load_lesion_masks([ms_lesions])
    wait_idle(qtbot, widget)
    assert widget.lesion_bank is not None and len(widget.lesion_bank) > 5


@pytest.mark.gui
def test_cancel_drops_an_anomaly_computed_after_it(playground_widget, qtbot, monkeypatch):
    """Cancel during a preview: the panel is idle again and nothing is added, even though
    the preview (which has no cancel checks of its own) finishes its work."""
    viewer, widget, scan, mask = playground_widget
    real_preview = Playground.preview
    started, finished = [], []

    def preview_until_cancelled(session, *args, **kwargs):
        started.append(True)
        for _ in range(1000):  # in the worker: until the user presses Cancel (10 s at most)
            if widget._cancel.is_set():
                break
            time.sleep(0.01)
        placement = real_preview(session, *args, **kwargs)
        finished.append(placement)
        return placement

    monkeypatch.setattr(Playground, "preview", preview_until_cancelled)
    layers = list(viewer.layers)
    widget.random_button.click()
    assert widget.busy and widget.cancel_button.isEnabled()
    assert not widget.random_button.isEnabled() and not widget.contrast_button.isEnabled()
    qtbot.waitUntil(lambda: bool(started), timeout=10_000)
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    assert finished  # the preview ran to its end after Cancel ...
    assert widget.pending is None and widget._image_layer is None  # ... and was dropped
    assert list(viewer.layers) == layers
    assert widget.status.text() == "Cancelled: no anomaly was placed."
    assert widget.random_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress_bar.value() == 0
    # the panel works again
    monkeypatch.setattr(Playground, "preview", real_preview)
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_error is None and widget.pending is not None


@pytest.mark.gui
def test_the_view_goes_to_each_new_anomaly(playground_widget, qtbot):
    from napari_medood._napari._roles import GROUND_TRUTH, SCAN, role_of

    viewer, widget, scan, mask = playground_widget
    widget.seed_spin.setValue(4)
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    world = scan.data_to_world(np.asarray(widget.pending.centre, dtype=float))
    assert viewer.dims.point[0] == pytest.approx(world[0], abs=scan.scale[0])
    from napari_medood._napari._widgets._viewer import camera_of

    np.testing.assert_allclose(camera_of(viewer).center[-2:], world[1:], atol=1.0)
    # the new layers say what they are: a scan, and its ground truth (drawn green)
    assert role_of(widget._image_layer) == SCAN and role_of(widget._labels_layer) == GROUND_TRUTH
    green = widget._labels_layer.colormap.map(np.array([1]))[0, :3]
    assert green[1] > max(green[0], green[2])
    # the source stays chosen although a newer scan appeared
    assert widget.source_combo.current_layer() is scan
    widget.go_check.setChecked(False)
    viewer.dims.set_point(0, float(scan.translate[0]))
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert viewer.dims.point[0] == pytest.approx(scan.translate[0])


# ------------------------------------------------------------------- random contrast
@pytest.fixture
def contrast_widget(make_napari_viewer, ixi_t1, ixi_parcellation):
    """An IXI T1 and its DLMUSE parcellation, opened through the plugin, and the panel."""
    viewer = make_napari_viewer()
    [scan] = viewer.open(ixi_t1, plugin=PLUGIN)
    [parcellation] = viewer.open(ixi_parcellation, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly playground")
    return viewer, widget, scan, parcellation


def draw(qtbot, widget, seed):
    widget.seed_spin.setValue(seed)
    widget.contrast_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    return widget._contrast_layer


@pytest.mark.gui
def test_random_contrast_is_the_generators_image_over_the_scan(
    contrast_widget, qtbot, ixi_parcellation
):
    from napari.layers import Image, Labels

    from napari_medood._napari._layers import to_display
    from napari_medood._napari._roles import GROUND_TRUTH, SCAN, role_of
    from napari_medood._napari._widgets._pickers import scan_and_mask_pickers
    from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser

    viewer, widget, scan, parcellation = contrast_widget
    assert isinstance(parcellation, Labels)
    assert widget.source_combo.current_layer() is scan
    assert widget.parcellation_combo.current_layer() is parcellation
    assert widget.groups_combo.currentData() == "dlmuse"
    # the layer holds the file's labels turned to the display axes (S, P, L): the widget
    # hands the generator the layer's array, so the expected image is drawn from it too
    np.testing.assert_array_equal(parcellation.data, to_display(read_volume(ixi_parcellation))[0])
    scan_before, labels_before = scan.data.copy(), parcellation.data.copy()
    before = len(viewer.layers)

    image = draw(qtbot, widget, 3)

    assert isinstance(image, Image) and image in viewer.layers
    assert image.name == f"{scan.name} random contrast (seed 3)"
    # on the source's grid: same shape, same data-to-world transform
    assert image.data.shape == scan.data.shape
    for key in ("scale", "translate", "rotate", "shear"):
        np.testing.assert_allclose(getattr(image, key), getattr(scan, key))
    np.testing.assert_allclose(image.affine.affine_matrix, scan.affine.affine_matrix)
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in scan.data.shape])).reshape(3, -1).T
    for corner in corners.astype(float):
        np.testing.assert_allclose(image.data_to_world(corner), scan.data_to_world(corner))
    # exactly the generator's image, drawn from the layer's labels with the scan's spacing
    labels = np.asarray(parcellation.data)
    spacing = np.abs(np.asarray(scan.scale))
    np.testing.assert_allclose(spacing, (2.0, 2.0, 2.0))
    expected = ContrastRandomiser(groups=DLMUSE_STRUCTURES, spacing=spacing)(
        labels, 3, foreground=labels > 0
    )
    np.testing.assert_array_equal(image.data, expected.image)
    # the blobs, as ground truth over the scan; the image, a scan the Detect panel picks
    blobs = [b for b in expected.params["lesions"] if b["voxels"] > 0]
    assert role_of(image) == SCAN
    if blobs:
        truth = widget._blobs_layer
        assert truth.name == f"{scan.name} random-contrast blobs"
        assert role_of(truth) == GROUND_TRUTH
        np.testing.assert_array_equal(truth.data, (expected.target > 0.5).astype(np.uint8))
        np.testing.assert_allclose(truth.scale, scan.scale)
        np.testing.assert_allclose(truth.translate, scan.translate)
    assert len(viewer.layers) == before + 1 + bool(blobs)
    kinds = ", ".join("brighter" if b["brighter"] else "darker" for b in blobs)
    assert widget.status.text().startswith("random contrast, seed 3: 15 structures, ")
    assert (
        f"{len(blobs)} lesion-like blob" in widget.status.text() and kinds in widget.status.text()
    )
    detect_scans, _ = scan_and_mask_pickers(viewer, widget, "none")
    assert detect_scans.default_layer() is image
    # the sources are untouched, and stay chosen; the seed moved on
    np.testing.assert_array_equal(scan.data, scan_before)
    np.testing.assert_array_equal(parcellation.data, labels_before)
    assert widget.source_combo.current_layer() is scan
    assert widget.parcellation_combo.current_layer() is parcellation
    assert widget.seed_spin.value() == 4


@pytest.mark.gui
def test_random_contrast_seeds_repeat_and_replace(contrast_widget, qtbot):
    from napari_medood._napari._widgets.playground import CONTRAST_KEY

    viewer, widget, scan, parcellation = contrast_widget
    first = draw(qtbot, widget, 3)
    three = first.data.copy()
    count = len(viewer.layers)
    second = draw(qtbot, widget, 4)
    assert second is first and second.name.endswith("(seed 4)")
    assert not np.array_equal(second.data, three)
    # a draw without blobs leaves no blob layer of an earlier draw behind
    has_blobs = bool((widget.last_contrast.target > 0.5).any())
    assert (widget._blobs_layer in viewer.layers) == has_blobs
    again = draw(qtbot, widget, 3)
    assert again is first and again.name.endswith("(seed 3)")
    np.testing.assert_array_equal(again.data, three)
    # one image (and at most one blob layer) however many draws
    made = [layer for layer in viewer.layers if CONTRAST_KEY in layer.metadata]
    assert len(made) in (1, 2) and len(viewer.layers) == count
    # one intensity per label is another image of the same seed
    widget.groups_combo.setCurrentIndex(widget.groups_combo.findData("labels"))
    per_label = draw(qtbot, widget, 3)
    assert per_label is first and not np.array_equal(per_label.data, three)
    assert "labels, each its own intensity" in widget.status.text()


@pytest.mark.gui
def test_random_contrast_refuses_a_parcellation_on_another_grid(contrast_widget, qtbot):
    viewer, widget, scan, parcellation = contrast_widget
    before = len(viewer.layers)
    # five labels each: parcellations the picker lists, on the wrong grids
    small = viewer.add_labels(
        (np.arange(1000) % 5 + 1).astype(np.uint8).reshape(10, 10, 10), name="small labels"
    )
    shifted = np.asarray(scan.translate) + (0.0, 10.0, 0.0)
    moved = viewer.add_labels(
        parcellation.data.copy(), name="shifted labels", scale=scan.scale, translate=shifted
    )
    for layer, message in (
        (small, "the parcellation 'small labels' is not on the grid of the scan"),
        (moved, "the parcellation 'shifted labels' is not on the grid of the scan"),
    ):
        widget.parcellation_combo.setCurrentIndex(widget.parcellation_combo.findData(layer))
        assert widget.parcellation_combo.current_layer() is layer
        widget.contrast_button.click()
        wait_idle(qtbot, widget)
        assert message in widget.last_error
        assert widget.status.text().startswith("Could not draw a random contrast: " + message)
        assert widget._contrast_layer is None and len(viewer.layers) == before + 2
    assert widget.seed_spin.value() == 0  # nothing drawn, the seed stays


@pytest.mark.gui
def test_random_contrast_shows_the_segmenters_implanted_lesions(contrast_widget, qtbot):
    from napari_medood._napari._roles import GROUND_TRUTH, role_of
    from napari_medood._napari._widgets.playground import implant_lesions
    from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser

    viewer, widget, scan, parcellation = contrast_widget
    widget.lesions_combo.setCurrentIndex(widget.lesions_combo.findData("implanted"))
    labels = np.asarray(parcellation.data)
    spacing = tuple(float(s) for s in np.abs(np.asarray(scan.scale)))
    polarities, tumours = set(), 0
    for seed in range(1, 7):
        image = draw(qtbot, widget, seed)
        # the segmenter's own draw: a random contrast without blobs, real lesions implanted
        plain = ContrastRandomiser(groups=DLMUSE_STRUCTURES, spacing=spacing, lesions=(0, 0))(
            labels, seed, foreground=labels > 0
        )
        job = {"seed": seed, "spacing": spacing, "lesion_bank": None}
        expected = implant_lesions(plain, labels > 0, job)
        np.testing.assert_array_equal(image.data, expected.image)
        lesion = expected.target > 0
        assert lesion.any()
        np.testing.assert_array_equal(widget._blobs_layer.data.astype(bool), lesion)
        assert role_of(widget._blobs_layer) == GROUND_TRUTH
        # the image changed where the label says, in the polarity drawn, and nowhere else
        changed = ~np.isclose(image.data, plain.image)
        assert not (changed & ~(labels > 0)).any()
        brighter = expected.params["lesions"][0]["brighter"]
        ratio = image.data[lesion].mean() / plain.image[lesion].mean()
        assert ratio > 1.1 if brighter else ratio < 0.9
        polarities.add(brighter)
        status = widget.status.text()
        assert "implanted lesion" in status and ("brighter" if brighter else "darker") in status
        if any(b.get("tumour") for b in expected.params["lesions"]):
            tumours += 1
            assert "tumour-like lesion in a" in status
    assert polarities == {True, False} and tumours >= 1
    np.testing.assert_array_equal(labels, np.asarray(parcellation.data))  # never written


# ------------------------------------------------------- what the panel offers and starts at


@pytest.mark.gui
def test_every_control_of_the_playground_says_what_it_does(playground_widget):
    viewer, widget, scan, mask = playground_widget
    assert controls_without_a_tooltip(widget) == []


@pytest.mark.gui
def test_a_brain_mask_is_no_parcellation_and_a_dlmuse_is(playground_widget, ixi_parcellation):
    from napari_medood._napari._widgets.playground import NO_PARCELLATION

    viewer, widget, scan, mask = playground_widget
    combo = widget.parcellation_combo
    # the sample's brain mask (one label) is not offered: no parcellation is chosen
    assert combo.findData(mask) == -1
    assert combo.current_layer() is None and combo.currentText() == NO_PARCELLATION
    widget.contrast_button.click()
    assert "open a parcellation of the scan" in widget.last_error
    # the same subject's DLMUSE, on the sample's grid, is chosen as soon as it is open
    [dlmuse] = viewer.open(ixi_parcellation, plugin=PLUGIN)
    assert combo.current_layer() is dlmuse
    # a label map of many labels is a parcellation whatever its name; a lesion mask is not
    unnamed = viewer.add_labels(
        np.asarray(dlmuse.data).copy(), scale=scan.scale, translate=scan.translate
    )
    lesions = viewer.add_labels(
        (np.asarray(dlmuse.data) % 5).astype(np.uint8),
        name="lesions",
        scale=scan.scale,
        translate=scan.translate,
    )
    assert combo.findData(unnamed) > 0 and combo.findData(lesions) == -1
    assert combo.current_layer() is dlmuse  # a named parcellation is the better default


@pytest.mark.gui
def test_an_ms_patients_lesion_mask_is_no_parcellation(make_napari_viewer, ms_t1, ms_lesions):
    viewer = make_napari_viewer()
    [scan] = viewer.open(ms_t1, plugin=PLUGIN)
    [lesions] = viewer.open(ms_lesions, plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly playground")
    assert widget.source_combo.current_layer() is scan
    assert widget.parcellation_combo.findData(lesions) == -1
    assert widget.parcellation_combo.current_layer() is None


@pytest.mark.gui
def test_a_real_lesion_starts_large_enough_to_see(playground_widget, qtbot, sample):
    from napari_medood._napari._widgets.playground import DEFAULT_SIZE_MM

    viewer, widget, scan, mask = playground_widget
    assert widget.shape_combo.currentData() == "sphere" and widget.size_spin.value() == 20.0
    widget.shape_combo.setCurrentIndex(widget.shape_combo.findData("lesion"))
    size = widget.size_spin.value()
    assert size == DEFAULT_SIZE_MM["lesion"] > 20.0
    # on the 2 mm sample, real lesions of that size are some millilitres (those of 20 mm
    # are a few voxels): the median of 20 draws is well over a hundred voxels
    image, brain = sample
    session = Playground(image.data, np.asarray(image.grid.spacing), brain)
    voxels = []
    for seed in range(20):
        try:
            placement = session.preview(AnomalySettings(kind="lesion", size_mm=size, seed=seed))
        except ValueError:  # a draw that would not touch the brain at its random place
            continue
        voxels.append(int(placement.label.sum()))
    assert np.median(voxels) > 200
    # the panel places one there; a size the user chose is kept across shapes
    widget.random_button.click()
    wait_idle(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.pending is not None and widget.pending.label.sum() > 0
    widget.discard_button.click()
    widget.size_spin.setValue(33.0)
    widget.shape_combo.setCurrentIndex(widget.shape_combo.findData("sphere"))
    assert widget.size_spin.value() == 33.0
