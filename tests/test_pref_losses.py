"""Unit tests of the preference/RL losses: exact values on hand-computed inputs (milliseconds)."""

from __future__ import annotations

import math

import pytest
import torch

from tuneloop.train.preference.losses import (clipped_surrogate, dpo_loss, gae, group_advantages, grpo_loss,
                                              kto_loss, orpo_loss, pair_metrics, ppo_loss, reward_model_loss,
                                              whiten)

t = torch.tensor


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    same = t([-5.0, -7.0])
    loss, metrics = dpo_loss(same, same - 1, same, same - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["reward_margin"] == 0 and metrics["reward_accuracy"] == 0
    # chosen up by 2 nats, rejected down by 3: margin = 0.1 * (2 + 3) = 0.5
    loss, metrics = dpo_loss(t([-3.0]), t([-9.0]), t([-5.0]), t([-6.0]), beta=0.1)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    assert metrics["reward_margin"] == pytest.approx(0.5) and metrics["reward_accuracy"] == 1.0
    assert metrics["reward_chosen"] == pytest.approx(0.2) and metrics["reward_rejected"] == pytest.approx(-0.3)


def test_dpo_variants():
    args = (t([-3.0]), t([-9.0]), t([-5.0]), t([-6.0]))
    assert dpo_loss(*args, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(0.5)
    # ipo: (margin / beta - 1 / (2 beta))^2 = (5 - 5)^2
    assert dpo_loss(*args, beta=0.1, loss_type="ipo")[0].item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        dpo_loss(*args, beta=0.1, loss_type="nope")


def test_orpo_loss_adds_the_odds_ratio_term_to_the_chosen_nll():
    chosen, rejected = math.log(0.5), math.log(0.2)
    loss, metrics = orpo_loss(t([chosen]), t([rejected]), beta=0.1)
    log_odds = math.log(0.5 / 0.5) - math.log(0.2 / 0.8)
    expected = -chosen + 0.1 * math.log(1 + math.exp(-log_odds))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["log_odds_ratio"] == pytest.approx(log_odds, rel=1e-5)


def test_kto_loss_rewards_desirable_above_and_undesirable_below_the_reference_point():
    logp, ref = t([-1.0, -8.0]), t([-2.0, -6.0])  # log-ratios +1 and -2; z0 = mean clamped = 0
    loss, metrics = kto_loss(logp, ref, t([True, False]), beta=1.0)
    expected = ((1 - 1 / (1 + math.exp(-1))) + (1 - 1 / (1 + math.exp(-2)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["reward_margin"] == pytest.approx(3.0) and metrics["kl_estimate"] == 0.0
    weighted, _ = kto_loss(logp, ref, t([True, False]), beta=1.0, undesirable_weight=2.0)
    assert weighted.item() > loss.item()


def test_reward_model_loss_is_bradley_terry():
    loss, metrics = reward_model_loss(t([1.0, 0.0]), t([0.0, 1.0]))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["reward_accuracy"] == 0.5 and metrics["reward_margin"] == 0.0


def test_pair_metrics_counts_ties_as_wrong():
    assert pair_metrics(t([1.0, 2.0, 3.0]), t([1.0, 1.0, 4.0]))["reward_accuracy"] == pytest.approx(1 / 3)


def test_group_advantages_normalise_within_each_group():
    adv = group_advantages(t([1.0, 3.0, 10.0, 10.0]), group_size=2)
    std = torch.tensor([1.0, 3.0]).std().item()
    assert adv[:2].tolist() == pytest.approx([-1 / (std + 1e-4), 1 / (std + 1e-4)], rel=1e-6)
    assert adv[2:].tolist() == [0.0, 0.0]  # equal rewards teach nothing


def test_grpo_loss_gradient_follows_the_advantage_and_kl_is_zero_at_the_reference():
    token_logp = t([-1.0, -2.0, -3.0], requires_grad=True)
    rows = t([0, 0, 1])
    loss, metrics = grpo_loss(token_logp, token_logp.detach().clone(), rows, t([1.0, -1.0]), beta=0.5)
    loss.backward()
    assert metrics["kl"] == 0.0
    assert loss.item() == pytest.approx(0.0)  # (-(1) * 1 per token of row 0, +1 for row 1) / 2
    # row 0 (advantage +1, 2 tokens): each token's log-prob pushed up by 1/2 / 2 sequences
    assert token_logp.grad.tolist() == pytest.approx([-0.25, -0.25, 0.5])


def test_grpo_kl_penalty_is_positive_away_from_the_reference():
    token_logp = t([-1.0])
    _, metrics = grpo_loss(token_logp, t([-2.0]), t([0]), t([0.0]), beta=0.1)
    assert metrics["kl"] == pytest.approx(math.exp(-1) + 1 - 1)


def test_clipped_surrogate_stops_the_gradient_past_the_bound_on_the_advantage_side():
    old = t([0.0, 0.0, 0.0, 0.0])
    logp = torch.log(t([1.5, 1.5, 0.5, 1.1])).requires_grad_()
    advantages = t([1.0, -1.0, -1.0, 1.0])
    per_token, clipped = clipped_surrogate(logp, old, advantages, 0.2, 0.2)
    per_token.sum().backward()
    # ratio 1.5, A>0: clipped at 1.2; ratio 1.5, A<0: not clipped (the penalty keeps its gradient);
    # ratio 0.5, A<0: clipped at 0.8; ratio 1.1: inside the range.
    assert per_token.tolist() == pytest.approx([-1.2, 1.5, 0.8, -1.1])
    assert clipped.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, 0.0, -1.1])  # d(-ratio*A)/dlogp = -ratio*A


def test_grpo_loss_with_a_stale_sampling_policy_reports_its_clip_fraction():
    token_logp = torch.log(t([2.0, 1.0, 1.0]))
    _, one_pass = grpo_loss(token_logp, token_logp, t([0, 0, 1]), t([1.0, -1.0]), beta=0.0)
    assert one_pass["clip_fraction"] == 0.0  # no old log-probs: the sampling policy, ratio 1
    _, later = grpo_loss(token_logp, token_logp, t([0, 0, 1]), t([1.0, -1.0]), beta=0.0,
                         old_token_logp=t([0.0, 0.0, 0.0]))
    assert later["clip_fraction"] == pytest.approx(1 / 3)  # only the first token's ratio (2) is past 1.2


def test_gae_by_hand_and_padding_is_ignored():
    rewards, values = t([[0.0, 1.0], [2.0, 0.0]]), t([[0.5, 0.2], [1.0, 9.0]])
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: delta_1 = 1 - 0.2 = 0.8; delta_0 = 0 + 0.2 - 0.5 = -0.3, A_0 = -0.3 + 0.5 * 0.8 = 0.1
    # row 1: one real token; the padded value 9 must not leak in: A_0 = 2 - 1 = 1
    assert advantages.tolist() == [pytest.approx([0.1, 0.8]), [1.0, 0.0]]
    assert returns.tolist() == [pytest.approx([0.6, 1.0]), [2.0, 0.0]]
    # gamma 0.5, lam 1: delta_0 = 0 + 0.5 * 0.2 - 0.5 = -0.4, A_0 = -0.4 + 0.5 * 0.8 = 0
    assert gae(rewards, values, mask, gamma=0.5, lam=1.0)[0][0].tolist() == pytest.approx([0.0, 0.8], abs=1e-6)


def test_ppo_loss_clips_the_value_update_and_weights_it():
    logp = t([0.0, 0.0])
    values, old_values, returns = t([2.0, 0.1]), t([0.0, 0.0]), t([1.0, 1.0])
    loss, metrics = ppo_loss(logp, logp, t([1.0, 1.0]), values, old_values, returns, t([0, 1]), 2,
                             cliprange=0.2, cliprange_value=0.5, vf_coef=0.1)
    # token 0: V=2 clipped to 0.5 -> max((2-1)^2, (0.5-1)^2) = 1; token 1: both 0.81 -> 0.5 * mean = 0.4525
    assert metrics["value_loss"] == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert metrics["policy_loss"] == pytest.approx(-1.0) and metrics["clip_fraction"] == 0.0
    assert loss.item() == pytest.approx(-1.0 + 0.1 * metrics["value_loss"])


def test_whiten_keeps_the_mean_when_asked():
    x = t([1.0, 2.0, 3.0])
    assert whiten(x).tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert whiten(x, shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0])
