"""``tuneloop train RECIPE --dry-run`` for dpo/orpo/kto/reward/grpo/ppo: what would train, without training.

Shows the first pair's chosen and rejected answers token by token (trained tokens highlighted, as the
chat template renders them), how many pairs or prompts are usable, their lengths, and the steps.
"""

from __future__ import annotations

import sys

from tuneloop.chat.template import EncodedChat, preview
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.train import loop
from tuneloop.train.preference import data as pref_data
from tuneloop.train.preference import pairs


def dry_run_report(recipe, color: bool | None = None) -> str:
    color = sys.stdout.isatty() if color is None else color
    tokenizer = load_tokenizer(resolve_model(recipe.model), recipe.chat_template)
    t = recipe.train
    lines = [f"recipe {recipe.name}: model {recipe.model}, method {recipe.method} ({recipe.finetuning})"]
    passes = 1
    if recipe.method in ("grpo", "ppo"):
        config = recipe.grpo if recipe.method == "grpo" else recipe.ppo
        group = recipe.grpo.num_generations if recipe.method == "grpo" else 1
        passes = recipe.grpo.num_iterations if recipe.method == "grpo" else recipe.ppo.num_ppo_epochs
        prompts = pref_data.load_prompts(recipe.data.train)
        source = config.reward_function or f"reward model {config.reward_model}"
        lines += [f"prompts: {len(prompts)}; {group} answers sampled per prompt, up to "
                  f"{config.max_completion_length} tokens, {passes} passes per batch; reward: {source}"]
        n_items = len(prompts)
    else:
        train, held = pairs.load_splits(recipe)
        encoded = pref_data.encode_pairs(tokenizer, train, recipe.preference.max_prompt_len, t.max_seq_len)
        first = encoded[0]
        for name, answer in (("chosen", first.chosen), ("rejected", first.rejected)):
            lines += [f"first pair, {name} ({len(answer.input_ids)} tokens):",
                      preview(tokenizer, EncodedChat(answer.input_ids, answer.labels), color=color)]
        lengths = [len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in encoded]
        lines += [f"pairs: {len(train)} train, {len(held)} held out for metrics; "
                  f"tokens per pair: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}"]
        n_items = len(train)
    steps = t.max_steps or passes * loop.total_steps(n_items, t.batch_size * t.gradient_accumulation, t.epochs, None)
    lines.append(f"steps: {steps} (batch {t.batch_size} x accumulation {t.gradient_accumulation})")
    return "\n".join(lines)
