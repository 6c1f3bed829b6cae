"""``tuneloop eval`` end to end on the tiny random model: files, eval.json contract, gates and exit codes.

The tiny model answers nonsense, which is fine: these tests check the plumbing (same model as model and
baseline gives delta 0, a gate that cannot hold exits 3, bad input exits 1 before any model loads).
The slow test runs the embedded SmolLM2 model on a few Banking77 records.
"""

from __future__ import annotations

import csv
import json

import pytest

from tuneloop.cli.main import main
from tuneloop.paths import read_jsonl

SPEC_KEYS = {"model", "data", "n", "metrics", "baseline", "gate"}
SPEC_METRICS = {"accuracy", "precision", "recall", "f1", "perplexity", "latency_ms_p50", "latency_ms_p95",
                "tokens_per_s"}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``tuneloop ARGS``; main() returns normally on success."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def small_classification_jsonl(path, n: int = 8):
    rows = [("Where is my new card?", "card_arrival"), ("My card was stolen", "lost_or_stolen_card"),
            ("What is the exchange rate?", "exchange_rate"), ("The card has not arrived", "card_arrival")]
    with open(path, "w") as f:
        for i in range(n):
            text, label = rows[i % len(rows)]
            f.write(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": text},
                                {"role": "assistant", "content": label}], "label": label,
                                "channel": "app" if i % 2 else "web"}) + "\n")
    return path


def test_same_model_as_baseline_gives_zero_delta_and_gate_passes(tiny_model_dir, tmp_path, capsys):
    data = small_classification_jsonl(tmp_path / "test.jsonl")
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(["eval", "--model", str(tiny_model_dir), "--baseline", str(tiny_model_dir),
                               "--data", str(data), "--out", str(out), "--gate", "accuracy >= baseline",
                               "--slice-by", "channel", "--batch-size", "4", "--max-new-tokens", "4", "--quiet"],
                              capsys)
    assert code == 0
    assert "gate PASS: accuracy >= baseline" in stdout
    result = json.loads((out / "eval.json").read_text())
    assert SPEC_KEYS <= result.keys() and SPEC_METRICS <= result["metrics"].keys()
    assert result["n"] == 8 and result["task"] == "classification"
    for name in ("accuracy", "f1", "perplexity"):
        assert result["comparison"][name]["delta"] == 0.0
        assert result["comparison"][name]["ci95"] == [0.0, 0.0]
    assert result["gate"]["passed"] is True and result["gate"]["rule"] == "accuracy >= baseline"
    assert set(result["slices"]["groups"]) == {"app", "web"}
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [f"r{i}" for i in range(8)]
    assert {"prompt", "reference", "prediction", "correct", "latency_ms", "predicted_label"} <= predictions[0].keys()
    assert len(read_jsonl(out / "predictions.baseline.jsonl")) == 8
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Model vs baseline" in page and "http" not in page.split("<svg")[0]


def test_failed_gate_exits_3_and_still_writes_results(tiny_model_dir, tmp_path, capsys):
    data = small_classification_jsonl(tmp_path / "test.jsonl", n=4)
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                               "--gate", "accuracy >= 1.01", "--max-new-tokens", "2", "--quiet"], capsys)
    assert code == 3
    assert "gate FAIL: accuracy >= 1.01" in stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["gate"]["passed"] is False and result["baseline"] is None


@pytest.mark.parametrize("args, message", [
    (["--gate", "acuracy >= 0.8"], "did you mean 'accuracy'"),
    (["--gate", "accuracy >= baseline"], "add --baseline"),
    (["--gate", "bleu >= 10"], "unknown metric 'bleu'"),  # a generation metric on classification data
    (["--slice-by", "chanel"], "did you mean 'channel'"),
])
def test_bad_options_exit_1_before_loading_a_model(tmp_path, capsys, args, message):
    data = small_classification_jsonl(tmp_path / "test.jsonl", n=4)
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", "--model", "no-such-model-anywhere", "--data", str(data), "--out", str(out),
                            *args], capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_data_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}) + "\n")
    code, _, err = run_cli(["eval", "--model", "x", "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and f"{data}:2: messages" in err and "no reference answer" in err


def test_generation_data_with_facts_through_the_python_api(tiny_model_dir, tmp_path):
    from tuneloop.evaluate import run_eval

    data = tmp_path / "gen.jsonl"
    with open(data, "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": f"When do you open on day {i}?", "completion": "We open at 9 am.",
                                "facts": ["9 am"]}) + "\n")
    result = run_eval(str(tiny_model_dir), data, max_new_tokens=3, progress=False,
                      gates=["rougeL >= 0", "exact_match < 0.5"])
    assert result["task"] == "generation"
    assert {"exact_match", "bleu", "rouge1", "rouge2", "rougeL", "chrf", "fact_accuracy"} <= result["metrics"].keys()
    assert result["metrics"]["fact_accuracy"] == 0.0  # 3 random tokens cannot say "9 am"
    assert result["gate"]["passed"] is True
    assert result["metrics"]["perplexity"] > 1000  # a random model over a 49k vocabulary


def banking77_jsonl(banking77_csv, tmp_path, n: int = 40):
    """Prepared Banking77 test records: via `data prepare` on a CSV sample, else converted here."""
    with open(banking77_csv) as f:
        rows = list(csv.DictReader(f))[:n]
    try:
        from tuneloop.data.prepare import PrepareOptions, prepare
    except ImportError:
        prepare = None
    if prepare is not None:
        sample = tmp_path / "banking77.csv"
        with open(sample, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(rows)
        options = PrepareOptions(text_column="text", label_column="category", split=(0.0, 0.0, 1.0))
        prepare([sample], tmp_path / "prepared", options)
        return tmp_path / "prepared" / "test.jsonl"
    path = tmp_path / "test.jsonl"
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": str(i), "text": row["text"], "label": row["category"]}) + "\n")
    return path


def test_banking77_sample_on_the_tiny_model(banking77_csv, tiny_model_dir, tmp_path):
    from tuneloop.evaluate import run_eval

    data = banking77_jsonl(banking77_csv, tmp_path, n=24)
    result = run_eval(str(tiny_model_dir), data, out_dir=tmp_path / "eval", slice_by="label",
                      max_new_tokens=2, batch_size=12, progress=False)
    assert result["task"] == "classification" and result["n"] >= 20
    assert len(result["confusion"]["matrix"]) >= len(result["slices"]["groups"])
    assert (tmp_path / "eval" / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_embedded_model_on_banking77(banking77_csv, tmp_path):
    from tuneloop.evaluate import run_eval

    data = banking77_jsonl(banking77_csv, tmp_path, n=16)
    result = run_eval("smollm2-135m-instruct", data, out_dir=tmp_path / "eval", progress=False)
    predictions = read_jsonl(tmp_path / "eval" / "predictions.jsonl")
    assert len(predictions) == result["n"]
    assert sum(1 for p in predictions if p["prediction"].strip()) >= result["n"] // 2  # a real model answers
    assert 1 < result["metrics"]["perplexity"] < 10_000
    assert result["metrics"]["tokens_per_s"] > 0 and result["metrics"]["model_size_mb"] > 100
