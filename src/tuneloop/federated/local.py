"""A client's round: load the global adapter, train it on local data, hand back the adapter and counts.

Built from the normal training pieces, so a federated client checks, templates and masks its data
exactly as ``tuneloop train`` does: ``read_chat_jsonl`` / ``tokenize_records`` (located data errors,
assistant-only loss), ``setup_model`` (LoRA on the recipe's base, fast dropout), ``SupervisedCausalLM``
(loss only at supervised positions) and ``loop.train_step``.

    trainer = LocalTrainer(recipe, "client-0/train.jsonl")   # data errors raise here, located
    trainer.load_adapter(global_arrays)
    result = trainer.train_round(server_round=1, rounds=3, local=recipe.federated, proximal_mu=0.0)
    trainer.adapter_arrays()                                   # what goes back to the server

Each round starts a fresh AdamW (as FedAvg clients do: optimizer state is local and not carried
between rounds); the learning rate is constant within a round and follows the recipe's schedule
across rounds.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tuneloop.chat.template import IGNORE_INDEX
from tuneloop.errors import UserError
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.train import loop
from tuneloop.train.data import (Sample, batch_units, collate_micro_batch, examples_per_micro_batch,
                                 read_chat_jsonl, tokenize_records)
from tuneloop.train.distributed import DistInfo, Engine
from tuneloop.train.loss import SupervisedCausalLM, causal_lm_parts
from tuneloop.train.methods import resolve_precision, setup_model


class ProximalLoss(nn.Module):
    """FedProx: the supervised loss plus (mu / 2) * ||w - w_global||^2, in the shape train_step expects.

    ``train_step`` divides each micro-batch's summed loss by the supervised-token count of the whole
    step; adding the term times *this* micro-batch's count makes the step's objective exactly
    mean token loss + (mu / 2) * ||w - w_global||^2. The term's value is kept so the reported loss
    can leave it out.
    """

    def __init__(self, inner: nn.Module, params: list[nn.Parameter], mu: float):
        super().__init__()
        self.inner = inner
        self.params = params
        self.anchors = [p.detach().clone() for p in params]  # the global adapter this round began from
        self.mu = mu
        self.last_term = 0.0

    def forward(self, input_ids, position_ids, targets):
        loss_sum, count = self.inner(input_ids=input_ids, position_ids=position_ids, targets=targets)
        squared = sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchors))
        term = (self.mu / 2) * squared
        self.last_term = float(term.detach())
        return loss_sum + count * term, count


@dataclass
class RoundResult:
    loss: float  # mean supervised-token loss over the round's steps (without the proximal term)
    first_loss: float
    steps: int
    examples_seen: int
    tokens: int
    seconds: float
    proximal_term: float


def trainable_parameters(model) -> dict[str, nn.Parameter]:
    """The adapter: every trainable tensor, by name (the same names on every client and the server)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class LocalTrainer:
    """The base model with a LoRA adapter and one client's tokenised data, set up once per process."""

    def __init__(self, recipe, train_path, indices: list[int] | None = None, share_model: LocalTrainer | None = None):
        t = recipe.train
        self.recipe = recipe
        self.dist = DistInfo()
        if os.environ.get("TUNELOOP_NUM_THREADS"):  # simulated clients share the cores
            torch.set_num_threads(int(os.environ["TUNELOOP_NUM_THREADS"]))
        resolved = resolve_model(recipe.model)
        self.tokenizer = share_model.tokenizer if share_model else load_tokenizer(resolved)
        records = read_chat_jsonl(train_path)
        if indices is not None:
            records = [records[i] for i in indices]
        samples, self.report = tokenize_records(self.tokenizer, records, t.max_seq_len, t.overlong, t.train_on)
        if not samples:
            raise UserError(f"no sample has a trainable token ({self.report.no_trainable_tokens} without any, "
                            f"{self.report.dropped_overlong} longer than max_seq_len)", where=str(train_path))
        self.units = batch_units(samples, t.batch_tokens)
        self.examples = len(samples)
        if share_model is not None:
            # Simulated clients served by one worker process take turns on one model: every round
            # starts by loading the global adapter over all trainable weights, so nothing carries over.
            self.precision, self.prepared = share_model.precision, share_model.prepared
            self.model, self.params, self.loss_model = share_model.model, share_model.params, share_model.loss_model
            return
        self.precision = resolve_precision(t.precision, self.dist.device, recipe.method)
        self.prepared = setup_model(recipe, resolved.path, self.precision, self.dist.device)
        self.model = self.prepared.model
        self.params = trainable_parameters(self.model)
        self.loss_model = SupervisedCausalLM(self.model, self.precision.autocast)

    def load_adapter(self, arrays: dict[str, np.ndarray]) -> None:
        missing = sorted(set(self.params) - set(arrays))
        if missing:
            raise UserError(f"the server's adapter lacks {len(missing)} tensor(s) this client trains, e.g. "
                            f"{missing[0]}", hint="server and clients must use the same model and lora: settings")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.from_numpy(np.asarray(arrays[name])).to(p.dtype))

    def adapter_arrays(self) -> dict[str, np.ndarray]:
        return {name: p.detach().cpu().float().numpy().copy() for name, p in self.params.items()}

    def steps_for_round(self, local) -> int:
        if local.local_steps is not None:
            return local.local_steps
        return max(1, math.ceil(local.local_epochs * loop.steps_per_epoch(len(self.units), self._units_per_step())))

    def _units_per_step(self) -> int:
        t = self.recipe.train
        return examples_per_micro_batch(t.batch_size, t.batch_tokens) * t.gradient_accumulation

    def train_round(self, server_round: int, rounds: int, local, proximal_mu: float = 0.0) -> RoundResult:
        t = self.recipe.train
        params = list(self.params.values())
        loss_model = ProximalLoss(self.loss_model, params, proximal_mu) if proximal_mu > 0 else self.loss_model
        optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        lr = loop.learning_rate(server_round - 1, rounds, t.learning_rate, 0, t.lr_scheduler)
        steps, losses, examples, tokens = self.steps_for_round(local), [], 0, 0
        started = time.perf_counter()
        self.loss_model.train()
        for step_units in self._step_units(server_round, steps):
            per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
            batches = [collate_micro_batch(units, self.tokenizer.pad_token_id, t.packing)
                       for units in loop.micro_batches(step_units, 0, 1, per_micro)]
            result = loop.train_step(Engine(loss_model, self.dist), batches, optimizer, params, lr,
                                     t.max_grad_norm, self.dist,
                                     loop.step_real_tokens(step_units))
            proximal = getattr(loss_model, "last_term", 0.0)
            losses.append(result.loss - proximal)
            examples += sum(len(unit) for unit in step_units)
            tokens += result.tokens
        return RoundResult(sum(losses) / len(losses), losses[0], steps, examples, tokens,
                           time.perf_counter() - started, getattr(loss_model, "last_term", 0.0))

    def _step_units(self, server_round: int, steps: int):
        """The units of each step: epochs of a shuffled order that depends on the round and the seed."""
        per_step, n = self._units_per_step(), len(self.units)
        per_epoch = loop.steps_per_epoch(n, per_step)
        for step in range(steps):
            epoch, index = divmod(step, per_epoch)
            order = loop.epoch_order(n, self.recipe.train.seed + 7919 * server_round, epoch)
            yield [self.units[i] for i in order[index * per_step : (index + 1) * per_step]]


@torch.no_grad()
def token_accuracy(model, units: list[list[Sample]], batch_size: int, pad_id: int, packing: bool,
                   autocast_dtype=None) -> float:
    """Share of supervised tokens whose greedy next-token prediction is the target (teacher forcing).

    Named for what it is: per-token accuracy on the assistant tokens, not answer-level accuracy.
    """
    decoder, lm_head = causal_lm_parts(model)
    was_training = model.training
    model.eval()
    right = total = 0
    for batch_units_ in loop.micro_batches(units, 0, 1, batch_size):
        batch = collate_micro_batch(batch_units_, pad_id, packing)
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                             use_cache=False).last_hidden_state
            keep = batch["targets"] != IGNORE_INDEX
            predicted = lm_head(hidden[keep]).argmax(-1)
        right += int((predicted == batch["targets"][keep]).sum())
        total += int(keep.sum())
    model.train(was_training)
    return right / total if total else float("nan")
