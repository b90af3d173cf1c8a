"""napari-medood: anomaly and out-of-distribution detection for 3D medical scans.

Importing this package is cheap: it loads neither torch, monai, Qt nor napari. The headless
core lives in the subpackages ``io``, ``preprocessing`` and ``detectors``; the napari face
lives in ``_napari`` and is only imported by napari through ``napari.yaml``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-medood")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from napari_medood.errors import MedoodError  # noqa: E402

__all__ = ["MedoodError", "__version__"]
