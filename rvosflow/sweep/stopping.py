"""Stopping a sweep on SIGTERM or SIGINT: between trials, with the interrupted trial re-queued.

The first signal is recorded. While a trial (or a shared training) runs -- inside
:func:`interruptible` -- it also raises :class:`Interrupted` at once, wherever the trial is
(training, its final scoring, writing its results): the worker marks that trial KILLED and queues
it again. Outside, where a finished trial is being recorded or the next one is being picked, it
only records: the worker stops at its next check (:func:`check`), so a trial is never half
recorded. The sweep then exits 130 (SIGINT) or 143 (SIGTERM), as a shell reports a killed command.
Lightning's own SIGTERM handling (finish the batch, then raise) calls these handlers too: it keeps
any handler it finds installed.
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal. A KeyboardInterrupt, so that Lightning, Optuna and
    ``TrackedRun`` treat it as Ctrl-C (the run KILLED, not FAILED)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


_state = {"signum": None, "depth": 0}


def _handler(signum, frame) -> None:
    if _state["signum"] is not None:
        return  # already stopping (Ctrl-C reaches every process of the group, the driver forwards it)
    _state["signum"] = signum
    if _state["depth"]:
        raise Interrupted(signum)


@contextlib.contextmanager
def handling():
    """SIGINT and SIGTERM taken by this module inside (main thread only), the process' own
    handlers back after; an earlier stop is forgotten. A second signal is ignored: the first one
    is being acted on (SIGKILL ends a stop that hangs)."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(signum=None, depth=0)
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _state["signum"]


def check() -> None:
    """Raise :class:`Interrupted` when a stop was asked for."""
    if _state["signum"] is not None:
        raise Interrupted(_state["signum"])


@contextlib.contextmanager
def interruptible():
    """A stretch a signal interrupts at once (a trial's work); refused when a stop is already asked for."""
    check()
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def exit_code(default: int = 130) -> int:
    """130 for SIGINT, 143 for SIGTERM; ``default`` for an interruption no signal of ours explains."""
    return EXIT_CODES.get(_state["signum"], default)
