"""Unit tests of the training data pipeline and schedule: pure functions, exact expected values."""

from __future__ import annotations

import json

import pytest

from tuneloop.chat.template import IGNORE_INDEX, EncodedChat
from tuneloop.errors import UserError
from tuneloop.train.data import (Sample, check_sample, collate, length_histogram, pack_best_fit,
                                 read_chat_jsonl, shifted_targets, truncate_prompt)
from tuneloop.train.loop import epoch_order, learning_rate, micro_batches, total_steps

X = IGNORE_INDEX


def test_best_fit_decreasing_packs_tightly():
    # Longest first: 9 | 7 | 5; then 4 -> the 5 row (only fit), 3 -> the 7 row (exact fit),
    # 1 -> the 9 row (tie with the 5+4 row; the first wins). Every row ends exactly full or 1 short.
    rows = pack_best_fit([3, 7, 5, 9, 4, 1], capacity=10)
    assert rows == [[3, 5], [1, 0], [2, 4]]
    assert all(sum([3, 7, 5, 9, 4, 1][i] for i in row) <= 10 for row in rows)


def test_best_fit_rejects_oversized():
    with pytest.raises(ValueError):
        pack_best_fit([11], capacity=10)


def test_shifted_targets_stop_at_sample_end():
    assert shifted_targets([X, X, 5, 6]) == [X, 5, 6, X]


def test_collate_restarts_positions_and_pads_as_own_segment():
    a = Sample([1, 2, 3], [X, 2, 3])
    b = Sample([4, 5], [X, 5])
    c = Sample([6, 7], [6, 7])
    batch = collate([[a, b], [c]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    # a's last token must not predict b's first; padding predicts nothing.
    assert batch["targets"].tolist() == [[2, 3, X, 5, X], [7, X, X, X, X]]


def test_truncate_prompt_keeps_response_whole():
    enc = EncodedChat([1, 2, 3, 4, 5, 6], [X, X, X, X, 5, 6], [(4, 6)])
    cut = truncate_prompt(enc, 4)
    assert cut.input_ids == [3, 4, 5, 6] and cut.labels == [X, X, 5, 6] and cut.assistant_spans == [(2, 4)]
    assert truncate_prompt(enc, 1) is None  # the response alone is longer: never cut it


def test_check_sample_rules():
    good = EncodedChat([9, 1, 2, 7], [X, X, 2, 7], [(2, 4)])
    assert check_sample(good, bos_id=9, eos_id=7, bos_is_turn_marker=False) is None
    no_eos = EncodedChat([9, 1, 2, 3], [X, X, 2, 3], [(2, 4)])
    assert "EOS" in check_sample(no_eos, 9, 7, False)
    two_bos = EncodedChat([9, 9, 2, 7], [X, X, 2, 7], [(2, 4)])
    assert "one BOS" in check_sample(two_bos, 9, 7, False)
    assert check_sample(two_bos, 9, 7, bos_is_turn_marker=True) is None  # ChatML: BOS opens every turn
    nothing = EncodedChat([9, 1], [X, X])
    assert check_sample(nothing, 9, 7, False) == "no trainable tokens"


def test_learning_rate_schedule():
    assert learning_rate(0, 10, 1.0, 2, "cosine") == pytest.approx(1 / 3)
    assert learning_rate(1, 10, 1.0, 2, "cosine") == pytest.approx(2 / 3)
    assert learning_rate(2, 10, 1.0, 2, "cosine") == pytest.approx(1.0)
    assert learning_rate(6, 10, 1.0, 2, "cosine") == pytest.approx(0.5)
    assert learning_rate(6, 10, 1.0, 2, "linear") == pytest.approx(0.5)
    assert learning_rate(9, 10, 1.0, 0, "linear") == pytest.approx(0.1)
    assert learning_rate(9, 10, 1.0, 2, "constant") == 1.0


def test_batch_order_and_sharding():
    assert epoch_order(5, seed=0, epoch=1) == epoch_order(5, seed=0, epoch=1)
    assert sorted(epoch_order(5, 0, 0)) == [0, 1, 2, 3, 4]
    assert epoch_order(50, 0, 0) != epoch_order(50, 0, 1)
    assert micro_batches(list("abcdef"), rank=1, world_size=2, batch_size=2) == [["b", "d"], ["f"]]
    assert total_steps(10, 4, epochs=2, max_steps=None) == 6
    assert total_steps(10, 4, epochs=2, max_steps=3) == 3


def test_length_histogram_counts_everything():
    text = length_histogram([10, 10, 20, 30], bins=2)  # 21 distinct lengths -> bins of 11
    assert [line.split()[:2] for line in text.splitlines()] == [["10-20", "3"], ["21-31", "1"]]


def test_read_chat_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(UserError) as err:
        read_chat_jsonl(path)
    assert f"{path}:2" in str(err.value) and "messages[0].role" in str(err.value)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        read_chat_jsonl(path)
    path.write_text(json.dumps(dict(good, id="x", source="y", label="z")) + "\n")
    assert read_chat_jsonl(path)[0][1] == good["messages"]  # extra keys ignored


def test_training_and_serving_paths_give_identical_prompt_ids(tiny_model_dir):
    from tuneloop.chat.template import encode_chat, render_prompt_ids
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
                {"role": "assistant", "content": "Hello. How can I help?"}]
    encoded = encode_chat(tokenizer, messages)
    served = render_prompt_ids(tokenizer, messages[:-1])
    first_trained = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert encoded.input_ids[: len(served)] == served
    assert first_trained == len(served)  # the model is trained exactly on what follows the served prompt
    assert encoded.labels[encoded.assistant_spans[-1][1] - 1] == tokenizer.eos_token_id
