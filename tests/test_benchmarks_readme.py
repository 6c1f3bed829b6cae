"""The README benchmark section is generated from results JSON: markers kept, figures copied, rest untouched."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_readme_table.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_readme_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = {
    "mode": "quick", "epochs": 1.0, "when_utc": "2026-11-28T15:40:00Z",
    "machine": {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "cores": 2, "ram_gb": 24.0,
                "native_bf16": False, "load_average": [1.0, 1.0, 1.0]},
    "versions": {"torch": "2.13.0", "transformers": "5.24", "peft": "0.21", "trl": "1.16"},
    "data": {"examples": 256, "tokens": 15360, "mean_len": 60.0},
    "peaks": {"before": {"fp32_gflops": 150.0, "bf16_gflops": 20.0, "bf16_native": False}, "used_gflops": 150.0},
    "flops": {"flops_per_token": 4.5e8},
    "summary": {
        "tuneloop": {"tokens_per_s": 300.0, "mfu": 0.9, "peak_rss_gb": 1.5, "validation_loss": 1.2345},
        "trl_defaults": {"tokens_per_s": 60.0, "mfu": 0.18, "peak_rss_gb": 2.5, "validation_loss": 1.3},
    },
    "comparisons": {"a": {"baseline": "trl_defaults", "speedup": 5.0, "goal": 3.0, "memory_ratio": 0.6,
                          "validation_loss_delta": -0.0655, "loss_comparable": True, "met": True}},
}


def test_section_is_replaced_from_results(tmp_path):
    generator = load_generator()
    results = tmp_path / "results"
    results.mkdir()
    (results / "train.json").write_text(json.dumps(TRAIN))
    (results / "startup.json").write_text(json.dumps({"python_bare_s": 0.02, "import_tuneloop_s": 0.08,
                                                      "help_s": 0.3, "model_load": {"load_model_s": 0.9,
                                                                                    "process_s": 4.1}}))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n<!-- benchmarks -->\nold text\n<!-- /benchmarks -->\n\n## Licence\n")

    assert generator.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()

    assert "old text" not in text
    assert text.startswith("# x\n\nintro\n<!-- benchmarks -->\n")
    assert text.endswith("<!-- /benchmarks -->\n\n## Licence\n")
    assert "| 300.0 |" in text and "5.00x" in text and "Test CPU" in text
    assert "**5.0x** (goal 3.0x)" in text
    assert "0.90 s (4.10 s)" in text  # model load from startup.json


def test_missing_results_say_not_measured(tmp_path):
    generator = load_generator()
    body = generator.render({})
    assert "not measured yet" in body


def test_learning_quality_section_reports_both_sides_and_the_verdict():
    generator = load_generator()
    side = {"steps": 250, "examples_per_step": 8, "train_s": 300.0, "peak_rss_gb": 2.5, "final_train_loss": 0.4,
            "scored": {"accuracy": 0.41, "validation_loss": 0.5, "no_label": 3}}
    result = {"mode": "full", "recipe": {"epochs": 1, "lora": {"r": 16}, "batch_size": 8, "learning_rate": 2e-4,
                                        "lr_scheduler": "linear", "max_seq_len": 256},
              "data": {"n_train": 2000, "n_test": 1501}, "machine": TRAIN["machine"], "versions": TRAIN["versions"],
              "base": {"accuracy": 0.0, "validation_loss": 6.1, "no_label": 1501},
              "sides": {"tuneloop": side, "trl": {**side, "train_s": 900.0, "scored": {**side["scored"], "accuracy": 0.40}}},
              "verdict": {"same_optimizer_steps": True, "accuracy_tuneloop_minus_trl": 0.01, "accuracy_at_least_trl": True,
                          "wall_time_ratio_trl_over_tuneloop": 3.0, "peak_rss_ratio_tuneloop_over_trl": 1.0}}
    text = generator.render({"learning_quality": result})
    assert "**Learning quality**" in text and "2,000 training chats" in text
    assert "| 41.0% | 3 |" in text and "| 40.0% | 3 |" in text and "| 0.0% | 1501 |" in text
    assert "+1.0 points (at least TRL)" in text and "3.0x" in text
