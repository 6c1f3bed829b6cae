"""Preference data for dpo, orpo, kto, reward and grpo: read, check, render through the chat template.

Input is the canonical preference JSONL of ``tuneloop data prepare --task preference`` and of
``tuneloop data from-feedback``: ``{"prompt": str, "chosen": str, "rejected": str}`` or
``{"messages": [...], "chosen": [assistant msgs], "rejected": [assistant msgs]}``. Raw files in either
shape work too: every record is checked with the data layer's validator, and a bad one stops the run
with ``FILE:LINE: FIELD: message`` before anything is written.

Every prompt and answer is rendered by :mod:`tuneloop.chat.template`, the module serving uses, so the
answer tokens scored here are exactly the tokens the served model would produce after that prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.chat.batch import pad_batch
from tuneloop.chat.template import IGNORE_INDEX, encode_chat, render_prompt_ids
from tuneloop.data.ingest import check_encoding
from tuneloop.data.records import to_canonical
from tuneloop.data.validate import validate_record
from tuneloop.errors import UserError


@dataclass
class EncodedAnswer:
    """One prompt + answer: ids and labels, where only the answer's tokens carry a label."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen: EncodedAnswer
    rejected: EncodedAnswer


def _read_json_lines(path: Path) -> list[tuple[int, object]]:
    if not path.is_file():
        raise UserError(f"data file not found: {path}", hint="set data.train to a JSONL file")
    check_encoding(path)
    rows = []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data[: e.start].count(b"\n") + 1  # no backslash inside an f-string before 3.12
        raise UserError("not UTF-8 text", where=f"{path}:{line_no}",
                        hint="preference data is JSONL saved as UTF-8") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"not valid JSON ({e.msg})", where=f"{path}:{line_no}") from None
    if not rows:
        raise UserError("no records", where=str(path), hint="prepare pairs with "
                        "`tuneloop data prepare FILE --task preference --out DIR`")
    return rows


def load_preference_records(path: str | Path) -> list[dict]:
    """Canonical preference records of a JSONL file; any bad record is a UserError at FILE:LINE."""

    path = Path(path)
    records = []
    for line_no, obj in _read_json_lines(path):
        shape, issues = validate_record(obj, task="preference")
        if issues:
            lines = [f"{path}:{line_no}: {i.field}: {i.message}" for i in issues]
            raise UserError("\n".join(lines), hint="preference methods need prompt (or messages), "
                            "chosen and rejected; `tuneloop data validate` checks a whole file")
        if shape == "unpaired_preference":
            raise UserError("an unpaired row (completion with a true/false label) has no pair to compare",
                            where=f"{path}:{line_no}",
                            hint="dpo, orpo, kto and reward train on prompt/chosen/rejected pairs here; "
                                 "pair good and bad answers to the same prompt")
        records.append(to_canonical(obj, shape))
    return records


def prompt_messages(record: dict) -> list[dict]:
    """The conversation an answer follows: ``messages`` as given, or one user turn for ``prompt``."""
    if "messages" in record:  # tool calls and tool turns stay: the template renders them
        return [dict(m, content=m.get("content") or "") for m in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}]


def answer_messages(answer: str | list[dict]) -> list[dict]:
    if isinstance(answer, str):
        return [{"role": "assistant", "content": answer}]
    return [dict(m, content=m.get("content") or "") for m in answer]


def encode_answer(tokenizer, prompt: list[dict], answer: list[dict], max_prompt_len: int,
                  max_seq_len: int) -> EncodedAnswer:
    """Ids of prompt + answer with labels on the answer only (earlier assistant turns are context).

    A prompt over ``max_prompt_len`` keeps its last tokens (the question nearest the answer matters
    most); an answer that still overflows ``max_seq_len`` is cut at its end.
    """
    prompt_ids = render_prompt_ids(tokenizer, prompt)
    full = encode_chat(tokenizer, prompt + answer)
    if full.input_ids[: len(prompt_ids)] != prompt_ids:
        raise UserError("the chat template renders this prompt differently with and without its "
                        "answer; preference training needs a prefix-stable template")
    labels = [IGNORE_INDEX] * len(prompt_ids) + full.labels[len(prompt_ids):]
    ids = full.input_ids
    cut = max(0, len(prompt_ids) - max_prompt_len)
    ids, labels = ids[cut:][:max_seq_len], labels[cut:][:max_seq_len]
    return EncodedAnswer(ids, labels)


def encode_pairs(tokenizer, records: list[dict], max_prompt_len: int, max_seq_len: int
                 ) -> list[EncodedPair]:
    pairs = []
    for record in records:
        prompt = prompt_messages(record)
        chosen = encode_answer(tokenizer, prompt, answer_messages(record["chosen"]),
                               max_prompt_len, max_seq_len)
        rejected = encode_answer(tokenizer, prompt, answer_messages(record["rejected"]),
                                 max_prompt_len, max_seq_len)
        pairs.append(EncodedPair(render_prompt_ids(tokenizer, prompt), chosen, rejected))
    return pairs


def collate(answers: list[EncodedAnswer], pad_id: int) -> dict:
    """Right-padded tensors ``input_ids``, ``attention_mask``, ``labels`` for a list of answers."""
    return pad_batch(answers, pad_id)


def split_holdout(records: list, share: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded share of ``records`` for metrics when no validation file is given."""
    import random

    if share <= 0 or len(records) < 4:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(records) * share))
    held = set(order[:n_held])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def load_prompts(path: str | Path) -> list[list[dict]]:
    """GRPO prompts: the prompt of each record of any shape (preference, chat, prompt/completion).

    For a chat record ending in an assistant turn, that turn is dropped: the policy writes its own.
    """
    path = Path(path)
    prompts = []
    for line_no, obj in _read_json_lines(path):
        if not isinstance(obj, dict):
            raise UserError("a record is a JSON object", where=f"{path}:{line_no}")
        if isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
            prompts.append([{"role": "user", "content": obj["prompt"]}])
        elif isinstance(obj.get("messages"), list) and obj["messages"]:
            messages = prompt_messages(obj)
            if messages[-1]["role"] == "assistant" and "chosen" not in obj:
                messages = messages[:-1]
            if not messages:
                raise UserError("messages: no prompt before the assistant turn", where=f"{path}:{line_no}")
            prompts.append(messages)
        else:
            raise UserError("no prompt: GRPO needs 'prompt' (a string) or 'messages'",
                            where=f"{path}:{line_no}")
    return prompts
