"""Ctrl-C and SIGTERM during training: finish the step, checkpoint it, stop every rank, one line.

The handler only records the signal; the loop asks `agreed()` after each step. With several ranks the flag is
reduced over all of them, so a signal that reached one rank (or reached them at different steps) stops every rank
after the same step, and rank 0 writes one checkpoint there. A second signal more than GRACE_S later stops at once
(KeyboardInterrupt); one sooner is the launcher passing the same stop on (torchrun sends SIGTERM to ranks that
already had the terminal's SIGINT) and is only recorded.
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 3.0


class TrainInterrupted(BaseException):
    """Raised by train() after the checkpoint of the step it stopped at is written (BaseException, as
    KeyboardInterrupt: code that turns failures into retries must not swallow it)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Installs SIGINT/SIGTERM handlers in the main thread until `restore()`; elsewhere it never fires."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._at = 0.0
        self._old: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if now - self._at > GRACE_S:
                raise KeyboardInterrupt  # asked again: stop now
            return
        self.signum, self._at = signum, now

    def agreed(self, reduce_mean: Callable[[dict[str, float]], dict[str, float]]) -> int | None:
        """The signal to stop on if any rank was asked to (every rank must call this after the same step)."""
        seen = reduce_mean({"stop": 1.0 if self.signum is not None else 0.0})["stop"]
        if seen <= 0:
            return None
        return self.signum if self.signum is not None else int(signal.SIGTERM)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()
