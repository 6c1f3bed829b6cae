"""Provenance of augmented records, and the rule that keeps them out of validation and test.

``data augment`` marks every record it makes with ``augmented_from`` (the id of the record it was
derived from; for ``synthetic`` the list of seed ids that inspired it) and ``augmentation`` (the
method). ``data prepare`` (``prepare_global.decide``) follows these rules:

1. originals come before augmented records when exact duplicates are removed, so an original is
   never dropped in favour of its copy;
2. augmented records skip near-duplicate clustering and the split:
   a paraphrase or noisy variant *is* a near-duplicate of its source on purpose, and ``augment``
   has already removed near-duplicates by its own rules;
3. after the split, each augmented record goes to **train**, and only there
   (``prepare_global.place_augmented``). A record derived from one source joins train only when
   its source is in train: a variant of a validation/test example would leak it, and a source
   missing from the output (dropped as a duplicate of a record that may be held out, or its file not
   given) could too; such variants are dropped and listed in ``issues`` (:func:`held_out_reason`).
   Synthetic records (a list of seeds) were checked against every original for near-duplicates when generated, so they join
   train whatever split their seeds are in.

Sources are matched by :func:`origin_id`: a record's own ``id``, or else a hash of its raw content,
computed the same way by ``augment`` (when it names the source) and ``prepare`` (when it reads the
original again), so the original file needs no ids.
"""

from __future__ import annotations

import hashlib
import json

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
