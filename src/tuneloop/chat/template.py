"""The one chat-template and loss-masking module, used by training, evaluation, serving and export.

Why one module: the most common way a fine-tune silently fails is a prompt rendered one way in
training and another way in serving. Every path here goes through :func:`render_text` (the model's
own Jinja chat template) and :func:`tokenize_text` (no extra special tokens added on top), so the ids a
served prompt gets are exactly the prefix the model was trained on.

Loss masking: the conversation is rendered once; each assistant turn's character span (its content
plus the end-of-turn token, not the newline after it) is found by rendering the prefix before it, and
tokens whose characters fall in a span are supervised. Everything else gets label ``-100``, and so
does an assistant turn with OpenAI's ``"weight": 0`` (context the user chose not to train on).

Tools: ``tool_calls`` on assistant turns, ``tool`` messages and a conversation's ``tools`` are handed
to the template in Hugging Face's form (arguments as objects). A template that renders none of them
would drop them silently, so :func:`encode_chat` checks they appear and otherwise raises a
:class:`TemplateError` naming the message and the fix (``chat_template: chatml``, whose
:data:`CHATML_TEMPLATE` renders them in the Hermes/Qwen ``<tool_call>`` style).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.errors import UserError

IGNORE_INDEX = -100

# ChatML (the SmolLM2 and Qwen families use this format) with tools in the Hermes / Qwen2.5 style:
# tool definitions in the system turn, calls as <tool_call>{json}</tool_call> in the assistant turn.
# A conversation without tools renders exactly as plain ChatML does.
_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>'
)
CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '" + _TOOLS_PREAMBLE + "' }}{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '" + _TOOLS_POSTAMBLE + "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' }}"
    "{{ function['arguments'] | tojson }}{{ '}\n</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# For tokenizers that ship no template.
DEFAULT_CHAT_TEMPLATE = CHATML_TEMPLATE


class Conversation(list):
    """A list of messages that also carries the conversation's ``tools`` (OpenAI's record key)."""

    def __init__(self, messages=(), tools: list | None = None):
        super().__init__(messages)
        self.tools = tools


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]
    # (start, end) token index ranges of supervised assistant turns, for previews and checks.
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class TemplateError(ValueError):
    """A conversation that cannot be rendered or masked; callers attach the record's location."""


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE


def select_chat_template(tokenizer, choice: str | None) -> None:
    """The recipe's ``chat_template``: ``model`` (its own; the default), ``chatml`` or a Jinja file.

    The tokenizer saved with the run carries the choice, so evaluation, serving and export of the
    run render prompts the way training did.
    """
    if choice in (None, "model"):
        ensure_chat_template(tokenizer)
        return
    if choice == "chatml":
        tokenizer.chat_template = CHATML_TEMPLATE
        return
    path = Path(choice).expanduser()
    if not path.is_file():
        raise UserError(f"chat_template: {choice!r} is neither 'model', 'chatml' nor a file",
                        hint="give the path of a Jinja chat template (relative to the recipe)")
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    try:
        text = render_text(tokenizer, probe)
    except Exception as e:  # jinja2's syntax and undefined-variable errors; shown to the user
        raise UserError(f"chat_template: cannot render a conversation with {path}: {e}", where=str(path),
                        hint="the template receives messages (role, content), add_generation_prompt "
                             "and tools, as in Hugging Face's apply_chat_template") from None
    if "hello" not in text:
        raise UserError(f"chat_template: {path} does not render message contents", where=str(path))


def message_text(content) -> str:
    """A message's text: a string as is, OpenAI text parts joined (as ``serve`` joins them), None -> ""."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return content


def tool_arguments(arguments) -> dict | None:
    """Tool-call arguments as an object (OpenAI sends a JSON string), or None when they are not one."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None
    return None


def _template_message(message: dict) -> dict:
    """The message as Hugging Face chat templates expect it (tool-call arguments as objects)."""
    out = {"role": message["role"], "content": message_text(message.get("content"))}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", "id": call.get("id"), "function": {
            "name": call["function"]["name"], "arguments": tool_arguments(call["function"].get("arguments"))}}
            for call in message["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if key in message:
            out[key] = message[key]
    return out


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False,
                tools: list | None = None) -> str:
    ensure_chat_template(tokenizer)
    tools = tools if tools is not None else getattr(messages, "tools", None)
    try:
        return tokenizer.apply_chat_template(
            [_template_message(m) for m in messages], tokenize=False,
            add_generation_prompt=add_generation_prompt, **({"tools": tools} if tools else {}))
    except Exception as e:  # jinja2 raises its own errors (raise_exception in a template, bad roles)
        if type(e).__module__.startswith("jinja2"):
            raise TemplateError(f"the chat template cannot render this conversation: {e}") from None
        raise


def tokenize_text(tokenizer, text: str) -> list[int]:
    # The template already contains every special token the model expects.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a prompt ending in the assistant header: what serving and evaluation feed the model."""
    return tokenize_text(tokenizer, render_text(tokenizer, messages, add_generation_prompt=True))


def _assistant_char_spans(tokenizer, messages: list[dict], full: str, tools) -> list[tuple[int, int]]:
    spans = []
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        prefix = render_text(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
        through = render_text(tokenizer, messages[: i + 1], tools=tools)
        if not (full.startswith(prefix) and full.startswith(through) and len(through) >= len(prefix)):
            raise TemplateError("the chat template does not render conversations prefix by prefix")
        turn = full[len(prefix) : len(through)]
        end = turn.rfind(eos) + len(eos) if eos and eos in turn else len(turn.rstrip())
        spans.append((len(prefix), len(prefix) + end))
    return spans


def check_tools_rendered(tokenizer, messages: list[dict], tools, full: str) -> None:
    """Raise :class:`TemplateError` when the template drops the conversation's tools or tool calls."""
    if tools and render_text(tokenizer, messages, tools=[]) == full:
        raise TemplateError("tools: the chat template does not render tool definitions, so the model "
                            "would never see them; " + _TOOLS_FIX)
    for i, message in enumerate(messages):
        if message.get("tool_calls"):
            without = [dict(m, tool_calls=None) if j == i else m for j, m in enumerate(messages)]
            if render_text(tokenizer, without, tools=tools) == full:
                raise TemplateError(f"messages[{i}].tool_calls: the chat template does not render tool "
                                    "calls, so they would be dropped from training; " + _TOOLS_FIX)


_TOOLS_FIX = ("set `chat_template: chatml` in the recipe (ChatML with <tool_call> tags) or give a Jinja "
              "template file that renders tools and tool_calls")


def encode_chat(tokenizer, messages: list[dict], train_on: str = "assistant",
                tools: list | None = None) -> EncodedChat:
    """Token ids and labels for one conversation. ``train_on``: "assistant" (default) or "all".

    Assistant turns with ``weight`` 0 stay in the context but get no labels.
    """
    tools = tools if tools is not None else getattr(messages, "tools", None)
    full = render_text(tokenizer, messages, tools=tools)
    if tools or any(m.get("tool_calls") for m in messages):
        check_tools_rendered(tokenizer, messages, tools, full)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if train_on == "all":
        return EncodedChat(list(ids), list(ids), [(0, len(ids))])
    char_spans = _assistant_char_spans(tokenizer, messages, full, tools)
    labels = [IGNORE_INDEX] * len(ids)
    token_spans = []
    for start_char, end_char in char_spans:
        inside = [t for t, (s, e) in enumerate(offsets) if s >= start_char and e <= end_char and e > s]
        for t in inside:
            labels[t] = ids[t]
        if inside:
            token_spans.append((inside[0], inside[-1] + 1))
    return EncodedChat(list(ids), labels, token_spans)


def preview(tokenizer, encoded: EncodedChat, color: bool = True) -> str:
    """Token-level view: trained tokens highlighted (green, or [[...]] without colour), masked plain."""
    parts = []
    for token_id, label in zip(encoded.input_ids, encoded.labels):
        piece = tokenizer.decode([token_id]).replace("\n", "\\n\n")
        if label == IGNORE_INDEX:
            parts.append(f"\x1b[2m{piece}\x1b[0m" if color else piece)
        else:
            parts.append(f"\x1b[1;32m{piece}\x1b[0m" if color else f"[[{piece}]]")
    return "".join(parts)
