"""KTO: answers labelled good or bad, each judged on its own (Ethayarajh et al. 2024).

Each pair gives one desirable answer (chosen) and one undesirable (rejected); the loss scores them
separately against a reference point (an estimate of the KL to the reference model), so the method
also suits feedback where only thumbs up or down exist. ``preference.desirable_weight`` and
``undesirable_weight`` rebalance the two kinds.

    method: kto
    preference: {beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0}
"""

from __future__ import annotations

import torch

from tuneloop.train.preference import pairs
from tuneloop.train.preference.engine import Method, Session
from tuneloop.train.preference.losses import kto_loss


def pair_loss(session: Session, scores: pairs.PairScores):
    config = session.recipe.preference
    logp = torch.cat([scores.logp_chosen, scores.logp_rejected])
    ref = torch.cat([scores.ref_chosen, scores.ref_rejected])
    desirable = torch.arange(len(logp), device=logp.device) < len(scores.logp_chosen)
    return kto_loss(logp, ref, desirable, config.beta, config.desirable_weight, config.undesirable_weight)


METHOD = Method(
    name="kto",
    head="causal",
    prepare=pairs.prepare,
    loss=lambda session, indices: pairs.train_loss(session, indices, pair_loss),
    evaluate=lambda session: pairs.evaluate(session, pair_loss),
    check=pairs.load_splits,
)
