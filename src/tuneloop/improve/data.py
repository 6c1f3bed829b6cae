"""A round's training data: new feedback -> prepare -> corrections (SFT) mixed with a replay sample.

Order and why:

1. Feedback rows newer than the last round (``feedback_through``) with their stored completions
   become records via :func:`tuneloop.data.feedback.build_feedback_data`: a correction is an SFT
   chat (the user's prompt, the corrected answer); rated and chosen answers become preference pairs.
2. The SFT records go through ``data prepare`` like any user data (served prompts are user data):
   validation, PII redaction, exact dedup, near-dup clustering so that paraphrases of one question
   stay in one split. The held-out part (where the gate looks for a gain) comes from corrections
   that *teach the same thing* as others (:func:`split_corrections`): a correction given once is
   trained on, since a round cannot be expected to answer what it never saw.
3. Training = the train split repeated ``repeat`` times (a correction seen once barely moves a
   model) + a replay sample of the production version's own training data, so that the candidate
   does not forget what production knew, leaving out what the corrections supersede (records on a
   corrected topic). Records of production's data that are not replayed are
   the fallback regression set when production has none registered.

Preference pairs (ratings, A/B choices, correction > original) are counted and written to
``preference.jsonl`` for a DPO round (``tuneloop train`` with ``method: dpo``); this round trains
SFT on corrections only.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.data.feedback import build_feedback_data
from tuneloop.data.prepare import PrepareOptions, prepare
from tuneloop.paths import read_jsonl, write_json_atomic, write_jsonl_atomic


@dataclass
class RoundData:
    train: Path
    validation: Path | None
    heldout: Path  # held-out corrections: where the gain must show
    regression: Path | None  # where no regression may show
    counts: dict = field(default_factory=dict)
    feedback_report: dict = field(default_factory=dict)
    prepare_report: dict = field(default_factory=dict)
    skip_reason: str | None = None  # set when there is nothing to train or no held-out set


def new_feedback(store, after_id: int) -> tuple[list[dict], list[dict], int]:
    """(requests, feedback rows with id > after_id, the last feedback id seen)."""
    feedback = [f for f in store.feedback() if f["id"] > after_id]
    wanted = {f["completion_id"] for f in feedback}
    requests = [r for r in store.requests() if r["id"] in wanted]
    return requests, feedback, max((f["id"] for f in feedback), default=after_id)


def replay_split(train_data: str | None, replay: int, regression: int, seed: int,
                 corrections: list[dict] = ()) -> tuple[list, list, int]:
    """(replay sample, regression sample, records superseded) from production's training data:
    disjoint, seeded, and without the records that this round's corrections supersede (an answer on
    the same topic as a correction, e.g. the old return window: replaying it would teach the
    candidate the stale answer again, and a regression set holding it would punish the fix)."""
    if not train_data or not Path(train_data).is_file():
        return [], [], 0
    # Only records of production's own data: earlier rounds' corrections are replayed as well.
    records = read_jsonl(train_data)
    unique = list({_key(r): r for r in records}.values())
    corrected = [_content_words(_answer(c)) for c in corrections]
    current = [r for r, words in ((r, _content_words(_answer(r))) for r in unique)
               if not any(_same_topic(words, c) for c in corrected)]
    random.Random(seed).shuffle(current)
    held_back = current[:min(regression, len(current) // 4)]  # first, so replay can never take them all
    return current[len(held_back):len(held_back) + replay], held_back, len(unique) - len(current)


HELDOUT_SHARE = 0.3
_STOPWORDS = frozenset("a an the and or but of to in on at by for from with is are was were be been it its this "
                       "that you your we our us i my me can do does will would any all up after before".split())


def _content_words(text: str) -> frozenset[str]:
    words = (w.rstrip("s") if len(w) > 3 else w for w in re.findall(r"[\w$%.]+", text.lower()))
    return frozenset(w.strip(".") for w in words if w.strip(".") and w not in _STOPWORDS)


def _answer(record: dict) -> str:
    return next((m["content"] for m in reversed(record["messages"]) if m["role"] == "assistant"), "")


def _prompt(record: dict) -> str:
    return " ".join(m["content"] for m in record["messages"] if m["role"] == "user").strip().lower()


def _same_topic(a: frozenset[str], b: frozenset[str], similar: float = 0.3) -> bool:
    union = a | b
    return bool(union) and len(a & b) / len(union) >= similar


def split_corrections(records: list[dict], share: float, seed: int,
                      similar: float = 0.3) -> tuple[list[dict], list[dict]]:
    """(train, held out): held-out corrections come only from *topics* corrected more than once.

    A topic is a set of corrections whose answers share at least ``similar`` of their content words
    (Jaccard, linked transitively): "Returns are accepted up to 60 days after delivery." and "You
    can return any item within 60 days of delivery." are one topic. A topic's corrections are
    grouped by prompt (one question asked twice stays on one side), and ``share`` of each topic's
    prompts is held out, always leaving at least one in training: the gate then asks whether the
    candidate answers a *new phrasing* of what it was corrected on. A correction whose topic occurs
    once is always trained on. Only when no topic repeats is a plain seeded ``share`` held out.
    """
    words = [_content_words(_answer(r)) for r in records]
    prompts = [_prompt(r) for r in records]
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(records)):
        for j in range(i):
            if prompts[i] == prompts[j] or _same_topic(words[i], words[j], similar):
                parent[root(i)] = root(j)
    topics: dict[int, dict[str, list[int]]] = {}
    for i, prompt in enumerate(prompts):
        topics.setdefault(root(i), {}).setdefault(prompt, []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    repeated = [t for t in topics.values() if len(t) >= 2]
    if repeated:
        for topic in repeated:
            units = list(topic.values())
            rng.shuffle(units)
            for unit in units[:min(len(units) - 1, max(1, round(share * len(units))))]:
                held.update(unit)
    else:
        units = [unit for t in topics.values() for unit in t.values()]
        rng.shuffle(units)
        for unit in units[:round(share * len(units))]:
            held.update(unit)
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def _preference_round(built, train: list[dict], heldout: list[dict], heldout_path: Path, out_dir: Path,
                      feedback: list[dict], regression_data: str | None, train_data: str | None, repeat: int,
                      seed: int, report) -> RoundData:
    """A DPO round's data: the preference pairs whose prompt is not held out, ``repeat`` times. No
    replay: DPO's pull to the reference model (production) is what keeps the rest in place."""
    held_prompts = {_prompt(r) for r in heldout}
    pairs = [p for p in built.preference if "messages" in p and _prompt(p) not in held_prompts]
    counts = {"feedback": len(feedback), "corrections": len(built.sft), "preference_pairs": len(built.preference),
              "train_corrections": len(train), "train_pairs": len(pairs), "repeat": repeat, "heldout": len(heldout)}
    if not pairs:
        return RoundData(out_dir / "data" / "train.jsonl", None, heldout_path, None, counts, built.report,
                         report.to_json(), skip_reason=f"no preference pairs outside the {len(heldout)} held-out "
                                                       "prompts to train a DPO candidate on (wait for more)")
    mixed = pairs * repeat
    random.Random(seed).shuffle(mixed)
    write_jsonl_atomic(out_dir / "data" / "train.jsonl", mixed)
    _, held_back, superseded = replay_split(train_data, 0, 32 if not regression_data else 0, seed, train + heldout)
    regression = _regression_set(regression_data, held_back, out_dir / "data")
    counts.update(train_records=len(mixed), superseded=superseded,
                  regression=len(read_jsonl(regression)) if regression else 0)
    return RoundData(out_dir / "data" / "train.jsonl", None, heldout_path, regression, counts, built.report,
                     report.to_json())


_FIGURE = re.compile(r"[$€£]?\d[\d.,:]*\d|[$€£]?\d")
_UNIT = re.compile(r"\s*(%|[A-Za-z]+)")


def corrected_figures(correction: str, original: str) -> list[str]:
    """The figures a correction states that the corrected answer did not: "60 days" for "... within
    60 days" correcting "... within 45 days" (a number with its unit word, as ``facts`` are matched:
    case-insensitive containment)."""
    found = []
    for match in _FIGURE.finditer(correction):
        unit = _UNIT.match(correction, match.end())
        figure = match.group() + (unit.group() if unit else "")
        if " ".join(figure.lower().split()) not in " ".join(original.lower().split()):
            found.append(figure.strip())
    return list(dict.fromkeys(found))


def with_corrected_facts(heldout: list[dict], originals: dict[str, str]) -> list[dict]:
    """Held-out corrections with ``facts``: the figures each correction changed, when *every* one
    changed a figure (a policy's number, a price, a time). Lexical overlap alone would score the stale
    answer "within 45 days" closer to "within 60 days" than a correct answer in other words; with
    facts the gate asks whether the candidate now states the corrected figures (``fact_accuracy``).
    Otherwise the records stay as they are and the gate falls back to ROUGE-L."""
    facts = [corrected_figures(_answer(r), originals.get(r.get("id"), "")) for r in heldout]
    if not heldout or not all(facts):
        return heldout
    return [{**r, "facts": f} for r, f in zip(heldout, facts)]


def _original_answers(sft: list[dict], requests: list[dict]) -> dict[str, str]:
    """SFT record id -> the served answer its correction replaced."""
    responses = {r["id"]: r.get("response") or "" for r in requests}
    return {r["id"]: responses.get(r["source"].removeprefix("feedback:"), "") for r in sft}


def _regression_set(regression_data: str | None, held_back: list[dict], data_dir: Path) -> Path | None:
    """The registered regression set, else the held-back sample of production's data (written here)."""
    if regression_data:
        return Path(regression_data)
    if not held_back:
        return None
    write_jsonl_atomic(data_dir / "regression.jsonl", held_back)
    return data_dir / "regression.jsonl"


def _key(record: dict) -> str:
    return json.dumps(record.get("messages") or record, sort_keys=True, ensure_ascii=False)


def _chat_only(record: dict) -> dict:
    return {"id": record.get("id"), "messages": record["messages"]}


def build_round_data(requests: list[dict], feedback: list[dict], out_dir: Path, *, train_data: str | None,
                     regression_data: str | None, tokenizer_model: str | None, repeat: int, replay: int,
                     seed: int, method: str = "sft") -> RoundData:
    """Write the round's files under ``out_dir``; ``skip_reason`` says when the round cannot train."""
    built = build_feedback_data(requests, feedback)
    raw = out_dir / "feedback"
    write_jsonl_atomic(raw / "sft.jsonl", built.sft)
    write_jsonl_atomic(raw / "preference.jsonl", built.preference)
    write_json_atomic(raw / "report.json", built.report)
    if not built.sft:
        return RoundData(raw / "sft.jsonl", None, raw / "sft.jsonl", None, {"feedback": len(feedback)},
                         built.report, skip_reason="no corrections in the new feedback")
    options = PrepareOptions(task="sft", split=(1.0, 0.0, 0.0), seed=seed, model=tokenizer_model,
                             keep_near_duplicates=True, max_seq_len=1024)
    report = prepare([raw / "sft.jsonl"], out_dir / "prepared", options)
    prepared = out_dir / "prepared"
    train, heldout = split_corrections(read_jsonl(prepared / "train.jsonl"), HELDOUT_SHARE, seed)
    heldout = with_corrected_facts(heldout, _original_answers(built.sft, requests))
    heldout_path = prepared / "heldout.jsonl"
    write_jsonl_atomic(heldout_path, heldout)
    if not train or not heldout:
        return RoundData(prepared / "train.jsonl", None, heldout_path, None,
                         {"corrections": len(built.sft), "train": len(train), "heldout": len(heldout)},
                         built.report, report.to_json(),
                         skip_reason=f"{len(built.sft)} corrections give {len(train)} to train on and "
                                     f"{len(heldout)} held out; both must be at least 1 (wait for more)")
    if method == "dpo":
        return _preference_round(built, train, heldout, heldout_path, out_dir, feedback, regression_data,
                                 train_data, repeat, seed, report)
    n_replay = replay if replay >= 0 else 3 * len(train) * repeat
    replayed, held_back, superseded = replay_split(train_data, n_replay, 32 if not regression_data else 0, seed,
                                                   train + heldout)
    mixed = [_chat_only(r) for r in train] * repeat + [_chat_only(r) for r in replayed]
    random.Random(seed).shuffle(mixed)
    data_dir = out_dir / "data"
    write_jsonl_atomic(data_dir / "train.jsonl", mixed)
    regression = _regression_set(regression_data, held_back, data_dir)
    counts = {"feedback": len(feedback), "corrections": len(built.sft),
              "preference_pairs": len(built.preference), "train_corrections": len(train),
              "repeat": repeat, "replayed": len(replayed), "superseded": superseded, "train_records": len(mixed),
              "heldout": len(heldout),
              "regression": len(read_jsonl(regression)) if regression else 0}
    return RoundData(data_dir / "train.jsonl", None, heldout_path, regression, counts,
                     built.report, report.to_json())
