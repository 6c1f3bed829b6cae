"""The token loop (serving, eval, chat, rollouts): same tokens as plain ``model.generate``, rows that
join or leave a running batch see exactly the logits they would see alone, rows of different LoRA
adapters in one batch get their solo answers, the pre-allocated cache stacks rows exactly, stop
strings, and per-row sampling."""

from __future__ import annotations

import pytest
import torch

from tuneloop.models.generation import generate_ids
from tuneloop.models.loading import load_model_and_tokenizer
from tuneloop.models.decoding import RunningBatch, SamplingParams, Sequence, TextStream, generate_batch, sample_next


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(str(tiny_model_dir))


def _seq(tokenizer, text, max_tokens=8, **params):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Sequence(ids, SamplingParams(max_tokens=max_tokens, temperature=0, **params), TextStream(tokenizer))


def _hf_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Plain ``model.generate`` (greedy, left-padded, EOS kept), the reference for our loop."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    rows = out[:, width:].tolist()
    return [r[: r.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in r else r for r in rows]


TEXTS = ["hello there, how are you today?", "hi", "a b c d e f g h i j k l", "where is my order", "x"]


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[1:2], TEXTS[:3], TEXTS], ids=["1-long", "1-short", "3", "5"])
def test_greedy_batch_matches_plain_generate(model_and_tokenizer, texts):
    model, tokenizer = model_and_tokenizer
    sequences = [_seq(tokenizer, t, max_tokens=12) for t in texts]
    generate_batch(model, sequences, tokenizer.pad_token_id, {tokenizer.eos_token_id}, 2048)
    expected = _hf_generate(model, tokenizer, [s.prompt_ids for s in sequences], max_new_tokens=12)
    assert [s.generated for s in sequences] == expected
    assert len({tuple(s.generated) for s in sequences}) == len(texts)  # distinct answers: rows not mixed up


def test_generate_ids_runs_on_the_same_loop_and_counts_steps(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:3]]
    steps = []
    rows = generate_ids(model, tokenizer, prompts, max_new_tokens=7, on_step=lambda: steps.append(1))
    assert rows == _hf_generate(model, tokenizer, prompts, max_new_tokens=7)
    assert len(steps) == max(len(r) for r in rows) == 7


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


def test_stacking_rows_left_pads_the_narrower_side_exactly():
    from transformers.cache_utils import DynamicLayer

    from tuneloop.models.kv_cache import PreallocatedLayer

    def states(rows, width, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(rows, 2, width, 4, generator=g), torch.randn(rows, 2, width, 4, generator=g)

    layer = PreallocatedLayer(capacity=3)  # too small on purpose: it has to grow
    running = states(2, 3, 0)
    layer.update(*running)
    step = states(2, 1, 1)
    layer.update(*step)  # grows past its capacity
    wider = DynamicLayer()
    joiner = states(1, 6, 2)
    wider.update(*joiner)
    layer.append_rows(wider)
    expected_running = torch.cat([torch.zeros(2, 2, 2, 4), torch.cat([running[0], step[0]], 2)], 2)
    assert torch.equal(layer.keys, torch.cat([expected_running, joiner[0]]))
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, torch.cat([joiner[0], expected_running[:1]]))
    layer.drop_leading(2)
    assert torch.equal(layer.keys[1], torch.cat([running[0], step[0]], 2)[0])
    assert layer.get_seq_length() == 4


@pytest.fixture(scope="module")
def two_adapter_model(model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False)  # random B: each adapter changes the answers
    peft_model = get_peft_model(model, config, adapter_name="a0")
    peft_model.add_adapter("a1", config)
    peft_model.eval()
    yield peft_model, tokenizer
    peft_model.unload()  # the module-scoped base model goes back to having no LoRA layers


def _solo_answer(peft_model, tokenizer, prompt, adapter):
    if adapter == "__base__":
        with peft_model.disable_adapter():
            return _hf_generate(peft_model, tokenizer, [prompt], 10)[0]
    peft_model.set_adapter(adapter)
    return _hf_generate(peft_model, tokenizer, [prompt], 10)[0]


def test_mixed_adapter_batch_gives_each_row_its_solo_answer(two_adapter_model):
    peft_model, tokenizer = two_adapter_model
    rows = [("a0", TEXTS[0]), ("__base__", TEXTS[1]), ("a1", TEXTS[0]), ("a0", TEXTS[2]), ("a1", TEXTS[3])]
    sequences = [_seq(tokenizer, text, max_tokens=10) for _, text in rows]
    for seq, (adapter, _) in zip(sequences, rows):
        seq.adapter = adapter
    late = _seq(tokenizer, TEXTS[4], max_tokens=10)
    late.adapter = "a1"
    batch = RunningBatch(peft_model, tokenizer.pad_token_id, {tokenizer.eos_token_id}, 2048)
    batch.add(sequences)
    step = 0
    while len(batch):
        if step == 3:
            batch.add([late])  # a joiner of another adapter while the batch runs
        batch.step(lambda s, d: None, lambda s: False)
        step += 1
    solo = [_solo_answer(peft_model, tokenizer, s.prompt_ids, s.adapter) for s in [*sequences, late]]
    assert [s.generated for s in [*sequences, late]] == solo
    # The adapters matter, so a batch that ignored them would fail the check above.
    assert solo[0] != solo[2] != _solo_answer(peft_model, tokenizer, sequences[0].prompt_ids, "__base__")
