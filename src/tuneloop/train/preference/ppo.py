"""PPO: online RL with a value head, a KL penalty to the reference model and GAE (Ziegler et al. 2019).

Each batch of ``train.batch_size`` prompts gets one sampled answer per prompt from the current
policy (at ``ppo.temperature``, on the same decoder as GRPO), scored by the reward source. Every
answer token earns -``kl_coef`` x (log p_policy - log p_reference) and the last one also earns the
score; generalised advantage estimation (``gamma``, ``lam``) over the value head's estimates turns
that into per-token advantages (whitened over the batch) and returns. The batch is then optimised for
``ppo.num_ppo_epochs`` optimizer steps: PPO's clipped policy ratio (``cliprange``) plus ``vf_coef`` x
the clipped value loss (``cliprange_value``). Keys and defaults follow TRL's ``PPOConfig``.

The value head is a linear layer on the policy's last hidden state (one trunk, as TRL's
``AutoModelForCausalLMWithValueHead`` did), trained with the adapter or the full model and kept in
checkpoints; the saved adapter or model leaves it out, since only training needs it.

Logged per step: ``reward_mean`` (the score), ``kl`` (per-answer sum of log-ratios, TRL's
``objective/kl``), ``non_score_reward``, ``policy_loss``, ``value_loss``, ``clip_fraction``
(``policy/clipfrac_avg``), ``value_clip_fraction``, ``approx_kl``; held out, as for GRPO: the mean
reward of greedy answers and their per-token KL to the reference.

    method: ppo
    ppo: {reward_function: "tuneloop.train.preference.rewards:concise", kl_coef: 0.05, num_ppo_epochs: 4}
"""

from __future__ import annotations

import torch

from tuneloop.train.preference import grpo
from tuneloop.train.preference.engine import Method, Session, answer_states
from tuneloop.train.preference.losses import gae, ppo_loss, whiten


def prepare(session: Session) -> int:
    """Prompts, the reward source and a value head attached to the model (so the optimizer and
    checkpoints include it)."""
    recipe = session.recipe
    n_items = grpo.load_prompt_splits(session)
    session.data.update(rewards=grpo.reward_source(session, recipe.ppo, "ppo"),
                        max_length=recipe.ppo.max_completion_length)
    hidden = session.model.get_input_embeddings().embedding_dim
    head = torch.nn.Linear(hidden, 1).to(session.device)
    torch.nn.init.zeros_(head.weight)  # values start at 0: no made-up estimates before any return is seen
    torch.nn.init.zeros_(head.bias)
    session.model.add_module("value_head", head)
    return n_items


def states(session: Session, model, batch: dict, temperature: float, with_values: bool = True):
    """Per answer token: log-prob at the sampling temperature, value estimate (or None) and its row."""
    hidden, logits, targets, rows = answer_states(model, batch)
    logp = (logits / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    values = session.model.value_head(hidden.float()).squeeze(-1) if with_values else None
    return logp, values, rows


def as_grid(flat: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-token values (rows contiguous, in order) as a ``[n_rows, longest]`` grid and its mask."""
    lengths = torch.zeros(n_rows, dtype=torch.long, device=flat.device).index_add(0, rows, torch.ones_like(rows))
    starts = torch.cumsum(lengths, 0) - lengths
    columns = torch.arange(len(flat), device=flat.device) - starts[rows]
    grid = torch.zeros(n_rows, int(lengths.max()) if len(flat) else 0, device=flat.device)
    mask = torch.zeros_like(grid)
    grid[rows, columns] = flat
    mask[rows, columns] = 1.0
    return grid, mask


def roll_out(session: Session, indices: list[int]) -> dict:
    """Answers, scores, the per-token KL penalty, GAE advantages and returns, sampling-time values."""
    config = session.recipe.ppo
    prompts = [session.data["train"][i] for i in indices]
    completions, texts, batch = grpo.sample(session, prompts, 1, config.temperature, config.max_completion_length)
    scores = session.data["rewards"](prompts, texts).to(session.device)
    with torch.no_grad(), session.autocast():
        old_logp, old_values, rows = session.forward(lambda model: states(session, model, batch, config.temperature))
    ref_logp, _, _ = session.reference_forward(
        lambda model: states(session, model, batch, config.temperature, with_values=False))
    log_ratio = old_logp - ref_logp
    rewards, mask = as_grid(-config.kl_coef * log_ratio, rows, len(prompts))
    last = mask.sum(1).long() - 1  # every sampled answer has at least one token (EOS or text)
    rewards[torch.arange(len(prompts)), last] += scores
    keep = mask.bool()
    if config.whiten_rewards:
        rewards[keep] = whiten(rewards[keep], shift_mean=False)
    values, _ = as_grid(old_values.float(), rows, len(prompts))
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    kl = torch.zeros(len(prompts), device=log_ratio.device).index_add(0, rows, log_ratio)
    return {"indices": indices, "batch": batch, "completions": completions, "scores": scores,
            "old_logp": old_logp, "old_values": old_values.float(), "advantages": whiten(advantages[keep]),
            "returns": returns[keep], "kl": kl, "non_score_reward": float((-config.kl_coef * kl).mean())}


def loss(session: Session, indices: list[int]):
    config = session.recipe.ppo
    rollout = grpo.current_rollout(session, indices, roll_out)
    session.model.train()
    logp, values, rows = session.forward(lambda model: states(session, model, rollout["batch"], config.temperature))
    value, metrics = ppo_loss(logp, rollout["old_logp"], rollout["advantages"], values, rollout["old_values"],
                              rollout["returns"], rows, len(indices), config.cliprange, config.cliprange_value,
                              config.vf_coef)
    completions = rollout["completions"]
    metrics.update(reward_mean=float(rollout["scores"].mean()), kl=float(rollout["kl"].mean()),
                   non_score_reward=rollout["non_score_reward"],
                   completion_length=sum(map(len, completions)) / len(completions))
    return value, metrics, int(rollout["batch"]["attention_mask"].sum())


def drop_value_head(model) -> None:
    """The saved policy is a plain language model (or adapter): the value head only served training."""
    if hasattr(model, "value_head"):
        del model.value_head


def check(recipe) -> None:
    grpo.pref_data.load_prompts(recipe.data.train)
    if recipe.ppo.reward_function:
        grpo.load_reward_function(recipe.ppo.reward_function, "recipe: ppo.reward_function")


METHOD = Method(
    name="ppo",
    head="causal",
    prepare=prepare,
    loss=loss,
    evaluate=grpo.evaluate,
    check=check,
    passes=lambda recipe: recipe.ppo.num_ppo_epochs,
    before_save=drop_value_head,
)
