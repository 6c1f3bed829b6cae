"""DPO: learn from preference pairs directly, without a reward model (Rafailov et al. 2023).

The policy's implicit reward of an answer is beta * (its log-prob - the reference model's). The loss
pushes the chosen answer's implicit reward above the rejected one's; ``preference.loss_type`` picks
sigmoid (the paper), hinge or ipo. Reference log-probs are computed once, before training.

    method: dpo
    preference: {beta: 0.1, loss_type: sigmoid}
"""

from __future__ import annotations

from tuneloop.train.preference import pairs
from tuneloop.train.preference.engine import Method, Session
from tuneloop.train.preference.losses import dpo_loss


def pair_loss(session: Session, scores: pairs.PairScores):
    config = session.recipe.preference
    return dpo_loss(scores.logp_chosen, scores.logp_rejected, scores.ref_chosen, scores.ref_rejected,
                    config.beta, config.loss_type)


METHOD = Method(
    name="dpo",
    head="causal",
    prepare=pairs.prepare,
    loss=lambda session, indices: pairs.train_loss(session, indices, pair_loss),
    evaluate=lambda session: pairs.evaluate(session, pair_loss),
    check=pairs.load_splits,
)
