"""``POST /v1/classify``: sequence classifiers served beside the generative models.

``--model NAME=DIR`` where DIR is a classifier (an export of a classifier run, or the run itself; see
:mod:`tuneloop.models.classifier`) is served here instead of by the generation engine: each one is
its own model in memory (a classifier head cannot share the generative base's PEFT model). A
request ``{"model", "input": text | [texts], "top_k"?}`` gets, per text, the most likely label, its
probability and the ``top_k`` labels by probability:

    {"object": "list", "model": NAME, "usage": {"prompt_tokens": n, "total_tokens": n},
     "data": [{"index": 0, "label": "card_arrival", "score": 0.93, "truncated": false,
               "top": [{"label": "card_arrival", "score": 0.93}, ...]}]}

Texts are scored alone (no chat template) and truncated to the training max length, exactly as the
classifier was trained and evaluated (``truncated`` says when that happened). Requests are recorded
in the store (kind ``classify``) and counted in the metrics like completions; auth, rate limit and
the body limit are the guard middleware's, as for every ``/v1`` route.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.models.classifier import LoadedClassifier, class_probabilities, is_classifier, load_classifier, \
    token_counts
from tuneloop.serve.adapters import MODEL_ID, default_id, parse_option
from tuneloop.serve.errors import APIError
from tuneloop.serve.limits import retry_after_headers
from tuneloop.serve.schemas import ClassifyRequest
from tuneloop.serve.store import RequestRow

SCORE_BATCH = 16  # texts per forward pass: bounds memory for long inputs


@dataclass
class ServedClassifier:
    id: str
    reference: str  # what the user passed to --model
    classifier: LoadedClassifier


def split_options(options: list[str]) -> tuple[list[str], list[tuple[str | None, str]]]:
    """--model options -> (those for the generation engine, (NAME, DIR) of each classifier)."""
    generative, classifiers = [], []
    for option in options:
        name, reference = parse_option(option)
        if is_classifier(Path(reference).expanduser()):
            classifiers.append((name, reference))
        else:
            generative.append(option)
    return generative, classifiers


def load_classifiers(pairs: list[tuple[str | None, str]], taken: set[str]) -> dict[str, ServedClassifier]:
    """Load each classifier under its id; ``taken``: the generative ids (an id serves one model)."""
    served: dict[str, ServedClassifier] = {}
    for name, reference in pairs:
        model_id = name or default_id(reference)
        if not MODEL_ID.fullmatch(model_id):
            raise UserError(f"model id {model_id!r} may only use letters, digits and . _ : @ + -",
                            where="--model", hint="name it with --model NAME=DIR")
        if model_id in taken or model_id in served:
            raise UserError(f"model id {model_id!r} is used twice", where="--model",
                            hint="give each model its own id with --model NAME=M")
        served[model_id] = ServedClassifier(model_id, reference, load_classifier(Path(reference).expanduser()))
    return served


def ranked(probabilities: list[float], labels: list[str], top_k: int) -> list[dict]:
    """The ``top_k`` labels by probability, highest first (ties: label order)."""
    order = sorted(range(len(labels)), key=lambda i: (-probabilities[i], i))[:top_k]
    return [{"label": labels[i], "score": probabilities[i]} for i in order]


def result_rows(probabilities: list[list[float]], counts: list[tuple[int, bool]], labels: list[str],
                top_k: int) -> list[dict]:
    rows = []
    for index, (probs, (_, truncated)) in enumerate(zip(probabilities, counts)):
        top = ranked(probs, labels, top_k)
        rows.append({"index": index, "label": top[0]["label"], "score": top[0]["score"], "truncated": truncated,
                     "top": top})
    return rows


class ClassifierService:
    """Answers /v1/classify; records through ``completions`` (its store writer, metrics and concurrency limit)."""

    def __init__(self, classifiers: dict[str, ServedClassifier], completions):
        self.classifiers = classifiers
        self.completions = completions
        # One scoring thread, as the generation engine has one worker: both already use every core.
        self.runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneloop-classify")

    def served(self, name: str) -> ServedClassifier:
        if name in self.classifiers:
            return self.classifiers[name]
        known = ", ".join(self.classifiers) or "none"
        if name not in self.completions.table.models:
            self.completions.served(name)  # a path: 400; unknown: 404 (the ids of every route's models)
        raise APIError(400, f"model {name!r} is a generative model: /v1/classify needs a sequence classifier "
                            f"(served here: {known}); ask {name!r} through /v1/chat/completions",
                       param="model", code="model_not_classifier")

    async def classify(self, body: ClassifyRequest) -> dict:
        started = time.perf_counter()
        texts = body.texts()
        row = RequestRow("classify-" + uuid.uuid4().hex, body.model, "classify", 0.0, 0, prompt=body.input)
        try:
            served = self.served(body.model)
            if not self.completions.limiter.try_acquire():
                raise APIError(429, f"the server is busy ({self.completions.limiter.limit} requests in flight); "
                                    "retry shortly", code="too_many_requests", headers=retry_after_headers(1))
        except APIError as e:
            await self.completions.finish(row, started, e.status, error=e)
            raise
        try:
            probabilities, counts = await self._score(served.classifier, texts)
        except APIError as e:
            await self.completions.finish(row, started, e.status, error=e)
            raise
        finally:
            self.completions.limiter.release()
        labels = served.classifier.labels
        data = result_rows(probabilities, counts, labels, min(body.top_k or 1, len(labels)))
        row.prompt_tokens = sum(n for n, _ in counts)
        row.response = json.dumps([d["label"] for d in data], ensure_ascii=False)
        await self.completions.finish(row, started, 200)
        return {"object": "list", "model": served.id, "data": data,
                "usage": {"prompt_tokens": row.prompt_tokens, "total_tokens": row.prompt_tokens}}

    async def _score(self, classifier: LoadedClassifier, texts: list[str]):
        timeout = self.completions.settings.request_timeout_s
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.runner, _score, classifier, texts), timeout)
        except TimeoutError:
            raise APIError(504, f"classification took longer than the server's request timeout of {timeout:g} s; "
                                "send fewer or shorter texts", code="timeout",
                           headers={"x-should-retry": "false"}) from None

    def close(self) -> None:
        self.runner.shutdown(wait=True)


def _score(classifier: LoadedClassifier, texts: list[str]) -> tuple[list[list[float]], list[tuple[int, bool]]]:
    probabilities: list[list[float]] = []
    for i in range(0, len(texts), SCORE_BATCH):
        probabilities += class_probabilities(classifier, texts[i : i + SCORE_BATCH])
    return probabilities, token_counts(classifier.tokenizer, texts, classifier.max_len)
