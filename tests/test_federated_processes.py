"""Federated runs as separate processes: Flower's simulation (Ray workers) and a real deployment.

The deployment starts ``tuneloop federated server`` and three ``tuneloop federated client`` nodes
on loopback: two with good data, one whose data has a bad record. In round 1 the test kills one good
client's training process once it has taken the round's message (a client dropping out mid-round:
Flower's node reports "ClientApp stopped responding"); the round goes on with the other, the report names the drop-out and the bad client's located data error, and in
round 2 the restarted client trains again. The run directory ends like any LoRA run's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from fixtures_train.helpers import TRAIN, VALIDATION, tiny_recipe
from tuneloop.federated.partition import write_client_dirs

REPO = Path(__file__).resolve().parents[1]
# Slow tier; the generous timeout is for a heavily loaded machine (on a quiet 2-core machine each test
# takes about a minute: a round is a process start, imports and a tiny model).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                FLWR_HOME=str(tmp_path / "flwr-nodes"), TUNELOOP_NUM_THREADS="1")


def _tuneloop(*args) -> list[str]:
    return [sys.executable, "-m", "tuneloop.cli.main", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tiny_model_dir, tmp_path, train: str | None = None, **federated) -> Path:
    raw = tiny_recipe(tiny_model_dir, tmp_path / "runs", name="fed", validation=True, batch_size=4)
    if train:
        raw["data"]["train"] = train  # deployment: the file name inside each client's --data-dir
    raw["federated"] = {"rounds": 2, "local_steps": 2, **federated}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_simulation_trains_the_adapter_across_clients(tiny_model_dir, tmp_path):
    recipe = _recipe(tiny_model_dir, tmp_path, rounds=1, clients=2, partitioning="dirichlet", alpha=0.5)
    done = subprocess.run(_tuneloop("federated", str(recipe)), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=1700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "fed"
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert sorted(c["partition"] for c in rounds[1]["clients"]) == [0, 1]
    assert sum(c["examples"] for c in rounds[1]["clients"]) == 48  # the partitions cover data.train
    assert rounds[1]["aggregated"] and rounds[1]["validation_loss"] < rounds[0]["validation_loss"]
    assert rounds[1]["bytes_up"] > 0 and rounds[1]["bytes_down"] > 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "tuneloop_base.json").read_text())["base_model"] == str(tiny_model_dir)


def _kill_training_when_it_starts(node: subprocess.Popen, log: Path, timeout: float) -> bool:
    """Once the node says it is training round 1, SIGKILL its ClientApp process (mid-round)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and "round 1: training" in log.read_text(errors="replace"):
            for child in psutil.Process(node.pid).children(recursive=True):
                if any("flwr-clientapp" in part for part in child.cmdline()):
                    child.send_signal(signal.SIGKILL)
                    return True
        time.sleep(0.05)
    return False


@pytest.mark.long  # ~2.3 min in make test: `make test-long` runs it
def test_deployment_on_loopback_survives_a_drop_out_and_excludes_bad_data(tiny_model_dir, tmp_path):
    recipe = _recipe(tiny_model_dir, tmp_path, "train.jsonl", min_fit_clients=3, min_available_clients=3, min_results=1,
                     round_timeout=600)
    good = write_client_dirs(TRAIN, tmp_path / "clients", 2, "iid", 0.5, "label", 0)
    bad = tmp_path / "clients" / "bad"
    bad.mkdir()
    lines = TRAIN.read_text().splitlines()[:3]
    bad.joinpath("train.jsonl").write_text("\n".join(lines[:2] + ['{"messages": "not a list"}', lines[2]]) + "\n")
    env, port = _env(tmp_path), _free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(_tuneloop("federated", "server", str(recipe), "--port", str(port), "--clients", "3",
                                        "--insecure"), env=env, stdout=open(logs / "server.log", "w"),
                              stderr=subprocess.STDOUT)
    nodes = [subprocess.Popen(_tuneloop("federated", "client", "--server", f"127.0.0.1:{port}", "--data-dir",
                                        str(d), "--port", str(_free_port()), "--insecure"), env=env,
                              stdout=open(logs / f"client-{i}.log", "w"), stderr=subprocess.STDOUT)
             for i, d in enumerate([*good, bad])]
    try:
        assert _kill_training_when_it_starts(nodes[1], logs / "client-1.log", 1200), "client 1 never trained"
        server.wait(timeout=1500)
    finally:
        for process in [server, *nodes]:
            if process.poll() is None:
                process.terminate()
        for process in [server, *nodes]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    server_log = (logs / "server.log").read_text()
    assert server.returncode == 0, server_log[-4000:]
    run_dir = tmp_path / "runs" / "fed"
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, second = rounds[1], rounds[2]
    data_error = f"{bad / 'train.jsonl'}:3: messages: must be an array of {{role, content}} objects"
    # Round 1: client 0 trained; client 1's training process died; the bad client named its error.
    assert len(first["clients"]) == 1 and first["aggregated"] is True
    assert len(first["dropped"]) == 1 and len(first["failed"]) == 1
    assert data_error in first["failed"][0]["reason"]
    # Round 2: both good clients trained; the bad one is excluded again.
    assert len(second["clients"]) == 2 and second["aggregated"] is True
    assert [f["node"] for f in second["failed"]] == [first["failed"][0]["node"]]
    assert data_error in (logs / "client-2.log").read_text()  # the client's operator sees it too
    assert second["validation_loss"] < rounds[0]["validation_loss"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["rounds_aggregated"] == 2
