"""The one chat-template and loss-masking module, used by training, evaluation, serving and export.

Why one module: the most common way a fine-tune silently fails is a prompt rendered one way in
training and another way in serving. Every path here goes through :func:`render_text` (the model's
own Jinja chat template) and :func:`tokenize_text` (no extra special tokens added on top), so the ids a
served prompt gets are exactly the prefix the model was trained on.

Loss masking: the conversation is rendered once; each assistant turn's character span (its content
plus the end-of-turn token, not the newline after it) is found by rendering the prefix before it, and
tokens whose characters fall in a span are supervised. Everything else gets label ``-100``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = -100

# ChatML, for tokenizers that ship no template (the SmolLM2 and Qwen families use this format).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


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


def render_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def tokenize_text(tokenizer, text: str) -> list[int]:
    # The template already contains every special token the model expects.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a prompt ending in the assistant header: what serving and evaluation feed the model."""
    return tokenize_text(tokenizer, render_text(tokenizer, messages, add_generation_prompt=True))


def _assistant_char_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    spans = []
    eos = tokenizer.eos_token or ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_text(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = render_text(tokenizer, messages[: i + 1])
        if not (full.startswith(prefix) and full.startswith(through) and len(through) >= len(prefix)):
            raise TemplateError("the chat template does not render conversations prefix by prefix")
        turn = full[len(prefix) : len(through)]
        end = turn.rfind(eos) + len(eos) if eos and eos in turn else len(turn.rstrip())
        spans.append((len(prefix), len(prefix) + end))
    return spans


def encode_chat(tokenizer, messages: list[dict], train_on: str = "assistant") -> EncodedChat:
    """Token ids and labels for one conversation. ``train_on``: "assistant" (default) or "all"."""
    full = render_text(tokenizer, messages)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if train_on == "all":
        return EncodedChat(list(ids), list(ids), [(0, len(ids))])
    char_spans = _assistant_char_spans(tokenizer, messages, full)
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
