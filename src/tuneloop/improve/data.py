"""A round's training data: new feedback -> prepare -> corrections (SFT) mixed with a replay sample.

Order and why:

1. Feedback rows newer than the last round (``feedback_through``) with their stored completions
   become records via :func:`tuneloop.data.feedback.build_feedback_data`: a correction is an SFT
   chat (the user's prompt, the corrected answer); rated and chosen answers become preference pairs.
2. The SFT records go through ``data prepare`` like any user data (served prompts are user data):
   validation, PII redaction, exact dedup, near-dup clustering so that paraphrases of one question
   stay in one split, and a train / validation / held-out split.
3. Training = the train split repeated ``repeat`` times (a correction seen once barely moves a
   model) + a replay sample of the production version's own training data, so that the candidate
   does not forget what production knew. Records of production's data that are not replayed are
   the fallback regression set when production has none registered.

Preference pairs (ratings, A/B choices, correction > original) are counted and written to
``preference.jsonl`` for a DPO round (``tuneloop train`` with ``method: dpo``); this round trains
SFT on corrections only.
"""

from __future__ import annotations

import random
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


def replay_split(train_data: str | None, replay: int, regression: int, seed: int) -> tuple[list, list]:
    """(replay sample, regression sample) from production's training data, disjoint, seeded."""
    if not train_data or not Path(train_data).is_file():
        return [], []
    # Only records of production's own data: earlier rounds' corrections are replayed as well.
    records = read_jsonl(train_data)
    unique = list({_key(r): r for r in records}.values())
    random.Random(seed).shuffle(unique)
    held_back = unique[:min(regression, len(unique) // 4)]  # first, so replay can never take them all
    return unique[len(held_back):len(held_back) + replay], held_back


def _key(record: dict) -> str:
    import json

    return json.dumps(record.get("messages") or record, sort_keys=True, ensure_ascii=False)


def _chat_only(record: dict) -> dict:
    return {"id": record.get("id"), "messages": record["messages"]}


def build_round_data(requests: list[dict], feedback: list[dict], out_dir: Path, *, train_data: str | None,
                     regression_data: str | None, tokenizer_model: str | None, repeat: int, replay: int,
                     seed: int) -> RoundData:
    """Write the round's files under ``out_dir``; ``skip_reason`` says when the round cannot train."""
    built = build_feedback_data(requests, feedback)
    raw = out_dir / "feedback"
    write_jsonl_atomic(raw / "sft.jsonl", built.sft)
    write_jsonl_atomic(raw / "preference.jsonl", built.preference)
    write_json_atomic(raw / "report.json", built.report)
    if not built.sft:
        return RoundData(raw / "sft.jsonl", None, raw / "sft.jsonl", None, {"feedback": len(feedback)},
                         built.report, skip_reason="no corrections in the new feedback")
    options = PrepareOptions(task="sft", split=(0.6, 0.1, 0.3), seed=seed, model=tokenizer_model,
                             keep_near_duplicates=True, max_seq_len=1024)
    report = prepare([raw / "sft.jsonl"], out_dir / "prepared", options)
    prepared = out_dir / "prepared"
    train, validation, heldout = (read_jsonl(prepared / f"{s}.jsonl") for s in ("train", "validation", "test"))
    if not train or not heldout:
        return RoundData(prepared / "train.jsonl", None, prepared / "test.jsonl", None,
                         {"corrections": len(built.sft), "train": len(train), "heldout": len(heldout)},
                         built.report, report.to_json(),
                         skip_reason=f"{len(built.sft)} corrections give {len(train)} to train on and "
                                     f"{len(heldout)} held out; both must be at least 1 (wait for more)")
    n_replay = replay if replay >= 0 else 3 * len(train) * repeat
    replayed, held_back = replay_split(train_data, n_replay, 32 if not regression_data else 0, seed)
    mixed = [_chat_only(r) for r in train] * repeat + [_chat_only(r) for r in replayed]
    random.Random(seed).shuffle(mixed)
    data_dir = out_dir / "data"
    write_jsonl_atomic(data_dir / "train.jsonl", mixed)
    validation_path = None
    if validation:
        validation_path = data_dir / "validation.jsonl"
        write_jsonl_atomic(validation_path, [_chat_only(r) for r in validation])
    regression = Path(regression_data) if regression_data else None
    if regression is None and held_back:
        regression = data_dir / "regression.jsonl"
        write_jsonl_atomic(regression, held_back)
    counts = {"feedback": len(feedback), "corrections": len(built.sft),
              "preference_pairs": len(built.preference), "train_corrections": len(train),
              "repeat": repeat, "replayed": len(replayed), "train_records": len(mixed),
              "validation": len(validation), "heldout": len(heldout),
              "regression": len(read_jsonl(regression)) if regression else 0}
    return RoundData(data_dir / "train.jsonl", validation_path, prepared / "test.jsonl", regression, counts,
                     built.report, report.to_json())
