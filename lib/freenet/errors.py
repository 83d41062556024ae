"""Errors that name the file and the field (SPEC §3.2): bad data never fails silently."""
from __future__ import annotations

import math
import sys
from typing import NoReturn

# The exit code of every script and tool for an error the user can fix (a flag, a config key, an input
# file): argparse's for a bad flag. 1 is left to crashes (a traceback) and to a check that found problems.
USER_ERROR_EXIT = 2


class DataError(ValueError):
    """Bad input data. The message always names the file and, where known, the record id."""

    def __init__(self, path, message: str | None = None, record_id=None):
        self.path = str(path)
        self.record_id = record_id
        if message is None:  # a ready-made message (how a DataLoader re-raises a worker's error)
            super().__init__(self.path)
            return
        where = self.path if record_id is None else f"{self.path} (id {record_id})"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keeps the message intact when raised inside a DataLoader worker
        return (_rebuild, (self.path, self.args[0], self.record_id))


def from_worker(error: Exception) -> DataError | None:
    """The DataError behind an exception a DataLoader re-raised from a worker, with the worker's
    traceback stripped (the last line carries the file and the reason); None if it is not one."""
    text = str(error).strip()
    if not isinstance(error, DataError) and "DataError" not in text:
        return None
    last = text.splitlines()[-1] if text else ""
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return DataError(last[len(prefix):] if last.startswith(prefix) else last)


def _rebuild(path, full_message, record_id):
    err = DataError.__new__(DataError)
    err.path, err.record_id = path, record_id
    ValueError.__init__(err, full_message)
    return err


def is_int(value) -> bool:
    """An integer of a JSON file (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite number of a JSON file (not ``true``, ``NaN`` or ``Infinity``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class EvaluationError(ValueError):
    """A configuration or input the evaluation cannot work with; the message says what to change."""


class TrainingError(RuntimeError):
    """A run that cannot go on (its weights are no longer finite numbers); the message names the
    last good checkpoint."""


def exit_with_error(message: str) -> NoReturn:
    """End a tool with a one-line error: ``message`` on stderr, exit code :data:`USER_ERROR_EXIT`."""
    print(message, file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT)
