"""Progress and cancellation hooks shared by the core's long-running functions.

The core takes a plain ``progress(done, total, message)`` callback and a ``cancelled()``
predicate; the napari worker turns them into yields and a Cancel button, the CLI into a
progress bar and Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable

from napari_medood.errors import Cancelled

ProgressCallback = Callable[[int, int, str], None]
CancelledPredicate = Callable[[], bool]


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, message)


def check_cancelled(cancelled: CancelledPredicate | None) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    if cancelled is not None and cancelled():
        raise Cancelled("cancelled by the user")
