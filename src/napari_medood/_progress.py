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


class Stages:
    """Honest progress for work done in named stages, one after the other.

    Each report reads ``(done, total, "<stage>: <detail> (step k of n)")`` with ``done`` and
    ``total`` counted within the stage; ``total == 0`` means "busy, no count". A stage's
    callback (:meth:`callback`) can be handed to a function that reports its own counts.
    """

    def __init__(self, progress: ProgressCallback | None, names: tuple[str, ...]):
        self.progress = progress
        self.names = tuple(names)

    def report(self, stage: str, done: int = 0, total: int = 0, detail: str = "") -> None:
        if self.progress is None:
            return
        index = self.names.index(stage) + 1 if stage in self.names else 0
        where = f" (step {index} of {len(self.names)})" if index else ""
        text = f"{stage}: {detail}" if detail and detail != stage else stage
        self.progress(done, total, f"{text}{where}")

    def callback(self, stage: str) -> ProgressCallback:
        """A ``progress(done, total, detail)`` that reports inside ``stage``."""
        return lambda done, total, detail="": self.report(stage, done, total, detail)
