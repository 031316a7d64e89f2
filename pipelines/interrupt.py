"""Ctrl-C and SIGTERM during a Spark job: a request, honoured at the next stage boundary, never a traceback.

The handler only records the signal and asks Spark to cancel what runs (from a thread of its own: a Py4J call from
inside the handler would re-enter the connection the main thread is blocked on, which is where PySpark's own
handler prints `reentrant call inside BufferedReader`). The cancelled action fails in the main thread, the run's
own cleanup removes its partitions and staging as for any failure, and the caller prints one line and exits
128 + signal. A second signal stops at once (`JobInterrupted` raised in the handler).
"""
from __future__ import annotations

import signal
import threading
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class JobInterrupted(BaseException):
    """Raised at a stage boundary once a stop was asked for. A BaseException, like KeyboardInterrupt: code that
    turns an ordinary failure into a reject or a retry must not swallow it."""

    def __init__(self, signum: int, phase: str):
        super().__init__(f"interrupted by {signal.Signals(signum).name} during {phase}")
        self.signum = signum
        self.phase = phase


class _State:
    signum: int | None = None
    phase: str = "start-up"
    spark: Any = None
    done = threading.Event()


_state = _State()


def install(spark: Any = None) -> None:
    """Handle SIGINT and SIGTERM in this (main) thread from now on; `spark`'s jobs are cancelled on a signal.
    Called again after the SparkContext exists, since PySpark installs its own SIGINT handler there."""
    if threading.current_thread() is not threading.main_thread():
        return  # Python delivers signals to the main thread only: a caller's thread keeps its caller's handlers
    _state.spark = spark if spark is not None else _state.spark
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    if _state.signum is not None and spark is not None:
        _start_cancelling()


def requested() -> int | None:
    """The signal asked for, or None."""
    return _state.signum


def phase() -> str:
    return _state.phase


def enter(name: str) -> None:
    """A stage boundary: raise if a stop was asked for, else remember the stage for the one line."""
    check()
    _state.phase = name


def check() -> None:
    if _state.signum is not None:
        raise JobInterrupted(_state.signum, _state.phase)


def reset() -> None:
    """Forget a handled signal and restore the default handlers (tests and long-lived callers)."""
    _state.done.set()
    _state.signum, _state.phase, _state.spark = None, "start-up", None
    _state.done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _on_signal(signum: int, frame: Any) -> None:
    if _state.signum is not None:  # the second signal: the user means it
        raise JobInterrupted(_state.signum, _state.phase)
    _state.signum = signum
    if _state.spark is not None:
        _start_cancelling()


def _start_cancelling() -> None:
    threading.Thread(target=_cancel_until_done, args=(_state.spark, _state.done), daemon=True,
                     name="imagegen-cancel").start()


def _cancel_until_done(spark: Any, done: threading.Event) -> None:
    # Again every half second: a job the main thread starts between our cancel and its next check is cancelled too.
    while not done.is_set():
        try:
            spark.sparkContext.cancelAllJobs()
        except Exception:  # noqa: BLE001  a stopped context: nothing is running any more
            return
        done.wait(0.5)
