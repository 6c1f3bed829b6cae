"""What a user gets wrong, command by command: exit 1 (2 for click usage), a message naming the file,
line, option or field, no traceback, and no input or earlier output lost.

Runs ``tuneloop.cli.main.main`` in-process (one torch import for the whole table); an exception that
is not a UserError escapes ``main`` and fails the test. A few cases also run as real subprocesses.
No training, no model loads: every case fails before weights would be read ({model} is a directory
with only a config.json), so the table needs neither the embedded nor the tiny test model.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.cli.main import main

BINARY = bytes(range(255, -1, -1)) * 2  # invalid UTF-8 on line 1, NUL bytes, no final newline
GOOD_CHAT = json.dumps({"messages": [{"role": "user", "content": "where is my order"},
                                     {"role": "assistant", "content": "it ships today"}]})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A working directory full of the mistakes below."""
    d = tmp_path_factory.mktemp("bad-input")
    (d / "empty.jsonl").write_text("")
    (d / "garbage.jsonl").write_bytes(BINARY)
    (d / "garbage.txt").write_bytes(BINARY)
    (d / "garbage.yaml").write_bytes(BINARY)
    (d / "fake.gguf").write_bytes(BINARY)
    (d / "afile").write_text("a file, not a directory\n")
    (d / "malformed.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}\n')
    (d / "types.jsonl").write_text(GOOD_CHAT + '\n{"messages": [{"role": "user", "content": 5}]}\n')
    (d / "invalid.jsonl").write_text('{"nothing": 1}\n{"useful": 2}\n')
    (d / "good.jsonl").write_text("\n".join(GOOD_CHAT.replace("order", f"order {i}") for i in range(6)) + "\n")
    (d / "ev.jsonl").write_text('{"prompt": "hi", "completion": "hello"}\n')
    (d / "data.csv").write_text("text,category\nlost card,card\n")
    (d / "queue.jsonl").write_text('{"text": "lost card", "label": "card"}\n')
    (d / "oneline.jsonl").write_text('{"text": "x", "label": "card"}')  # no final newline
    (d / "empty.yaml").write_text("\n")
    (d / "recipe.yaml").write_text("name: qa\nmodel: no-weights\nmethod: lora\ndata:\n  train: good.jsonl\n"
                                   "train:\n  max_steps: 1\n  batch_size: 2\n  max_seq_len: 64\n")
    (d / "typo.yaml").write_text((d / "recipe.yaml").read_text().replace("max_steps", "max_stepz"))
    (d / "recipe_dir").mkdir()
    (d / "existing").mkdir()
    (d / "existing" / "keep.txt").write_text("keep")
    (d / "prepared").mkdir()
    (d / "prepared" / "train.jsonl").write_text((d / "good.jsonl").read_text())
    broken = d / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text("{oops")
    no_weights = d / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "llama"}')
    run = d / "run-no-weights" / "adapter"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "no-weights"}))
    run = d / "run-bad-base"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    (run / "tuneloop_base.json").write_text("garbage{")
    (d / "notrun").mkdir()
    (d / "notrun" / "readme.txt").write_text("hi")
    (d / "garbage.db").write_bytes(BINARY)
    return d


def run(argv: list[str], ws: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(ws)
    monkeypatch.setenv("TUNELOOP_HOME", str(ws / "home"))
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


V = ["data", "validate"]
P = ["data", "prepare"]
T = ["train"]
E = ["eval", "--model", "{model}", "--data", "ev.jsonl", "--quiet"]
NO_SUGGEST = ["--terminal", "--suggest-model", "none", "--annotator", "qa"]

# (id, argv, exit code, fragment of the message).
CASES = [
    ("validate-missing", V + ["nope.jsonl"], 1, "nope.jsonl: no such file"),
    ("validate-empty", V + ["empty.jsonl"], 1, "no records found in empty.jsonl"),
    ("validate-malformed", V + ["malformed.jsonl"], 1, "malformed.jsonl:1: record: invalid JSON"),
    ("validate-types", V + ["types.jsonl"], 1, "types.jsonl:2: messages[0].content: must be a string"),
    ("validate-binary-txt", V + ["garbage.txt"], 1, "garbage.txt:1: record: binary file"),
    ("validate-unsupported", V + ["garbage.yaml"], 1, "unsupported file type '.yaml'"),
    ("validate-column", V + ["data.csv", "--text-column", "nope"], 1, "no column 'nope' for --text-column"),
    ("validate-dir", V + ["recipe_dir"], 1, "recipe_dir: directory has no data files"),
    ("prepare-split", P + ["good.jsonl", "--out", "o", "--split", "0.5,0.5"], 1, "--split 0.5,0.5"),
    ("prepare-split-sum", P + ["good.jsonl", "--out", "o", "--split", "0.9,0.9,0.1"], 1, "sum to 1.9"),
    ("prepare-seed", P + ["good.jsonl", "--out", "o", "--seed", "abc"], 2, "'--seed'"),
    ("prepare-out-file", P + ["good.jsonl", "--out", "afile"], 2, "is a file"),
    ("prepare-out-under-file", P + ["good.jsonl", "--out", "afile/sub"], 1, "--out afile/sub: afile is a file"),
    ("prepare-overwrites-input", P + ["prepared/train.jsonl", "--out", "prepared"], 1,
     "would overwrite the input prepared/train.jsonl"),
    ("prepare-nothing-usable", P + ["invalid.jsonl", "--out", "o2", "--model", "none", "-q"], 1,
     "none of the 2 records is usable"),
    ("train-missing", T + ["nope.yaml"], 1, "recipe file not found: nope.yaml"),
    ("train-dir", T + ["recipe_dir"], 2, "is a directory"),
    ("train-binary", T + ["garbage.yaml"], 1, "garbage.yaml: not UTF-8 text"),
    ("train-empty", T + ["empty.yaml"], 1, "empty.yaml: the recipe is empty"),
    ("train-typo", T + ["typo.yaml"], 1, "train.max_stepz: unknown key; did you mean 'max_steps'?"),
    ("train-set-no-eq", T + ["recipe.yaml", "--set", "foo", "--dry-run"], 1, "expected key=value"),
    ("train-set-yaml", T + ["recipe.yaml", "--set", "train.max_steps=[1", "--dry-run"], 1,
     "--set 'train.max_steps=[1': the value is not valid YAML"),
    ("train-set-empty-key", T + ["recipe.yaml", "--set", "=1", "--dry-run"], 1, "empty key"),
    ("train-set-type", T + ["recipe.yaml", "--set", "train.batch_size=two", "--dry-run"], 1,
     "train.batch_size: Input should be a valid integer"),
    ("train-out-under-file", T + ["recipe.yaml", "--out", "afile/run"], 1, "afile is a file, not a directory"),
    ("eval-missing-data", ["eval", "--model", "{model}", "--data", "nope.jsonl"], 1, "nope.jsonl: no such file"),
    ("eval-binary-data", ["eval", "--model", "{model}", "--data", "garbage.jsonl"], 1, "garbage.jsonl:1: not UTF-8"),
    ("eval-gate-syntax", E + ["--gate", "f1 >="], 1, "--gate 'f1 >=': not a rule"),
    ("eval-gate-metric", E + ["--gate", "bogus >= 0.5"], 1, "unknown metric 'bogus'"),
    ("eval-gate-baseline", E + ["--gate", "rougeL >= baseline"], 1, "no baseline was given"),
    ("eval-gate-code", E + ["--gate", "__import__('os')"], 1, "unexpected text"),
    ("eval-slice-threshold", E + ["--slice-threshold", "-1"], 2, "'--slice-threshold'"),
    ("eval-out-under-file", E + ["--out", "afile/e"], 1, "--out afile/e: afile is a file"),
    ("eval-unknown-model", ["eval", "--model", "no-such-model", "--data", "ev.jsonl"], 1, "model 'no-such-model'"),
    ("estimate-unknown", ["models", "estimate", "no-such-model"], 1, "model 'no-such-model' not found"),
    ("estimate-seq-len", ["models", "estimate", "smollm2-135m-instruct", "--seq-len", "-5"], 2, "'--seq-len'"),
    ("recommend-task", ["models", "recommend", "--task", "chatt", "--memory-gb", "8"], 1, "did you mean 'chat'?"),
    ("recommend-top", ["models", "recommend", "--task", "chat", "--memory-gb", "8", "--top", "0"], 2, "'--top'"),
    ("import-fake-gguf", ["models", "import", "fake.gguf"], 1, "fake.gguf: not a GGUF file"),
    ("import-not-model", ["models", "import", "recipe_dir"], 1, "recipe_dir has no config.json"),
    ("chat-unknown", ["chat", "-m", "no-such-model", "hi"], 1, "model 'no-such-model' not found"),
    ("chat-fake-gguf", ["chat", "-m", "fake.gguf", "hi"], 1, "not a GGUF file"),
    ("chat-broken-config", ["chat", "-m", "broken-config", "hi"], 1, "broken-config: cannot load the model"),
    ("chat-no-weights", ["chat", "-m", "no-weights", "hi"], 1, "no-weights: cannot load the model"),
    ("chat-not-a-run", ["chat", "-m", "notrun", "hi"], 1, "notrun is a directory but not a model or a run"),
    ("chat-run-no-weights", ["chat", "-m", "run-no-weights", "hi"], 1, "the adapter has no weights"),
    ("chat-run-bad-base", ["chat", "-m", "run-bad-base", "hi"], 1, "tuneloop_base.json: not a JSON object"),
    ("chat-max-new-tokens", ["chat", "-m", "{model}", "--max-new-tokens", "-1", "hi"], 2, "'--max-new-tokens'"),
    ("export-not-run", ["export", "notrun", "--out", "x1"], 1, "notrun is a directory but not a model or a run"),
    ("export-out-exists", ["export", "{model}", "--out", "existing"], 1, "existing already exists and is not empty"),
    ("export-out-under-file", ["export", "{model}", "--out", "afile/x"], 1, "afile is a file"),
    ("export-group-size", ["export", "{model}", "--out", "x2", "--quantize", "int4", "--group-size", "7"], 2,
     "'--group-size'"),
    ("serve-bad-db", ["serve", "--model", "{model}", "--port", "0", "--db", "notaurl"], 1, "--db: cannot use"),
    ("serve-db-not-sqlite", ["serve", "--model", "{model}", "--port", "0", "--db", "sqlite:///garbage.db"], 1,
     "file is not a database"),
    ("serve-db-under-file", ["serve", "--model", "{model}", "--port", "0", "--db", "sqlite:///afile/x.db"], 1,
     "afile is a file"),
    ("serve-unknown-model", ["serve", "--model", "no-such-model", "--port", "0"], 1, "model 'no-such-model'"),
    ("monitor-since", ["monitor", "--since", "soon"], 1, "--since: cannot read time window 'soon'"),
    ("monitor-db-missing", ["monitor", "--db", "sqlite:///nope.db"], 1, "--db: no serving store at nope.db"),
    ("monitor-db-garbage", ["monitor", "--db", "sqlite:///garbage.db"], 1, "file is not a database"),
    ("feedback-db-missing", ["data", "from-feedback", "--db", "sqlite:///nope.db", "--out", "fb"], 1,
     "no serving store at nope.db"),
    ("augment-out-is-input", ["data", "augment", "good.jsonl", "--out", "good.jsonl", "--method", "noise"], 1,
     "is the same file as FILE"),
    ("augment-topics-binary", ["data", "augment", "good.jsonl", "--out", "a.jsonl", "--method", "synthetic",
                               "--topics", "garbage.jsonl"], 1, "--topics garbage.jsonl: not UTF-8"),
    ("annotate-out-is-queue", ["annotate", "queue.jsonl", "--out", "queue.jsonl"] + NO_SUGGEST, 1,
     "is the same file as QUEUE"),
    ("annotate-out-not-labels", ["annotate", "queue.jsonl", "--out", "oneline.jsonl"] + NO_SUGGEST, 1,
     "does not look like a labels file"),
    ("annotate-out-binary", ["annotate", "queue.jsonl", "--out", "garbage.jsonl"] + NO_SUGGEST, 1,
     "garbage.jsonl:1: invalid JSON"),
    ("annotate-stats-queue", ["annotate", "stats", "queue.jsonl"], 1, "queue.jsonl:1: not a label line: no record_id"),
    ("annotate-stats-binary", ["annotate", "stats", "garbage.jsonl"], 1, "garbage.jsonl:1: invalid JSON"),
    ("annotate-export-same", ["annotate", "export", "queue.jsonl", "--out", "queue.jsonl"], 1, "same file as LABELS"),
    ("quickstart-out-under-file", ["quickstart", "--out", "afile/q"], 1, "afile is a file"),
    ("quickstart-out-not-ours", ["quickstart", "--out", "existing"], 1, "was not written by a quickstart"),
]

# Files no failed command may change or leave behind.
KEPT = ["garbage.jsonl", "good.jsonl", "queue.jsonl", "oneline.jsonl", "existing/keep.txt",
        "prepared/train.jsonl", "garbage.db", "afile"]
NOT_CREATED = ["o", "x1", "x2", "fb", "a.jsonl", "nope.db", "afile/sub", ".x1.partial", ".x2.partial"]


@pytest.mark.parametrize("argv, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, code, fragment, ws, monkeypatch, capsys):
    before = {name: (ws / name).read_bytes() for name in KEPT}
    got, output = run([a.replace("{model}", "no-weights") for a in argv], ws, monkeypatch, capsys)
    assert got == code, output
    assert fragment in output
    assert "Traceback" not in output
    for name, content in before.items():
        assert (ws / name).read_bytes() == content, f"{name} changed"
    for name in NOT_CREATED:
        assert not (ws / name).exists(), f"{name} was left behind"


def test_serve_port_in_use(ws, monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = run(["serve", "--model", "no-weights", "--port", str(port)], ws, monkeypatch, capsys)
    assert code == 1 and f"--port: cannot listen on 127.0.0.1:{port}" in output


def test_training_data_readers_name_the_line_of_non_utf8_bytes(ws):
    from tuneloop.errors import UserError
    from tuneloop.train.data import read_chat_jsonl
    from tuneloop.train.preference.data import _read_json_lines

    for reader in (read_chat_jsonl, _read_json_lines):
        with pytest.raises(UserError, match="not UTF-8 text") as caught:
            reader(ws / "garbage.jsonl")
        assert caught.value.where.endswith("garbage.jsonl:1")


def _commands():
    from tuneloop.cli.main import COMMANDS, cli

    import click

    out = []
    for name in COMMANDS:
        command = cli.get_command(None, name)
        out.append([name])
        if isinstance(command, click.Group):
            out += [[name, sub] for sub in command.commands]
    return out


@pytest.mark.parametrize("path", _commands(), ids=" ".join)
def test_help(path, ws, monkeypatch, capsys):
    code, output = run([*path, "--help"], ws, monkeypatch, capsys)
    assert code == 0 and "Usage: tuneloop" in output


def test_subprocess_errors_and_fast_help(ws):
    """The real process: message on stderr, exit 1, no traceback; --help imports nothing heavy."""
    cmd = [sys.executable, "-m", "tuneloop.cli.main"]
    started = time.perf_counter()
    done = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 0 and "quickstart" in done.stdout
    assert seconds < 5, seconds  # ~0.3 s on an idle machine; generous for a loaded CI box
    probe = ("import sys; from tuneloop.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
             "    pass\nprint(sorted(m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60).stdout.strip().endswith("[]")
    for args, fragment in [(["train", "garbage.yaml"], "garbage.yaml: not UTF-8"),
                           (["data", "validate", "nope.jsonl"], "nope.jsonl: no such file")]:
        done = subprocess.run(cmd + args, capture_output=True, text=True, cwd=ws, timeout=120)
        assert done.returncode == 1 and fragment in done.stderr and "Traceback" not in done.stderr + done.stdout
