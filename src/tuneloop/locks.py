"""One writer per directory: a lock file naming who holds it (pid, host, start time, command).

``with hold_lock(run_dir, "run directory"):`` around anything that writes a run directory, a model
store entry or a study. A second writer gets a :class:`~tuneloop.errors.UserError` that says who holds
the lock (the CLI turns it into exit 1). The lock is an ``flock`` on ``<dir>/.tuneloop.lock``, so the
kernel releases it when its holder dies, however it dies; the JSON in the file is for the message
and for other hosts, where a lock on a shared filesystem cannot always be seen:

- held by a live process (flock taken): refused;
- left by a process of this host that is gone (SIGKILL, power cut): taken over, with a note on stderr;
- written by another host whose lock we cannot see: refused, with how to remove it if that run is gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError

LOCK_NAME = ".tuneloop.lock"


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started: float
    command: str

    @classmethod
    def me(cls) -> LockOwner:
        return cls(os.getpid(), socket.gethostname(), time.time(), " ".join(sys.argv)[:500])

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} since {when} ({self.command or 'unknown command'})"


def read_owner(lock_path: Path) -> LockOwner | None:
    try:
        data = json.loads(lock_path.read_text())
        return LockOwner(int(data["pid"]), str(data["host"]), float(data["started"]), str(data.get("command", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, empty (a holder killed while writing it) or not ours


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def hold_lock(directory: str | os.PathLike, what: str = "directory") -> Iterator[Path]:
    """Hold ``directory``'s lock for the ``with`` body (the directory is created if needed).

    Directories created only to hold the lock are removed again if the body wrote nothing into them,
    so a run refused for bad input leaves nothing behind.
    """
    directory = Path(directory)
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / LOCK_NAME
    fd = _acquire(lock_path, what)
    try:
        yield lock_path
    finally:
        try:
            lock_path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the flock
        for made in created:  # innermost first; stops at the first one that is not empty
            try:
                made.rmdir()
            except OSError:
                break


@contextmanager
def nothing_held() -> Iterator[None]:
    """Stands in for :func:`hold_lock` where another process is the writer (torchrun ranks > 0)."""
    yield None


def _acquire(lock_path: Path, what: str) -> int:
    for _ in range(20):  # retry only when the file was replaced between open and flock
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _held(lock_path, what, read_owner(lock_path)) from None
        if _same_file(fd, lock_path):
            _check_previous(lock_path, what)
            _write_owner(fd, LockOwner.me())
            return fd
        os.close(fd)  # the holder unlinked it as we opened it: try the new file
    raise UserError(f"cannot take the lock {lock_path}: it keeps being replaced", where=str(lock_path.parent))


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _check_previous(lock_path: Path, what: str) -> None:
    """We hold the flock; what does the file say about the previous holder?"""
    previous = read_owner(lock_path)
    if previous is None or previous.pid == os.getpid() and previous.host == socket.gethostname():
        return
    if previous.host != socket.gethostname():
        # Another machine: its flock may not reach us (NFS), and we cannot see whether its pid lives.
        raise _held(lock_path, what, previous, other_host=True)
    gone = "is gone" if not pid_alive(previous.pid) else "no longer holds it (its pid was reused)"
    print(f"note: taking over the lock on {lock_path.parent} left by {previous.describe()}, which {gone}",
          file=sys.stderr)


def _write_owner(fd: int, owner: LockOwner) -> None:
    payload = json.dumps(owner.__dict__).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, payload, 0)
    os.fsync(fd)


def _held(lock_path: Path, what: str, owner: LockOwner | None, other_host: bool = False) -> UserError:
    holder = owner.describe() if owner else "another process"
    if other_host:
        hint = (f"if that run is over (the host went down), delete {lock_path} and run again; two writers "
                f"would interleave checkpoints and metrics")
    else:
        hint = (f"wait for it to finish, or stop it (kill {owner.pid})" if owner else "wait for it to finish") + \
               "; to write elsewhere, use another --out or recipe name"
    return UserError(f"{what} {lock_path.parent} is being written by {holder}", where=str(lock_path.parent),
                     hint=hint)
