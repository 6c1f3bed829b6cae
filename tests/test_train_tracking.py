"""MLflow tracking: a local store in the run directory by default, with params, metrics and artifacts."""

from __future__ import annotations

import pytest

from fixtures_train.helpers import tiny_recipe
from tuneloop.config.recipe import recipe_from_dict
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
