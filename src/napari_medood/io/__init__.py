"""Volume I/O: the :class:`Volume` record, readers for NIfTI/NRRD/MetaImage/DICOM, NIfTI writers."""

from napari_medood.io.discovery import find_volumes
from napari_medood.io.formats import SUPPORTED_DESCRIPTION, volume_format
from napari_medood.io.mood import output_name
from napari_medood.io.readers import read_volume
from napari_medood.io.volume import Grid, Volume
from napari_medood.io.writers import write_nifti

__all__ = [
    "SUPPORTED_DESCRIPTION",
    "Grid",
    "Volume",
    "find_volumes",
    "output_name",
    "read_volume",
    "volume_format",
    "write_nifti",
]
