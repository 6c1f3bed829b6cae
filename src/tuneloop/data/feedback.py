"""Served feedback -> training data for the next round (``tuneloop data from-feedback``).

Reads the serving store (``requests`` and ``feedback`` tables) and writes canonical records:

- ``sft.jsonl``: every completion with a correction becomes a chat record, the prompt's messages
  followed by the correction as the assistant turn (a text completion's prompt becomes the user turn,
  as ``data prepare`` does for prompt/completion records).
- ``preference.jsonl``: (prompt, chosen, rejected) pairs from three sources: a correction is preferred
  to the answer it corrects; for the same prompt, an answer rated +1 is preferred to one rated
  -1 (at most ``max_pairs_per_prompt`` pairs per prompt); and of an ``n: 2`` completion's two
  answers, the one the user chose (``choice``) is preferred to the other. Chat prompts use the conversational form
  ``{"messages", "chosen": [assistant msg], "rejected": [assistant msg]}``, text prompts the string
  form ``{"prompt", "chosen", "rejected"}``.
- ``report.json``: what was read, written and skipped, and why.

A completion's latest rating counts (a user may change their mind); its latest non-empty correction
is used. Ratings for ids with no successful stored completion are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.paths import write_json_atomic, write_jsonl_atomic
from tuneloop.serve.store import Store


@dataclass
class FeedbackData:
    sft: list[dict] = field(default_factory=list)
    preference: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)


@dataclass
class _Rated:
    """One stored completion with the feedback it got."""

    request: dict
    rating: int | None = None
    correction: str | None = None
    choice: int | None = None  # the preferred one of the request's n=2 choices

    @property
    def prompt_key(self) -> str:
        return json.dumps([self.request["kind"], self.request["prompt"]], sort_keys=True, ensure_ascii=False)


def _content_id(record: dict) -> str:
    blob = json.dumps({k: v for k, v in record.items() if k not in ("id", "source")}, sort_keys=True,
                      ensure_ascii=False)
    return "fb-" + hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def _prompt_messages(request: dict) -> list[dict]:
    if request["kind"] == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in request["prompt"]]
    return [{"role": "user", "content": request["prompt"]}]


def sft_record(request: dict, correction: str) -> dict:
    record = {"messages": _prompt_messages(request) + [{"role": "assistant", "content": correction}]}
    return {"id": _content_id(record), "source": f"feedback:{request['id']}", **record}


def preference_record(request: dict, chosen: str, rejected: str, source: str) -> dict:
    if request["kind"] == "chat":
        record = {"messages": _prompt_messages(request),
                  "chosen": [{"role": "assistant", "content": chosen}],
                  "rejected": [{"role": "assistant", "content": rejected}]}
    else:
        record = {"prompt": request["prompt"], "chosen": chosen, "rejected": rejected}
    return {"id": _content_id(record), "source": source, **record}


def _collect(requests: list[dict], feedback: list[dict], skipped: dict) -> dict[str, _Rated]:
    stored = {r["id"]: r for r in requests if r["status"] == 200 and r["response"] is not None and r["prompt"]}
    rated: dict[str, _Rated] = {}
    for row in sorted(feedback, key=lambda f: f["id"]):
        request = stored.get(row["completion_id"])
        if request is None:
            skipped["feedback_without_completion"] += 1
            continue
        entry = rated.setdefault(row["completion_id"], _Rated(request))
        if row["rating"] is not None:
            entry.rating = row["rating"]
        if row.get("choice") is not None:
            entry.choice = row["choice"]
        if row["correction"] and row["correction"].strip():
            entry.correction = row["correction"].strip()
    return rated


def _rating_pairs(rated: list[_Rated], max_pairs: int, skipped: dict) -> list[dict]:
    by_prompt: dict[str, list[_Rated]] = defaultdict(list)
    for entry in rated:
        if entry.rating is not None:
            by_prompt[entry.prompt_key].append(entry)
    pairs = []
    for entries in by_prompt.values():
        good = {e.request["response"].strip(): e for e in entries if e.rating > 0}
        bad = {e.request["response"].strip(): e for e in entries if e.rating < 0}
        for text in set(good) & set(bad):  # the same answer rated both ways says nothing
            skipped["conflicting_ratings"] += 1
            del good[text], bad[text]
        made = 0
        for chosen, g in good.items():
            for rejected, b in bad.items():
                if made < max_pairs and chosen and rejected:
                    pairs.append(preference_record(g.request, chosen, rejected,
                                                   f"feedback:{g.request['id']}>{b.request['id']}"))
                    made += 1
    return pairs


def _choice_pairs(rated: list[_Rated], skipped: dict) -> list[dict]:
    """An A/B choice between a request's two answers: the chosen one is preferred to the other."""
    pairs = []
    for entry in rated:
        choices = entry.request.get("choices") or []
        if entry.choice is None:
            continue
        if len(choices) != 2 or choices[0].strip() == choices[1].strip():
            skipped["choice_without_two_answers"] += 1
            continue
        chosen, rejected = choices[entry.choice], choices[1 - entry.choice]
        pairs.append(preference_record(entry.request, chosen, rejected, f"feedback:{entry.request['id']}:choice"))
    return pairs


def build_feedback_data(requests: list[dict], feedback: list[dict], max_pairs_per_prompt: int = 4) -> FeedbackData:
    """The SFT and preference records (and a report) from stored request and feedback rows."""
    skipped = defaultdict(int)
    rated = list(_collect(requests, feedback, skipped).values())
    sft, from_corrections = [], []
    for entry in rated:
        if entry.correction is None:
            continue
        sft.append(sft_record(entry.request, entry.correction))
        if entry.correction != entry.request["response"].strip():
            from_corrections.append(preference_record(entry.request, entry.correction, entry.request["response"],
                                                      f"feedback:{entry.request['id']}:correction"))
        else:
            skipped["correction_equals_response"] += 1
    from_ratings = _rating_pairs(rated, max_pairs_per_prompt, skipped)
    from_choices = _choice_pairs(rated, skipped)
    preference = list({r["id"]: r for r in from_corrections + from_ratings + from_choices}.values())
    report = {
        "requests": len(requests), "feedback": len(feedback), "completions_with_feedback": len(rated),
        "corrections": len(sft), "sft": len(sft),
        "preference": {"total": len(preference), "from_corrections": len(from_corrections),
                       "from_ratings": len(from_ratings), "from_choices": len(from_choices)},
        "skipped": dict(skipped),
    }
    return FeedbackData(list({r["id"]: r for r in sft}.values()), preference, report)


def export_feedback(db_url: str | None, out_dir: str | Path, max_pairs_per_prompt: int = 4) -> dict:
    """Write sft.jsonl, preference.jsonl and report.json under ``out_dir``; returns the report."""
    store = Store(db_url)
    try:
        data = build_feedback_data(store.requests(), store.feedback(), max_pairs_per_prompt)
        data.report["db"] = store.url
    finally:
        store.close()
    out = Path(out_dir)
    write_jsonl_atomic(out / "sft.jsonl", data.sft)
    write_jsonl_atomic(out / "preference.jsonl", data.preference)
    write_json_atomic(out / "report.json", data.report)
    return data.report
