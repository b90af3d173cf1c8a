"""The one way a dock panel runs heavy work: off the GUI thread in a napari worker, with
progress, a Cancel button, and errors shown in the panel (never raised into Qt).

A panel mixes in :class:`CancellableRun`, hands :meth:`CancellableRun.start_run` a job
function ``job_function(job, progress=..., cancelled=...)`` and what to do with its result;
:func:`progress_generator` turns the job's progress reports into the worker's yields and
Cancel into the ``cancelled()`` the job checks. :func:`scan_job` and :func:`job_volume` hand
a scan and its mask layer to a job by reference and rebuild them off the GUI thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_medood._napari._widgets._panel import wrapping_label
from napari_medood._napari._widgets._viewer import placement_of
from napari_medood.errors import Cancelled

#: the pause between the steps that show a result, so the window draws and answers
STEP_PAUSE_MS = 30


class CancellableRun:
    """What a panel that runs work off the GUI thread shares: ``cancel_button``,
    ``progress_bar`` and ``status`` (made by :meth:`cancel_controls`), and ``run_button``
    when one button starts the panel's run (:meth:`run_controls`). :meth:`start_run` runs a
    job in a napari worker through :func:`progress_generator`; its reports move the bar
    (:meth:`_progress`), Cancel sets the event the job checks, and a job cancelled before its
    end hands back nothing, even one that finished its work. While a run is under way
    :meth:`_show_running` turns Run off and Cancel on; a panel whose several buttons start
    runs overrides it.

    A panel names what its status line says when a run is cancelled or fails
    (``cancelled_text``, ``failure_text``; one run may name its own) and the title of its
    error notification (``title``; none without one)."""

    _worker: Any = None
    _cancel: Any = None
    _pending_steps: int = 0
    _settled: bool = True
    last_error: str | None = None
    cancelled_text = "Cancelled."
    failure_text = "Could not run"
    title = ""

    # ---------------------------------------------------------------------- controls
    def run_controls(self, run_text: str = "Run"):
        """Make the panel's ``run_button`` (connected to ``run``) and the controls of
        :meth:`cancel_controls`; returns the row of Run and Cancel for the panel's layout."""
        from qtpy.QtWidgets import QHBoxLayout, QPushButton

        self.run_button = QPushButton(run_text)
        self.run_button.clicked.connect(self.run)
        self.cancel_controls()
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        return buttons

    def cancel_controls(self) -> None:
        """Make ``cancel_button`` (off until a run starts, connected to :meth:`cancel`),
        ``progress_bar`` and the ``status`` label; the panel lays them out."""
        from qtpy.QtWidgets import QProgressBar, QPushButton

        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self._reset_progress()
        self.status = wrapping_label()

    def _show_running(self) -> None:
        """Run is off and Cancel on while a run is under way."""
        running = self._worker is not None
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # --------------------------------------------------------------------------- run
    def start_run(
        self,
        job_function: Callable[..., Any],
        job: Any,
        returned: Callable[[Any], None],
        *,
        failure_text: str | None = None,
        cancelled_text: str | None = None,
    ) -> None:
        """Run ``job_function(job, progress=..., cancelled=...)`` in a worker; ``returned``
        gets its result on the GUI thread. ``failure_text`` and ``cancelled_text`` (else the
        panel's) say what this run's failure or cancel shows."""
        import threading

        from napari.qt.threading import create_worker

        self._cancel = threading.Event()
        self._settled = False
        self.progress_bar.setRange(0, 0)  # busy until the first count
        self._worker = create_worker(
            progress_generator,
            job_function,
            job,
            cancel_event=self._cancel,
            _connect={
                "yielded": self._progress,
                "returned": self._settling(returned),
                "errored": self._settling(
                    partial(self._fail, failure_text=failure_text, cancelled_text=cancelled_text)
                ),
                "aborted": self._settling(partial(self._aborted, cancelled_text)),
                "finished": partial(self._finished, cancelled_text),
            },
        )
        self._show_running()

    def _settling(self, handler: Callable[..., None]) -> Callable[..., None]:
        """``handler``, noting that the run came to an end the panel has shown."""

        def settle(*args: Any) -> None:
            self._settled = True
            handler(*args)

        return settle

    def cancel(self) -> None:
        """Stop the running job at its next check (the core checks between steps)."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("cancelling...")

    def end_run(self) -> None:
        """The worker is done: Run on, Cancel off."""
        self._worker = None
        self._show_running()

    @property
    def busy(self) -> bool:
        """A run, or the showing of its result, is under way."""
        return self._worker is not None or self._pending_steps > 0

    # ----------------------------------------------------------------- how it ended
    def _progress(self, report: tuple[int, int, Any]) -> None:
        """A ``(done, total, message)`` report: counts move the bar, no count (total 0)
        makes it busy."""
        done, total, message = report
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            self.status.setText(f"{message}: {done}/{total}")
        else:
            self.progress_bar.setRange(0, 0)
            self.status.setText(str(message))

    def _reset_progress(self) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

    def _finished(self, cancelled_text: str | None = None) -> None:
        settled = self._settled
        self.end_run()
        if self.progress_bar.maximum() == 0:
            self._reset_progress()
        if not settled:  # quit after its last report: neither a result nor an error came
            self._aborted(cancelled_text)

    def _aborted(self, cancelled_text: str | None = None) -> None:
        self.status.setText(cancelled_text or self.cancelled_text)
        self.last_error = "cancelled"
        self._reset_progress()

    def _fail(
        self,
        exc: BaseException,
        failure_text: str | None = None,
        cancelled_text: str | None = None,
    ) -> None:
        """Show ``exc`` in the status line (and, with a ``title``, as napari's error
        notification); a :class:`Cancelled` is shown as cancelled."""
        from napari.utils.notifications import show_error

        if isinstance(exc, Cancelled):
            self._aborted(cancelled_text)
            return
        self.last_error = str(exc)
        self._reset_progress()
        self.status.setText(f"{failure_text or self.failure_text}: {exc}")
        if self.title:
            show_error(f"{self.title}: {exc}")

    def _run_steps(self, steps: list) -> None:
        """Call ``steps`` one at a time with a pause between them (adding large layers),
        so that the window keeps drawing and answering while a result appears."""
        from qtpy.QtCore import QTimer

        self._pending_steps = len(steps)
        if not steps:
            return
        first, rest = steps[0], steps[1:]
        try:
            first()
        finally:
            self._pending_steps = len(rest)
        if rest:
            QTimer.singleShot(STEP_PAUSE_MS, lambda: self._run_steps(rest))


def progress_generator(function, *args, cancel_event=None, **kwargs):
    """Run ``function(*args, progress=..., cancelled=..., **kwargs)`` in a helper thread and
    yield its ``(done, total, message)`` progress reports; return its result.

    Made for napari's generator workers: they yield progress to the GUI, and quitting them
    sets ``cancel_event``, which the core checks between windows or cases. A job that ends
    after ``cancel_event`` was set raises :class:`Cancelled`, even one that finished its
    work: the user asked for no result.
    """
    import queue
    import threading

    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    event = cancel_event or threading.Event()

    def target() -> None:
        try:
            outcome["value"] = function(
                *args,
                progress=lambda d, t, m: reports.put((d, t, m)),
                cancelled=event.is_set,
                **kwargs,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the worker's errored signal
            outcome["error"] = exc
        finally:
            reports.put(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while (item := reports.get()) is not None:
            yield item
        cancelled = event.is_set()  # before the event is set below for every ending
    finally:
        event.set()  # a quit worker stops the helper at its next check
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if cancelled:
        raise Cancelled("cancelled by the user")
    return outcome.get("value")


class _Relay(QObject):
    """Carries a quiet job's end from its thread to the GUI thread (see :func:`quiet_worker`)."""

    ended = Signal(bool, object)


def quiet_worker(
    job_function: Callable[..., Any],
    job: Any,
    returned: Callable[[Any], None],
    failed: Callable[[BaseException], None],
    finished: Callable[[], None],
    parent: Any = None,
) -> Any:
    """A small job beside the panel's run, with no bar and no Cancel (a table of findings
    listed again, a scan checked before Run): ``job_function(job)`` in a thread of its own;
    ``returned`` or ``failed`` gets how it ended, then ``finished``, on the GUI thread.

    Its end reaches the GUI thread through a Qt signal of an object owned by ``parent`` (the
    panel): a panel closed while the job runs simply never hears of it (a napari worker's
    own signals would be gone by then, and its thread would raise as it ends)."""
    import threading

    relay = _Relay(parent)

    def on_end(ok: bool, value: Any) -> None:
        try:
            try:
                (returned if ok else failed)(value)
            finally:
                finished()
        except RuntimeError as exc:  # the panel was being closed as the job ended
            if "has been deleted" not in str(exc):
                raise
        with contextlib.suppress(RuntimeError):
            relay.deleteLater()

    relay.ended.connect(on_end)

    def work() -> None:
        try:
            value, ok = job_function(job), True
        except Exception as exc:  # noqa: BLE001 - handed to ``failed`` on the GUI thread
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the panel (and the relay) closed meanwhile
            relay.ended.emit(ok, value)

    threading.Thread(target=work, daemon=True, name="medood-quiet-job").start()
    return relay


def scan_job(source: Any, mask_layer: Any | None) -> dict[str, Any]:
    """A scan layer and its mask layer as a worker reads them: references to the arrays and
    small state, taken on the GUI thread (no copy); :func:`job_volume` builds the volume,
    and refuses a mask that does not lie on the scan in the world (``pairing``)."""
    from napari_medood._napari._widgets._pickers import pairing_message

    def state(layer: Any) -> dict[str, Any]:
        return {**placement_of(layer), "metadata": dict(layer.metadata)}

    return {
        "data": source.data,
        "state": state(source),
        "mask_data": None if mask_layer is None else mask_layer.data,
        "mask_state": None if mask_layer is None else state(mask_layer),
        "pairing": pairing_message(mask_layer, source, "brain mask"),
    }


def job_volume(job: dict[str, Any]):
    """``(Volume, mask or None)`` of a :func:`scan_job`, built off the GUI thread."""
    from napari_medood._napari._layers import layer_data_to_volume

    if job.get("pairing"):
        from napari_medood._napari._widgets._pickers import PairingError

        raise PairingError(job["pairing"])
    volume = layer_data_to_volume(np.asarray(job["data"]), job["state"])
    mask = None
    if job["mask_data"] is not None:
        mask = layer_data_to_volume(np.asarray(job["mask_data"]), job["mask_state"]).data > 0
    return volume, mask
