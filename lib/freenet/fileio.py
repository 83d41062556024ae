"""Atomic file writes: a temporary file in the same folder, then a rename (readers never see half a file)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, IO


def why_unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (made first if need be), or None where they can: the
    nearest part of the path that exists decides, so nothing is made to find out."""
    existing = next(path for path in (Path(folder), *Path(folder).absolute().parents) if path.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (permission denied)"
    return None


def write_atomic(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it a normal file's mode
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power loss right after it could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:     # a platform whose folders cannot be opened (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass            # some file systems do not sync folders
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str | os.PathLike, data, indent: int | None = None) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=indent))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``source`` to ``path``: an interrupted copy never leaves a truncated file under that name."""
    with open(source, "rb") as src:
        write_atomic(path, lambda f: shutil.copyfileobj(src, f), "wb")
