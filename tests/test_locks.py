"""One writer per directory: a second writer is refused naming the first, a lock left by a killed
process is taken over, one from another host is not; and the same with two real ``tuneloop train``
processes on one run directory, then a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from fixtures_train.helpers import tiny_recipe
from tuneloop.errors import UserError
from tuneloop.locks import LOCK_NAME, hold_lock, read_owner
from tuneloop.train.checkpoint import step_checkpoints

HOLD = """
import sys, time
from tuneloop.locks import hold_lock
with hold_lock(sys.argv[1], "study"):
    print("held", flush=True)
    time.sleep(60)
"""


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(directory, pid: int, host: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": time.time() - 60,
                                                   "command": "tuneloop train old.yaml"}))


def test_a_live_holder_in_another_process_is_named_and_the_lock_is_freed_after(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as caught:
            with hold_lock(tmp_path, "study"):
                pass
        message = str(caught.value)
        assert f"study {tmp_path} is being written by pid {holder.pid} on {socket.gethostname()}" in message
        assert f"kill {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()
    # Killed while holding: the kernel dropped its flock; the file it left is taken over.
    assert read_owner(tmp_path / LOCK_NAME).pid == holder.pid
    with hold_lock(tmp_path, "study") as lock_path:
        assert read_owner(lock_path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_a_lock_left_by_a_dead_pid_is_taken_over_with_a_note(tmp_path, capsys):
    dead = _dead_pid()
    _write_lock(tmp_path, dead, socket.gethostname())
    with hold_lock(tmp_path, "run directory"):
        pass
    assert f"taking over the lock on {tmp_path} left by pid {dead}" in capsys.readouterr().err


def test_a_lock_written_by_another_host_is_refused_with_how_to_clear_it(tmp_path):
    _write_lock(tmp_path, 12345, "gpu-node-7")
    with pytest.raises(UserError, match="pid 12345 on gpu-node-7") as caught:
        with hold_lock(tmp_path, "model store entry"):
            pass
    assert f"delete {tmp_path / LOCK_NAME}" in str(caught.value)
    assert read_owner(tmp_path / LOCK_NAME).host == "gpu-node-7"  # left as it was


def test_an_unreadable_lock_file_from_a_crash_while_writing_it_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with hold_lock(tmp_path) as lock_path:
        assert read_owner(lock_path).pid == os.getpid()


def _train(recipe_path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "train", str(recipe_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_train_processes_on_one_run_directory_then_sigkill_and_take_over(tiny_model_dir, tmp_path):
    raw = tiny_recipe(tiny_model_dir, tmp_path, name="run", batch_size=1, max_steps=400, save_every=2)
    recipe_path = tmp_path / "run.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    first = _train(recipe_path)
    deadline = time.time() + 120
    while not step_checkpoints(run_dir / "checkpoints") and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[0]

    second = _train(recipe_path, "--resume")  # the Ctrl-C that did not reach the first one
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 1, output
    assert f"run directory {run_dir} is being written by pid {first.pid}" in output and "Traceback" not in output

    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert read_owner(run_dir / LOCK_NAME).pid == first.pid  # the killed run's lock is still there
    lines_before = len((run_dir / "metrics.jsonl").read_text().splitlines())

    third = _train(recipe_path, "--resume")
    deadline = time.time() + 120
    while third.poll() is None and time.time() < deadline:
        if len((run_dir / "metrics.jsonl").read_text().splitlines()) > lines_before + 2:
            break  # it took the lock over and is training
        time.sleep(0.05)
    assert third.poll() is None
    third.terminate()
    output = third.communicate(timeout=60)[0]
    assert f"taking over the lock on {run_dir} left by pid {first.pid}" in output
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "step" in json.loads(line)]
    assert len(steps) == len(set(steps))  # one writer at a time: no step logged twice
