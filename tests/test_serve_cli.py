"""``tuneloop serve`` set-up errors (exit 1 with a message, before any weights load) and which model
ids a set of --model options gives."""

from __future__ import annotations

import shutil
import socket

import pytest
from serve_support import make_adapter_run

from tuneloop.cli.main import main
from tuneloop.errors import UserError
from tuneloop.serve.adapters import looks_like_path, parse_option, plan_models


def _exit_code(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_model_ids_of_a_base_and_adapter_runs(tiny_model_dir, tmp_path):
    run = make_adapter_run(tiny_model_dir, tmp_path / "support-bot", seed=5)
    table = plan_models([str(tiny_model_dir), f"billing={run}"])
    assert list(table.models) == ["tiny-llama", "billing"]
    assert table.base_id == "tiny-llama" and table.models["billing"].adapter_path == run / "adapter"
    only_run = plan_models([str(run)])  # an adapter run alone: its base is served beside it
    assert list(only_run.models) == ["tiny-llama", "support-bot"]


def test_option_parsing_and_path_like_names():
    assert parse_option("support=runs/support") == ("support", "runs/support")
    assert parse_option("smollm2-135m-instruct") == (None, "smollm2-135m-instruct")
    for name in ("../x", "a/../../b", "/etc/passwd", "~/.ssh/id", "C:\\x", "C:/x", "a\\b", "x\x00"):
        assert looks_like_path(name), name
    for name in ("support", "smollm2-135m-instruct", "org/model", "llama3:8b"):
        assert not looks_like_path(name), name


def test_adapters_on_another_base_and_duplicate_ids_are_refused(tiny_model_dir, tmp_path, capsys):
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "other-base")
    run = make_adapter_run(other_base, tmp_path / "run", seed=6)
    with pytest.raises(UserError, match="one base model"):
        plan_models([str(tiny_model_dir), f"x={run}"])
    assert _exit_code(["serve", "--model", str(tiny_model_dir), "--model", f"tiny-llama={run}", "--port", "0"]) == 1
    assert "error:" in capsys.readouterr().err


def test_vllm_engine_without_cuda_or_vllm_is_a_clear_error(tiny_model_dir, capsys):
    pytest.importorskip("torch")
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vllm and CUDA are both present here")
    assert _exit_code(["serve", "--model", str(tiny_model_dir), "--engine", "vllm", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--engine vllm needs" in err and "--engine transformers" in err


def test_a_busy_port_is_a_clear_error(tiny_model_dir, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert _exit_code(["serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 1
    assert "cannot listen" in capsys.readouterr().err
