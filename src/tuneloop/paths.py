"""Where tuneloop keeps things on disk, and writes that never leave a half-written file.

``TUNELOOP_HOME`` (default: the user's cache dir, e.g. ``~/.cache/tuneloop``) holds the local model
store (``models/``) and other caches.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tuneloop.errors import UserError


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
        from tuneloop.errors import UserError

        raise UserError(f"cannot write {path}: {e.strerror or e}", hint="choose a directory you can write to") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
