"""Crash-safe file output: one atomic write, stray-temporary cleanup, up-front writability checks.

Every file pointcoc writes goes through :func:`atomic_write`: the bytes go to a
temporary file next to the target (``.<name>.<pid>.tmp``), are flushed and
``fsync``-ed, and the temporary file is renamed over the target (``os.replace``),
after which the folder is ``fsync``-ed too. A kill at any instant leaves either
the old file or the new one, never a torn one; a failed write (full disk,
read-only folder) leaves the old file intact and raises :class:`WriteError`, a
one-line ``OSError`` naming the path and the cause. :func:`remove_stray_temporaries`
deletes the temporary files of killed writers on the next start.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

__all__ = ["WriteError", "atomic_write", "remove_stray_temporaries", "check_writable_dir"]

PathLike = Union[str, "os.PathLike[str]"]


class WriteError(OSError):
    """A file could not be written; the message names the path and the cause in one line (``errno`` is set)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


def _cause(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: PathLike, data: Union[bytes, str, Callable[[Path], None]]) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path``.

    ``data`` is ``bytes``, ``str`` (UTF-8) or a callable that writes the file
    at the path it is given (for libraries that write by name, e.g. h5py or PIL).
    The parent folder is created. Raises :class:`WriteError` (old file intact).
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(exc.errno or errno.EIO, f"cannot write {path}: {_cause(exc)}") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    _fsync_dir(path.parent)
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # a temporary of ours seen at start-up is a dead predecessor's (reused pid)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stray_temporaries(folder: PathLike, names: Optional[Iterable[str]] = None) -> list:
    """Delete ``.<name>.<pid>.tmp`` files left in ``folder`` by killed writers; returns the removed paths.

    Only temporaries of processes that no longer run (on this machine) are removed;
    ``names`` restricts the cleanup to those target file names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for tmp in folder.glob(".*.tmp"):
        stem, _, pid = tmp.name[1 : -len(".tmp")].rpartition(".")
        if not pid.isdigit() or (wanted is not None and stem not in wanted) or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def check_writable_dir(folder: PathLike, need_bytes: int = 0, name: str = "output folder") -> Path:
    """Make sure ``folder`` exists (creating it) and a file can be written there; returns it.

    ``need_bytes``: free space required (e.g. the expected checkpoint sizes).
    Raises :class:`WriteError` naming the folder and the cause (a path under a
    regular file, read-only, no space left).
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise WriteError(errno.ENOTDIR, f"cannot write to {name} {folder}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise WriteError(exc.errno or errno.EIO, f"cannot write to {name} {folder}: {_cause(exc)}") from None
    free = shutil.disk_usage(folder).free
    if need_bytes > free:
        raise WriteError(
            errno.ENOSPC,
            f"cannot write to {name} {folder}: no space left on device "
            f"({free / 2**20:.1f} MiB free, about {need_bytes / 2**20:.1f} MiB needed)",
        )
    return folder
