"""Federated fine-tuning: partitions, FedProx, the round report, what a client sends, the DP budget.

In-process tests with real Flower messages and the tiny model; the multi-process runs (Flower's
simulation and a real server with client nodes) are in test_federated_processes.py.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fixtures_train.helpers import TRAIN, tiny_recipe
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.federated import partition
from tuneloop.federated.client import train_reply
from tuneloop.federated.launch import recipe_text
from tuneloop.federated.local import LocalTrainer, ProximalLoss
from tuneloop.federated.payload import to_array_record, wire_objects
from tuneloop.federated.privacy import clip_when_asked, epsilon_after
from tuneloop.federated.server import ReportingStrategy, build_strategy

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a Flower process sets before building messages


def fed_recipe(model_dir, tmp_path, **federated) -> dict:
    raw = tiny_recipe(model_dir, tmp_path, batch_size=4)
    raw["data"]["train"] = "train.jsonl"
    raw["federated"] = {"rounds": 2, "local_steps": 2, **federated}
    return raw


# ---------------------------------------------------------------------------------------------
# Partitions


def test_iid_shares_cover_every_record_once():
    shares = partition.iid_partition(10, 3, seed=0)
    assert sorted(i for s in shares for i in s) == list(range(10))
    assert sorted(len(s) for s in shares) == [3, 3, 4]
    assert shares == partition.iid_partition(10, 3, seed=0)  # every client computes the same split


def test_dirichlet_small_alpha_skews_labels_and_large_alpha_does_not():
    labels = [f"l{i % 5}" for i in range(1000)]

    def dominant_share(alpha):  # mean share of a client's records that its commonest label takes
        shares = partition.dirichlet_partition(labels, 4, alpha, seed=1)
        assert sorted(i for s in shares for i in s) == list(range(1000))
        return np.mean([Counter(labels[i] for i in s).most_common(1)[0][1] / len(s) for s in shares])

    assert dominant_share(0.1) > 0.6
    assert dominant_share(100.0) < 0.3  # close to the uniform 0.2


def test_split_writes_client_dirs_and_partition_report(tmp_path):
    directories = partition.write_client_dirs(TRAIN, tmp_path / "clients", 2, "iid", 0.5, "label", 0)
    lines = [d.joinpath("train.jsonl").read_text().splitlines() for d in directories]
    assert sorted(lines[0] + lines[1]) == sorted(TRAIN.read_text().splitlines())
    report = json.loads((tmp_path / "clients" / "partition.json").read_text())
    assert report["sizes"] == [24, 24]


# ---------------------------------------------------------------------------------------------
# FedProx


def test_proximal_term_is_added_once_per_step_and_pulls_towards_the_global_weights():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))

    class Inner(torch.nn.Module):
        def forward(self, input_ids, position_ids, targets):
            count = (targets != -100).sum()
            return (weight * 0).sum() * count, count

    loss = ProximalLoss(Inner(), [weight], mu=0.5)
    with torch.no_grad():
        weight += torch.tensor([0.2, -0.4])  # moved away from the anchor
    targets = torch.tensor([[1, 1, -100]])
    total, count = loss(torch.zeros(1, 3), torch.zeros(1, 3), targets)
    # train_step divides by the step's supervised tokens (2 here): 0.5/2 * (0.04 + 0.16) remains
    assert float(total.detach()) / int(count) == pytest.approx(0.25 * 0.2)
    assert loss.last_term == pytest.approx(0.05)
    (total / count).backward()
    assert weight.grad.tolist() == pytest.approx([0.5 * 0.2, 0.5 * -0.4])  # mu * (w - w_global)


def test_fedprox_client_stays_closer_to_the_global_adapter(tiny_model_dir, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.jsonl").write_text(TRAIN.read_text())
    recipe = recipe_from_dict(fed_recipe(tiny_model_dir, tmp_path, local_steps=4))
    distances = {}
    for mu in (0.0, 50.0):
        trainer = LocalTrainer(recipe, data / "train.jsonl")
        start = trainer.adapter_arrays()
        result = trainer.train_round(1, 2, recipe.federated, proximal_mu=mu)
        assert result.steps == 4 and result.examples_seen == 16
        distances[mu] = sum(float(((trainer.adapter_arrays()[k] - v) ** 2).sum()) for k, v in start.items())
    assert 0 < distances[50.0] < distances[0.0]


def test_clients_sharing_one_model_train_as_if_each_had_its_own(tiny_model_dir, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.jsonl").write_text(TRAIN.read_text())
    recipe = recipe_from_dict(fed_recipe(tiny_model_dir, tmp_path))
    first = LocalTrainer(recipe, data / "train.jsonl", indices=list(range(0, 48, 2)))
    global_adapter = {k: v + 0.01 for k, v in first.adapter_arrays().items()}
    first.load_adapter(global_adapter)
    first.train_round(1, 2, recipe.federated)  # leaves its trained weights in the shared model
    shared = LocalTrainer(recipe, data / "train.jsonl", indices=list(range(1, 48, 2)), share_model=first)
    alone = LocalTrainer(recipe, data / "train.jsonl", indices=list(range(1, 48, 2)))
    assert shared.model is first.model and alone.model is not first.model
    for trainer in (shared, alone):
        trainer.load_adapter(global_adapter)
        trainer.train_round(1, 2, recipe.federated)
    after_shared, after_alone = shared.adapter_arrays(), alone.adapter_arrays()
    assert all(np.array_equal(after_shared[k], after_alone[k]) for k in after_alone)


# ---------------------------------------------------------------------------------------------
# What a client sends


def _train_message(arrays: ArrayRecord, node: int = 7) -> Message:
    config = ConfigRecord({"server-round": 1, "rounds": 2})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node,
                   message_type=MessageType.TRAIN)


def _context(data_dir: Path, recipe: dict) -> Context:
    text = recipe_text(recipe_from_dict(recipe))
    return Context(run_id=1, node_id=7, node_config={"data-dir": str(data_dir)}, state=RecordDict(),
                   run_config={"recipe-yaml": text})


def test_a_client_sends_only_adapter_tensors_and_counts(tiny_model_dir, tmp_path):
    data = tmp_path / "private"
    data.mkdir()
    secrets = [f"my account number is 99{i:04d}7731 and my name is Zebulon Quartermaine" for i in range(12)]
    records = [{"messages": [{"role": "user", "content": s}, {"role": "assistant", "content": f"Noted, {s}."}],
                "id": f"secret-{i}"} for i, s in enumerate(secrets)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    raw = fed_recipe(tiny_model_dir, tmp_path)
    context = _context(data, raw)
    trainer = LocalTrainer(recipe_from_dict(raw), data / "train.jsonl")
    sent = to_array_record(trainer.adapter_arrays())
    reply = train_reply(_train_message(sent), context, context.run_config["recipe-yaml"])

    assert not reply.has_error()
    assert list(reply.content.array_records) == ["arrays"] and list(reply.content.metric_records) == ["metrics"]
    assert not reply.content.config_records
    adapter = reply.content["arrays"]
    assert list(adapter.keys()) == list(sent.keys())  # the same tensors, in the order they came
    assert all("lora_A" in k or "lora_B" in k for k in adapter.keys())
    assert any(not np.array_equal(adapter[k].numpy(), sent[k].numpy()) for k in adapter.keys())  # it trained
    metrics = reply.content["metrics"]
    assert metrics["examples"] == 12 and metrics["weight"] == 12
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    # The serialised objects Flower would push: no text, no record id, no token ids of the records.
    wire = b"".join(wire_objects(reply).values())
    for needle in ["Zebulon", "Quartermaine", "account number", "secret-", "997731", "Noted"]:
        assert needle.encode() not in wire and needle.encode("utf-16-le") not in wire
    token_ids = trainer.tokenizer(" Zebulon Quartermaine")["input_ids"]
    for dtype in (np.int64, np.int32):
        assert np.asarray(token_ids, dtype=dtype).tobytes() not in wire


def test_a_client_with_invalid_data_replies_with_its_located_error(tiny_model_dir, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    good = TRAIN.read_text().splitlines()[:2]
    (data / "train.jsonl").write_text("\n".join(good + ['{"messages": [{"role": "robot", "content": "x"}]}']) + "\n")
    context = _context(data, fed_recipe(tiny_model_dir, tmp_path))
    reply = train_reply(_train_message(ArrayRecord()), context, context.run_config["recipe-yaml"])
    assert reply.has_error()
    assert f"{data / 'train.jsonl'}:3: messages[0].role:" in reply.error.reason  # file, line and field


# ---------------------------------------------------------------------------------------------
# The round report


class _Log:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


def _reply(sent: Message, value: float, examples: int, loss: float) -> Message:
    metrics = MetricRecord({"weight": examples, "examples": examples, "examples-seen": examples, "steps": 1,
                            "train-loss": loss, "seconds": 0.1, "partition-id": -1})
    arrays = to_array_record({"w": np.full(3, value, np.float32)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent)


def _round(fed, replies_for):
    recipe = recipe_from_dict({"model": "x", "data": {"train": "t.jsonl"}, "federated": fed})
    strategy = ReportingStrategy(build_strategy(recipe.federated, 3), recipe.federated, None, _Log())
    sent = [_train_message(to_array_record({"w": np.zeros(3, np.float32)}), node) for node in (11, 12, 13)]
    strategy.begin_round(1, sent)
    arrays, _ = strategy.aggregate_train(1, replies_for(sent))
    return strategy.round, arrays


def test_a_dropped_client_does_not_stop_the_round_and_the_report_says_so():
    fed = {"min_fit_clients": 3, "min_available_clients": 3, "min_results": 2, "round_timeout": 30}
    report, arrays = _round(fed, lambda sent: [_reply(sent[0], 1.0, 10, 2.0), _reply(sent[1], 4.0, 30, 1.0)])
    assert report["aggregated"] is True
    assert arrays["w"].numpy().tolist() == pytest.approx([3.25] * 3)  # (1*10 + 4*30) / 40: weighted by examples
    assert report["dropped"] == [{"node": 13, "reason": "no reply within round_timeout (30 s)"}]
    assert [c["node"] for c in report["clients"]] == [11, 12] and report["failed"] == []
    assert report["bytes_up"] > 2 * 12


def test_below_min_results_the_round_is_not_aggregated_and_failures_are_named():
    fed = {"min_fit_clients": 3, "min_available_clients": 3, "min_results": 2}

    def replies(sent):
        error = Message(Error(code=2, reason="data error: c.jsonl:3: messages[0].role: ..."), reply_to=sent[1])
        return [_reply(sent[0], 1.0, 10, 2.0), error]

    report, arrays = _round(fed, replies)
    assert arrays is None and report["aggregated"] is False
    assert "1 good update(s) < federated.min_results 2" in report["note"]
    assert report["failed"] == [{"node": 12, "reason": "data error: c.jsonl:3: messages[0].role: ..."}]
    assert [d["node"] for d in report["dropped"]] == [13]


# ---------------------------------------------------------------------------------------------
# Recipe and privacy


def test_federated_section_is_validated(tmp_path):
    with pytest.raises(UserError, match="federated.strategie: unknown key; did you mean 'strategy'"):
        recipe_from_dict({"data": {"train": "t.jsonl"}, "federated": {"strategie": "fedavg"}})
    with pytest.raises(UserError, match="min_results must be <= min_fit_clients"):
        recipe_from_dict({"data": {"train": "t.jsonl"}, "federated": {"min_results": 3}})
    with pytest.raises(UserError, match="federated trains a LoRA adapter"):
        recipe_from_dict({"method": "full", "data": {"train": "t.jsonl"}, "federated": {}})


def test_privacy_budget_grows_with_rounds_and_shrinks_with_noise():
    recipe = recipe_from_dict({"data": {"train": "t.jsonl"},
                               "federated": {"privacy": {"noise_multiplier": 1.0, "delta": 1e-5}}})
    privacy = recipe.federated.privacy
    one, three = epsilon_after(privacy, 1, 4), epsilon_after(privacy, 3, 4)
    assert 0 < one < three
    # By hand: the Gaussian mechanism (sensitivity 1, sigma 1) has RDP alpha/2 per release; three
    # releases and the classic conversion give min over alpha of 3*alpha/2 + ln(1/delta)/(alpha-1)
    # (~9.81). The accountant's conversion is tighter, but never looser than that.
    classic = min(3 * a / 2 + np.log(1 / 1e-5) / (a - 1) for a in np.linspace(1.01, 64, 20000))
    assert classic == pytest.approx(9.81, abs=0.01)
    assert 0.85 * classic < three <= classic
    privacy.noise_multiplier = 4.0
    assert epsilon_after(privacy, 3, 4) < one


class _Nodes(Grid):
    """Only what sampling asks a grid: the connected node ids (no transport in this test)."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes

    set_run = run = create_message = push_messages = pull_messages = send_and_receive = None


def test_dp_clips_each_update_adds_noise_and_reports_the_budget():
    recipe = recipe_from_dict({"model": "x", "data": {"train": "t.jsonl"}, "federated": {
        "min_fit_clients": 2, "min_available_clients": 2,
        "privacy": {"clipping_norm": 1.0, "noise_multiplier": 0.001, "delta": 1e-5}}})
    log = _Log()
    strategy = ReportingStrategy(build_strategy(recipe.federated, 2), recipe.federated, None, log)
    start = {"w": np.zeros(4, np.float32)}
    sent = strategy.configure_train(1, to_array_record(start), ConfigRecord(), _Nodes([11, 12]))
    assert sorted(m.metadata.dst_node_id for m in sent) == [11, 12]  # Flower samples in random order

    def client(update, examples):  # the ClientApp's reply, which goes through the client-side clipping mod
        def train(message, context):
            metrics = MetricRecord({"weight": 1, "examples": examples, "examples-seen": 1, "steps": 1,
                                    "train-loss": 1.0, "seconds": 0.1, "partition-id": -1})
            return Message(RecordDict({"arrays": to_array_record({"w": update}), "metrics": metrics}),
                           reply_to=message)
        return train

    updates = [np.array([3.0, 4.0, 0, 0], np.float32), np.array([0, 0, 0.3, 0.4], np.float32)]
    replies = [clip_when_asked(m, None, client(u, n)) for m, u, n in zip(sent, updates, (10, 30))]
    clipped = replies[0].content["arrays"]["w"].numpy()
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-5)  # norm 5 clipped to 1
    assert replies[1].content["arrays"]["w"].numpy().tolist() == pytest.approx([0, 0, 0.3, 0.4])  # under 1: kept
    arrays, _ = strategy.aggregate_train(1, replies)
    # Equal weights under DP (10 vs 30 examples would otherwise weigh 1:3), plus noise of std 0.0005.
    expected = (clipped + updates[1]) / 2
    assert arrays["w"].numpy() == pytest.approx(expected, abs=0.005)
    assert not np.array_equal(arrays["w"].numpy(), expected)
    strategy.evaluate_global(1, arrays)
    assert log.records[-1]["privacy"]["epsilon"] == pytest.approx(epsilon_after(recipe.federated.privacy, 1, 2))


def test_cli_without_a_federated_section_exits_1_and_says_how(tmp_path, capsys):
    from tuneloop.cli.main import main

    path = tmp_path / "r.yaml"
    path.write_text("data: {train: t.jsonl}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["federated", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "the recipe has no federated: section" in err and "hint: add e.g. federated:" in err
