"""Scoring preference pairs with a model: shared by dpo, orpo and kto (the reward model has its own).

:func:`prepare` loads and encodes the train and held-out pairs and scores each answer once under the
reference model (the starting weights never change, so per-step reference passes would be wasted).
:func:`train_loss` and :func:`evaluate` score answers under the policy and hand the numbers to the
method's ``pair_loss(session, scores)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuneloop.errors import UserError
from tuneloop.train.preference import data as pref_data
from tuneloop.train.preference.engine import Session, answer_kl, sequence_logps


@dataclass
class PairScores:
    """Per pair: summed answer log-probs under policy and reference, and answer lengths in tokens."""

    logp_chosen: torch.Tensor
    logp_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    len_chosen: torch.Tensor
    len_rejected: torch.Tensor


def load_splits(recipe) -> tuple[list[dict], list[dict]]:
    """(train, held-out) canonical records: data.validation, else a seeded share of data.train."""
    train = pref_data.load_preference_records(recipe.data.train)
    if recipe.data.validation:
        return train, pref_data.load_preference_records(recipe.data.validation)
    return pref_data.split_holdout(train, recipe.preference.holdout, recipe.train.seed)


def encode(session: Session, records: list[dict]) -> list[pref_data.EncodedPair]:
    recipe = session.recipe
    pairs = pref_data.encode_pairs(session.tokenizer, records, recipe.preference.max_prompt_len,
                                   recipe.train.max_seq_len)
    # A pair whose answer was cut away entirely by max_seq_len has nothing left to compare.
    return [p for p in pairs if any(x != -100 for x in p.chosen.labels)
            and any(x != -100 for x in p.rejected.labels)]


def pair_batch(session: Session, pairs: list[pref_data.EncodedPair]) -> dict:
    """Chosen answers in the first half of the rows, rejected in the second: one forward pass."""
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return session.to_device(pref_data.collate(answers, session.pad_id))


def reference_logps(session: Session, pairs, batch_size: int) -> torch.Tensor:
    """``[n_pairs, 2]`` summed reference log-probs of (chosen, rejected)."""
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        logps, _ = session.reference_forward(sequence_logps, pair_batch(session, chunk))
        out.append(logps.view(2, -1).T.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


def prepare(session: Session) -> int:
    """Encode train/held-out pairs and their reference log-probs into ``session.data``."""
    train_records, held_records = load_splits(session.recipe)
    train, held = encode(session, train_records), encode(session, held_records)
    if not train:
        raise UserError(f"{session.recipe.data.train}: no usable preference pairs",
                        hint="raise train.max_seq_len: every answer was cut away")
    size = session.recipe.train.batch_size * 2
    session.model.eval()
    session.data.update(train=train, held=held, ref_train=reference_logps(session, train, size),
                        ref_held=reference_logps(session, held, size))
    return len(train)


def score(session: Session, pairs, reference: torch.Tensor) -> tuple[PairScores, dict, int]:
    batch = pair_batch(session, pairs)
    logps, lengths = session.forward(sequence_logps, batch)
    n = len(pairs)
    reference = reference.to(logps.device)
    scores = PairScores(logps[:n], logps[n:], reference[:, 0], reference[:, 1], lengths[:n], lengths[n:])
    return scores, batch, int(batch["attention_mask"].sum())


def train_loss(session: Session, indices: list[int], pair_loss) -> tuple[torch.Tensor, dict, int]:
    pairs = [session.data["train"][i] for i in indices]
    scores, _, tokens = score(session, pairs, session.data["ref_train"][indices])
    loss, metrics = pair_loss(session, scores)
    metrics.update(logp_chosen=float(scores.logp_chosen.detach().mean()),
                   logp_rejected=float(scores.logp_rejected.detach().mean()))
    return loss, metrics, tokens


def evaluate(session: Session, pair_loss) -> dict:
    """Held-out: the method's loss, implicit-reward accuracy and margin, log-probs, KL to reference.

    ``choice_accuracy`` asks the model itself: is the chosen answer's mean token log-prob higher
    than the rejected one's? It needs no reference, so it compares a base model with a tuned one.
    """
    held, beta = session.data["held"], session.recipe.preference.beta
    if not held:
        return {}
    totals: dict[str, float] = {}
    size = session.recipe.train.batch_size
    for start in range(0, len(held), size):
        chunk = held[start : start + size]
        with session.autocast():
            scores, batch, _ = score(session, chunk, session.data["ref_held"][start : start + size])
            loss, _ = pair_loss(session, scores)
        margin = beta * ((scores.logp_chosen - scores.ref_chosen) - (scores.logp_rejected - scores.ref_rejected))
        per_token = scores.logp_chosen / scores.len_chosen - scores.logp_rejected / scores.len_rejected
        values = {"loss": float(loss) * len(chunk), "reward_accuracy": float((margin > 0).sum()),
                  "reward_margin": float(margin.sum()), "logp_chosen": float(scores.logp_chosen.sum()),
                  "logp_rejected": float(scores.logp_rejected.sum()),
                  "choice_accuracy": float((per_token > 0).sum()),
                  "kl": answer_kl(session, batch) * len(chunk)}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / len(held) for key, value in totals.items()}
