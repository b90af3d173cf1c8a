"""Command-line faces of napari-medood, one module per command: ``medood-predict``,
``medood-train``, ``medood-eval``, ``medood-synth``, ``medood-compare``.

Each command only translates arguments into calls of the headless core, with one option
vocabulary (``--model``, ``--device``, ``--mask``). An error prints one line naming the file
and the problem and exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


def predict_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-predict``."""
    from napari_medood.cli.predict import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-train``."""
    from napari_medood.cli.train import main

    return main(argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-eval``."""
    from napari_medood.cli.evaluate import main

    return main(argv)


def synth_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-synth``."""
    from napari_medood.cli.synth import main

    return main(argv)


def compare_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medood-compare``."""
    from napari_medood.cli.compare import main

    return main(argv)


__all__ = ["compare_main", "eval_main", "predict_main", "synth_main", "train_main"]
