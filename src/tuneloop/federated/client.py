"""The client side: a Flower ClientApp that trains the global adapter on the node's own data.

Where the data is comes from the node, never from the server:

* deployment: ``tuneloop federated client --data-dir DIR`` sets node config ``data-dir``; the client
  reads ``DIR/<file name of data.train>`` (``train.jsonl`` for a prepared directory);
* simulation: Flower gives each virtual node ``partition-id`` / ``num-partitions``; the client takes
  its share of ``data.train`` (``federated.partitioning``), computed the same way on every node.

The reply holds exactly one ArrayRecord (the adapter tensors, by name) and one MetricRecord of
counts and losses: no text, no token ids, no record ids. A client whose data is invalid replies with
an error that says where (``file:line: field: message``), and the server leaves it out of the round.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import yaml
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.federated.local import LocalTrainer
from tuneloop.federated.partition import partition_indices, read_records
from tuneloop.federated.payload import from_array_record, to_array_record
from tuneloop.federated.privacy import clip_when_asked

_TRAINERS: dict[tuple, LocalTrainer] = {}  # one per (recipe, data) in this process, all on one model


def recipe_from_yaml(text: str):
    return recipe_from_dict(yaml.safe_load(text), source="federated recipe")


def client_data(recipe, node_config) -> tuple[Path, list[int] | None, int]:
    """(training file, this client's record indices or None for all of it, partition id or -1)."""
    if "data-dir" in node_config:
        directory = Path(str(node_config["data-dir"])).expanduser()
        if not directory.is_dir():
            raise UserError(f"data directory not found: {directory}", hint="pass --data-dir an existing directory")
        return directory / Path(recipe.data.train).name, None, -1
    fed = recipe.federated
    partition, count = int(node_config["partition-id"]), int(node_config["num-partitions"])
    records = read_records(recipe.data.train)
    shares = partition_indices(records, count, fed.partitioning, fed.alpha, fed.label_field, recipe.train.seed)
    return Path(recipe.data.train), shares[partition], partition


def trainer_for(recipe_yaml: str, node_config) -> tuple[LocalTrainer, int]:
    recipe = recipe_from_yaml(recipe_yaml)
    path, indices, partition = client_data(recipe, node_config)
    digest = hashlib.sha256(recipe_yaml.encode()).hexdigest()
    key = (digest, str(path), partition)
    if key not in _TRAINERS:
        same_model = next((t for k, t in _TRAINERS.items() if k[0] == digest), None)
        _TRAINERS[key] = LocalTrainer(recipe, path, indices, share_model=same_model)
    return _TRAINERS[key], partition


def train_reply(message: Message, context: Context, recipe_yaml: str) -> Message:
    """One round on this client: the reply message (adapter + counts), or a located error."""
    config = message.content["config"]
    print(f"tuneloop federated client: round {config['server-round']}: training", file=sys.stderr, flush=True)
    try:
        trainer, partition = trainer_for(recipe_yaml, context.node_config)
        received = message.content["arrays"]
        trainer.load_adapter(from_array_record(received))
        fed = trainer.recipe.federated
        result = trainer.train_round(int(config["server-round"]), int(config.get("rounds", fed.rounds)), fed,
                                     float(config.get("proximal-mu", 0.0)))
    except UserError as e:
        print(f"tuneloop federated client: {e}", file=sys.stderr, flush=True)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"data error: {e}"),
                       reply_to=message)
    metrics = MetricRecord({
        "weight": 1 if config.get("uniform-weights", False) else trainer.examples,
        "examples": trainer.examples, "examples-seen": result.examples_seen, "steps": result.steps,
        "train-loss": result.loss, "first-loss": result.first_loss, "tokens": result.tokens,
        "seconds": result.seconds, "proximal-term": result.proximal_term, "partition-id": partition})
    arrays = to_array_record(trainer.adapter_arrays(), order=list(received.keys()))
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def make_client_app(recipe_yaml: str | None = None) -> ClientApp:
    """The ClientApp; without ``recipe_yaml`` it reads the recipe from the run config (deployment)."""
    app = ClientApp(mods=[clip_when_asked])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return train_reply(message, context, recipe_yaml or str(context.run_config["recipe-yaml"]))

    return app
