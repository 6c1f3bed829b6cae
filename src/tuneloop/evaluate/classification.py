"""Classification scoring for generative classifiers: which label did the model choose, and was it right.

A chat model answers in tokens, not label indices, so "its label" needs a definition. Three are
offered (``tuneloop eval --classify MODE``); the mode is written to ``eval.json`` (``classify``) and the
report, and each row of ``predictions.jsonl`` says how its label was found (``matched_by``):

* ``likelihood`` (default): the label whose tokens, as the whole assistant answer (through the
  end-of-turn token), the model gives the highest probability after the prompt. Every answer is a
  label by construction (``no_label`` is 0), and the score is what the model prefers, not whether it
  happened to spell a label. Fast: the prompt runs once with a KV cache, then the labels continue
  from that cache in a few length-sorted batches (77 Banking77 labels: about 560 answer tokens in all).
* ``generate``: greedy text; it counts only if, after light normalisation (case, whitespace,
  trailing punctuation), it *is* a label. Anything else is :data:`NO_LABEL` (``matched_by`` =
  ``no_label``): always wrong, and counted in ``eval.json``'s ``no_label``.
* ``similar``: the old lenient mapping, kept only when asked for by name: exact label, else the
  longest label contained in the answer, else the label closest by spelling (difflib). It gives an
  untrained model points for "I'm sorry, as a chatbot..." and is named as such in the report.

For a benchmark script (e.g. tuneloop vs TRL on Banking77), the likelihood scorer is a plain function
on any Hugging Face causal LM, PEFT-wrapped or not::

    from tuneloop.evaluate.classification import predict_labels_by_likelihood
    predicted = predict_labels_by_likelihood(model, tokenizer, prompts, labels)
    # prompts: list of chat message lists (without the answer); labels: the label set

:func:`label_log_likelihoods` gives the scores themselves (prompts x labels, summed log-probabilities).
"""

from __future__ import annotations

import copy
import difflib
import re
import string
from dataclasses import dataclass

import numpy as np

from tuneloop.chat.template import TemplateError, render_text, tokenize_text
from tuneloop.evaluate.compare import SampleStats
from tuneloop.evaluate.metrics import confusion_counts, normalize_text, scores_from_confusion

CLASSIFY_MODES = ("likelihood", "generate", "similar")
NO_LABEL = "(no label)"
# Stands in for the answer while rendering, to find where the template puts it.
_ANSWER_SENTINEL = "\x00tuneloop-answer\x00"


@dataclass(frozen=True)
class LabelMatch:
    label: str
    matched_by: str  # "likelihood" | "exact" | "contained" | "similar" | "no_label" | "empty"


def light_normalise(text: str) -> str:
    """Lower case, whitespace collapsed, trailing punctuation dropped: "Card_arrival." -> "card_arrival"."""
    return " ".join(text.lower().split()).rstrip(string.punctuation + " ")


class ExactLabelMatcher:
    """``generate`` mode: an answer is a label only if it is one after :func:`light_normalise`."""

    def __init__(self, labels: list[str]):
        self.labels = sorted(set(labels))
        self._by_normalised = {light_normalise(label): label for label in self.labels}

    def map(self, answer: str) -> LabelMatch:
        label = self._by_normalised.get(light_normalise(answer))
        return LabelMatch(label, "exact") if label is not None else LabelMatch(NO_LABEL, "no_label")


class LabelMapper:
    """``similar`` mode: exact, else contained (longest label wins), else closest by spelling."""

    def __init__(self, labels: list[str]):
        self.labels = sorted(set(labels))
        self._normalised = {label: normalize_text(label) for label in self.labels}
        self._by_normalised = {norm: label for label, norm in self._normalised.items()}
        # Longest first, so the most specific label contained in an answer wins.
        self._patterns = sorted(
            ((label, re.compile(rf"(?<!\w){re.escape(norm)}(?!\w)")) for label, norm in self._normalised.items() if norm),
            key=lambda item: -len(self._normalised[item[0]]),
        )

    def map(self, answer: str) -> LabelMatch:
        norm = normalize_text(answer)
        if not norm:
            # Otherwise an empty answer would "match" whichever label wins the similarity tie.
            return LabelMatch(NO_LABEL, "empty")
        if norm in self._by_normalised:
            return LabelMatch(self._by_normalised[norm], "exact")
        for label, pattern in self._patterns:
            if pattern.search(norm):
                return LabelMatch(label, "contained")
        best = max(self.labels, key=lambda label: (difflib.SequenceMatcher(None, norm, self._normalised[label]).ratio(), label))
        return LabelMatch(best, "similar")


@dataclass
class ClassificationResult:
    labels: list[str]
    y_true: np.ndarray  # label indices
    y_pred: np.ndarray
    matches: list[LabelMatch]

    @property
    def correct(self) -> np.ndarray:
        return (self.y_true == self.y_pred).astype(np.float64)

    @property
    def no_label(self) -> int:
        """Answers that are no label (always counted wrong)."""
        return sum(1 for m in self.matches if m.label == NO_LABEL)

    def confusion(self) -> np.ndarray:
        return confusion_counts(self.y_true, self.y_pred, len(self.labels))

    def scores(self) -> dict[str, float]:
        return scores_from_confusion(self.confusion())


def result_from_matches(matches: list[LabelMatch], references: list[str], labels: list[str]) -> ClassificationResult:
    """Pair each match with its reference; :data:`NO_LABEL` joins the label set only when it occurs."""
    label_set = sorted(set(labels)) + ([NO_LABEL] if any(m.label == NO_LABEL for m in matches) else [])
    position = {label: i for i, label in enumerate(label_set)}
    y_true = np.array([position[r] for r in references], dtype=np.int64)
    y_pred = np.array([position[m.label] for m in matches], dtype=np.int64)
    return ClassificationResult(label_set, y_true, y_pred, matches)


def classify(answers: list[str], references: list[str], labels: list[str], mode: str = "generate") -> ClassificationResult:
    """Map free-text answers onto ``labels`` (``generate`` or ``similar`` mode) and pair them with references."""
    if mode not in ("generate", "similar"):
        raise ValueError(f"classify() maps text; mode {mode!r} is not a text mode")
    matcher = ExactLabelMatcher(labels) if mode == "generate" else LabelMapper(labels)
    return result_from_matches([matcher.map(answer) for answer in answers], references, labels)


def classify_by_likelihood(predicted: list[str], references: list[str], labels: list[str]) -> ClassificationResult:
    return result_from_matches([LabelMatch(p, "likelihood") for p in predicted], references, labels)


def top_confused_pairs(matrix: np.ndarray, labels: list[str], k: int = 15) -> list[dict]:
    """The k most frequent (true, predicted) mistakes, most frequent first."""
    off = np.array(matrix, copy=True)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), len(labels))
        if off[i, j] == 0:
            break
        pairs.append({"true": labels[i], "predicted": labels[j], "count": int(off[i, j])})
    return pairs


def classification_stats(result: ClassificationResult) -> dict:
    """accuracy, precision, recall, f1 as :class:`~tuneloop.evaluate.compare.SampleStats`.

    Rows are (true, predicted) label indices, so macro scores are recomputed on any subset.
    """
    n_labels = len(result.labels)
    pairs = np.stack([result.y_true, result.y_pred], axis=1)

    def score(name):
        return lambda rows: scores_from_confusion(confusion_counts(rows[:, 0], rows[:, 1], n_labels))[name]

    return {name: SampleStats(pairs, score(name)) for name in ("accuracy", "precision", "recall", "f1")}


# ---- likelihood over the label set ---------------------------------------------------------------

def answer_token_ids(tokenizer, messages: list[dict], labels: list[str],
                     cache: dict | None = None) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, each label's answer ids): the tokens the model would generate to answer with it.

    The answer is the label as the assistant turn's content plus whatever the template puts around
    it up to and including the end-of-turn token, tokenised after the prompt exactly as serving
    tokenises the prompt (:func:`~tuneloop.chat.template.render_prompt_ids`). ``cache`` (keyed by that
    surrounding text, which rarely depends on the prompt) saves re-tokenising the labels per prompt.
    """
    prompt_text = render_text(tokenizer, messages, add_generation_prompt=True)
    full = render_text(tokenizer, [*messages, {"role": "assistant", "content": _ANSWER_SENTINEL}])
    if not full.startswith(prompt_text) or full.count(_ANSWER_SENTINEL) != 1:
        raise TemplateError("the chat template does not render the answer after the prompt")
    before, after = full[len(prompt_text):].split(_ANSWER_SENTINEL)
    eos = tokenizer.eos_token or ""
    after = after[: after.index(eos) + len(eos)] if eos and eos in after else after.rstrip()
    cache = {} if cache is None else cache
    if (before, after) not in cache:
        cache[(before, after)] = [tokenize_text(tokenizer, before + label + after) for label in labels]
    return tokenize_text(tokenizer, prompt_text), cache[(before, after)]


def _cache_argument(model) -> str:
    """``cache`` in transformers >= 5.2x, ``past_key_values`` before (a PEFT model: ask its base model)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def length_sorted_chunks(lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Indices in chunks of similar length: at most ``max_rows`` rows and ``max_tokens`` padded tokens each.

    Sorting first keeps padding small (Banking77's answers run from 2 to 18 tokens; one batch padded
    to the longest would be 60% padding).
    """
    chunks, current = [], []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[i] > max_tokens):
            chunks.append(current)
            current = []
        current.append(i)
    return chunks + ([current] if current else [])


def continuation_log_likelihoods(model, prompt_ids: list[int], continuations: list[list[int]],
                                 batch_size: int = 128, pad_id: int = 0, max_tokens: int = 1024) -> np.ndarray:
    """Summed log-probability of each continuation after one prompt (run once, its KV cache shared).

    The prompt's forward pass gives the cache and the distribution of every continuation's first
    token; then continuations run in batches (:func:`length_sorted_chunks`) on copies of that cache.
    Rows are right-padded, so padding comes after every real token and cannot change its (causal) logits.
    """
    import torch

    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
    prompt_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    scores = np.empty(len(continuations))
    for chunk_indices in length_sorted_chunks([len(c) for c in continuations], batch_size, max_tokens):
        chunk = [continuations[i] for i in chunk_indices]
        width = max(len(c) for c in chunk)
        ids = torch.tensor([c + [pad_id] * (width - len(c)) for c in chunk], device=device)
        total = first[ids[:, 0]]
        if width > 1:
            cache = copy.deepcopy(prompt_cache)
            cache.batch_repeat_interleave(len(chunk))
            logits = model(input_ids=ids[:, :-1], use_cache=True, **{cache_arg: cache}).logits
            token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            lengths = torch.tensor([len(c) for c in chunk], device=device)
            real = torch.arange(1, width, device=device)[None, :] < lengths[:, None]
            total = total + (token_logp * real).sum(dim=1)
        scores[chunk_indices] = total.cpu().numpy()
    return scores


def label_log_likelihoods(model, tokenizer, prompts: list[list[dict]], labels: list[str],
                          batch_size: int = 128, progress=None) -> np.ndarray:
    """Array [len(prompts), len(labels)]: log P(label as the whole answer | prompt), in nats.

    A sum over the answer's tokens, end-of-turn included, so it is the probability that the model
    says exactly this label and stops: a label that is a prefix of another ("card" vs "card_arrival")
    is not favoured for being shorter unless the model would stop there.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    scores = np.empty((len(prompts), len(labels)))
    cache: dict = {}
    try:
        with torch.inference_mode():
            for i, messages in enumerate(prompts):
                prompt_ids, answers = answer_token_ids(tokenizer, messages, labels, cache)
                scores[i] = continuation_log_likelihoods(model, prompt_ids, answers, batch_size, pad_id)
                if progress is not None:
                    progress.update(1)
    finally:
        model.train(was_training)
    return scores


def predict_labels_by_likelihood(model, tokenizer, prompts: list[list[dict]], labels: list[str],
                                 batch_size: int = 128, progress=None) -> list[str]:
    """The most likely label for each prompt (ties: the first in ``labels``); see :func:`label_log_likelihoods`.

    ``model``: any Hugging Face causal LM (a PEFT model too); ``prompts``: chat message lists without
    the answer; ``batch_size``: at most this many labels per forward pass (batches are also capped at
    1,024 padded tokens and grouped by length).
    """
    labels = list(labels)
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size, progress)
    return [labels[j] for j in scores.argmax(axis=1)]


# ---- the same answer by best-first search over the label tokens ----------------------------------

def most_likely_answer(model, prompt_ids: list[int], answers: list[list[int]], max_expansions: int = 48,
                       pad_id: int = 0) -> tuple[int, int]:
    """(index of the most likely answer, forward passes used): the argmax of
    :func:`continuation_log_likelihoods`, found by best-first search over the answers' token trie.

    A partial answer's log-probability only falls as tokens are added (each adds log p <= 0), so the
    first *complete* answer popped from a max-queue of partial ones beats every other: exact, not
    greedy or beam. A tuned model sure of its label runs about one 1-token pass per label token
    (Banking77: ~8) instead of all ~560 label tokens; an unsure one (a base model) may wander, so
    after ``max_expansions`` passes the prompt is scored in full instead (the same answer).
    """
    import heapq

    import torch

    children: dict[tuple, set] = {}
    ends: dict[tuple, int] = {}
    for j, answer in enumerate(answers):
        for k in range(len(answer)):
            children.setdefault(tuple(answer[:k]), set()).add(answer[k])
        ends.setdefault(tuple(answer), j)
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)

    def step(ids: list[int], cache):
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True,
                    **({cache_arg: cache} if cache is not None else {}))
        new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1), new_cache

    logp, caches = step(prompt_ids, None)
    caches = {(): caches}
    queue: list = []  # (-log p, order, prefix, complete?)

    def push(prefix: tuple, score: float, logp_next) -> None:
        for token in children.get(prefix, ()):
            child, value = (*prefix, token), score + float(logp_next[token])
            if child in ends:
                heapq.heappush(queue, (-value, len(queue), child, True))
            if child in children:
                heapq.heappush(queue, (-value, len(queue), child, False))

    push((), 0.0, logp)
    passes = 1
    while queue:
        negative, _, prefix, complete = heapq.heappop(queue)
        if complete:
            return ends[prefix], passes
        if passes >= max_expansions:
            break
        logp, caches[prefix] = step([prefix[-1]], copy.deepcopy(caches[prefix[:-1]]))
        passes += 1
        push(prefix, -negative, logp)
    scores = continuation_log_likelihoods(model, prompt_ids, answers, pad_id=pad_id)
    return int(scores.argmax()), passes + 1


def most_likely_labels(model, tokenizer, prompts: list[list[dict]], labels: list[str], max_expansions: int = 48,
                       progress=None) -> tuple[list[str], int]:
    """(the most likely label per prompt, forward passes in all): :func:`predict_labels_by_likelihood`'s
    answer by :func:`most_likely_answer` (ties aside: an exact tie may resolve to another label)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    labels, cache, out, passes = list(labels), {}, [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for messages in prompts:
                prompt_ids, answers = answer_token_ids(tokenizer, messages, labels, cache)
                best, used = most_likely_answer(model, prompt_ids, answers, max_expansions, pad_id)
                out.append(labels[best])
                passes += used
                if progress is not None:
                    progress.update(1)
    finally:
        model.train(was_training)
    return out, passes
