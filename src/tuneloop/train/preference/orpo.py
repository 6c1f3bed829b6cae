"""ORPO: supervised fine-tuning on the chosen answer plus an odds-ratio penalty (Hong et al. 2024).

One stage instead of SFT then DPO, and no reference model in the loss: the negative log-likelihood of
the chosen answer, plus beta times -log sigmoid(log odds(chosen) - log odds(rejected)), on per-token
mean log-probs. The reference model is still scored once, for the held-out KL and reward metrics.

    method: orpo
    preference: {beta: 0.1}
"""

from __future__ import annotations

from tuneloop.train.preference import pairs
from tuneloop.train.preference.engine import Method, Session
from tuneloop.train.preference.losses import orpo_loss


def pair_loss(session: Session, scores: pairs.PairScores):
    return orpo_loss(scores.logp_chosen / scores.len_chosen, scores.logp_rejected / scores.len_rejected,
                     session.recipe.preference.beta)


METHOD = Method(
    name="orpo",
    head="causal",
    prepare=pairs.prepare,
    loss=lambda session, indices: pairs.train_loss(session, indices, pair_loss),
    evaluate=lambda session: pairs.evaluate(session, pair_loss),
    check=pairs.load_splits,
)
