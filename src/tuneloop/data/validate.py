"""Check one record against its shape, the way OpenAI's fine-tuning format checker does, and more.

:func:`detect_shape` names a record's shape from its keys; :func:`validate_record` returns every
problem as an :class:`Issue` (``field``, ``message`` with the fix). An empty list means the record
can be converted with :func:`tuneloop.data.records.to_canonical`. Checks: the record is an object;
required keys present and unknown keys named (with a did-you-mean); types; roles; empty content; at
least one assistant turn and, for SFT, the assistant speaking last; preference pairs whose chosen and
rejected answers differ; labels present for classification.

Shapes (SPEC "Data"): chat, instruction, prompt_completion, text, preference, classification, and
the shapes other tools write, converted by :mod:`tuneloop.data.records`:

* ``sharegpt``: ``{"conversations": [{"from": "human|gpt|system|tool", "value": ...}]}``;
* TRL's conversational forms: ``prompt``/``completion`` and ``prompt``/``chosen``/``rejected`` as
  message lists, and preference rows with no prompt key whose chosen/rejected are whole
  conversations sharing their first turns;
* ``unpaired_preference`` (KTO): ``{"prompt", "completion", "label": true|false}``.

Messages may use OpenAI's content parts (``[{"type": "text", "text": ...}]``), ``tool_calls`` on
assistant turns, the ``tool`` role and ``weight`` (0 = context only, not trained).
Tasks: ``sft`` accepts every shape but the preference ones, ``preference`` only preference pairs and
unpaired KTO rows, ``classification`` only text+label records; ``auto`` accepts every shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneloop.chat.template import message_text, tool_arguments
from tuneloop.data import records
from tuneloop.errors import did_you_mean

TASKS = ("auto", "sft", "preference", "classification")
SHAPES = ("chat", "instruction", "prompt_completion", "text", "preference", "classification", "sharegpt",
          "unpaired_preference")
ROLES = ("system", "user", "assistant", "tool")
# Keys any record may carry without being training content.
META_KEYS = frozenset({"id", "source", "metadata", "meta", "tags",
                       "augmented_from", "augmentation"})  # provenance written by data augment
SHAPE_KEYS = {
    "chat": {"messages", "label", "tools", "parallel_tool_calls"},
    "instruction": {"instruction", "input", "output", "system"},
    "prompt_completion": {"prompt", "completion", "system"},
    "text": {"text"},
    "preference": {"prompt", "messages", "chosen", "rejected", "system"},
    "classification": {"text", "label"},
    "sharegpt": {"conversations", "system", "tools"},
    "unpaired_preference": {"prompt", "messages", "completion", "label", "system"},
}
SHAREGPT_ROLES = records.SHAREGPT_ROLES
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
TASK_SHAPES = {
    "auto": set(SHAPES),
    "sft": set(SHAPES) - {"preference", "unpaired_preference"},
    "preference": {"preference", "unpaired_preference"},
    "classification": {"classification"},
}


@dataclass(frozen=True)
class Issue:
    """One problem in a record: ``field`` is a path such as ``messages[2].role``."""

    field: str
    message: str


def detect_shape(obj: Any) -> str | None:
    """The record shape its keys say, or None when they match no shape."""
    if not isinstance(obj, dict):
        return None
    keys = obj.keys()
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if "completion" in keys and isinstance(obj.get("label"), bool):
        return "unpaired_preference"
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or "output" in keys:
        return "instruction"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "label" in keys:
        return "classification"
    if "text" in keys:
        return "text"
    return None


def validate_record(obj: Any, task: str = "auto") -> tuple[str | None, list[Issue]]:
    """The record's shape and every problem with it (empty list: valid for ``task``)."""
    if not isinstance(obj, dict):
        return None, [Issue("record", f"expected a JSON object, got {_type_name(obj)}")]
    shape = detect_shape(obj)
    if task == "classification" and shape == "text":
        shape = "classification"  # the label is what is missing, say so below
    if shape is None:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        return None, [Issue("record", f"no recognised shape (keys: {keys}); use messages, "
                            "conversations (ShareGPT), instruction/output, prompt/completion, text[/label] "
                            "or prompt/chosen/rejected")]
    issues: list[Issue] = []
    if shape not in TASK_SHAPES[task]:
        issues.append(Issue("record", f"a {shape} record in {task} data (--task, or what most "
                            f"records are); give {_task_needs(task)}, or prepare it separately"))
    issues += _unknown_keys(obj, shape)
    issues += CHECKS[shape](obj, task)
    return shape, issues


def _task_needs(task: str) -> str:
    return {"preference": "prompt (or messages), chosen and rejected, or prompt, completion and a "
                          "true/false label (KTO)",
            "classification": "text and label (map CSV columns with --text-column/--label-column)",
            "sft": "messages, instruction/output, prompt/completion or text"}.get(task, "another task")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _unknown_keys(obj: dict, shape: str) -> list[Issue]:
    allowed = SHAPE_KEYS[shape] | META_KEYS
    issues = []
    for key in obj:
        if key in allowed:
            continue
        if not str(key).strip():  # shown quoted, so the message still names it
            issues.append(Issue(json.dumps(key), "a key without a name (in a CSV: a header column without a "
                                                 "name but with values); name it or remove it"))
            continue
        guess = did_you_mean(str(key), sorted(allowed))
        fix = f"did you mean '{guess}'?" if guess else f"allowed keys: {', '.join(sorted(SHAPE_KEYS[shape]))}"
        if shape in ("text", "classification") and not guess:
            fix = f"to use it as the class label pass --label-column {key}"
        issues.append(Issue(str(key), f"unknown key for a {shape} record; {fix} (or remove it)"))
    return issues


def _check_text(obj: dict, key: str, field: str | None = None, required: bool = True) -> list[Issue]:
    field = field or key
    if key not in obj:
        return [Issue(field, "missing; add it as a non-empty string")] if required else []
    value = obj[key]
    if not isinstance(value, str):
        if not required and value is None:
            return []
        return [Issue(field, f"must be a string, got {_type_name(value)}")]
    if required and not value.strip():
        return [Issue(field, "is empty; write the text or remove the record")]
    return []


def _check_messages(messages: Any, field: str, need_assistant_last: bool,
                    prompt_only: bool = False) -> list[Issue]:
    if not isinstance(messages, list):
        return [Issue(field, f"must be an array of {{role, content}} objects, got {_type_name(messages)}")]
    if not messages:
        return [Issue(field, "is empty; add at least a user and an assistant message")]
    issues: list[Issue] = []
    for i, message in enumerate(messages):
        issues += _check_message(message, f"{field}[{i}]", first=i == 0)
        if isinstance(message, dict) and message.get("role") == "tool" and not _follows_tool_call(messages, i):
            issues.append(Issue(f"{field}[{i}].role", "a tool message answers a tool call; put it after "
                                "the assistant message whose tool_calls it answers"))
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if prompt_only:
        if roles and roles[-1] == "assistant":
            issues.append(Issue(f"{field}[{len(messages) - 1}].role",
                                "the prompt ends with an assistant turn; chosen/rejected hold the answers"))
    elif "assistant" not in roles:
        issues.append(Issue(field, "has no assistant message; add the answer to learn as role 'assistant'"))
    elif need_assistant_last and roles[-1] != "assistant":
        issues.append(Issue(f"{field}[{len(messages) - 1}].role",
                            f"the last turn is '{roles[-1]}'; SFT needs the assistant to speak last"))
    elif need_assistant_last and not issues and all(
            m.get("weight") == 0 for m in messages if m.get("role") == "assistant"):
        issues.append(Issue(field, "every assistant message has weight 0, so nothing would be trained; "
                            "set weight 1 (or remove weight) on the turns to learn"))
    return issues


def _follows_tool_call(messages: list, i: int) -> bool:
    for earlier in reversed(messages[:i]):
        if not isinstance(earlier, dict) or earlier.get("role") != "tool":
            return isinstance(earlier, dict) and bool(earlier.get("tool_calls") or earlier.get("function_call"))
    return False


def _check_message(message: Any, field: str, first: bool) -> list[Issue]:
    if not isinstance(message, dict):
        return [Issue(field, f"must be an object with role and content, got {_type_name(message)}")]
    issues = []
    for key in message:
        if key not in MESSAGE_KEYS:
            guess = did_you_mean(str(key), sorted(MESSAGE_KEYS))
            fix = f"did you mean '{guess}'?" if guess else "allowed: " + ", ".join(sorted(MESSAGE_KEYS))
            issues.append(Issue(f"{field}.{key}", f"unknown message key; {fix}"))
    role = message.get("role")
    if "role" not in message:
        issues.append(Issue(f"{field}.role", "missing; use one of system, user, assistant, tool"))
    elif role not in ROLES:
        guess = did_you_mean(str(role), ROLES)
        fix = f" (did you mean '{guess}'?)" if guess else ""
        issues.append(Issue(f"{field}.role", f"'{role}' is not a role; use system, user, assistant or tool{fix}"))
    elif role == "system" and not first:
        issues.append(Issue(f"{field}.role", "a system message may only come first; move or merge it"))
    calls = message.get("tool_calls")
    if "tool_calls" in message and role != "assistant":
        issues.append(Issue(f"{field}.tool_calls", "only assistant messages make tool calls"))
    elif "tool_calls" in message:
        issues += _check_tool_calls(calls, f"{field}.tool_calls")
    if "function_call" in message:
        issues += _check_function(message["function_call"], f"{field}.function_call")
    may_be_empty = role == "assistant" and bool(calls or message.get("function_call"))
    issues += _check_content(message, field, may_be_empty)
    if "weight" in message:
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            issues.append(Issue(f"{field}.weight", "must be 0 or 1"))
        elif role != "assistant":
            issues.append(Issue(f"{field}.weight", "only assistant messages are trained, so only they "
                                "take a weight; remove it here"))
    return issues


def _check_content(message: dict, field: str, may_be_empty: bool) -> list[Issue]:
    if "content" not in message:
        return [] if may_be_empty else [Issue(f"{field}.content", "missing; add the message text")]
    content = message["content"]
    if content is None and may_be_empty:
        return []
    if isinstance(content, list):
        issues = _check_parts(content, f"{field}.content")
        if issues:
            return issues
        content = message_text(content)
    elif not isinstance(content, str):
        return [Issue(f"{field}.content",
                      f"must be a string or a list of text parts, got {_type_name(content)}")]
    if not content.strip() and not may_be_empty:
        return [Issue(f"{field}.content", "is empty; write the message or remove it")]
    return []


def _check_parts(parts: list, field: str) -> list[Issue]:
    """OpenAI content parts: only text parts carry anything a text model can learn from."""
    issues = []
    for j, part in enumerate(parts):
        where = f"{field}[{j}]"
        if not isinstance(part, dict):
            issues.append(Issue(where, f'must be an object {{"type": "text", "text": ...}}, got {_type_name(part)}'))
        elif part.get("type") != "text":
            issues.append(Issue(f"{where}.type", f"content parts of type {part.get('type')!r} are not "
                                "supported (a text model learns from text parts only); remove the part"))
        elif not isinstance(part.get("text"), str):
            issues.append(Issue(f"{where}.text", f"must be a string, got {_type_name(part.get('text'))}"))
    return issues


def _check_tool_calls(calls: Any, field: str) -> list[Issue]:
    if not isinstance(calls, list) or not calls:
        return [Issue(field, 'must be a non-empty array of {"type": "function", "function": '
                      '{"name", "arguments"}} objects')]
    issues = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            issues.append(Issue(f"{field}[{k}]", f"must be an object, got {_type_name(call)}"))
        elif call.get("type", "function") != "function":
            issues.append(Issue(f"{field}[{k}].type", "only function tool calls are supported"))
        else:
            issues += _check_function(call.get("function"), f"{field}[{k}].function")
    return issues


def _check_function(function: Any, field: str) -> list[Issue]:
    if not isinstance(function, dict):
        return [Issue(field, 'missing or not an object; give {"name": ..., "arguments": "{...}"}')]
    issues = []
    if not isinstance(function.get("name"), str) or not function["name"].strip():
        issues.append(Issue(f"{field}.name", "must be the function's name (a non-empty string)"))
    if tool_arguments(function.get("arguments")) is None:
        issues.append(Issue(f"{field}.arguments", "must be a JSON object, or a string holding one "
                            "(OpenAI writes arguments as a JSON string)"))
    return issues


def _check_chat(obj: dict, task: str) -> list[Issue]:
    issues = _check_messages(obj.get("messages"), "messages", need_assistant_last=True)
    if "label" in obj:
        issues += _check_label(obj)
    return issues


def _check_instruction(obj: dict, task: str) -> list[Issue]:
    return (_check_text(obj, "instruction") + _check_text(obj, "input", required=False)
            + _check_text(obj, "output") + _check_text(obj, "system", required=False))


def _check_prompt_completion(obj: dict, task: str) -> list[Issue]:
    return _check_prompt(obj) + _check_answer(obj, "completion") + _check_text(obj, "system", required=False)


def _check_prompt(obj: dict) -> list[Issue]:
    """``prompt`` as a string, or as a message list (TRL's conversational form); or ``messages``."""
    if "messages" in obj and "prompt" in obj:
        return [Issue("prompt", "give either prompt or messages, not both")]
    if "messages" in obj:
        return _check_messages(obj["messages"], "messages", need_assistant_last=False, prompt_only=True)
    if isinstance(obj.get("prompt"), list):
        return _check_messages(obj["prompt"], "prompt", need_assistant_last=False, prompt_only=True)
    return _check_text(obj, "prompt")


def _check_sharegpt(obj: dict, task: str) -> list[Issue]:
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        return [Issue("conversations", f"must be an array of {{from, value}} objects, got {_type_name(turns)}")]
    issues = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            issues.append(Issue(where, f"must be an object with from and value, got {_type_name(turn)}"))
            continue
        issues += [Issue(f"{where}.{key}", "unknown ShareGPT key; use from and value")
                   for key in turn if key not in ("from", "value", "weight")]
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            guess = did_you_mean(str(speaker), sorted(SHAREGPT_ROLES))
            issues.append(Issue(f"{where}.from", f"{speaker!r} is not a ShareGPT speaker; use human, gpt, "
                                "system, function_call or observation" + (f" (did you mean '{guess}'?)" if guess else "")))
        elif speaker == "function_call" and tool_arguments(turn.get("value")) is None:
            issues.append(Issue(f"{where}.value", 'a function_call turn holds JSON {"name": ..., "arguments": {...}}'))
    if issues:
        return issues + _check_text(obj, "system", required=False)
    messages = records.sharegpt_messages(obj)
    renamed = {".role": ".from", ".content": ".value"}
    for issue in _check_messages(messages, "conversations", need_assistant_last=True):
        field = issue.field
        for old, new in renamed.items():
            field = field.replace(old, new)
        issues.append(Issue(field, issue.message))
    return issues + _check_text(obj, "system", required=False)


def _check_unpaired(obj: dict, task: str) -> list[Issue]:
    """One answer judged good (label true) or bad (false) on its own: KTO's unpaired rows."""
    return _check_prompt(obj) + _check_answer(obj, "completion") + _check_text(obj, "system", required=False)


def _check_plain_text(obj: dict, task: str) -> list[Issue]:
    return _check_text(obj, "text")


def _check_label(obj: dict) -> list[Issue]:
    if "label" not in obj:
        return [Issue("label", "missing; add the class label (for CSV: --label-column NAME)")]
    label = obj["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return [Issue("label", f"must be a string or integer, got {_type_name(label)}")]
    if isinstance(label, str) and not label.strip():
        return [Issue("label", "is empty; give the class label")]
    return []


def _check_classification(obj: dict, task: str) -> list[Issue]:
    return _check_text(obj, "text") + _check_label(obj)


def _check_answer(obj: dict, key: str) -> list[Issue]:
    if key not in obj:
        need = ("the answer to the prompt" if key == "completion"
                else "a preference pair needs both chosen and rejected answers")
        return [Issue(key, f"missing; {need}")]
    value = obj[key]
    if isinstance(value, list):
        issues = []
        for i, message in enumerate(value):
            issues += _check_message(message, f"{key}[{i}]", first=False)
        if not value:
            issues.append(Issue(key, "is empty; give the answer"))
        elif isinstance(value[-1], dict) and value[-1].get("role") != "assistant":
            issues.append(Issue(f"{key}[{len(value) - 1}].role", "the answer must be an assistant message"))
        return issues
    return _check_text(obj, key)


def _check_preference(obj: dict, task: str) -> list[Issue]:
    if "prompt" not in obj and "messages" not in obj and records.implicit_prompt(obj) is not None:
        issues = []  # TRL's implicit prompt: chosen and rejected are whole conversations
        for key in ("chosen", "rejected"):
            issues += _check_messages(obj[key], key, need_assistant_last=True)
        if not issues and _answer_text(obj["chosen"]).strip() == _answer_text(obj["rejected"]).strip():
            issues.append(Issue("rejected", "is identical to chosen; a pair teaches nothing unless they differ"))
        return issues
    issues = _check_prompt(obj)
    issues += _check_answer(obj, "chosen") + _check_answer(obj, "rejected")
    issues += _check_text(obj, "system", required=False)
    if not issues and _answer_text(obj["chosen"]).strip() == _answer_text(obj["rejected"]).strip():
        issues.append(Issue("rejected", "is identical to chosen; a pair teaches nothing unless they differ"))
    return issues


def _answer_text(answer: Any) -> str:
    if isinstance(answer, list):
        return "\n".join(str(m.get("content") or "") for m in answer if isinstance(m, dict))
    return str(answer)


CHECKS = {
    "chat": _check_chat,
    "instruction": _check_instruction,
    "prompt_completion": _check_prompt_completion,
    "text": _check_plain_text,
    "preference": _check_preference,
    "classification": _check_classification,
    "sharegpt": _check_sharegpt,
    "unpaired_preference": _check_unpaired,
}
