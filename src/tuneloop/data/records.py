"""Canonical records: what every accepted shape becomes in ``train/validation/test.jsonl``.

* chat, instruction, prompt/completion -> ``{"messages": [...]}`` (OpenAI chat shape). Alpaca's
  ``instruction`` and ``input`` become one user message (joined by a blank line), ``output`` the
  assistant message; an optional ``system`` becomes the first message.
* classification -> ``{"messages": [user: the text, assistant: the label], "label": label}``: the user
  content is the text and the assistant content is the label string, nothing else, so the same file
  trains a classifier-by-generation and evaluation can compare ``label`` with the generated answer.
* preference -> ``{"prompt": str, "chosen": str, "rejected": str}`` or, when the prompt is a
  conversation, ``{"messages": [...], "chosen": [assistant msg], "rejected": [assistant msg]}`` (the
  two conversational forms TRL accepts; answers are made consistent with the prompt's form).
* text (continued pre-training) -> ``{"text": ...}``.
* ShareGPT (``conversations`` of ``from``/``value``) -> chat; TRL's conversational prompt/completion
  (message lists) -> chat; TRL's conversational preference -> the conversational preference form,
  with an implicit prompt (no prompt key) split off as the turns chosen and rejected share.
* unpaired KTO rows -> ``{"prompt": str, "completion": str, "label": bool}`` or
  ``{"messages": [...], "completion": [assistant msg], "label": bool}``.

Messages come out with string content (OpenAI's text parts joined, as ``serve`` joins them), tool
calls in OpenAI's form (a legacy ``function_call`` becomes one tool call) and ``weight`` kept.

Every output record also gets ``id`` (a hash of its normalised content, stable across runs) and
``source`` (``file:line``). These functions expect a record that passed
:func:`tuneloop.data.validate.validate_record`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tuneloop.chat.template import message_text

# ShareGPT speaker names -> roles (the names FastChat, Axolotl and LLaMA-Factory use).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "tool": "tool", "observation": "tool", "function_call": "assistant"}
# Message keys kept in canonical chat records (the rest of OpenAI's keys pass through unchanged).
_MESSAGE_KEEP = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")


def to_canonical(obj: dict, shape: str) -> dict:
    """The canonical record (without ``id``/``source``) for a valid record of ``shape``."""
    return _CONVERTERS[shape](obj)


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _with_system(obj: dict, messages: list[dict]) -> list[dict]:
    system = obj.get("system")
    return ([_message("system", system)] if isinstance(system, str) and system.strip() else []) + messages


def canonical_message(message: dict) -> dict:
    """One message with string content; a legacy ``function_call`` becomes a tool call."""
    out = {k: message[k] for k in _MESSAGE_KEEP if k in message and k != "function_call"}
    if "function_call" in message and "tool_calls" not in message:
        out["tool_calls"] = [{"type": "function", "function": message["function_call"]}]
    out["content"] = message_text(message.get("content"))
    return out


def canonical_messages(messages: list[dict]) -> list[dict]:
    return [canonical_message(m) for m in messages]


def sharegpt_messages(obj: dict) -> list[dict]:
    """ShareGPT turns as OpenAI messages (``function_call`` turns hold the call as JSON)."""
    messages = _with_system(obj, [])
    for turn in obj["conversations"]:
        message: dict[str, Any] = {"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")}
        if turn["from"] == "function_call":
            call = turn["value"] if isinstance(turn["value"], dict) else json.loads(turn["value"])
            message = {"role": "assistant", "content": "",
                       "tool_calls": [{"type": "function", "function": {
                           "name": call.get("name"), "arguments": call.get("arguments", {})}}]}
        if "weight" in turn:
            message["weight"] = turn["weight"]
        messages.append(message)
    return messages


def implicit_prompt(obj: dict) -> int | None:
    """TRL's implicit-prompt preference rows: how many leading turns chosen and rejected share.

    None unless both are message lists whose shared turns end right before an assistant turn.
    """
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
        return None
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or shared >= min(len(chosen), len(rejected)):
        return None
    return shared


def _from_chat(obj: dict) -> dict:
    record: dict[str, Any] = {"messages": canonical_messages(obj["messages"])}
    if "tools" in obj:
        record["tools"] = obj["tools"]
    if "label" in obj:
        record["label"] = str(obj["label"])
    return record


def _from_instruction(obj: dict) -> dict:
    user = obj["instruction"]
    if isinstance(obj.get("input"), str) and obj["input"].strip():
        user = f"{user}\n\n{obj['input']}"
    return {"messages": _with_system(obj, [_message("user", user), _message("assistant", obj["output"])])}


def _prompt_messages(obj: dict) -> list[dict]:
    """The prompt as messages: ``messages``, a conversational ``prompt`` list, or one user turn."""
    if "messages" in obj:
        return _with_system(obj, canonical_messages(obj["messages"]))
    if isinstance(obj["prompt"], list):
        return _with_system(obj, canonical_messages(obj["prompt"]))
    return _with_system(obj, [_message("user", obj["prompt"])])


def _from_prompt_completion(obj: dict) -> dict:
    return {"messages": _prompt_messages(obj) + _answer_messages(obj["completion"])}


def _from_sharegpt(obj: dict) -> dict:
    record: dict[str, Any] = {"messages": canonical_messages(sharegpt_messages(obj))}
    if "tools" in obj:
        record["tools"] = json.loads(obj["tools"]) if isinstance(obj["tools"], str) else obj["tools"]
    return record


def _from_unpaired(obj: dict) -> dict:
    label = obj["label"]
    if isinstance(obj.get("prompt"), str) and not _has_system(obj) and not isinstance(obj["completion"], list):
        return {"prompt": obj["prompt"], "completion": obj["completion"], "label": label}
    return {"messages": _prompt_messages(obj), "completion": _answer_messages(obj["completion"]), "label": label}


def _has_system(obj: dict) -> bool:
    return isinstance(obj.get("system"), str) and bool(obj["system"].strip())


def _from_text(obj: dict) -> dict:
    return {"text": obj["text"]}


def _from_classification(obj: dict) -> dict:
    label = str(obj["label"]).strip()
    return {"messages": [_message("user", obj["text"]), _message("assistant", label)], "label": label}


def _answer_messages(answer: Any) -> list[dict]:
    if isinstance(answer, list):
        return canonical_messages(answer)
    return [_message("assistant", answer)]


def _answer_string(answer: Any) -> str:
    if isinstance(answer, list):
        return "\n".join(m.get("content") or "" for m in answer if m.get("role") == "assistant")
    return answer


def _from_preference(obj: dict) -> dict:
    if "prompt" not in obj and "messages" not in obj:
        shared = implicit_prompt(obj)
        return {"messages": _with_system(obj, canonical_messages(obj["chosen"][:shared])),
                "chosen": canonical_messages(obj["chosen"][shared:]),
                "rejected": canonical_messages(obj["rejected"][shared:])}
    if "messages" in obj or isinstance(obj["prompt"], list) or _has_system(obj):
        return {"messages": _prompt_messages(obj), "chosen": _answer_messages(obj["chosen"]),
                "rejected": _answer_messages(obj["rejected"])}
    return {"prompt": obj["prompt"], "chosen": _answer_string(obj["chosen"]),
            "rejected": _answer_string(obj["rejected"])}


_CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "chat": _from_chat,
    "instruction": _from_instruction,
    "prompt_completion": _from_prompt_completion,
    "text": _from_text,
    "classification": _from_classification,
    "preference": _from_preference,
    "sharegpt": _from_sharegpt,
    "unpaired_preference": _from_unpaired,
}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    """Apply ``fn`` to every free text of a canonical record (contents, prompt, answers, text).

    Labels are left alone: they are class names, not free text. Mutates and returns ``record``.
    """
    for key in ("messages", "chosen", "rejected", "completion"):
        value = record.get(key)
        if isinstance(value, list):
            for message in value:
                if isinstance(message.get("content"), str):
                    message["content"] = fn(message["content"])
        elif isinstance(value, str):
            record[key] = fn(value)
    for key in ("prompt", "text"):
        if isinstance(record.get(key), str):
            record[key] = fn(record[key])
    return record


def texts(record: dict) -> list[str]:
    """The free texts of a canonical record, in a fixed order (what :func:`map_texts` visits)."""
    found: list[str] = []
    map_texts(record, lambda s: found.append(s) or s)
    return found


def content_text(record: dict, task: str, system: bool = True) -> str:
    """The text that identifies a record for de-duplication.

    For classification it is the input text alone, so that one text with two labels is caught as a
    conflict; otherwise all free texts with their roles (a question with two different answers is two
    records). ``system=False`` leaves out system messages: near-duplicate detection must not find
    two unrelated conversations similar because they share a long system prompt.
    """
    if task == "classification" and "label" in record:
        return record["messages"][-2]["content"]
    parts = []
    for key in ("prompt", "text"):
        if isinstance(record.get(key), str):
            parts.append(record[key])
    for key in ("messages", "chosen", "rejected", "completion"):
        value = record.get(key)
        if isinstance(value, list):
            parts.extend(f"{m.get('role')}: {m.get('content') or ''}" for m in value
                         if system or m.get("role") != "system")
        elif isinstance(value, str):
            parts.append(f"{key}: {value}")
    return "\n".join(parts)
