"""Bad input is one line: ``error: <file or key>: <what was expected>, <what was found>``, exit 2.

Every error about the user's input (a config key, a sweep file, a dataset file, a bundle, a
checkpoint, an evaluation input) is a :class:`UserError`. The command-line entry points run
through :func:`cli`, which prints such an error as one line and returns 2; anything else is a bug
and keeps its traceback. ``RVOSFLOW_TRACEBACK=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

TRACEBACK_ENV = "RVOSFLOW_TRACEBACK"
EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user; the message starts with the file or key it is about."""


class ConfigError(UserError, ValueError):
    """A setting with a wrong value or type; the message names the key and the allowed values."""


class SpecError(UserError, ValueError):
    """A bad sweep file or sweep setting; the message names the file and the key."""


class DatasetFormatError(UserError, ValueError):
    """A dataset on disk does not follow its format; the message names the file and the entry."""


class BundleError(UserError, FileNotFoundError):
    """A bundle directory is missing, incomplete or not in the diffusers Wan layout."""


class CheckpointError(ConfigError):
    """A checkpoint or release-layout file that is missing, not plain data, or not in its layout."""


class EvaluationError(UserError, ValueError):
    """A bad evaluation input (predictions, options); the message names the file or option."""


class RecordsFileError(UserError, ValueError):
    """A per-expression file that cannot be read as one; the message names the file."""


class SliceSettingError(UserError, ValueError):
    """A slice name that is not one of SLICES; the message names the setting."""


class PairingError(UserError, ValueError):
    """Two rows' runs are not scored on the same expressions; the message names what is missing."""


def want_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false", "no")


def as_user_error(exc: BaseException) -> UserError | None:
    """``exc`` as a user error, or None when it is not about the user's input."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, FileNotFoundError) and exc.filename:  # open() of a path the user gave
        return UserError(f"{exc.filename}: expected a file, found nothing")
    if isinstance(exc, (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)) and exc.filename:
        return UserError(f"{exc.filename}: expected a path this command can use, found: {exc.strerror}")
    return None


def one_line(exc: BaseException) -> str:
    """The error's message on one line (the first line carries the key or file and what is wrong)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def report(exc: BaseException) -> int:
    """Print a user error as one line on stderr and return 2; re-raise anything else."""
    err = as_user_error(exc)
    if err is None:
        raise exc
    if want_traceback():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def cli(main, argv=None) -> int:
    """``main(argv)`` with user errors printed as one line (exit 2)."""
    try:
        return main(argv)
    except Exception as exc:  # noqa: BLE001  (report re-raises what is not the user's input)
        return report(exc)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are user errors: one line through :func:`cli`, exit 2, like every
    other bad input (argparse's own prints a usage block)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts (``--videos``): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value
