"""A full disk and a read-only filesystem, for real: a few-MB tmpfs that fills (ENOSPC) or is remounted
read-only (EROFS). Outputs written before stay intact and the error names the file and the fix.
Needs root to mount; ``benchmarks/faults.py`` runs the same faults through prepare, train and export."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.errors import UserError
from tuneloop.paths import staged_files, write_text_atomic


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp())
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)])
    probe.rmdir()
    return ok


needs_mount = pytest.mark.skipif(not _can_mount(), reason="mounting a tmpfs needs root")


@pytest.fixture()
def small_disk():
    mount = Path(tempfile.mkdtemp(prefix="tuneloop-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)])
    mount.rmdir()


def _fill(mount: Path) -> None:
    with open(mount / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def _digests(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _data(path: Path, n: int, tag: str) -> Path:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{tag} question {i}: where is parcel {i * 7919 % 997}?"},
        {"role": "assistant", "content": f"{tag} answer {i}: it left the depot on day {i}."}]}) + "\n" for i in range(30)))
    return path


@needs_mount
def test_prepare_on_a_full_disk_is_a_clear_error_and_the_earlier_set_is_intact(small_disk, tmp_path):
    out = small_disk / "prepared"
    prepare([_data(tmp_path / "a.jsonl", 30, "first")], out, PrepareOptions(model=None))
    before = _digests(out)
    assert "manifest.json" in before
    _fill(small_disk)
    with pytest.raises(UserError) as caught:
        prepare([_data(tmp_path / "b.jsonl", 30, "second")], out, PrepareOptions(model=None))
    message = str(caught.value)
    assert f"cannot write {out}: the disk is full" in message and "unchanged" in message
    assert _digests(out) == before  # not one file of the earlier set replaced
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


@needs_mount
def test_read_only_filesystem_keeps_the_file_and_says_so(small_disk):
    target = small_disk / "notes.txt"
    write_text_atomic(target, "first")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(UserError, match="read-only"):
        write_text_atomic(target, "second")
    assert target.read_text() == "first"


@needs_mount
def test_staged_files_move_in_together_only_when_all_are_written(small_disk):
    out = small_disk / "set"
    with staged_files(out, last="manifest.json") as stage:
        (stage / "a.txt").write_text("a1")
        (stage / "manifest.json").write_text("m1")
    _fill(small_disk)
    with pytest.raises(UserError, match="disk is full"):
        with staged_files(out, last="manifest.json") as stage:
            (stage / "a.txt").write_text("a2")
            (stage / "manifest.json").write_text("m2" * 1_000_000)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.txt": "a1", "manifest.json": "m1"}


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644  # mkstemp alone gives 0600


def _fill_leaving(mount: Path, free: int) -> None:
    with open(mount / "filler", "wb") as f:
        try:
            while os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > free:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass


@needs_mount
def test_export_onto_a_full_disk_is_a_clear_error_not_a_safetensors_traceback(small_disk, tiny_model_dir, capsys):
    """safetensors (Rust) raises its own SafetensorError, not an OSError, when the disk fills while it
    writes the weights; the export still reports a full disk with the fix, exit 1, and leaves nothing."""
    from tuneloop.cli.main import main

    _fill_leaving(small_disk, 64 * 1024)  # room for the small files, not for the 12 MB of weights
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_model_dir), "--out", str(small_disk / "exported")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert f"cannot write {small_disk / 'exported'}: the disk is full" in err, err
    assert "free space there" in err and "Traceback" not in err
    assert not (small_disk / "exported" / "model.safetensors").exists()
