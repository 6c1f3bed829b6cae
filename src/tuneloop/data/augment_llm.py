"""Model-written candidates for ``data augment``: paraphrases of user turns, and new examples
self-instruct style. Prompts, generation and parsing live here; checking the candidates (validation,
dedup, quality filter) is :mod:`tuneloop.data.augment`'s job, since a model's output is never trusted.

* paraphrase: a few-shot chat (an instruction, three rewrite examples as earlier turns, then the
  text) asks the model to reword one user message, keeping its meaning and language. The answer of
  the conversation is kept as it is: only the question varies.
* synthetic: the prompt shows a few seed Q/A pairs (sampled from the input) and asks for one new,
  different pair, optionally about a topic from ``--topics``, in a fixed ``Q: ... / A: ...`` format
  that :func:`parse_qa` reads back.

Generation is batched (:func:`tuneloop.models.generation.generate_chat`) and sampled with a fixed
torch seed, so a run is repeatable on the same machine and library versions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tuneloop.models.generation import generate_chat

PARAPHRASE_SYSTEM = ("You rewrite messages. Keep the meaning, the details and the language; change the "
                     "wording. Do not answer the message. Reply with the rewritten message only.")
PARAPHRASE_EXAMPLES = (
    ("How do I reset my password?", "What are the steps to set a new password?"),
    ("My parcel still hasn't arrived, it has been a week.", "It's been seven days and my package is not here yet."),
    ("Can I pay with PayPal?", "Is PayPal accepted as a payment method?"),
)
PARAPHRASE_REQUEST = "Rewrite: {text}"

SYNTHETIC_SYSTEM = ("You write new training examples for an assistant: a user question and the "
                    "assistant's answer, in the style and language of the examples.")
SYNTHETIC_REQUEST = ("Examples:\n\n{examples}\n\nWrite one new example{topic}: a different question and its "
                     "answer. Use exactly this format:\nQ: <question>\nA: <answer>")

# Labels a model likes to put before its answer ("Rewritten: ...", "Paraphrase - ...").
_LEADING_LABEL = re.compile(r"^\s*(rewritten( message)?|rewrite|paraphrase[d]?|answer|output)\s*[:\-]\s*",
                            re.IGNORECASE)
_QUOTES = "\"'“”‘’«»"


def paraphrase_conversation(text: str) -> list[dict]:
    messages = [{"role": "system", "content": PARAPHRASE_SYSTEM}]
    for original, rewritten in PARAPHRASE_EXAMPLES:
        messages.append({"role": "user", "content": PARAPHRASE_REQUEST.format(text=original)})
        messages.append({"role": "assistant", "content": rewritten})
    messages.append({"role": "user", "content": PARAPHRASE_REQUEST.format(text=text)})
    return messages


def clean_paraphrase(text: str) -> str:
    """The rewritten message from a model's reply: labels and wrapping quotes removed, first paragraph."""
    text = _LEADING_LABEL.sub("", text.strip())
    text = text.split("\n\n")[0].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def synthetic_conversation(seeds: Sequence[tuple[str, str]], topic: str | None = None) -> list[dict]:
    examples = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in seeds)
    request = SYNTHETIC_REQUEST.format(examples=examples, topic=f" about {topic}" if topic else "")
    return [{"role": "system", "content": SYNTHETIC_SYSTEM}, {"role": "user", "content": request}]


def parse_qa(text: str) -> tuple[str, str] | None:
    """``(question, answer)`` from ``Q: ...\\nA: ...`` (the ``Q:`` may be missing); None if no answer."""
    match = re.search(r"(?:^|\n)\s*A\s*:\s*", text)
    if match is None:
        return None
    question = re.sub(r"^\s*Q\s*:\s*", "", text[: match.start()].strip()).strip()
    answer = re.split(r"\n\s*[QA]\s*:", text[match.end() :])[0].strip()  # one pair only
    if not question or not answer:
        return None
    return question, answer


def generate(model, tokenizer, conversations: list[list[dict]], seed: int, temperature: float,
             max_new_tokens: int, batch_size: int) -> list[str]:
    """One sampled reply per conversation (greedy when ``temperature`` is 0)."""
    import torch

    torch.manual_seed(seed)
    generations = generate_chat(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                temperature=temperature, batch_size=batch_size)
    return [g.text for g in generations]
