"""The losses of the preference and RL methods, as pure functions of per-sequence log-probabilities.

All inputs are tensors of shape ``[batch]`` unless said otherwise. "logp" is the summed log-probability
of an answer's tokens given its prompt; "ref" the same under the reference (starting) model. Every
function returns ``(loss, metrics)`` where metrics are detached floats for metrics.jsonl.

References: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023), ORPO (Hong et al. 2024), KTO
(Ethayarajh et al. 2024), Bradley-Terry reward models (Ouyang et al. 2022), GRPO (Shao et al. 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mean(x: torch.Tensor) -> float:
    return float(x.detach().float().mean()) if x.numel() else 0.0


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    """Reward accuracy (share of pairs ranked right) and mean margin, the headline metrics."""
    margin = (chosen_rewards - rejected_rewards).detach()
    return {"reward_accuracy": _mean((margin > 0).float()), "reward_margin": _mean(margin),
            "reward_chosen": _mean(chosen_rewards), "reward_rejected": _mean(rejected_rewards)}


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float,
             loss_type: str = "sigmoid"):
    """DPO: the implicit reward beta*(logp - ref) of the chosen answer should beat the rejected one's.

    sigmoid: -log sigmoid(margin) (the paper); hinge: relu(1 - margin) (SLiC); ipo: the squared
    distance of the unscaled log-ratio gap from 1/(2*beta), which does not over-fit deterministic pairs.
    """
    chosen_rewards = beta * (logp_chosen - ref_chosen)
    rejected_rewards = beta * (logp_rejected - ref_rejected)
    margin = chosen_rewards - rejected_rewards
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(margin)
    elif loss_type == "hinge":
        losses = torch.relu(1 - margin)
    elif loss_type == "ipo":
        losses = (margin / beta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    return losses.mean(), pair_metrics(chosen_rewards, rejected_rewards)


def orpo_loss(mean_logp_chosen, mean_logp_rejected, beta: float):
    """ORPO: NLL of the chosen answer minus beta * log sigmoid(log odds ratio), no reference model.

    Inputs are per-token *mean* log-probs (the paper's length normalisation); odds = p / (1 - p).
    """
    log_odds = (mean_logp_chosen - torch.log1p(-torch.exp(mean_logp_chosen).clamp(max=1 - 1e-6))) - (
        mean_logp_rejected - torch.log1p(-torch.exp(mean_logp_rejected).clamp(max=1 - 1e-6)))
    ratio_loss = -F.logsigmoid(log_odds)
    nll = -mean_logp_chosen
    loss = (nll + beta * ratio_loss).mean()
    metrics = pair_metrics(beta * mean_logp_chosen, beta * mean_logp_rejected)
    metrics.update({"nll_chosen": _mean(nll), "log_odds_ratio": _mean(log_odds)})
    return loss, metrics


def kto_loss(logp, ref, desirable: torch.Tensor, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    """KTO on unpaired answers: desirable ones should rise above a reference point, the rest fall below.

    ``desirable`` is a bool mask. The reference point z0 estimates KL(policy || reference); here it is
    the batch mean of the log-ratio, clamped at 0 and detached (the paper uses mismatched
    prompt/answer pairs for this estimate; the batch mean saves a forward pass and behaves alike).
    """
    log_ratio = logp - ref
    z0 = log_ratio.detach().mean().clamp(min=0)
    rewards = beta * log_ratio
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio))))
    metrics = {"reward_chosen": _mean(rewards[desirable]), "reward_rejected": _mean(rewards[~desirable]),
               "kl_estimate": float(z0)}
    metrics["reward_margin"] = metrics["reward_chosen"] - metrics["reward_rejected"]
    return losses.mean(), metrics


def reward_model_loss(chosen_scores, rejected_scores):
    """Bradley-Terry: -log sigmoid(r(chosen) - r(rejected)) on a scalar reward head."""
    loss = -F.logsigmoid(chosen_scores - rejected_scores).mean()
    return loss, pair_metrics(chosen_scores, rejected_scores)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, over the group's std (groups contiguous)."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def grpo_loss(token_logp, ref_token_logp, rows, advantages, beta: float):
    """GRPO with one policy update per batch of samples (so the PPO ratio is 1 and needs no clip).

    Tokens come flat: ``token_logp`` and ``ref_token_logp`` are ``[N]`` answer tokens, ``rows`` says
    which sequence each belongs to, ``advantages`` is ``[batch]``. The KL penalty uses the unbiased,
    always-positive k3 estimator exp(ref - logp) - (ref - logp) - 1. Each sequence's token losses
    are averaged, then the sequences'.
    """
    ratio = torch.exp(token_logp - token_logp.detach())  # 1, with the policy gradient attached
    diff = ref_token_logp - token_logp
    token_kl = torch.exp(diff) - diff - 1
    per_token = -(ratio * advantages[rows]) + beta * token_kl
    n = len(advantages)
    lengths = torch.zeros(n, device=token_logp.device).index_add(0, rows, torch.ones_like(token_logp))
    lengths = lengths.clamp(min=1)
    per_sequence = torch.zeros(n, device=token_logp.device).index_add(0, rows, per_token) / lengths
    kl = torch.zeros(n, device=token_logp.device).index_add(0, rows, token_kl.detach()) / lengths
    return per_sequence.mean(), {"kl": _mean(kl)}
