"""Two CPU processes (gloo) on torch's own engines train like one process with the same global batch.

``distributed.strategy`` ddp (DistributedDataParallel) and fsdp (FSDP2 ``fully_shard``): the per-step
loss matches the single-process run, the consolidated final adapter matches its weights, a fsdp run
killed after a sharded checkpoint resumes exactly, and a two-node launch (``torchrun --nnodes 2``
with a c10d rendezvous on loopback) trains. fp32 throughout: with bf16 autocast (precision auto on a
CPU with native bf16) the rounding depends on how the batch is split, and the runs would differ by
~1e-4 for that reason alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from fixtures_train.helpers import KILLED_RUN, tiny_recipe
from tuneloop.config.recipe import DistributedConfig, recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl
from tuneloop.train import run_training
from tuneloop.train.checkpoint import step_checkpoints
from tuneloop.train.distributed import init_distributed

ENV = dict(os.environ, OMP_NUM_THREADS="1", TUNELOOP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# KILLED_RUN runs under torchrun, so SIGKILL takes rank 0 down mid-run; torchrun then stops rank 1 too.


def _two_process_recipe(tiny_model_dir, tmp_path, name, strategy, **train) -> dict:
    raw = tiny_recipe(tiny_model_dir, tmp_path, name=name, precision="fp32", **train)
    raw["distributed"] = {"strategy": strategy}
    return raw


def _torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(TORCHRUN + ["--standalone", "--nproc_per_node", "2", *args],
                            capture_output=True, text=True, timeout=timeout, env=ENV)
    return result


def _losses(run_dir) -> list[float]:
    return [m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.mark.slow  # two processes under torchrun
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tiny_model_dir, tmp_path, strategy):
    # One process: micro-batches of 4. Two processes: 1 example per micro-batch, accumulated twice
    # (no_sync / no gradient sync on the first micro-step), so the global step is 4 examples too.
    single = run_training(recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, name="one",
                                                       batch_size=4, max_steps=3, precision="fp32")))
    raw = _two_process_recipe(tiny_model_dir, tmp_path, "two", strategy, batch_size=1,
                              gradient_accumulation=2, max_steps=3)
    recipe_path = tmp_path / "two.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    result = _torchrun(["-m", "tuneloop.cli.main", "train", str(recipe_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _losses(single), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, abs=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Only rank 0 wrote: one line per step, one adapter, and (fsdp) gathered from the shards into
    # the same weights as the single process's.
    assert [m["step"] for m in read_jsonl(tmp_path / "two" / "metrics.jsonl")] == [1, 2, 3]
    expected = load_file(str(single / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max() < 1e-4, name


@pytest.mark.slow
def test_fsdp_killed_after_a_sharded_checkpoint_resumes_exactly(tiny_model_dir, tmp_path):
    # Dropout on, accumulation and a validation set: RNG states, data position, optimizer shards and
    # the padded evaluation all matter. Killed while evaluating step 3; step-2 is on disk.
    def recipe(name):
        raw = _two_process_recipe(tiny_model_dir, tmp_path, name, "fsdp", batch_size=1, gradient_accumulation=2,
                                  max_steps=4, save_every=2, eval_every=3, validation=True)
        raw["lora"]["dropout"] = 0.1
        return raw

    straight = recipe("straight")
    (tmp_path / "straight.yaml").write_text(yaml.safe_dump(straight))
    result = _torchrun(["-m", "tuneloop.cli.main", "train", str(tmp_path / "straight.yaml")])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = recipe("killed")
    (tmp_path / "killed.json").write_text(json.dumps(killed))
    (tmp_path / "killed.py").write_text(KILLED_RUN)
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(killed))
    result = _torchrun([str(tmp_path / "killed.py"), str(tmp_path / "killed.json"), "3"])
    assert result.returncode != 0
    run_dir = tmp_path / "killed"
    assert not (run_dir / "adapter").exists()
    checkpoints = step_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-2"]
    assert (checkpoints[0] / "sharded" / ".metadata").is_file()  # DCP, one file of shards per rank
    assert {p.name for p in checkpoints[0].glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}

    result = _torchrun(["-m", "tuneloop.cli.main", "train", str(tmp_path / "killed.yaml"), "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows, expected = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in expected], abs=1e-6)
    assert rows[-1]["validation_loss"] == pytest.approx(expected[-1]["validation_loss"], abs=1e-6)
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-6, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process(tiny_model_dir, tmp_path):
    """``torchrun --nnodes 2`` with a c10d rendezvous: what two machines run, here on one."""
    single = run_training(recipe_from_dict(tiny_recipe(tiny_model_dir, tmp_path, name="one",
                                                       batch_size=2, max_steps=2, precision="fp32")))
    raw = _two_process_recipe(tiny_model_dir, tmp_path, "nodes", "ddp", batch_size=1, max_steps=2)
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(raw))
    port = _free_port()
    nodes = [subprocess.Popen(
        TORCHRUN + ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "tuneloop-test",
                    "-m", "tuneloop.cli.main", "train", str(tmp_path / "nodes.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert _losses(tmp_path / "nodes") == pytest.approx(_losses(single), abs=1e-4)
    assert json.loads((tmp_path / "nodes" / "summary.json").read_text())["world_size"] == 2


def test_one_process_runs_plain_whatever_the_strategy(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(DistributedConfig(strategy="fsdp")).strategy == "none"


def test_distributed_keys_are_checked_with_a_hint(tiny_model_dir, tmp_path):
    raw = tiny_recipe(tiny_model_dir, tmp_path)
    raw["distributed"] = {"stratgy": "fsdp"}
    with pytest.raises(UserError, match="distributed.stratgy: unknown key; did you mean 'strategy'"):
        recipe_from_dict(raw)
    raw["distributed"] = {"strategy": "ddp", "cpu_offload": True}
    with pytest.raises(UserError, match="cpu_offload and mixed_precision are FSDP2 settings"):
        recipe_from_dict(raw)


def test_fsdp_refuses_methods_it_cannot_run_before_the_model_loads(tiny_model_dir, tmp_path):
    from tuneloop.train import shell
    from tuneloop.train.distributed import DistInfo

    raw = tiny_recipe(tiny_model_dir, tmp_path, method="qlora")
    with pytest.raises(UserError, match="method qlora keeps 4-bit weights"):
        shell.check_strategy(recipe_from_dict(raw), DistInfo(world_size=2, strategy="fsdp"))
    shell.check_strategy(recipe_from_dict(raw), DistInfo(world_size=2, strategy="ddp"))  # fine
    raw = tiny_recipe(tiny_model_dir, tmp_path)
    raw["distributed"] = {"strategy": "fsdp", "cpu_offload": True}
    with pytest.raises(UserError, match="cpu_offload: this run is on the CPU already"):
        shell.check_strategy(recipe_from_dict(raw), DistInfo(world_size=2, strategy="fsdp"))
