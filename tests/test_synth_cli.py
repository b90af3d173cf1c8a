"""medood-synth builds a MOOD-layout validation set from the shared IXI scans."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared
from napari_medood.cli import synth_main
from napari_medood.synth.validation import OUTLIER_KINDS


@pytest.fixture
def ixi_dirs():
    return shared("ixi-t1-2mm", "t1"), shared("ixi-t1-2mm", "dlmuse")


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synth_builds_a_labelled_set_from_ixi(ixi_dirs, tmp_path):
    t1, dlmuse = ixi_dirs
    out = tmp_path / "valset"
    assert synth_main(["--mask", str(dlmuse), "--seed", "5", str(t1), str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    scans = sorted(t1.glob("*.nii.gz"))
    assert len(manifest["cases"]) == len(scans) * (len(OUTLIER_KINDS) + 1)
    for entry in manifest["cases"]:
        name = entry["case"] + ".nii.gz"
        data = nib.load(out / "pixel" / "data" / name)
        label = nib.load(out / "pixel" / "label" / name)
        source = nib.load(entry["source"])
        # each case stays on its source grid and affine
        np.testing.assert_array_equal(data.affine, source.affine)
        np.testing.assert_array_equal(label.affine, source.affine)
        assert data.shape == label.shape == source.shape
        voxels = np.asanyarray(label.dataobj)
        assert label.get_data_dtype() == np.uint8 and set(np.unique(voxels)) <= {0, 1}
        sample = (out / "sample" / "label" / (name + ".txt")).read_text().strip()
        assert sample == ("1" if entry["anomalous"] else "0")
        assert (out / "sample" / "data" / name).read_bytes() == (
            out / "pixel" / "data" / name
        ).read_bytes()
        if entry["anomalous"]:
            assert entry["params"]["voxels"] == int(voxels.sum()) > 0
            brain = np.asanyarray(nib.load(entry["mask"]).dataobj) > 0
            assert not voxels[~brain].any()
            changed = data.get_fdata() != source.get_fdata().astype(np.float32)
            assert not changed[voxels == 0].any()  # only labelled voxels changed
        else:
            assert not voxels.any()
            np.testing.assert_allclose(data.get_fdata(), source.get_fdata(), rtol=1e-6)
        assert entry["seed"][0] == 5 and entry["kind"] in (*OUTLIER_KINDS, "normal")


def test_same_seed_same_set_and_resume(ixi_dirs, tmp_path):
    t1, dlmuse = ixi_dirs
    scans = tmp_path / "scans"
    scans.mkdir()
    for scan in sorted(t1.glob("*.nii.gz"))[:2]:
        shutil.copy(scan, scans / scan.name)
    args = ["--mask", str(dlmuse), "--kinds", "shift,uniform_noise", "--seed", "9"]
    assert synth_main([*args, str(scans), str(tmp_path / "a")]) == 0
    assert synth_main([*args, str(scans), str(tmp_path / "b")]) == 0
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    # an interrupted run resumes: a deleted case is rebuilt identically, others are kept
    victim = next((tmp_path / "a" / "pixel" / "label").iterdir())
    victim.unlink()
    assert synth_main([*args, str(scans), str(tmp_path / "a")]) == 0
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    # another seed gives another set
    assert synth_main([*args[:-1], "10", str(scans), str(tmp_path / "c")]) == 0
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")


def test_synth_from_csv_and_a_bad_scan(ixi_dirs, tmp_path, capsys):
    t1, dlmuse = ixi_dirs
    scan = sorted(t1.glob("*.nii.gz"))[0]
    mask = next(dlmuse.glob(scan.name.replace(".nii.gz", "") + "*"))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    table = tmp_path / "split.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", "Mask", "age"])
        writer.writerow([str(scan), str(mask), "40"])
        writer.writerow(["broken.nii.gz", "", "50"])  # relative to the CSV
    out = tmp_path / "set"
    assert synth_main(["--kinds", "reflection", "--normal", "0", str(table), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"failed: broken: {broken}: not a readable NIfTI file" in err
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    assert [c["case"] for c in cases] == [scan.name.replace(".nii.gz", "") + "_reflection"]
    assert cases[0]["mask"] == str(mask)


def test_synth_from_bids(ixi_t1, tmp_path):
    root = tmp_path / "bids"
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(ixi_t1, anat / "sub-01_T1w.nii.gz")
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    out = tmp_path / "set"
    assert synth_main(["--kinds", "local_noise", str(root), str(out)]) == 0
    names = sorted(p.name for p in (out / "pixel" / "data").iterdir())
    assert names == ["sub-01_T1w_local_noise.nii.gz", "sub-01_T1w_normal.nii.gz"]


def test_synth_rejects_bad_options(ixi_t1, tmp_path, capsys):
    assert synth_main(["--kinds", "blur", str(ixi_t1), str(tmp_path)]) == 2
    assert "unknown outlier kind 'blur'" in capsys.readouterr().err
    assert synth_main([]) == 2
