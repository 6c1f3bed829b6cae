"""Agreement report and export of resolved labels, both from a labels file alone.

* :func:`agreement_report`: how many records, annotators and labels; Cohen's kappa when exactly two
  annotators labelled records in common, Fleiss' kappa when records carry three or more ratings
  (classification); per-label disagreement; and the disputed records (annotators differ) with each
  annotator's value and whether a majority resolves it. For the ``answer`` task kappa does not
  apply; answers are compared after normalisation (case, punctuation, spacing) and the report gives
  the share of multiply-answered records where all answers agree.
* :func:`resolve`: one value per record by majority vote (a single annotator's label is its own
  majority); ties are left out and listed as disputed.
* :func:`export_records`: resolved records ready for ``data prepare``, with ``id``, ``source`` and
  ``metadata: {"annotators", "votes"}``. Answers are canonical chat records (``messages`` ending in
  the chosen answer); labels are ``{"text", "label"}`` classification records, which ``prepare``
  accepts with ``--task classification`` as well as ``auto`` and turns into chat + ``label``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tuneloop.annotate.agreement import (cohen_kappa, count_matrix, fleiss_kappa, majority,
                                         per_label_disagreement)
from tuneloop.annotate.store import LabelEvent, LabelStore
from tuneloop.data.clean import normalise_for_dedup


def _vote_key(event: LabelEvent) -> str:
    if event.task == "classification":
        return event.value
    return normalise_for_dedup(event.value)


@dataclass
class Resolution:
    resolved: dict[str, LabelEvent] = field(default_factory=dict)  # record -> an event with the winner
    disputed: list[dict] = field(default_factory=list)  # records annotators disagree on


def resolve(store: LabelStore) -> Resolution:
    result = Resolution()
    for record_id, events in store.latest_by_record().items():
        keys = [_vote_key(e) for e in events]
        winner = majority(keys)
        if len(set(keys)) > 1:
            result.disputed.append({
                "record_id": record_id, "source": events[0].source, "text": events[0].messages[-1]["content"],
                "values": {e.annotator: e.value for e in events},
                "resolved": next(e.value for e in events if _vote_key(e) == winner) if winner else None,
            })
        if winner is not None:
            result.resolved[record_id] = next(e for e in events if _vote_key(e) == winner)
    return result


def agreement_report(store: LabelStore) -> dict:
    grouped = store.latest_by_record()
    annotators = sorted({e.annotator for events in grouped.values() for e in events})
    tasks = {e.task for events in grouped.values() for e in events}
    task = tasks.pop() if len(tasks) == 1 else "mixed"
    votes = {rid: [_vote_key(e) for e in events] for rid, events in grouped.items()}
    multi = {rid: values for rid, values in votes.items() if len(values) >= 2}
    resolution = resolve(store)
    report = {
        "task": task, "records": len(grouped), "annotators": annotators,
        "labels_given": sum(len(v) for v in votes.values()),
        "records_with_several_labels": len(multi),
        "observed_agreement": _round(sum(len(set(v)) == 1 for v in multi.values()) / len(multi)) if multi else None,
        "cohen_kappa": None, "fleiss_kappa": None,
        "per_label": per_label_disagreement(votes) if task == "classification" else {},
        "resolved": len(resolution.resolved),
        "disputed": resolution.disputed,
        "ties": sum(1 for d in resolution.disputed if d["resolved"] is None),
    }
    if task == "classification" and multi:
        report.update(_kappas(grouped, multi))
    return report


def _kappas(grouped: dict[str, list[LabelEvent]], multi: dict[str, list[str]]) -> dict:
    out = {}
    pairs = _two_annotator_pairs(grouped)
    if pairs is not None:
        out["cohen_kappa"] = _round(cohen_kappa(*pairs))
    labels = sorted({value for values in multi.values() for value in values})
    if any(len(values) >= 3 for values in multi.values()) or pairs is None:
        out["fleiss_kappa"] = _round(fleiss_kappa(count_matrix(multi, labels)))
    return out


def _two_annotator_pairs(grouped: dict[str, list[LabelEvent]]) -> tuple[list[str], list[str]] | None:
    """The two annotators' labels on the records both labelled, when exactly two annotators did."""
    names = Counter(e.annotator for events in grouped.values() if len(events) >= 2 for e in events)
    if len(names) != 2:
        return None
    first, second = sorted(names)
    a, b = [], []
    for events in grouped.values():
        by_name = {e.annotator: e.value for e in events}
        if first in by_name and second in by_name:
            a.append(by_name[first])
            b.append(by_name[second])
    return (a, b) if a else None


def _round(x: float) -> float:
    return round(x, 4)


def export_records(store: LabelStore) -> tuple[list[dict], list[dict]]:
    """(canonical records for every resolved record, disputed records left out as ties)."""
    resolution = resolve(store)
    grouped = store.latest_by_record()
    records = []
    for record_id, event in resolution.resolved.items():
        record = {"id": record_id, "source": event.source}
        if event.task == "classification":
            record.update(text=event.messages[-1]["content"], label=event.value)
        else:
            record["messages"] = [*event.messages, {"role": "assistant", "content": event.value}]
        record["metadata"] = {"annotators": sorted(e.annotator for e in grouped[record_id]),
                              "votes": dict(Counter(e.value for e in grouped[record_id]))}
        records.append(record)
    ties = [d for d in resolution.disputed if d["resolved"] is None]
    return records, ties


def format_report(report: dict, limit: int = 20) -> str:
    """The report as text for the terminal."""
    lines = [f"records: {report['records']}  annotators: {', '.join(report['annotators']) or '-'}  "
             f"labels: {report['labels_given']}  with several labels: {report['records_with_several_labels']}"]
    if report["observed_agreement"] is not None:
        lines.append(f"observed agreement: {report['observed_agreement']:.3f}")
    for name in ("cohen_kappa", "fleiss_kappa"):
        if report[name] is not None:
            lines.append(f"{name.replace('_', ' ')}: {report[name]:.3f}")
    if report["per_label"]:
        lines.append("per-label disagreement (disputed / records using the label):")
        for label, entry in report["per_label"].items():
            lines.append(f"  {label:<24} {entry['disputed']}/{entry['records']}  ({entry['rate']:.0%})")
    lines.append(f"resolved: {report['resolved']}  disputed: {len(report['disputed'])}  ties: {report['ties']}")
    for d in report["disputed"][:limit]:
        values = ", ".join(f"{name}={value!r}" for name, value in d["values"].items())
        outcome = f"majority {d['resolved']!r}" if d["resolved"] is not None else "TIE"
        lines.append(f"  {d['source']} [{d['record_id']}] {outcome}: {values}")
    if len(report["disputed"]) > limit:
        lines.append(f"  ... {len(report['disputed']) - limit} more (--json for all)")
    return "\n".join(lines)
