"""SIGTERM and SIGINT stop a run cleanly: the process exits 143 or 130 (128 + the signal), never 0,
after the run has saved what it had.

:func:`install` (the CLIs call it) replaces both handlers. Outside a training loop a signal raises
:class:`Stopped` at once. Inside one (:func:`deferred`) it is only recorded, and the loop raises
at its next batch boundary (:func:`check`, called by the Trainer's ``SafeStop`` callback), where
the weights and the optimizer are consistent and a checkpoint the rerun resumes from can be
written. A second signal stops at once. ``Stopped`` is a ``BaseException``: no ``except Exception``
(ours, Lightning's, a library's) swallows it.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: int | None = None
_deferred = 0


class Stopped(BaseException):
    """The run was asked to stop by a signal; ``resume`` says how to go on (set by the run)."""

    def __init__(self, signum: int, resume: str | None = None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.resume = signum, resume

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None or not _deferred:  # a second signal, or nothing to wait for
        _requested = signum
        raise Stopped(signum)
    _requested = signum


def install() -> None:
    """Route SIGTERM and SIGINT through :func:`_handler` (idempotent; main thread only)."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def requested() -> int | None:
    """The signal received, if any."""
    return _requested


def check() -> None:
    """Raise :class:`Stopped` if a signal arrived (at a point where stopping is safe)."""
    if _requested is not None:
        raise Stopped(_requested)


def reset() -> None:
    """Forget a handled signal (a sweep worker that goes on after re-queueing its trial does not)."""
    global _requested
    _requested = None


@contextmanager
def deferred():
    """Inside: a first signal is only recorded, for :func:`check` to act on."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
