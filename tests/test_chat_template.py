"""The one chat-template module: loss masks and prompt ids shared by training and serving."""

from __future__ import annotations

import pytest

from tuneloop.chat.template import IGNORE_INDEX, encode_chat, render_prompt_ids


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from tuneloop.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def test_only_assistant_turns_and_their_eos_are_supervised(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION)
    supervised = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    text = tokenizer.decode(supervised)
    assert text == "Hello there!<|im_end|>Goodbye.<|im_end|>"
    for start, end in encoded.assistant_spans:
        assert encoded.input_ids[end - 1] == tokenizer.eos_token_id


def test_train_on_all_supervises_every_token(tokenizer):
    encoded = encode_chat(tokenizer, CONVERSATION, train_on="all")
    assert encoded.labels == encoded.input_ids


def test_prompt_ids_are_a_prefix_of_training_ids(tokenizer):
    for cut in (2, 4):  # before each assistant turn
        prompt = render_prompt_ids(tokenizer, CONVERSATION[:cut])
        trained = encode_chat(tokenizer, CONVERSATION[: cut + 1])
        assert trained.input_ids[: len(prompt)] == prompt
        # the new turn's supervision starts right after the prompt
        assert trained.assistant_spans[-1][0] == len(prompt)
