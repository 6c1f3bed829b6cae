"""``data augment``: grow a small dataset with paraphrases, self-instruct examples or noisy variants.

    tuneloop data augment support.jsonl --out augmented.jsonl --method paraphrase --n 2
    tuneloop data prepare support.jsonl augmented.jsonl --out prepared/

    from tuneloop.data.augment import augment
    result = augment(records, "noise", n=2, seed=0)
    result.records, result.counts, result.rejected

Methods: ``paraphrase`` (a model rewrites the user turns, the answer is kept; see
:mod:`~tuneloop.data.augment_llm`), ``synthetic`` (new Q/A pairs from a few seed examples and
optional topics), ``noise`` (typos, casing, word dropout; :mod:`~tuneloop.data.augment_noise`).

Every candidate then goes through the same checks, because a model's output is never trusted:

1. validation: the record must pass :func:`tuneloop.data.validate.validate_record` (SFT);
2. quality (:func:`quality_problem`): length bounds (absolute, and 0.3x-3x of the text it rewrites),
   no copying of the source or echoing of our instruction, no chat-template tokens, mostly letters,
   and the same writing system as the source (a cheap Unicode character-class check);
3. exact duplicates (normalised text, as ``prepare`` compares them) of an original or of another
   candidate;
4. near-duplicates: character 5-gram Jaccard of the user turns >= ``near_dup_threshold`` with an
   original or an earlier kept candidate. A noisy variant is a near-duplicate of its own source by
   design, so for ``noise`` only *other* originals and other sources' variants count.

Kept records carry ``augmented_from`` (source id; for synthetic the seed ids) and ``augmentation``
(the method); ``prepare`` puts them in train only (:mod:`~tuneloop.data.augment_provenance`).
``counts``: ``generated == invalid + exact_duplicates + near_duplicates + filtered + output``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data import augment_llm, augment_noise
from tuneloop.data.augment_filter import QualityLimits, find_duplicates, quality_problem
from tuneloop.data.augment_provenance import PROVENANCE_KEYS, origin_id
from tuneloop.data.ingest import expand_inputs, read_records
from tuneloop.data.records import to_canonical
from tuneloop.data.validate import validate_record
from tuneloop.errors import UserError
from tuneloop.models.loading import load_model_and_tokenizer

METHODS = ("paraphrase", "synthetic", "noise")
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class AugmentOptions:
    """Settings of one run (the CLI flags of the same names)."""

    method: str
    n: int | None = None  # variants per record (paraphrase, noise: default 1); new records (synthetic: default #inputs)
    seed: int = 0
    model: str = DEFAULT_MODEL  # paraphrase and synthetic only
    topics: tuple[str, ...] = ()  # synthetic: cycle through these topics
    temperature: float = 0.5  # sampling for variety (a small model drifts when hotter); 0 = greedy
    batch_size: int = 8
    max_new_tokens: int = 96  # paraphrase: at most this, or twice the longest user turn; synthetic: 2x
    seeds_per_prompt: int = 3  # synthetic: examples shown to the model
    near_dup_threshold: float = 0.8
    limits: QualityLimits = field(default_factory=QualityLimits)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: unknown method", hint=f"use one of {', '.join(METHODS)}")
        if self.n is not None and self.n < 1:
            raise UserError(f"--n {self.n}: must be at least 1")
        if not 0 < self.near_dup_threshold <= 1:
            raise UserError(f"near_dup_threshold {self.near_dup_threshold}: must be in (0, 1]")


@dataclass
class Candidate:
    """A generated record before the checks. ``pairs`` = (new text, the text it rewrites or imitates)."""

    record: dict
    own_source: int | None  # index of the record it varies (None for synthetic)
    pairs: list[tuple[str, str]]
    error: str | None = None  # the model's reply could not be read

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.record["messages"] if m["role"] == "user")


@dataclass
class AugmentResult:
    records: list[dict]
    counts: dict
    rejected: list[dict]  # {"augmented_from", "kind", "reason", "text"}


def source_record(obj, where: str) -> tuple[dict | None, list[str]]:
    """The canonical chat record of an input, with ``id`` and ``source``; or the problems with it."""
    shape, issues = validate_record(obj, "sft")
    if issues:
        return None, [f"{where}: {issue.field}: {issue.message}" for issue in issues]
    if shape == "text":
        return None, [f"{where}: record: a plain text has no user turn to vary; augment conversations, "
                      "instruction/output, prompt/completion or text+label records"]
    record = to_canonical(obj, shape)
    return {"id": origin_id(obj), "source": where, **record}, []


def load_sources(path: str | Path, skip_invalid: bool = False) -> tuple[list[dict], list[str]]:
    """Input records of ``data augment`` (any SFT shape) and the problems of those left out.

    Invalid records are an error naming FILE:LINE: FIELD, unless ``skip_invalid``.
    """
    sources, problems = [], []
    for file in expand_inputs([path]):
        for raw in read_records(file):
            if raw.error:
                problems.append(f"{raw.source}: record: {raw.error}")
                continue
            if isinstance(raw.obj, dict) and "augmented_from" in raw.obj:
                continue  # variants of variants drift; augment the originals
            record, issues = source_record(raw.obj, raw.source)
            problems += issues
            if record is not None:
                sources.append(record)
    if problems and not skip_invalid:
        shown = "\n".join(problems[:10]) + (f"\n... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise UserError(f"{len(problems)} problem(s) in the input:\n{shown}",
                        hint=f"fix them (`tuneloop data validate {path}` lists them all) or pass --skip-invalid")
    if not sources:
        raise UserError(f"{path}: no records to augment")
    return sources, problems


def _variant(source: dict, messages: list[dict]) -> dict:
    record = {"messages": messages}
    if "label" in source:
        record["label"] = source["label"]
    return record


def noise_candidates(sources: list[dict], options: AugmentOptions) -> list[Candidate]:
    candidates = []
    for variant in range(options.n or 1):
        for index, source in enumerate(sources):
            rng = augment_noise.noise_rng(options.seed, source["id"], variant)
            messages = augment_noise.noisy_messages(source["messages"], rng)
            pairs = [(new["content"], old["content"]) for new, old in zip(messages, source["messages"])
                     if old["role"] == "user"]
            candidates.append(Candidate(_variant(source, messages), index, pairs))
    return candidates


def paraphrase_candidates(sources: list[dict], options: AugmentOptions, loaded) -> list[Candidate]:
    turns = [(i, t) for i, s in enumerate(sources) for t, m in enumerate(s["messages"]) if m["role"] == "user"]
    n = options.n or 1
    conversations = [augment_llm.paraphrase_conversation(sources[i]["messages"][t]["content"])
                     for _ in range(n) for i, t in turns]
    longest = max(len(loaded[1](c[-1]["content"], add_special_tokens=False)["input_ids"]) for c in conversations)
    budget = min(options.max_new_tokens, 2 * longest + 8)  # a rewrite is about as long as the original
    replies = augment_llm.generate(*loaded, conversations, options.seed, options.temperature, budget,
                                   options.batch_size)
    candidates = []
    for variant in range(n):
        rewritten: dict[int, dict[int, str]] = {}
        for (i, t), reply in zip(turns, replies[variant * len(turns) : (variant + 1) * len(turns)]):
            rewritten.setdefault(i, {})[t] = augment_llm.clean_paraphrase(reply)
        for i, new_turns in rewritten.items():
            old = sources[i]["messages"]
            messages = [{**m, "content": new_turns[t]} if t in new_turns else dict(m) for t, m in enumerate(old)]
            pairs = [(new_turns[t], old[t]["content"]) for t in sorted(new_turns)]
            candidates.append(Candidate(_variant(sources[i], messages), i, pairs))
    return candidates


def _single_turn(source: dict) -> tuple[str, str] | None:
    roles = [m["role"] for m in source["messages"]]
    if roles[-2:] != ["user", "assistant"] or roles.count("user") != 1:
        return None
    return source["messages"][-2]["content"], source["messages"][-1]["content"]


def synthetic_candidates(sources: list[dict], options: AugmentOptions, loaded) -> list[Candidate]:
    pool = [(s, qa) for s in sources if (qa := _single_turn(s)) is not None]
    if not pool:
        raise UserError("synthetic needs single-turn examples (a user question and the assistant's answer)")
    rng = random.Random(options.seed)
    count = options.n or len(sources)
    chosen = [rng.sample(pool, min(options.seeds_per_prompt, len(pool))) for _ in range(count)]
    topics = [options.topics[i % len(options.topics)] if options.topics else None for i in range(count)]
    conversations = [augment_llm.synthetic_conversation([qa for _, qa in seeds], topic)
                     for seeds, topic in zip(chosen, topics)]
    replies = augment_llm.generate(*loaded, conversations, options.seed, options.temperature,
                                   options.max_new_tokens * 2, options.batch_size)
    return [_synthetic_candidate(seeds, topic, reply) for seeds, topic, reply in zip(chosen, topics, replies)]


def _synthetic_candidate(seeds: list, topic: str | None, reply: str) -> Candidate:
    first, (seed_q, seed_a) = seeds[0]
    parsed = augment_llm.parse_qa(reply)
    question, answer = parsed or (reply.strip() or "-", "-")
    system = [m for m in first["messages"][:1] if m["role"] == "system"]
    record = {"messages": [*system, {"role": "user", "content": question}, {"role": "assistant", "content": answer}],
              "augmented_from": [s["id"] for s, _ in seeds]}
    if topic:
        record["metadata"] = {"topic": topic}
    error = None if parsed else "the reply has no 'Q: ... A: ...' pair"
    return Candidate(record, None, [(question, seed_q), (answer, seed_a)], error)


def _finish(candidate: Candidate, sources: list[dict], method: str) -> dict:
    record = {k: v for k, v in candidate.record.items() if k != "augmented_from"}
    origin = candidate.record.get("augmented_from") or sources[candidate.own_source]["id"]
    where = "seeds" if candidate.own_source is None else sources[candidate.own_source]["source"]
    return {"id": origin_id(record), "source": f"{method} of {where}", **record,
            "augmented_from": origin, "augmentation": method}


def _reject(rejected: list, counts: dict, bucket: str, record: dict, kind: str, reason: str, text: str):
    counts[bucket] += 1
    rejected.append({"augmented_from": record["augmented_from"], "kind": kind, "reason": reason, "text": text})


def check_candidates(candidates: list[Candidate], sources: list[dict], options: AugmentOptions) -> AugmentResult:
    """Validate, filter, deduplicate and mark the candidates (the module docstring lists the checks)."""
    counts = {"sources": len(sources), "generated": len(candidates), "invalid": 0, "exact_duplicates": 0,
              "near_duplicates": 0, "filtered": 0, "output": 0}
    rejected: list[dict] = []
    survivors = []
    for candidate in candidates:
        record = _finish(candidate, sources, options.method)
        problem = candidate.error or _invalid(record)
        if problem:
            _reject(rejected, counts, "invalid", record, "invalid", problem, candidate.user_text)
            continue
        problem = next((p for new, old in candidate.pairs
                        if (p := quality_problem(new, old, options.method, options.limits))), None)
        if problem:
            _reject(rejected, counts, "filtered", record, "quality", problem, candidate.user_text)
            continue
        survivors.append((candidate, record))
    verdicts = find_duplicates([c.user_text for c, _ in survivors], [r for _, r in survivors],
                               [c.own_source for c, _ in survivors], sources, options)
    kept = []
    for (candidate, record), verdict in zip(survivors, verdicts):
        if verdict is None:
            kept.append(record)
        else:
            _reject(rejected, counts, verdict[0], record, verdict[0].rstrip("s"), verdict[1], candidate.user_text)
    counts["output"] = len(kept)
    return AugmentResult(kept, counts, rejected)


def _invalid(record: dict) -> str | None:
    content = {k: v for k, v in record.items() if k not in PROVENANCE_KEYS}
    _, issues = validate_record(content, "sft")
    return "; ".join(f"{i.field}: {i.message}" for i in issues) or None


def augment(records, method: str, loaded=None, **settings) -> AugmentResult:
    """Augment raw records (dicts of any SFT shape) with ``method``; see :class:`AugmentOptions`.

    ``loaded`` is an optional ``(model, tokenizer)`` pair, to reuse a model already in memory.
    """
    options = AugmentOptions(method=method, **settings)
    sources = []
    for i, obj in enumerate(records):
        where = str(obj.get("source") or f"record {i + 1}") if isinstance(obj, dict) else f"record {i + 1}"
        record, issues = source_record(obj, where)
        if issues:
            raise UserError(issues[0])
        sources.append(record)
    return augment_sources(sources, options, loaded)


def augment_sources(sources: list[dict], options: AugmentOptions, loaded=None) -> AugmentResult:
    if options.method == "noise":
        candidates = noise_candidates(sources, options)
    else:
        if loaded is None:
            loaded = load_model_and_tokenizer(options.model)
        make = paraphrase_candidates if options.method == "paraphrase" else synthetic_candidates
        candidates = make(sources, options, loaded)
    return check_candidates(candidates, sources, options)
