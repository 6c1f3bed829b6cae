"""Where tuneloop keeps things on disk, and writes that never leave a half-written file.

``TUNELOOP_HOME`` (default: the user's cache dir, e.g. ``~/.cache/tuneloop``) holds the local model
store (``models/``) and other caches.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tuneloop.errors import UserError

# Errors of the disk rather than of the program: said plainly, never as a traceback.
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the filesystem is read-only", errno.EFBIG: "the file is larger than allowed",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_errno(error: BaseException) -> int | None:
    """The OS error number of ``error``: its ``errno``, or the ``(os error 28)`` that libraries written
    in Rust (safetensors, tokenizers) put in the message of their own exception types."""
    if getattr(error, "errno", None) is not None:
        return error.errno
    match = _RUST_OS_ERROR.search(str(error))
    return int(match.group(1)) if match else None


def disk_error(error: BaseException, path: str | os.PathLike, unchanged: str = "earlier files there are unchanged"):
    """A UserError for an error of the disk (full, read-only, quota), or None for other errors."""
    number = os_errno(error)
    if number not in DISK_ERRNOS:
        return None
    if not isinstance(error, OSError) or isinstance(error, UserError):
        error = OSError(number, os.strerror(number))
    fix = {errno.ENOSPC: "free space there (or write elsewhere) and run again",
           errno.EDQUOT: "free space within your quota (or write elsewhere) and run again",
           errno.EFBIG: "raise the file size limit (ulimit -f) or write elsewhere"}.get(
        error.errno, "choose a directory you can write to")
    result = UserError(f"cannot write {path}: {DISK_ERRNOS[error.errno]} ({error.strerror})",
                       hint=f"{fix}; {unchanged}")
    result.errno = error.errno
    return result


def tuneloop_home() -> Path:
    env = os.environ.get("TUNELOOP_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tuneloop"))


def model_store() -> Path:
    return tuneloop_home() / "models"


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early (before hours of work) when ``path`` cannot become a writable directory."""

    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{probe} is a file, not a directory", where=f"{what} {path}",
                        hint="choose a new or existing directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            raise UserError(f"{probe} is on a read-only filesystem", where=f"{what} {path}",
                            hint="choose a directory on a writable disk (or remount it read-write)")
        raise UserError(f"no permission to write in {probe}", where=f"{what} {path}",
                        hint="choose a directory you can write to")
    return path


def make_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``mkdir -p`` for an output directory; one that cannot be created is a UserError naming it."""

    path = Path(path)
    check_output_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the directory: {e.strerror or e}", where=f"{what} {path}",
                        hint="choose a directory you can write to") from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX).

    On error the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    make_dir(path.parent, "output")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (disk_error(e, path, f"{path.name} keeps its earlier content")
               or UserError(f"cannot write {path}: {e.strerror or e}", hint="choose a directory you can write to")) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise (disk_error(e, path, f"{path.name} keeps its earlier content") or e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_files(out_dir: str | os.PathLike, last: str | None = None):
    """Write a set of files into a staging folder, then move them all into ``out_dir`` (``last`` last).

    A failure while writing (a full disk) leaves ``out_dir``'s earlier files exactly as they were;
    only renames, which need no space, touch ``out_dir``.
    """
    out_dir = make_dir(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        try:
            yield stage
        except Exception as e:  # a disk error on a staged file: say it of out_dir, whose files are intact
            converted = disk_error(e, out_dir, "the files already there are unchanged")
            if converted is None:
                raise
            raise converted from None
        names = sorted(p.name for p in stage.iterdir())
        if last in names:
            names.remove(last)
            (out_dir / last).unlink(missing_ok=True)  # the earlier set is incomplete from here on
            names.append(last)
        for name in names:
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records) -> int:
    """Write an iterable of JSON-serialisable records, one per line; returns how many were written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by tuneloop (trusted format; user files go through data.ingest)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
