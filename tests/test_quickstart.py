"""Quickstart: the bundled data (generated, messy, facts learnable and held out), the pipeline end to
end on the tiny model, the exported model in a separate process, and the printed table."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tuneloop.errors import UserError
from tuneloop.quickstart.make_dataset import (DATA_DIR, HELDOUT_FILE, TRAIN_FILE, build_heldout_records,
                                              build_training_lines)
from tuneloop.quickstart.store_facts import all_facts

TRAIN_LINES = (DATA_DIR / TRAIN_FILE).read_text(encoding="utf-8").splitlines()
HELDOUT = [json.loads(line) for line in (DATA_DIR / HELDOUT_FILE).read_text(encoding="utf-8").splitlines()]


def _parsed_training() -> list[dict]:
    records = []
    for line in TRAIN_LINES:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record.get("messages"), list):
            records.append(record)
    return records


# --- the bundled data -----------------------------------------------------------------------------

def test_committed_data_is_exactly_what_the_generator_writes():
    assert TRAIN_LINES == build_training_lines()
    assert HELDOUT == build_heldout_records()


def test_training_file_is_big_and_realistically_messy():
    assert len(TRAIN_LINES) >= 340
    broken = [line for line in TRAIN_LINES if not line.startswith("{") or not line.endswith("}")]
    assert len(broken) >= 1  # a line cut off mid-export
    duplicated = sum(n - 1 for n in Counter(TRAIN_LINES).values() if n > 1)
    assert duplicated >= 8
    text = "\n".join(TRAIN_LINES)
    assert "@example.com" in text and "+1 555 " in text
    users = [m.get("content", "") for r in _parsed_training() for m in r["messages"] if m.get("role") == "user"]
    assert sum(1 for text in users if "card 4" in text.lower() or "my card" in text.lower()) >= 4


def test_every_heldout_fact_is_taught_several_ways_but_never_asked_the_same_way():
    training_questions = {m["content"] for r in _parsed_training() for m in r["messages"] if m["role"] == "user"}
    answers = [m["content"] for r in _parsed_training() for m in r["messages"]
               if isinstance(m, dict) and m.get("role") == "assistant"]
    assert 40 <= len(HELDOUT) <= 60
    for record in HELDOUT:
        question, reference = record["messages"][-2]["content"], record["messages"][-1]["content"]
        assert record["facts"] and all(f.lower() in reference.lower() for f in record["facts"])
        assert not any(question in q for q in training_questions), question
        teaching = [a for a in answers if all(f.lower() in a.lower() for f in record["facts"])]
        assert len(set(teaching)) >= 2, record["id"]  # several phrasings of the answer


def test_fact_strings_do_not_contain_each_other():
    """Otherwise one fact's answer would count as correct for another's question."""
    strings = {f for fact in all_facts() for f in fact.facts}
    for a in strings:
        for b in strings - {a}:
            assert a.lower() not in b.lower(), (a, b)


def test_answers_survive_pii_redaction():
    from tuneloop.data.pii import find_pii

    for fact in all_facts():
        for answer in fact.answers:
            assert not find_pii(answer), answer


# --- the report -----------------------------------------------------------------------------------

def test_console_table_shows_points_of_improvement():
    from tuneloop.quickstart.report import console_table

    table = console_table({"fact_accuracy": 0.05, "rougeL": 0.1, "latency_ms_p50": 900.0},
                          {"fact_accuracy": 0.8, "rougeL": 0.6, "latency_ms_p50": 400.0})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "change"]
    assert "5%" in lines[2] and "80%" in lines[2] and "+75 points" in lines[2]
    assert "-500" in lines[4]


# --- the pipeline ---------------------------------------------------------------------------------

REPLAY_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, conversations, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out).eval()
prompts = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for c in conversations]
width = max(map(len, prompts))
ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, width:].tolist()
eos = tok.eos_token_id
texts = [tok.decode(g[: g.index(eos)] if eos in g else g, skip_special_tokens=True).strip() for g in gen]
print(json.dumps({"prompts": prompts, "answers": texts}))
"""


@pytest.fixture(scope="module")
def tiny_quickstart(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    from tuneloop.quickstart.pipeline import QuickstartSettings, run_quickstart

    out = tmp_path_factory.mktemp("qs") / "quickstart"
    settings = QuickstartSettings(model=str(tiny_model_dir), max_steps=2, heldout_limit=4,
                                  eval_max_new_tokens=6, answer_max_new_tokens=8)
    return out, run_quickstart(out, settings=settings)


@pytest.mark.slow  # the whole pipeline: prepare, train, evaluate, export
def test_quickstart_writes_every_artifact(tiny_quickstart):
    out, summary = tiny_quickstart
    for name in ("report.html", "training_curve.svg", "quickstart.json", "heldout.jsonl", "data/train.jsonl",
                 "data/report.html", "eval/eval.json", "eval/report.html", "exported/model.safetensors",
                 "exported/chat_template.jinja", "runs/brightcart-support/adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert summary["data"]["invalid"] >= 5 and summary["data"]["exact_duplicates"] >= 8
    assert summary["data"]["train"] + summary["data"]["validation"] == summary["data"]["output"]
    assert summary["heldout_questions"] == 4
    for side in ("base", "tuned"):
        assert 0.0 <= summary["metrics"][side]["fact_accuracy"] <= 1.0
        assert "rougeL" in summary["metrics"][side] and summary["metrics"][side]["latency_ms_p50"] > 0
    html = (out / "report.html").read_text()
    for link in ('href="data/report.html"', 'href="eval/report.html"', 'src="training_curve.svg"'):
        assert link in html
    assert json.loads((out / "quickstart.json").read_text())["status"] == "finished"
    assert "<svg" in (out / "training_curve.svg").read_text()[:500]


@pytest.mark.slow
def test_exported_model_in_a_separate_process_matches_training_and_the_tuned_answers(tiny_quickstart):
    from tuneloop.chat.template import encode_chat
    from tuneloop.models.loading import load_tokenizer
    from tuneloop.paths import read_jsonl

    out, summary = tiny_quickstart
    heldout = {r["id"]: r for r in read_jsonl(out / "heldout.jsonl")}
    examples = summary["side_by_side"]
    assert len(examples) == 3
    conversations = [heldout[e["id"]]["messages"][:-1] for e in examples]
    done = subprocess.run([sys.executable, "-c", REPLAY_SCRIPT, str(out / "exported"), json.dumps(conversations),
                           "8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    replay = json.loads(done.stdout.strip().splitlines()[-1])

    tokenizer = load_tokenizer(out / "runs" / "brightcart-support")
    for e, prompt_ids in zip(examples, replay["prompts"]):
        encoded = encode_chat(tokenizer, heldout[e["id"]]["messages"])  # exactly as training encodes it
        assert prompt_ids == encoded.input_ids[: encoded.assistant_spans[0][0]]
    assert replay["answers"] == [e["tuned"] for e in examples]


def test_quickstart_never_clobbers_a_foreign_directory(tmp_path):
    from tuneloop.quickstart.pipeline import run_quickstart

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by a quickstart"):
        run_quickstart(out, model="smollm2-135m-instruct")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_help_lists_the_options():
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "quickstart", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--out", "--epochs", "--fast", "--model"):
        assert option in done.stdout
