"""The napari face on a real X server (Xvfb): reader, writer, sample data, inspector, pixels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import yaml

from conftest import sha256
from helpers import rotation
from napari_medood._napari._layers import RAS_TO_WORLD
from napari_medood._napari._reader import get_reader

pytestmark = pytest.mark.gui
PLUGIN = "napari-medood"


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity), notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def fresh_napari_settings(monkeypatch, tmp_path):
    """napari settings and plugin settings of this test alone, saved under tmp_path.

    make_napari_viewer only resets napari's settings in place (saving them where they live)
    and keeps plugin settings; request this fixture before it."""
    from napari import settings as napari_settings

    config = tmp_path / "napari-config" / "settings.yaml"
    config.parent.mkdir()
    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(config))
    monkeypatch.setattr(napari_settings, "_SETTINGS", None)
    napari_settings._clear_plugin_settings_cache()
    yield napari_settings.get_settings(config)
    napari_settings._clear_plugin_settings_cache()


def reactivate_plugin():
    """What napari does at the first use of any MedOOD command in a session (npe2
    activation, which calls the manifest's on_activate)."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    pm.deactivate(PLUGIN)
    pm.activate(PLUGIN)


MEDICAL_PATTERNS = ["*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd"]


def numbered_copy(path, tmp_path, name="numbered.nii.gz"):
    """A scan with the same header and grid whose voxels hold their own flat index, so a
    displayed voxel tells which stored voxel it is, independently of the plugin's code."""
    source = nib.load(path)
    data = np.arange(np.prod(source.shape), dtype=np.int32).reshape(source.shape)
    header = source.header.copy()
    header.set_data_dtype(np.int32)
    out = tmp_path / name
    nib.save(nib.Nifti1Image(data, source.affine, header), out)
    return out


def assert_placed_like_nibabel(layer, path):
    """Every displayed corner voxel is where nibabel puts the stored voxel it shows."""
    affine = nib.load(path).affine
    shape = nib.load(path).shape
    for corner in np.ndindex(2, 2, 2):
        shown = tuple((n - 1) * c for n, c in zip(layer.data.shape, corner, strict=True))
        stored = np.unravel_index(int(layer.data[shown]), shape)
        world_ras = nib.affines.apply_affine(affine, stored)
        expected = RAS_TO_WORLD[:3, :3] @ world_ras
        np.testing.assert_allclose(layer.data_to_world(shown), expected, atol=1e-3)


def test_world_frame_is_superior_posterior_left():
    # a point 10 mm to the patient's right, 20 mm anterior, 30 mm superior
    world = RAS_TO_WORLD @ np.array([10.0, 20.0, 30.0, 1.0])
    np.testing.assert_array_equal(world[:3], [30.0, -20.0, -10.0])


def test_reader_places_ixi_scan_at_2mm(make_napari_viewer, ixi_t1, tmp_path):
    viewer = make_napari_viewer()
    before = sha256(ixi_t1)
    [layer] = viewer.open(ixi_t1, plugin=PLUGIN)
    assert layer._type_string == "image"
    np.testing.assert_allclose(layer.scale, (2.0, 2.0, 2.0))
    assert layer.data.shape == (120, 120, 90)  # stored P,S,R (120,120,90) -> shown S,P,L
    assert tuple(str(u) for u in layer.units) == ("millimeter",) * 3
    numbered = numbered_copy(ixi_t1, tmp_path)
    [check] = viewer.open(numbered, plugin=PLUGIN)
    np.testing.assert_allclose(check.scale, (2.0, 2.0, 2.0))
    assert_placed_like_nibabel(check, numbered)
    # the real scan is placed the same way as its numbered twin
    np.testing.assert_allclose(layer.translate, check.translate)
    assert sha256(ixi_t1) == before


def test_reader_places_ms_scan_at_1mm(make_napari_viewer, ms_t1, ms_lesions, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(ms_t1, plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
    assert layer.data.shape == (182, 218, 182)
    [lesions] = viewer.open(ms_lesions, plugin=PLUGIN)
    assert lesions._type_string == "labels"  # GOLD_STANDARD, integer voxels
    numbered = numbered_copy(ms_t1, tmp_path)
    [check] = viewer.open(numbered, plugin=PLUGIN)
    assert_placed_like_nibabel(check, numbered)
    # the patient's right hemisphere (RAS x > 0) is shown on the screen's left (world L < 0)
    ras_affine = nib.load(ms_t1).affine
    stored = np.argwhere(np.asanyarray(nib.load(ms_lesions).dataobj) > 0)
    right = stored[nib.affines.apply_affine(ras_affine, stored)[:, 0] > 20][0]
    shown_world = RAS_TO_WORLD[:3, :3] @ nib.affines.apply_affine(ras_affine, right)
    shown_index = np.round(lesions.world_to_data(shown_world)).astype(int)
    assert lesions.data[tuple(shown_index)] == 1
    assert shown_world[2] < 0


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # napari's own 2D caveat
def test_oblique_scan_warns_and_is_placed_in_3d(
    make_napari_viewer, ixi_t1, tmp_path, notifications
):
    source = nib.load(numbered_copy(ixi_t1, tmp_path))
    tilted = source.affine.copy()
    tilted[:3, :] = rotation(0, 12.0) @ tilted[:3, :]
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj), tilted), path)
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin=PLUGIN)
    warnings = [m for s, m in notifications if s == "warning"]
    assert any("oblique" in m and "12.0 degrees" in m and str(path) in m for m in warnings)
    assert_placed_like_nibabel(layer, path)


def test_reader_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM
    assert get_reader(str(tmp_path / "missing.png")) is None
    assert get_reader(str(tmp_path / "scan.nii.gz")) is not None


def test_bad_file_gives_a_clear_notification_and_no_crash(
    make_napari_viewer, ixi_t1, tmp_path, notifications
):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"definitely not a scan")
    viewer = make_napari_viewer()
    assert viewer.open(bad, plugin=PLUGIN) == []
    assert len(viewer.layers) == 0
    errors = [m for s, m in notifications if s == "error"]
    assert len(errors) == 1 and errors[0].startswith(f"{bad}: not a readable NIfTI file")
    # the viewer still works
    assert len(viewer.open(ixi_t1, plugin=PLUGIN)) == 1


def test_nan_voxels_open_with_a_warning(make_napari_viewer, ixi_t1, tmp_path, notifications):
    source = nib.load(ixi_t1)
    data = np.asanyarray(source.dataobj).astype(np.float32)
    data[5:7, 5:7, 5:7] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, source.affine), path)
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin=PLUGIN)
    assert np.isfinite(layer.data).all()
    assert any("replaced 8 NaN" in m for s, m in notifications if s == "warning")


def test_writer_round_trips_labels_to_the_source_affine(make_napari_viewer, ms_lesions, tmp_path):
    viewer = make_napari_viewer()
    [lesions] = viewer.open(ms_lesions, plugin=PLUGIN)
    lesions.data[90, 100, 80] = 7  # the user edits the labels in napari
    out = tmp_path / "edited_lesions.nii.gz"
    assert lesions.save(str(out), plugin=PLUGIN) == [str(out)]
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, nib.load(ms_lesions).affine)
    assert back.header.get_intent()[0] == "label"
    stored = np.asanyarray(back.dataobj)
    original = np.asanyarray(nib.load(ms_lesions).dataobj)
    assert np.count_nonzero(stored != original) == 1 and stored.max() == 7


def test_writer_places_a_hand_made_labels_layer(make_napari_viewer, ixi_t1, tmp_path):
    """A Labels layer drawn by the user over a scan lands on the scan's grid."""
    viewer = make_napari_viewer()
    [scan] = viewer.open(ixi_t1, plugin=PLUGIN)
    drawn = np.zeros(scan.data.shape, np.uint8)
    drawn[40:45, 50:60, 60:70] = 3
    labels = viewer.add_labels(drawn, scale=scan.scale, translate=scan.translate, name="drawn")
    out = tmp_path / "drawn.nii.gz"
    assert labels.save(str(out), plugin=PLUGIN) == [str(out)]
    back = nib.load(out)
    world = [labels.data_to_world(i) for i in np.argwhere(drawn == 3)[[0, -1]]]
    stored = np.argwhere(np.asanyarray(back.dataobj) == 3)[[0, -1]]
    ras = nib.affines.apply_affine(back.affine, stored)
    expected = sorted(map(tuple, np.round(np.asarray(world), 3)))
    got = sorted(map(tuple, np.round(ras @ RAS_TO_WORLD[:3, :3].T, 3)))
    assert expected == got


def test_image_writer_keeps_scan_geometry(make_napari_viewer, ixi_t1, tmp_path):
    viewer = make_napari_viewer()
    [scan] = viewer.open(ixi_t1, plugin=PLUGIN)
    out = tmp_path / "saved"
    path = tmp_path / "saved.nii.gz"
    assert scan.save(str(out), plugin=PLUGIN) == [str(path)]  # the extension is added
    back = nib.load(path)
    np.testing.assert_array_equal(back.affine, nib.load(ixi_t1).affine)
    np.testing.assert_allclose(back.get_fdata(), nib.load(ixi_t1).get_fdata(), rtol=1e-6)


def test_sample_data_and_inspector(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "ixi_brain_t1")
    assert [layer.name for layer in layers] == ["IXI048 T1 (2 mm)", "IXI048 brain mask"]
    image, mask = layers
    np.testing.assert_allclose(image.scale, (2, 2, 2))
    assert (
        "IXI" in image.metadata["attribution"] and "CC BY-SA 3.0" in image.metadata["attribution"]
    )
    assert mask.data.max() == 1 and not mask.visible
    _, inspector = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly inspector")
    assert inspector.layer_combo.current_layer() is image  # the scan, not its mask
    rows = inspector.scan_rows()
    assert rows["Spacing"] == "2 x 2 x 2 mm"
    assert rows["Voxels"] == "120 x 120 x 90"
    assert rows["Stored axes"].startswith("PSR")
    assert rows["Field of view"] == "240 x 240 x 180 mm"
    assert "CC BY-SA 3.0" in rows["Credit"]
    # it follows the layer list
    inspector.layer_combo.setCurrentIndex(inspector.layer_combo.findText(mask.name))
    assert inspector.scan_rows()["Intensities"].startswith("uint8, 0 .. 1")
    viewer.layers.remove(mask)
    assert inspector.scan_rows()["Spacing"] == "2 x 2 x 2 mm"
    viewer.layers.remove(image)
    assert "No scan" in inspector.scan_rows()


def test_screenshot_of_the_sample_is_not_blank(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "ixi_brain_t1")
    viewer.dims.set_point(0, viewer.dims.range[0].start + 45 * 2.0)  # a mid-brain axial slice
    shot = viewer.screenshot(canvas_only=True, flash=False)
    gray = shot[..., :3].astype(float).mean(axis=-1)
    assert gray.std() > 20, "the canvas is blank"
    bright = gray > 60
    assert 0.05 < bright.mean() < 0.9
    # the head is centred: the brightest pixels are not on the border
    rows, cols = np.nonzero(bright)
    assert 0.25 < rows.mean() / gray.shape[0] < 0.75
    assert 0.25 < cols.mean() / gray.shape[1] < 0.75


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_oblique_layer_saves_back_to_the_source_affine(make_napari_viewer, ixi_t1, tmp_path):
    source = nib.load(ixi_t1)
    tilted = source.affine.copy()
    tilted[:3, :] = rotation(1, 20.0) @ tilted[:3, :]
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj).astype(np.float32), tilted), path)
    viewer = make_napari_viewer()
    [layer] = viewer.open(path, plugin=PLUGIN)
    out = tmp_path / "saved.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(path).affine)


def test_sheared_grid_is_placed_with_its_full_affine_and_a_warning(
    make_napari_viewer, ixi_t1, tmp_path, notifications
):
    source = nib.load(numbered_copy(ixi_t1, tmp_path))
    sheared = source.affine.copy()
    sheared[:3, :3] = sheared[:3, :3] @ np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1.0]])
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj), sheared), path)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="Non-orthogonal slicing"):  # napari's own caveat
        [layer] = viewer.open(path, plugin=PLUGIN)
    assert any("non-orthogonal (sheared)" in m for s, m in notifications if s == "warning")
    assert_placed_like_nibabel(layer, path)


def test_dicom_folder_opens_in_napari(make_napari_viewer, ct_scan, tmp_path):
    from helpers import write_dicom_series

    voxels = np.asanyarray(nib.load(ct_scan).dataobj)[::2, ::2, :10].astype(np.int16)
    folder = write_dicom_series(voxels.transpose(2, 1, 0), tmp_path / "ct")
    assert get_reader(str(folder)) is not None
    viewer = make_napari_viewer()
    [layer] = viewer.open(folder, plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.8), rtol=1e-5)  # S, P, L
    assert layer.data.shape == (10, voxels.shape[1], voxels.shape[0])


def test_file_open_reads_nifti_with_medood_without_asking(
    fresh_napari_settings, make_napari_viewer, monkeypatch, notifications, ixi_t1
):
    from napari._qt.dialogs import qt_reader_dialog
    from napari.plugins import _npe2
    from napari.settings import get_plugin_settings

    settings = fresh_napari_settings
    asked: list[str] = []

    def no_choice(dialog):  # a dialog shown is recorded and cancelled, so it cannot block
        asked.append(dialog._current_file)
        return "", False

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", no_choice)
    viewer = make_napari_viewer()
    open_file = viewer.window._qt_viewer._qt_open  # what File > Open calls with the files

    # napari's builtin reader claims .nii.gz too: with no preference napari asks (issue 26)
    assert settings.plugins.extension2reader == {}
    assert {"napari", PLUGIN} <= set(_npe2.get_readers(str(ixi_t1)))
    open_file([str(ixi_t1)], stack=False)
    assert asked == [str(ixi_t1)]
    assert len(viewer.layers) == 0
    asked.clear()

    reactivate_plugin()
    assert settings.plugins.extension2reader == dict.fromkeys(MEDICAL_PATTERNS, PLUGIN)
    assert get_plugin_settings(PLUGIN).reader.set_default_reader is False  # done once
    assert any(s == "info" and "MedOOD is now the reader" in m for s, m in notifications)
    saved = yaml.safe_load(settings.config_path.read_text())  # napari's settings file
    assert saved["plugins"]["extension2reader"]["*.nii.gz"] == PLUGIN

    open_file([str(ixi_t1)], stack=False)
    assert asked == []
    [layer] = viewer.layers
    assert "medood" in layer.metadata
    np.testing.assert_allclose(layer.scale, (2.0, 2.0, 2.0))


def test_reader_preference_keeps_the_users_choices_and_is_set_once(
    fresh_napari_settings, notifications
):
    from napari.settings import get_plugin_settings

    settings = fresh_napari_settings
    # the user's choices: napari's reader for every .gz (so .nii.gz too), another for .mha
    settings.plugins.extension2reader = {"*.gz": "napari", "*.mha": "napari"}
    reactivate_plugin()
    assert settings.plugins.extension2reader == {
        "*.gz": "napari",
        "*.mha": "napari",
        **dict.fromkeys(["*.nii", "*.nrrd", "*.nhdr", "*.mhd"], PLUGIN),
    }
    # the user removes every preference: MedOOD does not put its own back ...
    settings.plugins.extension2reader = {}
    notifications.clear()
    reactivate_plugin()
    assert settings.plugins.extension2reader == {}
    assert notifications == []
    # ... unless asked to again in Preferences > MedOOD
    get_plugin_settings(PLUGIN).reader.set_default_reader = True
    reactivate_plugin()
    assert settings.plugins.extension2reader == dict.fromkeys(MEDICAL_PATTERNS, PLUGIN)
    assert get_plugin_settings(PLUGIN).reader.set_default_reader is False
