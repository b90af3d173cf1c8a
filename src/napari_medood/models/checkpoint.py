"""Self-describing checkpoints: safetensors weights plus a JSON card, checked by sha256.

A checkpoint is a folder::

    <name>/model.safetensors   the weights (no pickle anywhere)
    <name>/card.json           the detector family ("detector"), architecture, preprocessing,
                               inference defaults, training data and recipe, metrics, what
                               scans the model expects, and the weights' sha256

Loading verifies the sha256 before reading a byte of the weights. The models napari-medood
ships live in the repository's ``models/`` folder, installed as
``napari_medood.bundled_models``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_medood.errors import MedoodError, look_up_option

CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
CARD_VERSION = 2


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
    """The card of the checkpoint in ``folder``, with its family in ``"detector"`` (cards
    written before families were named get the family that builds their architecture)."""
    from napari_medood.registry import family_of_architecture

    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no {CARD_NAME})")
    try:
        card = json.loads(card_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{card_path}: not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path}: a card is a JSON object")
    if "weights" not in card:
        raise CheckpointError(f"{card_path}: the card has no 'weights' entry")
    for key in ("architecture", "preprocessing", "weights"):
        if key in card and not isinstance(card[key], dict):
            raise CheckpointError(f"{card_path}: the card's '{key}' entry is not an object")
    if "detector" not in card:
        architecture = card.get("architecture", {}).get("type", "UNet3DDeepSup")
        family = family_of_architecture(architecture)
        if family is None:
            raise CheckpointError(f"{card_path}: the card names no detector family ('detector')")
        card["detector"] = family.name
    return card


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder and its card; the weights are read (and checked) on demand."""

    folder: Path
    card: dict[str, Any]

    @classmethod
    def open(cls, name_or_path: str | os.PathLike) -> Checkpoint:
        """A shipped model's name, or a checkpoint path (folder, card or weights file)."""
        folder = resolve_model(name_or_path)
        return cls(folder, read_card(folder))

    @property
    def family(self) -> str:
        return str(self.card["detector"])

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.folder.name))

    @property
    def weights_path(self) -> Path:
        return self.folder / self.card["weights"].get("file", WEIGHTS_NAME)

    def load_state(self) -> dict[str, Any]:
        """The weights as CPU tensors, after checking them against the card's sha256."""
        from safetensors.torch import load_file

        from napari_medood.io.atomic import file_sha256

        weights = self.weights_path
        if not weights.is_file():
            raise CheckpointError(f"{weights}: the weights file named by the card is missing")
        expected = self.card["weights"].get("sha256")
        if not expected:
            raise CheckpointError(
                f"{self.folder / 'card.json'}: the card gives no sha256 of its weights, so "
                f"{weights.name} cannot be checked; refusing to load them (a card written by "
                "napari-medood always carries it)"
            )
        if file_sha256(weights) != expected:
            raise CheckpointError(
                f"{weights}: sha256 mismatch: the weights were changed or damaged "
                "since the card was written; refusing to load them"
            )
        try:
            return load_file(str(weights), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(
                f"{weights}: not a readable safetensors file, although it matches the card's "
                f"sha256 (the card was written for a damaged file): {_short(exc)}"
            ) from exc

    def build_model(self, device: str = "cpu"):
        """The card's architecture with the checked weights, in eval mode on ``device``."""
        from napari_medood.registry import architecture_types, family_of_architecture, resolve

        card_path = self.folder / CARD_NAME
        architecture = self.card.get("architecture")
        if not isinstance(architecture, dict):
            raise CheckpointError(f"{card_path}: the card has no 'architecture' entry")
        kind = architecture.get("type", "UNet3DDeepSup")
        family = family_of_architecture(kind)
        if family is None:
            try:
                look_up_option(kind, architecture_types(), "architecture")
            except ValueError as exc:
                raise CheckpointError(f"{card_path}: {exc}") from None
        builder = resolve(family.architectures[kind])
        try:
            model = builder(architecture)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{card_path}: cannot build the card's architecture ({exc})"
            ) from exc
        state = self.load_state()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{self.weights_path}: the weights do not fit the card's architecture "
                f"({_short(exc)})"
            ) from exc
        return model.to(device).eval()


def _short(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]


def save_checkpoint(model, folder: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s weights (a module, or a dict of tensors) and ``card`` (with the
    weights' file name and sha256) into ``folder``, each atomically; returns the card."""
    from safetensors.torch import save_file

    from napari_medood.io.atomic import file_sha256, write_atomic, write_text_atomic

    if "detector" not in card:
        raise CheckpointError("a checkpoint card must name its detector family ('detector')")
    if isinstance(model, dict):
        state = {k: v.detach().cpu().contiguous() for k, v in model.items()}
    else:
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
    checkpoint = Checkpoint.open(name_or_path)
    return checkpoint.build_model(device), checkpoint.card
