"""Make napari-medood the reader for medical volume files that have no reader preference.

napari shows its "Choose reader" dialog whenever more than one plugin claims a path and no
entry of ``settings.plugins.extension2reader`` matches it (``ViewerModel._open_or_raise_error``).
napari's builtin reader claims ``*.nii``, ``*.nii.gz``, ``*.nrrd``, ``*.nhdr``, ``*.mha`` and
``*.mhd`` too (imageio's list of extensions), so a narrower manifest pattern cannot remove the
ambiguity: only a reader preference can.

When napari activates the plugin (the first use of any MedOOD command: a reader, a widget, the
sample data, a writer) :func:`activate` adds ``pattern: napari-medood`` for each of the
manifest's file patterns that another reader also claims and that no existing preference
covers. A preference already there, the user's or another plugin's (``*.gz: napari`` covers
``*.nii.gz``), is never replaced. This is done once: the plugin setting
``reader.set_default_reader`` (Preferences > MedOOD) turns itself off afterwards, so a
preference the user later removes in Preferences > Plugins is not put back; ticking it again
redoes it at the next activation. Whatever is set is logged and shown as a notification.
Folders are left alone: a folder preference would take every folder, not only DICOM series.
"""

from __future__ import annotations

import logging
import os
from fnmatch import fnmatch
from typing import Any

PLUGIN = "napari-medood"
logger = logging.getLogger(__name__)


def _example_path(pattern: str) -> str:
    """An absolute file name the pattern matches (``*.nii.gz`` -> ``/medood/scan.nii.gz``),
    normalised the way napari normalises the paths it looks preferences up for."""
    return os.path.realpath(os.path.join(os.sep, "medood", pattern.replace("*", "scan")))


def unclaimed_patterns(settings: Any = None, plugin_manager: Any = None) -> list[str]:
    """The manifest's reader file patterns for which napari would ask which reader to use:
    another reader also claims them and no reader preference covers them."""
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    if plugin_manager is None:
        from npe2 import PluginManager

        plugin_manager = PluginManager.instance()
    preferences = settings.plugins.extension2reader
    manifest = plugin_manager.get_manifest(PLUGIN)
    patterns = [p for r in manifest.contributions.readers or [] for p in r.filename_patterns]
    unclaimed = []
    for pattern in dict.fromkeys(patterns):
        example = _example_path(pattern)
        if any(fnmatch(example, chosen) for chosen in preferences):
            continue  # a preference decides already (napari's own matching)
        readers = {r.plugin_name for r in plugin_manager.iter_compatible_readers([example])}
        if readers - {PLUGIN}:
            unclaimed.append(pattern)
    return unclaimed


def claim_reader_patterns(settings: Any = None, plugin_manager: Any = None) -> list[str]:
    """Prefer napari-medood for :func:`unclaimed_patterns`; return the patterns set.

    Saved with napari's settings; logged and notified when anything is set."""
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    added = unclaimed_patterns(settings, plugin_manager)
    if not added:
        return []
    settings.plugins.extension2reader = {
        **settings.plugins.extension2reader,
        **dict.fromkeys(added, PLUGIN),
    }
    message = (
        f"MedOOD is now the reader for {', '.join(added)} files, which had no reader "
        "preference (napari would ask each time). Change or remove this in "
        "Preferences > Plugins."
    )
    logger.info(message)
    from napari.utils.notifications import show_info

    show_info(message)
    return added


def activate(context: Any = None) -> None:
    """npe2 ``on_activate`` hook: claim the reader patterns once (see the module docstring).

    Never raises: a failure is logged and leaves napari's settings as they were."""
    try:
        from napari.settings import get_plugin_settings

        config = get_plugin_settings(PLUGIN).reader
    except (ImportError, KeyError, AttributeError):
        # napari without plugin settings: nothing records that it was done once, so a
        # preference the user removed would come back; leave the choice to napari's dialog
        logger.debug("napari has no plugin settings; reader preference not set")
        return
    if not config.set_default_reader:
        return
    try:
        claim_reader_patterns()
    except Exception:  # noqa: BLE001 - activation must not fail over a preference
        logger.warning("could not set MedOOD as the default reader", exc_info=True)
        return
    config.set_default_reader = False
