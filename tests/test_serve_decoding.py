"""The serving token loop: same tokens as ``model.generate``, rows that join or leave a running batch
see exactly the logits they would see alone, stop strings, and per-row sampling."""

from __future__ import annotations

import pytest
import torch

from tuneloop.models.generation import generate_ids
from tuneloop.models.loading import load_model_and_tokenizer
from tuneloop.serve.decoding import RunningBatch, SamplingParams, Sequence, TextStream, generate_batch, sample_next


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def _seq(tokenizer, text, max_tokens=8, **params):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Sequence(ids, SamplingParams(max_tokens=max_tokens, temperature=0, **params), TextStream(tokenizer))


def test_greedy_batch_matches_hf_generate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = ["hello there, how are you today?", "hi", "a b c d e f g h i j k l"]
    sequences = [_seq(tokenizer, t, max_tokens=10) for t in texts]
    generate_batch(model, sequences, tokenizer.pad_token_id, {tokenizer.eos_token_id}, 2048)
    expected = generate_ids(model, tokenizer, [s.prompt_ids for s in sequences], max_new_tokens=10)
    assert [s.generated for s in sequences] == expected
    assert all(s.finish_reason == "length" for s in sequences)


def _logits_trace(model, tokenizer, schedule: dict[int, list[str]], steps: int) -> dict[str, list[torch.Tensor]]:
    """Run a batch where ``schedule[step]`` sequences join before that step; logits seen per sequence."""
    batch = RunningBatch(model, tokenizer.pad_token_id, {tokenizer.eos_token_id}, 2048)
    trace: dict[str, list[torch.Tensor]] = {}
    names = {}
    for step in range(steps):
        joiners = [_seq(tokenizer, text, max_tokens=steps) for text in schedule.get(step, [])]
        names.update({id(s): text for s, text in zip(joiners, schedule.get(step, []))})
        if joiners:
            batch.add(joiners)
        if not len(batch):
            break
        for row, seq in enumerate(batch.sequences):
            trace.setdefault(names[id(seq)], []).append(batch.logits[row].clone())
        batch.step(lambda s, d: None, lambda s: False)
    return trace


def test_joining_and_leaving_rows_see_their_solo_logits(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    short, long_, late = "hi", "a much longer prompt that needs a lot more left padding", "joins later"
    together = _logits_trace(model, tokenizer, {0: [short], 2: [long_], 4: [late]}, steps=8)
    for text in (short, long_, late):
        alone = _logits_trace(model, tokenizer, {0: [text]}, steps=8)[text]
        joined = together[text]
        assert len(joined) >= 4
        for a, b in zip(alone, joined):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_finished_rows_leave_and_padding_is_trimmed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batch = RunningBatch(model, tokenizer.pad_token_id, {tokenizer.eos_token_id}, 2048)
    quick = _seq(tokenizer, "a much longer prompt that needs a lot more left padding", max_tokens=1)
    slow = _seq(tokenizer, "hi", max_tokens=5)
    batch.add([quick, slow])
    finished = batch.step(lambda s, d: None, lambda s: False)
    assert finished == [quick] and batch.sequences == [slow]
    assert batch.mask.shape[1] == len(slow.prompt_ids) + 1  # the long prompt's columns are gone
    assert batch.cache.layers[0].keys.shape[2] == batch.mask.shape[1]  # the cache holds the same columns


def test_text_stream_stops_at_a_stop_string_and_holds_back_its_prefix(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = tokenizer("Hello world, STOP here please", add_special_tokens=False)["input_ids"]
    stream = TextStream(tokenizer, stop=("STOP",))
    deltas = []
    for token in ids:
        deltas.append(stream.push(token))
        if stream.stopped:
            break
    assert stream.stopped and "".join(deltas) == "Hello world, " == stream.text
    plain = TextStream(tokenizer)
    assert "".join(plain.push(t) for t in ids) + plain.flush() == "Hello world, STOP here please"
    multibyte = TextStream(tokenizer)
    text = "naïve café ☕ 日本"
    assert "".join(multibyte.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_sampling_is_per_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 2.9], [0.0, 0.0, 0.1]])
    greedy = SamplingParams(temperature=0)
    nucleus = SamplingParams(temperature=1.0, top_p=0.01)  # only the most likely token survives
    assert sample_next(logits, [greedy, nucleus, greedy], [None, None, None]) == [1, 0, 2]
    warm = SamplingParams(temperature=2.0)
    draws = [sample_next(logits[2:], [warm], [torch.Generator().manual_seed(s)])[0] for s in range(40)]
    assert set(draws) == {0, 1, 2}  # a flat distribution: every token gets drawn
    assert draws == [sample_next(logits[2:], [warm], [torch.Generator().manual_seed(s)])[0] for s in range(40)]
