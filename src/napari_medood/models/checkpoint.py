"""Self-describing checkpoints: safetensors weights plus a JSON card, checked by sha256.

A checkpoint is a folder::

    <name>/model.safetensors   the weights (no pickle anywhere)
    <name>/card.json           architecture, preprocessing, inference defaults, training data
                               and recipe, metrics, and the weights' sha256

Loading verifies the sha256 before reading a byte of the weights. The models napari-medood
ships live in the repository's ``models/`` folder, installed as
``napari_medood.bundled_models``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from napari_medood.errors import MedoodError, look_up_option

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
CARD_VERSION = 1


class CheckpointError(MedoodError, ValueError):
    """A checkpoint is missing, incomplete, or not what its card says."""


def bundled_models_dir() -> Path | None:
    """The folder of the models shipped with napari-medood (None if absent)."""
    from importlib.resources import files

    try:
        folder = Path(str(files("napari_medood.bundled_models")))
    except (ModuleNotFoundError, TypeError):
        return None
    return folder if folder.is_dir() else None


def bundled_models() -> dict[str, Path]:
    """Name -> folder of every shipped model that has a card."""
    folder = bundled_models_dir()
    if folder is None:
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / CARD_NAME).is_file()}


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint folder of a shipped model's name, or of a path (folder, card or weights)."""
    shipped = bundled_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.is_file() and path.name in (CARD_NAME, WEIGHTS_NAME):
        return path.parent
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent
    look_up_option(str(name_or_path), shipped, "model (no such checkpoint either)")
    raise AssertionError("unreachable")


def read_card(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no {CARD_NAME})")
    try:
        card = json.loads(card_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{card_path}: not valid JSON ({exc})") from exc
    for key in ("architecture", "preprocessing", "weights"):
        if key not in card:
            raise CheckpointError(f"{card_path}: the card has no '{key}' entry")
    return card


def save_checkpoint(model, folder: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights and ``card`` (with the weights' file name and sha256) into
    ``folder``, each atomically; returns the card as written."""
    from safetensors.torch import save_file

    from napari_medood.io.atomic import file_sha256, write_atomic, write_text_atomic

    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    write_atomic(weights, lambda temp: save_file(state, str(temp)), suffix=".safetensors")
    card = {
        **card,
        "card_version": CARD_VERSION,
        "weights": {
            "file": WEIGHTS_NAME,
            "sha256": file_sha256(weights),
            "parameters": int(
                sum(
                    v.numel()
                    for k, v in state.items()
                    if "running" not in k and "num_batches" not in k
                )
            ),
        },
    }
    write_text_atomic(folder / CARD_NAME, json.dumps(card, indent=1) + "\n")
    return card


def load_checkpoint(name_or_path: str | os.PathLike, device: str = "cpu"):
    """``(model in eval mode, card)`` after checking the weights against the card's sha256."""
    from safetensors.torch import load_file

    from napari_medood.io.atomic import file_sha256
    from napari_medood.models.unet import build_unet

    folder = resolve_model(name_or_path)
    card = read_card(folder)
    weights = folder / card["weights"].get("file", WEIGHTS_NAME)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: the weights file named by the card is missing")
    expected = card["weights"].get("sha256")
    if not expected or file_sha256(weights) != expected:
        raise CheckpointError(
            f"{weights}: sha256 mismatch: the weights were changed or damaged "
            "since the card was written; refusing to load them"
        )
    architecture = card["architecture"]
    look_up_option(architecture.get("type", "UNet3DDeepSup"), ("UNet3DDeepSup",), "architecture")
    try:
        model = build_unet(architecture)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{folder / CARD_NAME}: cannot build the card's architecture ({exc})"
        ) from exc
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights}: the weights do not fit the card's architecture "
            f"({' '.join(str(exc).split())[:200]})"
        ) from exc
    return model.to(device).eval(), card
