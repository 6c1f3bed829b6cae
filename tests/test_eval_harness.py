"""lm-evaluation-harness through ``tuneloop eval --tasks``: a custom task YAML over a local JSONL file,
scored offline for the tuned model and its base in one command."""

from __future__ import annotations

import json

import pytest

from serve_support import make_adapter_run
from test_eval_cli import run_cli, small_classification_jsonl

pytest.importorskip("lm_eval")

TASK_YAML = """\
task: tuneloop_local_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.mark.slow  # lm_eval's import and task set-up take several seconds
def test_custom_task_over_local_jsonl_scored_for_tuned_and_base(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNELOOP_OFFLINE", "1")  # no download may happen; the data is local
    questions = [("What is the capital of France?", ["Paris", "Rome", "Oslo"], 0),
                 ("What is the capital of Italy?", ["Paris", "Rome", "Oslo"], 1),
                 ("What is the capital of Norway?", ["Paris", "Rome", "Oslo"], 2),
                 ("What is two plus two?", ["three", "four", "five"], 1)]
    task_data = tmp_path / "capitals.jsonl"
    task_data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                 for q, c, a in questions))
    task_file = tmp_path / "capitals.yaml"
    task_file.write_text(TASK_YAML.format(data=task_data))
    tuned = make_adapter_run(tiny_model_dir, tmp_path / "tuned-run", seed=3)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(["eval", "--model", str(tuned), "--baseline", str(tiny_model_dir),
                                 "--data", str(small_classification_jsonl(tmp_path / "test.jsonl", n=4)),
                                 "--tasks", str(task_file), "--out", str(out), "--max-new-tokens", "2", "--quiet"],
                                capsys)
    assert code == 0, err
    harness = json.loads((out / "eval.json").read_text())["harness"]
    acc = harness["tuneloop_local_capitals"]["acc"]
    # 4 questions: accuracies are multiples of 1/4; the delta is the tuned minus the base figure.
    for value in (acc["model"], acc["baseline"]):
        assert value * 4 == pytest.approx(round(value * 4))
    assert acc["delta"] == pytest.approx(acc["model"] - acc["baseline"]) and acc["model_stderr"] is not None
    assert "tuneloop_local_capitals" in stdout and "lm-evaluation-harness" in (out / "report.html").read_text()


def test_bad_task_arguments_fail_before_any_model_loads(tmp_path, capsys):
    data = small_classification_jsonl(tmp_path / "test.jsonl", n=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_path: json\n")
    for tasks, message in ((str(tmp_path / "missing.yaml"), "no such task file"), (str(bad), "no `task:` name")):
        code, _, err = run_cli(["eval", "--model", "no-such-model", "--data", str(data), "--tasks", tasks,
                                "--out", str(tmp_path / "o")], capsys)
        assert code == 1 and message in err and "Traceback" not in err
