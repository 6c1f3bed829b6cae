"""Where a run's numbers go: ``metrics.jsonl`` in the run directory, and MLflow when enabled.

MLflow is imported only when used. By default it writes a local file store under the run directory
(``runs/<name>/mlruns``; view with ``mlflow ui --backend-store-uri runs/<name>/mlruns``); set
``tracking.uri`` for a shared server, or ``tracking.backend: none`` to turn it off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.paths import read_jsonl, write_jsonl_atomic


class MetricsLog:
    """Append-only ``metrics.jsonl``; one JSON object per logged step, flushed as it is written."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            # Steps logged after the checkpoint we resume from are redone: drop them.
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            write_jsonl_atomic(self.path, kept)
        elif self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Tracker:
    """MLflow run (params, metrics, artifacts) or nothing, behind one small interface."""

    def __init__(self, config, run_dir: Path, run_name: str, resume: bool = False):
        self.mlflow = None
        if config.backend == "none":
            return
        try:
            import mlflow
        except ImportError:
            raise UserError("tracking.backend mlflow needs the mlflow package",
                            hint="pip install 'tuneloop[tracking]', or set tracking.backend: none") from None
        uri = config.uri
        if uri is None:
            # mlflow 3 keeps file stores in maintenance mode; a local file store needs no server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(config.experiment or "tuneloop")
        run_id = _previous_run_id(run_dir) if resume else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        (run_dir / "mlflow_run_id").write_text(self.run.info.run_id)
        self.mlflow = mlflow

    def log_params(self, params: dict) -> None:
        if self.mlflow:
            flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
            existing = self.run.data.params if hasattr(self.run, "data") else {}
            self.mlflow.log_params({k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.mlflow:
            numbers = {k: float(v) for k, v in metrics.items()
                       if isinstance(v, (int, float)) and k != "step"}
            self.mlflow.log_metrics(numbers, step=step)

    def log_artifacts(self, paths: list[Path]) -> None:
        if self.mlflow:
            for path in paths:
                if path.is_file():
                    self.mlflow.log_artifact(str(path))

    def close(self, status: str = "FINISHED") -> None:
        if self.mlflow:
            self.mlflow.end_run(status=status)
            self.mlflow = None


def _previous_run_id(run_dir: Path) -> str | None:
    marker = run_dir / "mlflow_run_id"
    return marker.read_text().strip() if marker.is_file() else None


def _flatten(obj: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
