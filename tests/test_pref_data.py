"""Preference data: both record shapes, answers rendered through the one chat template, clear errors."""

from __future__ import annotations

import json

import pytest

from tuneloop.chat.template import IGNORE_INDEX, render_prompt_ids
from tuneloop.errors import UserError
from tuneloop.train.preference import data as pref_data


@pytest.fixture(scope="module")
def tokenizer():
    from tuneloop.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_answer_labels_cover_the_answer_only_and_the_prompt_matches_serving(tokenizer):
    prompt = [{"role": "user", "content": "Where is my parcel?"}]
    answer = [{"role": "assistant", "content": "It ships today."}]
    encoded = pref_data.encode_answer(tokenizer, prompt, answer, max_prompt_len=512, max_seq_len=512)
    served = render_prompt_ids(tokenizer, prompt)
    assert encoded.input_ids[: len(served)] == served
    assert all(label == IGNORE_INDEX for label in encoded.labels[: len(served)])
    supervised = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "It ships today.<|im_end|>"


def test_earlier_assistant_turns_are_context_not_targets(tokenizer):
    prompt = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
              {"role": "user", "content": "Refund?"}]
    encoded = pref_data.encode_answer(tokenizer, prompt, [{"role": "assistant", "content": "Yes."}], 512, 512)
    supervised = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "Yes.<|im_end|>"


def test_long_prompts_keep_their_end_and_answers_are_cut_at_max_seq_len(tokenizer):
    prompt = [{"role": "user", "content": "word " * 200 + "QUESTION"}]
    answer = [{"role": "assistant", "content": "answer " * 100}]
    encoded = pref_data.encode_answer(tokenizer, prompt, answer, max_prompt_len=20, max_seq_len=40)
    assert len(encoded.input_ids) == 40
    assert "QUESTION" in tokenizer.decode(encoded.input_ids[:20])
    assert sum(label != IGNORE_INDEX for label in encoded.labels) == 20


def test_both_canonical_shapes_load(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "source": "x:1", "prompt": "Q1", "chosen": "good", "rejected": "bad"},
        {"id": "b", "source": "x:2", "messages": [{"role": "user", "content": "Q2"}],
         "chosen": [{"role": "assistant", "content": "good"}],
         "rejected": [{"role": "assistant", "content": "bad"}]},
    ])
    records = pref_data.load_preference_records(path)
    assert [pref_data.prompt_messages(r)[-1]["content"] for r in records] == ["Q1", "Q2"]
    assert pref_data.answer_messages(records[1]["chosen"]) == [{"role": "assistant", "content": "good"}]


def test_bad_records_name_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"},
                                               {"prompt": "Q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(UserError, match=r"p.jsonl:2: rejected: is identical to chosen"):
        pref_data.load_preference_records(path)
    broken = write_jsonl(tmp_path / "b.jsonl", ['{"prompt": "Q", "chosen": '])
    with pytest.raises(UserError, match=r"b.jsonl:1: not valid JSON"):
        pref_data.load_preference_records(broken)
    sft = write_jsonl(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                            {"role": "assistant", "content": "A"}]}])
    with pytest.raises(UserError, match=r"s.jsonl:1"):
        pref_data.load_preference_records(sft)


def test_grpo_prompts_come_from_any_record_shape(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1", "chosen": "a", "rejected": "b"},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A"}]},
        {"prompt": "Q3", "completion": "C"},
    ])
    prompts = pref_data.load_prompts(path)
    assert prompts == [[{"role": "user", "content": "Q1"}], [{"role": "user", "content": "Q2"}],
                       [{"role": "user", "content": "Q3"}]]
    with pytest.raises(UserError, match=r"q.jsonl:1: no prompt"):
        pref_data.load_prompts(write_jsonl(tmp_path / "q.jsonl", [{"text": "x"}]))


def test_holdout_split_is_seeded_and_disjoint():
    train, held = pref_data.split_holdout(list(range(20)), 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held)
    assert pref_data.split_holdout(list(range(20)), 0.25, seed=3) == (train, held)
