"""One round at a time per model: an exclusive ``flock`` on a file under ``$TUNELOOP_HOME/locks``.

The kernel releases the lock when the process ends however it ends (``kill -9`` included), so a
killed round never leaves a stale lock behind. The file says who holds it, for the message the
second process prints.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.paths import make_dir, tuneloop_home
from tuneloop.database.engine import default_db_url


class RoundInProgress(UserError):
    pass


class RoundLock:
    """Per model and registry database: rounds of the same name in two databases do not block."""

    def __init__(self, name: str, db_url: str | None, directory: Path | None = None):
        database = hashlib.sha256((db_url or default_db_url()).encode()).hexdigest()[:12]
        self.path = make_dir(directory or tuneloop_home() / "locks", "lock directory") / f"improve-{name}-{database}.lock"
        self.name = name
        self._fd: int | None = None

    def __enter__(self) -> "RoundLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RoundInProgress(f"an improve round for {self.name!r} is in progress "
                                  f"(pid {holder.get('pid', '?')}, since {holder.get('since', '?')})",
                                  hint="wait for it to finish; this process changed nothing") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
