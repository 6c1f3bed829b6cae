"""LLM-assisted pre-labelling: a model suggests the label or answer the annotator accepts or edits.

Suggestions are computed in a background thread, in small batches, in the order annotators will
meet the records (a record someone is looking at jumps the line), so the page is usable at once
and the model loads while the first record is read.

* classification: each allowed label is scored by the model's mean log-probability of the label
  text after an instruction listing the labels, and the best one is suggested. Scoring (rather than
  generating and matching) always yields one of the labels, even from a small model.
* answer: the model generates an answer to the prompt (greedy decoding).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tuneloop.annotate.queue import Item
from tuneloop.chat.template import render_prompt_ids, tokenize_text
from tuneloop.models.generation import generate_chat
from tuneloop.models.loading import load_model_and_tokenizer

CLASSIFY_INSTRUCTION = (
    "Classify the text into exactly one of these labels: {labels}.\n\nText: {text}\n\n"
    "Answer with the label only."
)


def score_labels(model, tokenizer, text: str, labels: Sequence[str]) -> list[float]:
    """Mean log-probability of each label as the answer to the classification instruction."""
    import torch

    prompt = render_prompt_ids(tokenizer, [{"role": "user", "content": CLASSIFY_INSTRUCTION.format(
        labels=", ".join(labels), text=text)}])
    answers = [tokenize_text(tokenizer, label) or [tokenizer.eos_token_id] for label in labels]
    width = len(prompt) + max(len(a) for a in answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([prompt + a + [pad] * (width - len(prompt) - len(a)) for a in answers])
    mask = torch.tensor([[1] * (len(prompt) + len(a)) + [0] * (width - len(prompt) - len(a)) for a in answers])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    scores = []
    for row, answer in enumerate(answers):
        # The token at position p is predicted by the logits at p - 1.
        positions = range(len(prompt), len(prompt) + len(answer))
        total = sum(logprobs[row, p - 1, answer[p - len(prompt)]].item() for p in positions)
        scores.append(total / len(answer))
    return scores


def suggest_labels(model, tokenizer, items: Sequence[Item], labels: Sequence[str]) -> list[str]:
    suggestions = []
    for item in items:
        scores = score_labels(model, tokenizer, item.text, labels)
        suggestions.append(labels[max(range(len(labels)), key=scores.__getitem__)])
    return suggestions


def suggest_answers(model, tokenizer, items: Sequence[Item], max_new_tokens: int = 128) -> list[str]:
    generations = generate_chat(model, tokenizer, [item.messages for item in items],
                                max_new_tokens=max_new_tokens, batch_size=len(items))
    return [g.text for g in generations]


class Suggester:
    """Computes suggestions for queue items in a background thread; :meth:`get` never blocks."""

    def __init__(self, model_reference: str, items: Sequence[Item], task: str, labels: Sequence[str],
                 batch_size: int = 4, max_new_tokens: int = 128):
        self.model_reference = model_reference
        self.task, self.labels = task, list(labels)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self._pending = [item for item in items if item.given_suggestion is None]
        self._by_id = {item.id: item for item in items}
        self._done: dict[str, str] = {}
        self._lock = threading.Condition()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="tuneloop-suggest", daemon=True)

    def start(self) -> Suggester:
        self._thread.start()
        return self

    def get(self, item_id: str) -> str | None:
        with self._lock:
            return self._done.get(item_id)

    def status(self, item_id: str) -> str:
        """``ready``, ``pending`` or ``failed`` (the model could not be loaded or run)."""
        with self._lock:
            if item_id in self._done:
                return "ready"
            return "failed" if self.error else "pending"

    def prioritise(self, item_id: str) -> None:
        """Move a record someone is looking at to the front of the line."""
        with self._lock:
            item = self._by_id.get(item_id)
            if item in self._pending:
                self._pending.remove(item)
                self._pending.insert(0, item)

    def skip(self, item_ids: set[str]) -> None:
        """Records that no longer need a suggestion (fully labelled)."""
        with self._lock:
            self._pending = [item for item in self._pending if item.id not in item_ids]

    def wait(self, item_id: str, timeout: float) -> str | None:
        with self._lock:
            self._lock.wait_for(lambda: item_id in self._done or self.error or not self._thread.is_alive(),
                                timeout)
            return self._done.get(item_id)

    def _run(self) -> None:
        try:
            model, tokenizer = load_model_and_tokenizer(self.model_reference)
            while True:
                with self._lock:
                    batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
                if not batch:
                    return
                if self.task == "classification":
                    values = suggest_labels(model, tokenizer, batch, self.labels)
                else:
                    values = suggest_answers(model, tokenizer, batch, self.max_new_tokens)
                with self._lock:
                    self._done.update({item.id: value for item, value in zip(batch, values)})
                    self._lock.notify_all()
        except Exception as e:  # shown on the page; labelling goes on without suggestions
            with self._lock:
                self.error = f"{type(e).__name__}: {e}"
                self._lock.notify_all()
