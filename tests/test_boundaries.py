"""The headless core stays headless and the plugin loads without torch or monai."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_medood"
#: everything but the napari face is core
CORE = sorted(
    p.name
    for p in PACKAGE.iterdir()
    if p.name != "_napari"
    and not p.name.startswith(".")
    and (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
)
GUI_MODULES = {
    "napari",
    "qtpy",
    "magicgui",
    "superqt",
    "vispy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
}
HEAVY_MODULES = ["torch", "monai"]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _core_files() -> list[Path]:
    files = []
    for entry in CORE:
        path = PACKAGE / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_never_imports_a_gui_toolkit(path):
    """Also inside functions: the core must run on a machine without Qt or napari."""
    assert not (_imported_roots(path) & GUI_MODULES)


def _modules_loaded_by(code: str) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(run.stdout.split())


def test_importing_the_core_loads_no_torch_monai_or_qt():
    loaded = _modules_loaded_by(
        "import napari_medood, napari_medood.io, napari_medood.preprocessing, "
        "napari_medood.synth, napari_medood.synth.playground, napari_medood.synth.dataset, "
        "napari_medood.detectors, napari_medood.cli, napari_medood.evaluation, "
        "napari_medood.evaluation.report, napari_medood.batch, napari_medood.distributed, napari_medood.registry, "
        "napari_medood.device, napari_medood.training.registry"
    )
    for heavy in [*HEAVY_MODULES, "napari", "qtpy", "PyQt6"]:
        assert heavy not in loaded, f"importing the core loaded {heavy}"


def test_opening_the_manifest_and_plugin_modules_loads_no_torch_or_monai():
    loaded = _modules_loaded_by(
        "import npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "mf = pm.get_manifest('napari-medood')\n"
        "assert mf.contributions.readers and mf.contributions.widgets\n"
        "import napari_medood._napari._reader, napari_medood._napari._writer\n"
        "import napari_medood._napari._sample_data, napari_medood._napari._layers\n"
        "import napari_medood._napari._widgets.inspector\n"
        "import napari_medood._napari._widgets.playground\n"
        "import napari_medood._napari._widgets.evaluate\n"
        "import napari_medood._napari._widgets.detect\n"
    )
    assert "napari_medood._napari._widgets.inspector" in loaded
    for heavy in HEAVY_MODULES:
        assert heavy not in loaded, f"loading the plugin imported {heavy}"


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    run = subprocess.run(
        [lint],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 2 kept, 0 broken" in run.stdout
    assert "The core has an order" in run.stdout  # the layers contract ran


def test_the_layers_contract_catches_an_upward_import(tmp_path):
    """A copy of the package where io imports detectors breaks the layers contract."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "src", tmp_path / "src")
    shutil.copy(root / "pyproject.toml", tmp_path / "pyproject.toml")
    offending = tmp_path / "src" / "napari_medood" / "io" / "formats.py"
    offending.write_text(offending.read_text() + "\nfrom napari_medood.detectors import base\n")
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    run = subprocess.run(
        [lint, "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode != 0
    assert "napari_medood.io.formats -> napari_medood.detectors.base" in run.stdout


def test_the_default_model_is_built_and_run_without_importing_monai():
    """MONAI's package imports every submodule it has (1.6 s on the 2-core machine): the
    default model's members are built here, so its start-up does without it."""
    samples = Path(__file__).resolve().parents[1] / "src" / "napari_medood" / "samples"
    loaded = _modules_loaded_by(
        "from napari_medood.detectors import get_detector\n"
        "from napari_medood.io.readers import read_volume\n"
        f"volume = read_volume({str(samples / 'ixi048_t1_2mm.nii.gz')!r})\n"
        "detector = get_detector('brain-any', device='cpu')\n"
        "assert detector.predict(volume).anomaly_map.data.max() > 0\n"
    )
    assert "torch" in loaded and "napari_medood.models.segmenter" in loaded
    assert "monai" not in loaded
