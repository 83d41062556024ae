"""Errors that name the file and the field (SPEC §3.2): bad data never fails silently."""
from __future__ import annotations


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


def _rebuild(path, full_message, record_id):
    err = DataError.__new__(DataError)
    err.path, err.record_id = path, record_id
    ValueError.__init__(err, full_message)
    return err
