"""Provenance of augmented records, and the rule that keeps them out of validation and test.

``data augment`` marks every record it makes with ``augmented_from`` (the id of the record it was
derived from; for ``synthetic`` the list of seed ids that inspired it) and ``augmentation`` (the
method). ``data prepare`` calls the helpers here so that:

1. originals come before augmented records when exact duplicates are removed, so an original is
   never dropped in favour of its copy (:func:`originals_first`);
2. augmented records skip near-duplicate clustering and the split (:func:`set_aside_augmented`):
   a paraphrase or noisy variant *is* a near-duplicate of its source on purpose, and ``augment``
   has already removed near-duplicates by its own rules;
3. after the split, each augmented record goes to **train**, and only there
   (:func:`place_augmented`). A record derived from one source joins train only when its source
   is in train: a variant of a validation/test example would leak it, and a source missing from
   the output (dropped as a duplicate of a record that may be held out, or its file not given)
   could too; such variants are dropped and listed in ``issues``. Synthetic records (a list of
   seeds) were checked against every original for near-duplicates when generated, so they join
   train whatever split their seeds are in.

Sources are matched by :func:`origin_id`: a record's own ``id``, or else a hash of its raw content,
computed the same way by ``augment`` (when it names the source) and ``prepare`` (when it reads the
original again), so the original file needs no ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

PROVENANCE_KEYS = ("augmented_from", "augmentation")
_NOT_CONTENT = {"id", "source", "metadata", "meta", "tags", *PROVENANCE_KEYS}


def origin_id(obj) -> str:
    """The id by which augmented records name ``obj``: its ``id``, else a hash of its raw content."""
    if isinstance(obj, dict) and obj.get("id") not in (None, ""):
        return str(obj["id"])
    content = {k: v for k, v in obj.items() if k not in _NOT_CONTENT} if isinstance(obj, dict) else obj
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
    return "h" + hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def provenance_fields(obj) -> dict:
    """The provenance keys of a raw record (empty for an original)."""
    return {k: obj[k] for k in PROVENANCE_KEYS if isinstance(obj, dict) and k in obj}


def _augmented_from(candidate):
    return candidate.record.get("augmented_from")


def originals_first(candidates: list) -> list:
    """Stable reordering: every original before every augmented record."""
    return ([c for c in candidates if _augmented_from(c) is None]
            + [c for c in candidates if _augmented_from(c) is not None])


def set_aside_augmented(candidates: list, lengths: list[int]) -> tuple[list, list[int], list[tuple]]:
    """(originals, their lengths, [(augmented candidate, length)])."""
    originals, original_lengths, augmented = [], [], []
    for candidate, length in zip(candidates, lengths):
        if _augmented_from(candidate) is None:
            originals.append(candidate)
            original_lengths.append(length)
        else:
            augmented.append((candidate, length))
    return originals, original_lengths, augmented


def place_augmented(augmented: list[tuple], by_split: dict[str, list],
                    drop: Callable[[str, str, str, str], None]) -> list[int]:
    """Append augmented candidates to ``by_split["train"]`` (or drop them, see the module docstring).

    ``drop(bucket, source, kind, message)`` records a dropped record; returns the placed lengths.
    """
    split_of = {c.origin: name for name, members in by_split.items() for c in members}
    placed = []
    for candidate, length in augmented:
        reason = held_out_reason(_augmented_from(candidate), split_of)
        if reason is not None:
            drop("filtered", candidate.source, "augmented_from_held_out", reason)
            continue
        by_split["train"].append(candidate)
        placed.append(length)
    return placed


def held_out_reason(source, split_of: dict[str, str]) -> str | None:
    """Why a record derived from ``source`` cannot join train (None: it can); ``split_of`` maps
    the origin ids of the output's originals to their split."""
    if not isinstance(source, str) or split_of.get(source) == "train":
        return None
    return _held_out_reason(source, split_of)


def _held_out_reason(source: str, split_of: dict[str, str]) -> str:
    held_out = split_of.get(source)
    if held_out is not None:
        return f"derived from {source}, which is in {held_out}; dropped so {held_out} stays unseen"
    return (f"derived from {source}, which is not in this output (removed as a duplicate, or its file was not "
            "given); dropped, since its near twin may be held out. Prepare it with its original file")
