"""Reward model: a scalar score head on the causal LM's trunk, trained on preference pairs.

``AutoModelForSequenceClassification(num_labels=1)`` reads the hidden state of the last token of
prompt + answer (rendered by the chat template, as everywhere) and the Bradley-Terry loss
-log sigmoid(r(chosen) - r(rejected)) teaches it to score chosen answers higher. With LoRA the
adapter and the new head are saved in ``adapter/``; full fine-tuning saves ``model/``. A reward run
directory is what ``grpo.reward_model`` names; :func:`load_reward_model` loads it back.

    method: reward
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tuneloop.errors import UserError
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.train.preference import pairs
from tuneloop.train.preference.engine import Method, Session
from tuneloop.train.preference.losses import reward_model_loss


def pair_scores(session: Session, batch_pairs) -> tuple[torch.Tensor, torch.Tensor, int]:
    batch = pairs.pair_batch(session, batch_pairs)
    scores = session.forward(lambda model: model(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits)
    scores = scores.squeeze(-1).float()
    n = len(batch_pairs)
    return scores[:n], scores[n:], int(batch["attention_mask"].sum())


def prepare(session: Session) -> int:
    train_records, held_records = pairs.load_splits(session.recipe)
    train, held = pairs.encode(session, train_records), pairs.encode(session, held_records)
    if not train:
        raise UserError(f"{session.recipe.data.train}: no usable preference pairs",
                        hint="raise train.max_seq_len: every answer was cut away")
    session.data.update(train=train, held=held)
    return len(train)


def loss(session: Session, indices: list[int]):
    chosen, rejected, tokens = pair_scores(session, [session.data["train"][i] for i in indices])
    value, metrics = reward_model_loss(chosen, rejected)
    return value, metrics, tokens


def evaluate(session: Session) -> dict:
    """Held-out Bradley-Terry loss, accuracy (chosen scored higher) and mean margin."""
    held, size = session.data["held"], session.recipe.train.batch_size
    if not held:
        return {}
    chosen, rejected = [], []
    for start in range(0, len(held), size):
        with session.autocast():
            c, r, _ = pair_scores(session, held[start : start + size])
        chosen.append(c)
        rejected.append(r)
    value, metrics = reward_model_loss(torch.cat(chosen), torch.cat(rejected))
    return {"loss": float(value), **metrics}


def load_reward_model(run_dir: str | Path, device: torch.device, where: str = "recipe: grpo.reward_model"):
    """(model, tokenizer) of a ``method: reward`` run directory, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    run_dir = Path(run_dir)
    meta_path = run_dir / "tuneloop_base.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("method") != "reward" or not ((run_dir / "model").is_dir() or (run_dir / "adapter").is_dir()):
        raise UserError(f"{run_dir} is not a finished reward-model run",
                        where=where,
                        hint="train one with `method: reward` and name its run directory here")
    if (run_dir / "model").is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model", num_labels=1)
        tokenizer = load_tokenizer(run_dir / "model")
    else:
        from peft import PeftModel

        base = resolve_model(meta["base_model"])
        model = AutoModelForSequenceClassification.from_pretrained(base.path, num_labels=1)
        model = PeftModel.from_pretrained(model, run_dir / "adapter")
        tokenizer = load_tokenizer(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


METHOD = Method(
    name="reward",
    head="score",
    prepare=prepare,
    loss=loss,
    evaluate=evaluate,
    keeps_reference=False,
    check=pairs.load_splits,
)
