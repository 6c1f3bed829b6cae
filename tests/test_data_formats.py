"""The shapes other tools write (OpenAI extras, ShareGPT, TRL conversational, unpaired KTO): each is a
real small file run through `data validate`, `data prepare` and training's reader, which must agree.

Also: `weight: 0` turns get no labels, and tool calls render through the chat template (or stop with
a located error when the template cannot express them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneloop.chat.template import CHATML_TEMPLATE, IGNORE_INDEX, encode_chat, select_chat_template
from tuneloop.cli.data import data
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.train import run_training
from tuneloop.train.data import read_chat_jsonl, tokenize_records
from tuneloop.train.preference.data import load_preference_records

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def tool_chat(i: int = 0) -> dict:
    """OpenAI fine-tuning JSONL with every extra: content parts, tools, a tool call, weight 0."""
    return {"tools": [WEATHER_TOOL], "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": f"Paris {i}?"}]},
        {"role": "assistant", "content": "Let me guess: rain.", "weight": 0},
        {"role": "user", "content": "Check properly."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "assistant", "content": f"It is 18C and sunny in Paris ({i}).", "weight": 1}]}


def sharegpt(i: int = 0) -> dict:
    return {"system": "Be brief.", "conversations": [
        {"from": "human", "value": f"What is {i} plus {i}?"}, {"from": "gpt", "value": f"{2 * i}."}]}


def trl_prompt_completion(i: int = 0) -> dict:
    return {"prompt": [{"role": "user", "content": f"Say hello {i}."}],
            "completion": [{"role": "assistant", "content": f"Hello {i}!"}]}


def trl_preference(i: int = 0) -> dict:
    return {"prompt": [{"role": "user", "content": f"Capital of France? ({i})"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": "Lyon."}]}


def trl_implicit_preference(i: int = 0) -> dict:
    question = {"role": "user", "content": f"Two plus two? ({i})"}
    return {"chosen": [question, {"role": "assistant", "content": "Four."}],
            "rejected": [question, {"role": "assistant", "content": "Five."}]}


def kto_unpaired(i: int = 0) -> dict:
    return {"prompt": f"Is the sky blue? ({i})", "completion": "Yes." if i % 2 == 0 else "No, green.",
            "label": i % 2 == 0}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepared(tmp_path: Path, src: Path, task: str) -> list[dict]:
    out = tmp_path / "prepared"
    result = CliRunner().invoke(data, ["prepare", str(src), "--out", str(out), "--task", task,
                                       "--split", "1,0,0", "--near-dup-threshold", "1.0"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("make, task", [
    (tool_chat, "sft"), (sharegpt, "sft"), (trl_prompt_completion, "sft"),
    (trl_preference, "preference"), (trl_implicit_preference, "preference"), (kto_unpaired, "preference"),
])
def test_every_shape_validates_and_prepares(tmp_path, make, task):
    src = write_jsonl(tmp_path / "in.jsonl", [make(i) for i in range(4)])
    result = CliRunner().invoke(data, ["validate", str(src), "--task", task])
    assert result.exit_code == 0, result.output
    records = prepared(tmp_path, src, task)
    assert len(records) == 4
    assert all(isinstance(m["content"], str) for r in records for m in r.get("messages", []))


def test_sft_shapes_train_on_what_prepare_writes(tmp_path):
    """Training reads the raw file and the prepared file into the same conversations."""
    for make in (tool_chat, sharegpt, trl_prompt_completion):
        src = write_jsonl(tmp_path / "raw.jsonl", [make(i) for i in range(3)])
        from_raw = [m for _, m in read_chat_jsonl(src)]
        from_prepared = write_jsonl(tmp_path / "canon.jsonl", prepared(tmp_path, src, "sft"))
        by_text = {json.dumps(m[-1]["content"]): m for _, m in read_chat_jsonl(from_prepared)}
        for messages in from_raw:
            assert by_text[json.dumps(messages[-1]["content"])] == messages
    conversation = read_chat_jsonl(write_jsonl(tmp_path / "one.jsonl", [tool_chat()]))[0][1]
    assert conversation[1]["content"] == "Weather in Paris 0?"  # text parts joined, as serve does
    assert conversation.tools == [WEATHER_TOOL]
    sharegpt_conv = read_chat_jsonl(write_jsonl(tmp_path / "sg.jsonl", [sharegpt(2)]))[0][1]
    assert sharegpt_conv == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "What is 2 plus 2?"},
                             {"role": "assistant", "content": "4."}]


def test_preference_shapes_load_as_pairs(tmp_path):
    explicit = load_preference_records(write_jsonl(tmp_path / "p.jsonl", [trl_preference(0)]))[0]
    implicit = load_preference_records(write_jsonl(tmp_path / "i.jsonl", [trl_implicit_preference(0)]))[0]
    assert explicit["messages"] == [{"role": "user", "content": "Capital of France? (0)"}]
    assert explicit["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert implicit["messages"] == [{"role": "user", "content": "Two plus two? (0)"}]
    assert implicit["rejected"] == [{"role": "assistant", "content": "Five."}]
    with pytest.raises(UserError, match=r"u\.jsonl:1.*unpaired"):
        load_preference_records(write_jsonl(tmp_path / "u.jsonl", [kto_unpaired(0)]))


@pytest.mark.parametrize("row, field, words", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "ok"}]}, "messages[0].content[0].type", "image_url"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"},
                   {"role": "assistant", "content": "ok"}]}, "messages[1].role", "answers a tool call"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]},
        {"role": "tool", "content": "1"}, {"role": "assistant", "content": "ok"}]},
     "messages[1].tool_calls[0].function.arguments", "JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "weight": 0}]},
     "messages", "weight 0"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "ok"}]},
     "conversations[1].from", "ShareGPT speaker"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
     "conversations[1].value", "empty"),
])
def test_bad_records_of_the_new_shapes_name_the_field(tmp_path, row, field, words):
    src = write_jsonl(tmp_path / "bad.jsonl", [row])
    result = CliRunner().invoke(data, ["validate", str(src)])
    assert result.exit_code == 1
    assert f"bad.jsonl:1: {field}:" in result.output and words in result.output
    with pytest.raises(UserError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_chat_jsonl(src)  # training refuses the same record, at the same field


def supervised_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_weight_zero_turns_get_no_labels(tiny_model_dir, tmp_path):
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir, chat_template="chatml")
    src = write_jsonl(tmp_path / "w.jsonl", [tool_chat()])
    samples, report = tokenize_records(tokenizer, read_chat_jsonl(src), max_seq_len=1024)
    trained = tokenizer.decode([t for t, label in zip(samples[0].input_ids, samples[0].labels)
                                if label != IGNORE_INDEX])
    assert "rain" in tokenizer.decode(samples[0].input_ids)  # the weight-0 turn is context ...
    assert "rain" not in trained  # ... with no loss on it
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
                       "<|im_end|>It is 18C and sunny in Paris (0).<|im_end|>")
    unweighted = json.loads(json.dumps(tool_chat()).replace('"weight": 0', '"weight": 1'))
    again, _ = tokenize_records(tokenizer, read_chat_jsonl(write_jsonl(tmp_path / "w1.jsonl", [unweighted])), 1024)
    assert again[0].input_ids == samples[0].input_ids  # same tokens, only the labels differ
    assert again[0].n_trainable == samples[0].n_trainable + len(tokenizer("Let me guess: rain.<|im_end|>",
                                                                          add_special_tokens=False)["input_ids"])


def test_tool_calls_render_through_the_template_or_stop_with_a_located_error(tiny_model_dir, tmp_path):
    from tuneloop.models.loading import load_tokenizer

    src = write_jsonl(tmp_path / "tools.jsonl", [sharegpt(1), tool_chat()])
    records = read_chat_jsonl(src)
    own = load_tokenizer(tiny_model_dir)  # SmolLM2's template renders neither tools nor tool calls
    with pytest.raises(UserError, match=r"tools\.jsonl:2: tools: the chat template does not render"):
        tokenize_records(own, records, max_seq_len=1024)
    no_defs = [(where, type(m)(m, tools=None)) for where, m in records]
    with pytest.raises(UserError, match=r"tools\.jsonl:2: messages\[4\]\.tool_calls: .*chat_template: chatml"):
        tokenize_records(own, no_defs, max_seq_len=1024)
    # A Jinja file of the user's own (ChatML with tools, saved to disk) renders them.
    template_file = tmp_path / "tools.jinja"
    template_file.write_text(CHATML_TEMPLATE, encoding="utf-8")
    select_chat_template(own, str(template_file))
    encoded = encode_chat(own, records[1][1])
    text = own.decode(encoded.input_ids)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert "<|im_start|>tool\n18C, sunny<|im_end|>" in text
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content ", encoding="utf-8")
    with pytest.raises(UserError, match="chat_template: cannot render"):
        select_chat_template(own, str(bad))


def test_chatml_renders_plain_conversations_as_plain_chatml(tiny_model_dir):
    from tuneloop.chat.template import render_text
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir, chat_template="chatml")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}]
    assert render_text(tokenizer, messages, add_generation_prompt=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")


@pytest.mark.slow
def test_a_run_on_sharegpt_and_tool_chats_keeps_its_template(tiny_model_dir, tmp_path):
    """Train on raw ShareGPT + OpenAI tool chats with chat_template: chatml; the run's tokenizer
    (what eval, serve and export load) carries the template, so they render tools as training did."""
    from tuneloop.models.loading import load_tokenizer

    src = write_jsonl(tmp_path / "mixed.jsonl", [sharegpt(i) for i in range(4)] + [tool_chat(i) for i in range(4)])
    recipe = recipe_from_dict({
        "name": "tools", "model": str(tiny_model_dir), "method": "lora", "output_dir": str(tmp_path),
        "chat_template": "chatml", "data": {"train": str(src)}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 512, "warmup_ratio": 0.0,
                  "eval_every": 1000, "save_every": 1000}, "tracking": {"backend": "none"}})
    run_dir = run_training(recipe)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(m["loss"] > 0 for m in metrics if "loss" in m)
    assert load_tokenizer(run_dir).chat_template == CHATML_TEMPLATE


ROW = {"messages": [{"role": "user", "content": "Grüße?"}, {"role": "assistant", "content": "Hallo!"}]}


@pytest.mark.parametrize("encoding, named", [
    ("utf-16", "UTF-16 (little-endian, with BOM)"), ("utf-16-be", "UTF-16 big-endian (no BOM)"),
    ("utf-16-le", "UTF-16 little-endian (no BOM)"), ("utf-32", "UTF-32 (little-endian, with BOM)"),
])
def test_utf16_and_utf32_files_are_named_with_the_fix(tmp_path, capsys, encoding, named):
    src = tmp_path / "chats.jsonl"
    src.write_bytes((json.dumps(ROW, ensure_ascii=False) + "\n").encode(encoding))
    code, output = run_cli(capsys, ["data", "validate", str(src)])
    assert code == 1
    assert f"is {named} text, not UTF-8" in output and "iconv -f UTF-" in output
    with pytest.raises(UserError, match=f"is {named.replace('(', '.').replace(')', '.')} text"):
        read_chat_jsonl(src)
    csv_file = tmp_path / "intents.csv"  # Excel's "Unicode text" export is UTF-16
    csv_file.write_bytes("text,category\nhello,greeting\n".encode(encoding))
    assert "not UTF-8" in run_cli(capsys, ["data", "validate", str(csv_file), "--label-column", "category"])[1]


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr+stdout of the real CLI entry point (where UserError becomes exit 1)."""
    from tuneloop.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_utf8_with_bom_is_read(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + (json.dumps(ROW, ensure_ascii=False) + "\n").encode("utf-8"))
    assert CliRunner().invoke(data, ["validate", str(src)]).exit_code == 0


def test_save_to_disk_directories_are_read_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [sharegpt(i) for i in range(5)]
    single = tmp_path / "sharegpt_ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(single))
    split_dict = tmp_path / "pref_dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([trl_preference(i) for i in range(4)]),
                          "test": datasets.Dataset.from_list([trl_preference(9)])}).save_to_disk(str(split_dict))
    assert CliRunner().invoke(data, ["validate", str(single)]).exit_code == 0
    records = prepared(tmp_path, single, "sft")
    assert sorted(r["messages"][1]["content"] for r in records) == sorted(
        f"What is {i} plus {i}?" for i in range(5))
    assert all(r["source"].startswith(f"{single}:") for r in records)
    assert len(prepared(tmp_path / "p", split_dict, "preference")) == 4  # the train split
    manifest = json.loads((tmp_path / "p" / "prepared" / "manifest.json").read_text())
    assert manifest["inputs"][0]["path"] == str(split_dict) and len(manifest["inputs"][0]["sha256"]) == 64


@pytest.mark.slow  # ~23 s: the hub client gives up on its own retries
def test_a_hub_dataset_not_in_the_cache_is_a_clear_error_offline(tmp_path, capsys, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network in tests
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, output = run_cli(capsys, ["data", "validate", "tuneloop-test/no-such-set:default@train"])
    assert code == 1
    assert "tuneloop-test/no-such-set:default@train: could not load the hub dataset (cache:" in output
    assert "Hugging Face cache" in output
