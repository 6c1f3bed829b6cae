"""GRPO: online RL. Sample a group of answers per prompt, reward them, reinforce the better ones.

Each step takes ``train.batch_size`` prompts, samples ``grpo.num_generations`` answers to each from
the current policy, scores them with the reward source, and normalises rewards within each group
(the advantage: better than this prompt's average or not). The loss raises the log-prob of
above-average answers, lowers the rest, and a k3 KL penalty (``grpo.beta``) keeps the policy near
the reference model (Shao et al. 2024).

Several passes per batch of samples (``grpo.num_iterations``, TRL's name): the answers, rewards and
the log-probs they were sampled with are kept for that many optimizer steps, and each later pass
optimises PPO's clipped ratio p_now / p_sampled within [1 - ``epsilon``, 1 + ``epsilon_high``]; the
share of answer tokens whose ratio is clipped is logged as ``clip_fraction`` (TRL:
``clip_ratio/region_mean``), zero with one pass. A resume in the middle of a batch's passes samples
that batch afresh.

Reward source, one of:

* ``grpo.reward_function: "my_rewards:concise"`` or ``"rewards.py:concise"``, a Python function
  ``f(prompts: list[str], completions: list[str]) -> list[float]`` (prompt = the last user message);
* ``grpo.reward_model: runs/my-reward``, a run directory of ``method: reward``.

Prompts come from ``data.train``: any record with ``prompt`` or ``messages`` (preference pairs too).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch

from tuneloop.chat.template import IGNORE_INDEX, render_prompt_ids, render_text, tokenize_text
from tuneloop.errors import UserError
from tuneloop.models.generation import generate_ids
from tuneloop.train.preference import data as pref_data
from tuneloop.train.preference.engine import Method, Session, answer_kl, answer_logits
from tuneloop.train.preference.losses import group_advantages, grpo_loss
from tuneloop.train.preference.reward import load_reward_model

HELD_OUT_PROMPTS = 32  # greedy answers scored at each evaluation: enough to see a trend, cheap


def load_reward_function(spec: str, where: str = "recipe: grpo.reward_function"):
    """The callable named by ``module.path:function`` or ``path/to/file.py:function``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserError(f"{spec!r} does not name a function", where=where,
                        hint="write 'module.path:function' or 'path/to/file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"reward file not found: {path}", where=where)
        module_spec = importlib.util.spec_from_file_location(f"tuneloop_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"cannot import {target!r}: {e}", where=where) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{target} has no function {name!r}", where=where)
    return function


def reward_source(session: Session, config=None, section: str = "grpo"):
    """``rewards(prompts, completions) -> tensor``: from the recipe's function or reward model.

    ``config`` is the recipe section naming the source (``grpo:`` unless given, ``ppo:`` for PPO).
    """
    config = config if config is not None else session.recipe.grpo
    if config.reward_function:
        function = load_reward_function(config.reward_function, f"recipe: {section}.reward_function")

        def rewards(prompts, completions):
            texts = [next((m["content"] for m in reversed(p) if m["role"] == "user"), "") for p in prompts]
            values = function(texts, completions)
            if len(values) != len(completions):
                raise UserError(f"returned {len(values)} rewards for {len(completions)} completions",
                                where=f"{section}.reward_function {config.reward_function}")
            return torch.tensor([float(v) for v in values])
        return rewards

    model, tokenizer = load_reward_model(config.reward_model, session.device, where=f"recipe: {section}.reward_model")

    def rewards(prompts, completions):
        answers = [pref_data.EncodedAnswer(ids, ids) for ids in (
            tokenize_text(tokenizer, render_text(tokenizer, p + [{"role": "assistant", "content": c}]))
            for p, c in zip(prompts, completions))]
        batch = {k: v.to(session.device) for k, v in pref_data.collate(answers, tokenizer.pad_token_id).items()}
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return out.squeeze(-1).float().cpu()
    return rewards


def load_prompt_splits(session: Session) -> int:
    """Training prompts and the held-out ones scored at each evaluation, into ``session.data``."""
    recipe = session.recipe
    prompts = pref_data.load_prompts(recipe.data.train)
    if recipe.data.validation:
        held = pref_data.load_prompts(recipe.data.validation)
    else:
        prompts, held = pref_data.split_holdout(prompts, recipe.preference.holdout, recipe.train.seed)
    session.data.update(train=prompts, held=held[:HELD_OUT_PROMPTS])
    return len(prompts)


def prepare(session: Session) -> int:
    n_items = load_prompt_splits(session)
    session.data["rewards"] = reward_source(session)
    return n_items


def sample(session: Session, prompts: list[list[dict]], group: int, temperature: float,
           max_length: int | None = None):
    """Answer ids per prompt (each prompt ``group`` times, contiguous), their texts and a batch.

    ``max_length``: the longest answer in tokens (default ``grpo.max_completion_length``).
    """
    tokenizer = session.tokenizer
    max_length = max_length or session.recipe.grpo.max_completion_length
    prompt_ids = [render_prompt_ids(tokenizer, p) for p in prompts for _ in range(group)]
    session.model.eval()  # no dropout while sampling
    completions = generate_ids(session.model, tokenizer, prompt_ids, max_length, temperature)
    texts = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
    answers = [pref_data.EncodedAnswer(p + c, [IGNORE_INDEX] * len(p) + c)
               for p, c in zip(prompt_ids, completions)]
    batch = session.to_device(pref_data.collate(answers, session.pad_id))
    return completions, texts, batch


def token_logps(model, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each answer token at the sampling temperature (the distribution being optimised)."""
    logits, targets, rows = answer_logits(model, batch)
    return (logits / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1), rows


def roll_out(session: Session, indices: list[int]) -> dict:
    """A batch of samples: answers to the prompts, rewards, advantages, and the reference's log-probs
    (and, when later passes will reuse it, the sampling policy's)."""
    config = session.recipe.grpo
    prompts = [session.data["train"][i] for i in indices]
    completions, texts, batch = sample(session, prompts, config.num_generations, config.temperature)
    rewards = session.data["rewards"]([p for p in prompts for _ in range(config.num_generations)], texts)
    rollout = {"indices": indices, "batch": batch, "rewards": rewards, "completions": completions,
               "advantages": group_advantages(rewards, config.num_generations).to(session.device)}
    rollout["ref_logp"], _ = session.reference_forward(token_logps, batch, config.temperature)
    if config.num_iterations > 1:
        with torch.no_grad(), session.autocast():
            rollout["old_logp"], _ = session.forward(token_logps, batch, config.temperature)
    return rollout


def current_rollout(session: Session, indices: list[int], roll) -> dict:
    """This micro-batch's samples: new on a batch's first pass, else those kept from it."""
    kept = session.data.setdefault("rollouts", {})
    rollout = kept.get(session.micro)
    if session.pass_index == 0 or rollout is None or rollout["indices"] != indices:
        rollout = kept[session.micro] = roll(session, indices)
    return rollout


def loss(session: Session, indices: list[int]):
    config = session.recipe.grpo
    rollout = current_rollout(session, indices, roll_out)
    session.model.train()
    logp, rows = session.forward(token_logps, rollout["batch"], config.temperature)
    value, metrics = grpo_loss(logp, rollout["ref_logp"], rows, rollout["advantages"], config.beta,
                               rollout.get("old_logp"), config.epsilon, config.epsilon_high)
    rewards, completions = rollout["rewards"], rollout["completions"]
    metrics.update(reward_mean=float(rewards.mean()), reward_std=float(rewards.std()),
                   completion_length=sum(map(len, completions)) / len(completions))
    return value, metrics, int(rollout["batch"]["attention_mask"].sum())


def evaluate(session: Session) -> dict:
    """Mean reward and length of greedy answers to held-out prompts, and their KL to the reference."""
    held = session.data["held"]
    if not held:
        return {}
    completions, texts, batch = sample(session, held, 1, 0.0, session.data.get("max_length"))
    rewards = session.data["rewards"](held, texts)
    return {"reward_mean": float(rewards.mean()), "kl": answer_kl(session, batch),
            "completion_length": sum(map(len, completions)) / len(completions)}


def check(recipe) -> None:
    pref_data.load_prompts(recipe.data.train)
    if recipe.grpo.reward_function:
        load_reward_function(recipe.grpo.reward_function)


METHOD = Method(
    name="grpo",
    head="causal",
    prepare=prepare,
    loss=loss,
    evaluate=evaluate,
    check=check,
    passes=lambda recipe: recipe.grpo.num_iterations,
)
