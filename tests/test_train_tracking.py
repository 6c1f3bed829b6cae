"""Tracking: MLflow (a local store in the run directory by default), TensorBoard and W&B offline, each
read back from its own files; the loss curve PNG every run draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures_train.helpers import tiny_recipe
from tuneloop.config.recipe import recipe_from_dict
from tuneloop.errors import UserError
from tuneloop.train import run_training


def test_mlflow_local_store_gets_params_metrics_and_artifacts(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    raw = tiny_recipe(tiny_model_dir, tmp_path, max_steps=2)
    raw["tracking"] = {"backend": "mlflow", "experiment": "tests"}
    run_dir = run_training(recipe_from_dict(raw))
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.003"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "tokens_per_s" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "recipe.resolved.yaml"} <= artifacts


def read_wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline W&B run file (``run-<id>.wandb``), read without W&B's own reader.

    The file is a 7-byte ``:W&B`` header and then LevelDB-log framing (32 KiB blocks of records with
    a 7-byte header: crc32c, length, kind) around protobuf ``Record`` messages.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, block = run_file.read_bytes(), 32768
    assert raw.startswith(b":W&B")
    position, payloads, pending = 7, [], b""
    while position + 7 <= len(raw):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if kind == 0 and length == 0:  # zero padding at the end of a block
            position += left
            continue
        data = raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            payloads.append(data)
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            payloads.append(pending + data)
    rows = []
    for data in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({_history_key(item): _history_value(item) for item in record.history.item})
    return rows


def _history_key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb-core writes nested_key (["loss"]), older W&B key


def _history_value(item):
    kind = item.WhichOneof("value")  # a typed value where the writer set one, else value_json
    if kind is None:
        return json.loads(item.value_json)
    if kind == "json":
        return json.loads(item.json)
    return None if kind == "none" else getattr(item, kind)


@pytest.mark.slow
def test_banking77_run_logged_to_tensorboard_and_wandb_offline(tiny_model_dir, tmp_path, banking77_csv):
    """A run on real Banking77 rows with tracking.backend [tensorboard, wandb]: both stores read back
    with the loss of every step, and the run directory has its loss curve PNG."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneloop.data.ingest import ColumnMap, read_records
    from tuneloop.data.records import to_canonical
    from tuneloop.data.validate import validate_record

    rows = []
    for raw in read_records(banking77_csv, ColumnMap(text_column="text", label_column="category")):
        shape, issues = validate_record(raw.obj, "classification")
        assert not issues
        rows.append(to_canonical(raw.obj, shape))
        if len(rows) == 24:
            break
    train = tmp_path / "banking77.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = tiny_recipe(tiny_model_dir, tmp_path, max_steps=3, batch_size=8)
    raw["data"]["train"] = str(train)
    raw["tracking"] = {"backend": ["tensorboard", "wandb"], "experiment": "tests"}
    run_dir = run_training(recipe_from_dict(raw))
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert sorted(losses) == [1, 2, 3]

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = {e.step: e.value for e in events.Scalars("loss")}
    assert scalars == pytest.approx(losses, rel=1e-6)
    assert any(tag.startswith("params") for tag in events.Tags()["tensors"])  # the recipe, as text

    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = read_wandb_history(run_file)
    assert {row["_step"]: row["loss"] for row in history if "loss" in row} == pytest.approx(losses)
    assert run_file.stem == "run-" + (run_dir / "wandb_run_id").read_text().strip()

    png = (run_dir / "loss_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct_unpack_png_size(png)
    assert (width, height) == (600, 350)


def struct_unpack_png_size(png: bytes) -> tuple[int, int]:
    import struct

    return struct.unpack(">II", png[16:24])


def test_loss_curve_plots_training_and_validation_loss(tmp_path):
    from tuneloop.train.tracking import plot_loss_curve

    metrics = tmp_path / "metrics.jsonl"
    assert plot_loss_curve(metrics, tmp_path / "a.png") is None  # no file yet: nothing drawn
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "validation_loss": 1.7}, {"step": 3, "loss": 1.2}]))
    out = plot_loss_curve(metrics, tmp_path / "curve.png")
    assert out.read_bytes().startswith(b"\x89PNG") and not list(tmp_path.glob("*.tmp.png"))


def test_tracking_backend_names_are_checked(tiny_model_dir, tmp_path):
    raw = tiny_recipe(tiny_model_dir, tmp_path)
    raw["tracking"] = {"backend": ["tensorboard", "wandbb"]}
    with pytest.raises(UserError, match=r"tracking\.backend"):
        recipe_from_dict(raw)
