"""The server side: holds the global adapter, runs the strategy, reports every round, saves the result.

    serve_rounds(grid, recipe, run_dir, expected_clients)    # inside a Flower ServerApp

writes the run directory like any LoRA run, so ``eval``, ``export`` and ``serve`` take it as is:

    runs/<name>/recipe.resolved.yaml   metrics.jsonl (one line per round)   summary.json
                adapter/ + tuneloop_base.json

A round's line says which clients were sampled, which replied (loss, examples, bytes), which failed
and why (a client's located data error), which dropped out (its training process died, its node went silent, or no reply came within
``round_timeout``),
whether the round was aggregated (it needs ``min_results`` good replies), the global validation
loss and token accuracy after it, the bytes sent each way, and the privacy budget spent so far.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx,
                                     Strategy)

from tuneloop.federated.local import token_accuracy, trainable_parameters
from tuneloop.federated.payload import from_array_record, message_bytes, to_array_record
from tuneloop.federated.privacy import make_accountant
from tuneloop.models.loading import load_tokenizer, resolve_model
from tuneloop.paths import make_dir, write_json_atomic, write_text_atomic
from tuneloop.train import loop
from tuneloop.train.data import batch_units, examples_per_micro_batch, read_chat_jsonl, tokenize_records
from tuneloop.train.distributed import DistInfo, Engine
from tuneloop.train.loss import SupervisedCausalLM
from tuneloop.train.methods import resolve_precision, setup_model
from tuneloop.train.tracking import MetricsLog

# Error replies that mean the client went away mid-round (rather than answered with an error).
DROPPED_OUT = (ErrorCode.CLIENT_APP_CRASHED, ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
WEIGHT_KEY = "weight"  # examples, or 1 for every client under DP accounting (it needs equal weights)


class GlobalModel:
    """The server's copy of base + adapter: the initial adapter, global evaluation, the final save."""

    def __init__(self, recipe):
        t = recipe.train
        self.recipe = recipe
        resolved = resolve_model(recipe.model)
        self.tokenizer = load_tokenizer(resolved)
        self.precision = resolve_precision(t.precision, torch.device("cpu"), recipe.method)
        self.model = setup_model(recipe, resolved.path, self.precision, torch.device("cpu")).model
        self.params = trainable_parameters(self.model)
        self.loss_model = SupervisedCausalLM(self.model, self.precision.autocast)
        self.validation = []
        if recipe.data.validation:
            records = read_chat_jsonl(recipe.data.validation)
            samples, _ = tokenize_records(self.tokenizer, records, t.max_seq_len,
                                          "drop" if t.overlong == "error" else t.overlong, t.train_on)
            self.validation = batch_units(samples, t.batch_tokens)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: p.detach().float().numpy().copy() for name, p in self.params.items()}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.from_numpy(np.asarray(arrays[name])).to(p.dtype))

    def evaluate(self) -> dict:
        if not self.validation:
            return {}
        t = self.recipe.train
        per_micro = examples_per_micro_batch(t.batch_size, t.batch_tokens)
        pad = self.tokenizer.pad_token_id
        one = DistInfo()
        loss = loop.evaluate(Engine(self.loss_model, one), self.validation, per_micro, pad, one, t.packing)
        accuracy = token_accuracy(self.model, self.validation, per_micro, pad, t.packing, self.precision.autocast)
        return {"validation_loss": round(loss, 6), "validation_token_accuracy": round(accuracy, 6)}

    def save(self, run_dir: Path) -> None:
        """``adapter/`` (+ tokenizer) and ``tuneloop_base.json``, as ``tuneloop train`` writes them."""
        target, tmp = run_dir / "adapter", run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        base = self.recipe.model
        if Path(base).expanduser().exists():
            base = str(Path(base).expanduser().resolve())
        write_json_atomic(run_dir / "tuneloop_base.json", {"base_model": base})


def build_strategy(fed, expected_clients: int) -> Strategy:
    """FedAvg or FedProx with the recipe's sampling minimums, wrapped for DP when asked."""
    common = dict(fraction_train=fed.fraction_fit, fraction_evaluate=0.0, min_train_nodes=fed.min_fit_clients,
                  min_available_nodes=fed.min_available_clients, weighted_by_key=WEIGHT_KEY)
    strategy = FedProx(proximal_mu=fed.proximal_mu, **common) if fed.strategy == "fedprox" else FedAvg(**common)
    if fed.privacy is None:
        return strategy
    sampled = sampled_per_round(fed, expected_clients)
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, fed.privacy.noise_multiplier, fed.privacy.clipping_norm, sampled,
        accountant=make_accountant(fed.privacy, population=expected_clients))


def sampled_per_round(fed, connected: int) -> int:
    """How many clients Flower's FedAvg samples from ``connected`` (its own rule)."""
    return max(int(connected * fed.fraction_fit), fed.min_fit_clients)


class ReportingStrategy(Strategy):
    """Wraps the strategy: counts bytes, sorts replies into results / failures / drop-outs, applies
    ``min_results``, and writes one line per round (after the global evaluation) to metrics.jsonl."""

    def __init__(self, inner: Strategy, fed, model: GlobalModel, metrics: MetricsLog):
        self.inner, self.fed, self.model, self.metrics = inner, fed, model, metrics
        self.round: dict = {}
        self.totals = {"bytes_down": 0, "bytes_up": 0, "rounds_aggregated": 0}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        config["rounds"] = self.fed.rounds
        config["uniform-weights"] = self.fed.privacy is not None
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.begin_round(server_round, messages)
        return messages

    def begin_round(self, server_round: int, messages: list[Message]) -> None:
        """Note who was sampled and what was sent (every message carries the same content)."""
        down = message_bytes(messages[0]) * len(messages) if messages else 0
        self.round = {"round": server_round, "sampled": sorted(m.metadata.dst_node_id for m in messages),
                      "bytes_down": down, "started": time.time()}

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        good = [r for r in replies if not r.has_error()]
        replied = {r.metadata.src_node_id for r in replies}
        report = self.round
        report["clients"] = [client_entry(r) for r in good]
        errors = [r for r in replies if r.has_error()]
        report["failed"] = [{"node": r.metadata.src_node_id, "reason": r.error.reason}
                            for r in errors if r.error.code not in DROPPED_OUT]
        report["dropped"] = [{"node": r.metadata.src_node_id, "reason": r.error.reason}
                             for r in errors if r.error.code in DROPPED_OUT]
        report["dropped"] += [{"node": n, "reason": f"no reply within round_timeout ({self.fed.round_timeout:g} s)"}
                              for n in report["sampled"] if n not in replied]
        report["bytes_up"] = sum(message_bytes(r) for r in good)
        if len(good) < self.fed.min_results:
            report["aggregated"] = False
            report["note"] = (f"{len(good)} good update(s) < federated.min_results {self.fed.min_results}: "
                              f"the global adapter is unchanged")
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, good)
        report["aggregated"] = arrays is not None
        if arrays is None:
            report["note"] = "the strategy declined to aggregate (the DP accountant needs every sampled client)"
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # evaluation is global, on the server's validation data (evaluate_global)

    def aggregate_evaluate(self, server_round, replies):
        return None

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by Flower before round 1 (round 0) and after each round: evaluate, then log the round."""
        scores = {}
        if self.model is not None:  # None only where a test drives the strategy without a model
            self.model.load(from_array_record(arrays))
            scores = self.model.evaluate()
        record = {"step": server_round, "round": server_round, **scores}
        if server_round > 0:
            record.update(self._finish_round())
        self.metrics.write(record)
        print(round_line(record), flush=True)
        return MetricRecord(scores) if scores else None

    def _finish_round(self) -> dict:
        report, self.round = self.round, {}
        report["seconds"] = round(time.time() - report.pop("started"), 2)
        clients = report["clients"]
        if clients:
            weights = [c["examples"] for c in clients]
            report["loss"] = round(sum(c["loss"] * w for c, w in zip(clients, weights)) / sum(weights), 6)
        self.totals["bytes_down"] += report["bytes_down"]
        self.totals["bytes_up"] += report["bytes_up"]
        self.totals["rounds_aggregated"] += int(report["aggregated"])
        spent = getattr(self.inner, "privacy_spent", lambda: None)()
        if spent is not None:
            report["privacy"] = {"epsilon": round(spent.epsilon, 4), "delta": spent.delta,
                                 "releases": spent.num_releases, "accounting": spent.accounting_method}
        return report


def client_entry(reply: Message) -> dict:
    metrics = next(iter(reply.content.metric_records.values()))
    entry = {"node": reply.metadata.src_node_id, "loss": round(float(metrics["train-loss"]), 6),
             "examples": int(metrics["examples"]), "steps": int(metrics["steps"]),
             "examples_seen": int(metrics["examples-seen"]), "seconds": round(float(metrics["seconds"]), 2),
             "bytes_up": message_bytes(reply)}
    if metrics["partition-id"] >= 0:
        entry["partition"] = int(metrics["partition-id"])
    return entry


def round_line(record: dict) -> str:
    text = f"round {record['round']}"
    if "validation_loss" in record:
        text += f": validation loss {record['validation_loss']:.4f}, token accuracy {record['validation_token_accuracy']:.3f}"
    if record["round"] > 0:
        text += (f"; {len(record['clients'])} result(s), {len(record['failed'])} failed, "
                 f"{len(record['dropped'])} dropped; aggregated: {record['aggregated']}")
        for failure in record["failed"] + record["dropped"]:
            text += f"\n  node {failure['node']}: {failure['reason']}"
    return text


def serve_rounds(grid, recipe, run_dir: Path, expected_clients: int, recipe_yaml: str) -> dict:
    """The whole server side of a federated run; returns the summary it writes."""
    fed = recipe.federated
    started = time.time()
    make_dir(run_dir, "run directory")
    write_text_atomic(run_dir / "recipe.resolved.yaml", recipe_yaml)
    model = GlobalModel(recipe)
    reporter = ReportingStrategy(build_strategy(fed, expected_clients), fed, model,
                                 MetricsLog(run_dir / "metrics.jsonl"))
    initial = to_array_record(model.arrays())
    result = reporter.start(grid=grid, initial_arrays=initial, num_rounds=fed.rounds, timeout=fed.round_timeout,
                            evaluate_fn=reporter.evaluate_global)
    final = result.arrays if result.arrays is not None and len(result.arrays) else initial
    model.load(from_array_record(final))
    model.save(run_dir)
    summary = {"name": recipe.name, "model": recipe.model, "method": recipe.method, "federated": True,
               "strategy": fed.strategy, "rounds": fed.rounds, **reporter.totals,
               "adapter_bytes": int(sum(a.nbytes for a in model.arrays().values())),
               "trainable_parameters": int(sum(p.numel() for p in model.params.values())),
               "wall_seconds": round(time.time() - started, 2), **model.evaluate()}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
