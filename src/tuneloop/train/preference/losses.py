"""The losses of the preference and RL methods, as pure functions of per-sequence log-probabilities.

All inputs are tensors of shape ``[batch]`` unless said otherwise. "logp" is the summed log-probability
of an answer's tokens given its prompt; "ref" the same under the reference (starting) model. Every
function returns ``(loss, metrics)`` where metrics are detached floats for metrics.jsonl.

References: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023), ORPO (Hong et al. 2024), KTO
(Ethayarajh et al. 2024), Bradley-Terry reward models (Ouyang et al. 2022), GRPO (Shao et al. 2024), PPO (Schulman et al. 2017)
with GAE (Schulman et al. 2016) as applied to language models (Ziegler et al. 2019).
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


def _per_sequence_mean(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Each sequence's mean over its tokens (``values`` flat, ``rows`` the sequence of each token)."""
    lengths = torch.zeros(n, device=values.device).index_add(0, rows, torch.ones_like(values)).clamp(min=1)
    return torch.zeros(n, device=values.device, dtype=values.dtype).index_add(0, rows, values) / lengths


def clipped_surrogate(token_logp, old_token_logp, token_advantages, epsilon: float, epsilon_high: float):
    """PPO's clipped objective per token, to be minimised: -min(ratio * A, clip(ratio) * A).

    ratio = p_now / p_when_sampled. Once the ratio has left [1 - epsilon, 1 + epsilon_high] in the
    direction the advantage pushes it, the clipped term is the smaller one and its gradient is zero,
    so one batch of samples cannot drag the policy far however many passes are made over it. Returns
    (per-token loss, per-token "clipped" flags as floats): a token counts as clipped when its ratio
    is past the bound on the side its advantage favours (TRL's ``clip_ratio/region_mean``).
    """
    ratio = torch.exp(token_logp - old_token_logp)
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * token_advantages, clipped_ratio * token_advantages)
    clipped = ((ratio < 1 - epsilon) & (token_advantages < 0)) | ((ratio > 1 + epsilon_high) & (token_advantages > 0))
    return per_token, clipped.float().detach()


def grpo_loss(token_logp, ref_token_logp, rows, advantages, beta: float, old_token_logp=None,
              epsilon: float = 0.2, epsilon_high: float | None = None):
    """GRPO's clipped objective plus a k3 KL penalty to the reference model.

    Tokens come flat: ``token_logp``, ``ref_token_logp`` and ``old_token_logp`` (the log-probs when
    the answers were sampled) are ``[N]`` answer tokens, ``rows`` says which sequence each belongs
    to, ``advantages`` is ``[batch]``. Without ``old_token_logp`` (one pass per batch of samples) the
    policy is still the one that sampled, so the ratio is 1 and nothing is clipped. The KL penalty
    uses the unbiased, always-positive k3 estimator exp(ref - logp) - (ref - logp) - 1. Each
    sequence's token losses are averaged, then the sequences'.
    """
    old = token_logp.detach() if old_token_logp is None else old_token_logp
    surrogate, clipped = clipped_surrogate(token_logp, old, advantages[rows], epsilon,
                                           epsilon if epsilon_high is None else epsilon_high)
    diff = ref_token_logp - token_logp
    token_kl = torch.exp(diff) - diff - 1
    n = len(advantages)
    per_sequence = _per_sequence_mean(surrogate + beta * token_kl, rows, n)
    kl = _per_sequence_mean(token_kl.detach(), rows, n)
    return per_sequence.mean(), {"kl": _mean(kl), "clip_fraction": _mean(clipped)}


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over ``[batch, T]`` token grids (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, with V and A
    zero past each row's last real token (``mask`` 1 on real tokens, which come first in a row).
    Returns (advantages, returns = advantages + values), zero on padding.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Unit variance and, with ``shift_mean``, zero mean: a batch's advantages (or rewards) on one
    scale, whatever the reward's. Fewer than two values have no spread to divide by."""
    if values.numel() < 2:
        return values - values.mean() if shift_mean else values
    whitened = (values - values.mean()) / (values.std() + eps)
    return whitened if shift_mean else whitened + values.mean()


def ppo_loss(token_logp, old_token_logp, token_advantages, values, old_values, returns, rows, n_rows: int,
             cliprange: float, cliprange_value: float, vf_coef: float):
    """PPO's clipped policy loss plus ``vf_coef`` x its clipped value loss (all inputs flat ``[N]`` tokens).

    Value loss: 0.5 x max((V - R)^2, (V_clipped - R)^2) with V_clipped kept within
    ``cliprange_value`` of the value when the answers were sampled, as TRL and the OpenAI baselines
    do. Token losses are averaged per sequence, then over sequences.
    """
    surrogate, clipped = clipped_surrogate(token_logp, old_token_logp, token_advantages, cliprange, cliprange)
    values_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_loss = 0.5 * torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    policy = _per_sequence_mean(surrogate, rows, n_rows).mean()
    value = _per_sequence_mean(value_loss, rows, n_rows).mean()
    value_clipped = ((values - returns) ** 2 < (values_clipped - returns) ** 2).float()
    approx_kl = 0.5 * (token_logp.detach() - old_token_logp) ** 2
    return policy + vf_coef * value, {"policy_loss": float(policy.detach()), "value_loss": float(value.detach()),
                                      "clip_fraction": _mean(clipped), "value_clip_fraction": _mean(value_clipped),
                                      "approx_kl": _mean(approx_kl)}
