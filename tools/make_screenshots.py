"""Screenshots for the README, taken from a real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python tools/make_screenshots.py [--shared DIR]

Writes, into docs/images/:
- napari-inspector.png: the bundled IXI sample opened through the plugin, an axial slice,
  and the MedOOD dock on its Scan tab;
- napari-playground.png: the Anomaly playground with two committed anomalies (green) and a
  pending preview (yellow);
- napari-detect.png: the MedOOD dock's Detect tab: the default model on an anomaly made in
  the playground, the flagged voxels in orange at the model's calibrated threshold, its
  colour bar, and the table of findings (with the DLMUSE structure of each, from the
  sample subject's parcellation in ../shared/data), the view on the finding clicked;
- napari-pairing.png: the same panel's brain-mask list open: another subject's parcellation
  of the same array shape is greyed, with the reason (it lies elsewhere in the world);
- napari-detect-flair.png: the T1 model brain-t1-unet on an MS patient's FLAIR scan (from
  ../shared/data): the panel says what is wrong before the map is read, the lesions (ground
  truth) are green and were not taken as the brain mask;
- napari-detect-skull-stripped.png: the default model on the bundled sample stripped of its
  skull and opened alone: the scan's own brain is the mask, the flagged millilitres at the
  calibrated threshold under the slider;
- napari-detect-mhd.png: brain-t1-mhd on the sample: the MHD map over one of its ten
  reconstructions (the stack's slider above the canvas), the other by-products listed hidden;
- napari-compare.png: the Compare panel on MS patient 19's T1 (from ../shared/data):
  brain-t1-unet against brain-t1-seg, their difference and where they disagree, with the
  consensus lesions outlined;
- napari-random-contrast.png: the playground's "Random contrast" on an IXI T1 and its DLMUSE
  parcellation (from ../shared/data): a training image of the contrast-agnostic detector
  (seed 3) with its lesion-like blobs outlined in green.

``--only NAME`` takes one of them (inspector, playground, detect, detect_flair,
detect_skull_stripped, detect_mhd, trust_gate, trust_panel, random_contrast, compare).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_medood._napari._widgets._viewer import go_to_voxel

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def inspector() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 850)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    viewer.layers.selection.active = scan
    viewer.dims.set_point(0, viewer.dims.range[0].start + 52 * 2.0)
    _, dock = viewer.window.add_plugin_dock_widget("napari-medood", "MedOOD (all panels)")
    dock.setCurrentWidget(dock.inspector)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-inspector.png"), canvas_only=False, flash=False)
    viewer.close()


def playground() -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Anomaly playground")
    for kind, voxel, size in (
        ("lesion", (66, 72, 28), 50.0),
        ("sphere", (66, 80, 64), 22.0),
        ("brush", (66, 40, 58), 36.0),
    ):
        widget.shape_combo.setCurrentIndex(widget.shape_combo.findData(kind))
        widget.size_spin.setValue(size)
        widget.place(voxel)
        while widget._worker is not None:
            settle(0.1)
        if kind != "brush":
            widget.commit()
    viewer.dims.set_point(0, scan.data_to_world((66, 0, 0))[0])
    viewer.layers.selection.active = widget._labels_layer
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-playground.png"), canvas_only=False, flash=False)
    viewer.close()


def random_contrast(shared: Path) -> None:
    """A random-contrast training image drawn from an IXI T1's DLMUSE parcellation."""
    subject = "IXI048-HH-1326-T1_ds"
    t1 = shared / "ixi-t1-2mm" / "t1" / f"{subject}.nii.gz"
    dlmuse = shared / "ixi-t1-2mm" / "dlmuse" / f"{subject}_DLMUSE.nii.gz"
    if not (t1.is_file() and dlmuse.is_file()):
        print(f"skipping napari-random-contrast.png: {t1} or {dlmuse} not found")
        return
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(t1, plugin="napari-medood")
    [parcellation] = viewer.open(dlmuse, plugin="napari-medood")
    parcellation.visible = False
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Anomaly playground")
    widget.seed_spin.setValue(3)
    viewer.reset_view()
    widget.draw_contrast()
    while widget._worker is not None:
        settle(0.1)
    if widget.last_error is not None:
        raise RuntimeError(widget.last_error)
    viewer.layers.selection.active = widget._contrast_layer
    settle()
    viewer.screenshot(str(OUT / "napari-random-contrast.png"), canvas_only=False, flash=False)
    viewer.close()


def wait_until_idle(widget) -> None:
    while widget.busy:
        settle(0.2)
    settle(0.5)


def detect_at_calibration(dock, shot: str):
    """The dock's Detect tab run with the default model on the CPU; the slider stays at the
    card's calibrated threshold, the flagged voxels made a layer."""
    widget = dock.detect
    dock.setCurrentWidget(widget)
    widget.device_choice.value = "cpu"
    widget.run()
    wait_until_idle(widget)
    widget._threshold_changed(widget.slider.value())
    print(f"{shot}: {widget.threshold_label.text()}")
    return widget


def detect(shared: Path) -> None:
    """The shipped model on the sample with an implanted anomaly, in the MedOOD dock, its
    findings named by the sample subject's DLMUSE parcellation; then the mask list open."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    dlmuse = shared / "ixi-t1-2mm" / "dlmuse"
    parcellations = [
        dlmuse / f"{subject}-T1_ds_DLMUSE.nii.gz"
        for subject in ("IXI012-HH-1211", "IXI048-HH-1326")
    ]
    for path in parcellations if all(p.exists() for p in parcellations) else ():
        [layer] = viewer.open(path, plugin="napari-medood")
        layer.visible = False
    _, dock = viewer.window.add_plugin_dock_widget("napari-medood", "MedOOD (all panels)")
    playground_widget = dock.playground
    dock.setCurrentWidget(playground_widget)
    playground_widget.shape_combo.setCurrentIndex(playground_widget.shape_combo.findData("sphere"))
    playground_widget.size_spin.setValue(22.0)
    playground_widget.alpha_spin.setValue(1.0)
    # a patch of this scan from elsewhere, the MOOD winner's foreign-patch anomaly (the
    # default model misses a ball of uniform noise brighter than any tissue: its card says so)
    playground_widget.texture_combo.setCurrentIndex(
        playground_widget.texture_combo.findData("scan")
    )
    playground_widget.place((66, 70, 30))
    while playground_widget._worker is not None:
        settle(0.1)
    playground_widget.commit()
    playground_widget._labels_layer.visible = False
    scan.visible = False
    sphere = np.asarray(playground_widget._labels_layer.data) > 0
    widget = detect_at_calibration(dock, "detect")
    flagged = np.asarray(widget.map_layer.data) > widget.threshold
    voxel_ml = float(np.prod(np.abs(widget.map_layer.scale))) / 1000
    print(
        f"detect: the sphere holds {sphere.sum() * voxel_ml:.1f} ml, "
        f"{(sphere & flagged).sum() * voxel_ml:.1f} ml of it flagged; "
        f"{(flagged & ~sphere).sum() * voxel_ml:.1f} ml flagged elsewhere"
    )
    viewer.layers.selection.active = widget.map_layer
    viewer.reset_view()
    while widget.findings_busy:
        settle(0.1)
    table = widget.findings_table
    # the finding in the sphere, clicked: the view goes to its peak
    rows = [n for n, f in enumerate(table.findings) if sphere[f.peak_ijk]]
    if rows:
        table.table.cellClicked.emit(rows[0], 0)
    else:  # the slice through the sphere's centre (the map's peak may be elsewhere)
        go_to_voxel(viewer, widget.map_layer, np.argwhere(sphere).mean(axis=0))
    print(f"detect: {table.summary.text()}; the sphere's finding is row {rows[:1]}")
    widget._scroll.ensureWidgetVisible(table)
    settle()
    viewer.screenshot(str(OUT / "napari-detect.png"), canvas_only=False, flash=False)
    # the brain-mask list open: what pairs with the scan, and what does not and why
    widget._scroll.ensureWidgetVisible(widget.mask_combo)
    widget.mask_combo.showPopup()
    settle()
    window = viewer.window._qt_window
    corner = window.mapToGlobal(window.rect().topLeft())
    screen = QApplication.primaryScreen().grabWindow(
        0, corner.x(), corner.y(), window.width(), window.height()
    )
    screen.save(str(OUT / "napari-pairing.png"))
    widget.mask_combo.hidePopup()
    viewer.close()


def detect_flair(shared: Path) -> None:
    """The T1 model on a FLAIR scan with its lesion mask: the panel warns first."""
    patient = shared / "open-ms-lesjak-mni" / "patient07"
    if not patient.is_dir():
        print(f"skipping napari-detect-flair.png: {patient} not found")
        return
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(
        patient / "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        plugin="napari-medood",
    )
    [lesions] = viewer.open(
        patient / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
        plugin="napari-medood",
    )
    lesions.contour = 1
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "brain-t1-unet"  # the T1 model, which warns on a FLAIR
    widget.run()
    wait_until_idle(widget)
    widget.map_layer.opacity = 0.6
    viewer.layers.move(viewer.layers.index(lesions), len(viewer.layers))
    viewer.reset_view()
    viewer.dims.set_point(0, lesions.data_to_world((100, 0, 0))[0])
    settle()
    viewer.screenshot(str(OUT / "napari-detect-flair.png"), canvas_only=False, flash=False)
    viewer.close()


def detect_skull_stripped() -> None:
    """The default model on a skull-stripped scan opened alone: no mask layer, the scan's
    own brain taken as the mask, the calibrated millilitres under the slider."""
    import tempfile

    import nibabel as nib

    samples = REPO / "src" / "napari_medood" / "samples"
    head = nib.load(samples / "ixi048_t1_2mm.nii.gz")
    brain = np.asarray(nib.load(samples / "ixi048_brainmask_2mm.nii.gz").dataobj) > 0
    stripped = np.where(brain, np.asarray(head.dataobj), 0).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ixi048_t1_2mm_brain.nii.gz"
        nib.save(nib.Nifti1Image(stripped, head.affine, head.header), path)
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1400, 900)
        viewer.open(path, plugin="napari-medood")
        _, dock = viewer.window.add_plugin_dock_widget("napari-medood", "MedOOD (all panels)")
        widget = detect_at_calibration(dock, "detect_skull_stripped")
        widget.map_layer.opacity = 0.7
        viewer.reset_view()
        widget.go_to_peak()
        settle()
        viewer.screenshot(
            str(OUT / "napari-detect-skull-stripped.png"), canvas_only=False, flash=False
        )
        viewer.close()


def detect_mhd() -> None:
    """The MHD model on the sample: its map over a reconstruction, the stack's slider."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    scan, _ = viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.model_choice.value = "brain-t1-mhd"
    widget.run()
    wait_until_idle(widget)
    extras = {
        layer.metadata["medood_detection"]["extra"]: layer
        for layer in widget.extras_of(scan, "brain-t1-mhd")
    }
    scan.visible = False
    extras["reconstructions"].visible = True
    widget.map_layer.opacity = 0.7
    viewer.layers.selection.active = extras["reconstructions"]
    viewer.reset_view()
    viewer.dims.set_point(0, 3)  # the fourth of the ten reconstructions
    widget.go_to_peak()
    settle()
    viewer.screenshot(str(OUT / "napari-detect-mhd.png"), canvas_only=False, flash=False)
    viewer.close()


def trust_gate(shared: Path) -> None:
    """The T1 brain model asked about a trunk CT: its trust gate's verdict comes first."""
    ct = shared / "totalsegmentator-example" / "example_ct.nii.gz"
    if not ct.is_file():
        print(f"skipping napari-trust-gate.png: {ct} not found")
        return
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(ct, plugin="napari-medood")
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Detect anomalies")
    widget.device_choice.value = "cpu"
    widget.run()
    wait_until_idle(widget)
    widget.map_layer.opacity = 0.6
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-trust-gate.png"), canvas_only=False, flash=False)
    viewer.close()


def trust_panel() -> None:
    """The "Is this scan in distribution?" panel on the bundled sample, in the dock's Trust tab."""
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-medood", "ixi_brain_t1")
    _, dock = viewer.window.add_plugin_dock_widget("napari-medood", "MedOOD (all panels)")
    widget = dock.trust
    dock.setCurrentWidget(widget)
    widget.model_choice.value = "brain-t1-gate"
    widget.run()
    while widget.busy:
        settle(0.2)
    settle(0.5)
    viewer.reset_view()
    settle()
    viewer.screenshot(str(OUT / "napari-trust-panel.png"), canvas_only=False, flash=False)
    viewer.close()


def compare(shared: Path) -> None:
    """Two models on one MS patient's T1: the Compare panel's four layers and summary."""
    patient = shared / "open-ms-lesjak-mni" / "patient19"
    if not patient.is_dir():
        print(f"skipping napari-compare.png: {patient} not found")
        return
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(
        patient / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
        plugin="napari-medood",
    )
    [lesions] = viewer.open(
        patient / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
        plugin="napari-medood",
    )
    lesions.contour = 1
    _, widget = viewer.window.add_plugin_dock_widget("napari-medood", "Compare two models")
    widget.model_a_choice.value = "brain-t1-unet"
    widget.model_b_choice.value = "brain-t1-seg"
    widget.device_choice.value = "cpu"
    widget.run()
    wait_until_idle(widget)
    print(f"compare: {widget.summary_label.text()}")
    viewer.layers.move(viewer.layers.index(lesions), len(viewer.layers))
    viewer.reset_view()
    viewer.dims.set_point(0, lesions.data_to_world((90, 0, 0))[0])
    settle()
    viewer.screenshot(str(OUT / "napari-compare.png"), canvas_only=False, flash=False)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--only",
        choices=(
            "inspector",
            "playground",
            "detect",
            "detect_flair",
            "detect_skull_stripped",
            "detect_mhd",
            "trust_gate",
            "trust_panel",
            "random_contrast",
            "compare",
        ),
        help="take one screenshot",
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    shots = {
        "inspector": inspector,
        "playground": playground,
        "detect": lambda: detect(args.shared),
        "detect_flair": lambda: detect_flair(args.shared),
        "detect_skull_stripped": detect_skull_stripped,
        "detect_mhd": detect_mhd,
        "trust_gate": lambda: trust_gate(args.shared),
        "trust_panel": trust_panel,
        "random_contrast": lambda: random_contrast(args.shared),
        "compare": lambda: compare(args.shared),
    }
    for name, shot in shots.items():
        if args.only in (None, name):
            shot()
    print(f"wrote the screenshots to {OUT}")


if __name__ == "__main__":
    main()
