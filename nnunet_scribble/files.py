"""Files shared between processes: the one inter-process lock, writability checks, atomic writes
(every file the package writes for later reading goes through :func:`atomic_write`).

``locked(path, what)`` holds a ``filelock`` lock (``flock`` on POSIX, ``msvcrt`` on Windows: the OS releases
it when the holder dies, so a killed job never leaves a stale lock). While holding it, the holder's pid,
host, command and start time are in ``<path>.holder.json``; a process that has to wait prints once who
holds the lock and since when, then waits.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager

from nnunet_scribble.errors import UserFacingError

GRACE_SECONDS = 1.0   # a waiter first waits this long silently (the holder writes its info right after locking)


def require_writable(folder: str, what: str, fix: str = "") -> None:
    """Raise UserFacingError unless files can be created in ``folder`` (or, if it does not exist yet, in the
    nearest existing folder above it, where it would be created). Creates nothing."""
    path = os.path.abspath(folder)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    fix = f" {fix}" if fix else ""
    if not os.path.isdir(existing):
        raise UserFacingError(f"Cannot write {what} to {path}: {existing} is a file, not a folder.{fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (where {path} would be created)"
        raise UserFacingError(f"Cannot write {what} to {path}: {existing}{where} is not writable (no write "
                              f"permission or a read-only file system). Make it writable.{fix} Nothing was written.")


def atomic_write(path, write) -> None:
    """Make ``path`` appear complete or not at all: ``write(tmp)`` writes the content to a temporary file next
    to it (same folder, same ending, so libraries that go by the ending still work), which is then renamed over
    ``path``. A kill mid-write leaves the old file (and at most a hidden ``.<name>.tmp<pid>...`` file); an
    error removes the temporary file and is raised."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    stem, dot, ending = name.rpartition(".")
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}.{ending}" if dot else f".{name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def atomic_write_json(path, obj, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False))


def holder_file(lock_path: str) -> str:
    """Where the holder of the lock ``lock_path`` describes itself."""
    return f"{lock_path}.holder.json"


def _holder(lock_path: str) -> str:
    try:
        with open(holder_file(lock_path)) as f:
            info = json.load(f)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        minutes = (time.time() - info["since"]) / 60
        return (f"pid {info['pid']} on host {info['host']} since {since} ({minutes:.0f} min; command: "
                f"{info['command']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not described itself)"


@contextmanager
def locked(path: str, what: str, log=print):
    """Hold the inter-process lock file ``path`` for the block (see the module docstring); ``what`` names
    the protected thing in the waiting message. The lock's folder is created if needed."""
    from filelock import FileLock, Timeout

    folder = os.path.dirname(os.path.abspath(path))
    require_writable(folder, f"the lock of {what}")
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=GRACE_SECONDS)
    except Timeout:
        log(f"waiting for the lock on {what} ({path}): held by {_holder(path)}; continuing when it is released")
        lock.acquire()
    try:
        atomic_write_json(holder_file(path), {"pid": os.getpid(), "host": socket.gethostname(),
                                              "command": " ".join(sys.argv) or sys.executable,
                                              "since": time.time()})
        yield
    finally:
        try:
            os.remove(holder_file(path))
        except OSError:
            pass
        lock.release()
