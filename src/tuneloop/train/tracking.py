"""Where a run's numbers go: ``metrics.jsonl`` and ``loss_curve.png`` in the run directory, and the
tracking backends the recipe names (``tracking.backend``: one name or a list).

* ``mlflow`` (default): a local file store under the run directory (``runs/<name>/mlruns``; view with
  ``mlflow ui --backend-store-uri runs/<name>/mlruns``), or ``tracking.uri`` for a shared server.
* ``tensorboard``: event files in ``runs/<name>/tensorboard``.
* ``wandb``: Weights & Biases, offline unless ``WANDB_MODE=online`` (``runs/<name>/wandb``).
* ``none``: only the files in the run directory.

Each backend's library is imported only when that backend is used.
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
    """Params, metrics and artifacts to every backend the recipe names, behind one small interface.

    ``tracking.backend`` is one name or a list: ``mlflow``, ``tensorboard``, ``wandb`` or ``none``.
    Whatever the backends, :meth:`close` also draws the run's loss curve into ``loss_curve.png``.
    """

    def __init__(self, config, run_dir: Path, run_name: str, resume: bool = False):
        self.run_dir = Path(run_dir)
        names = [config.backend] if isinstance(config.backend, str) else list(config.backend)
        self.backends = [BACKENDS[name](config, self.run_dir, run_name, resume)
                         for name in dict.fromkeys(names) if name != "none"]
        self.mlflow = next((b.mlflow for b in self.backends if isinstance(b, MlflowBackend)), None)

    def log_params(self, params: dict) -> None:
        flat = _flatten(params)
        for backend in self.backends:
            backend.log_params(flat)

    def log_metrics(self, metrics: dict, step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for backend in self.backends:
            backend.log_metrics(numbers, step)

    def log_artifacts(self, paths: list[Path]) -> None:
        files = [Path(p) for p in paths if Path(p).is_file()]
        for backend in self.backends:
            backend.log_artifacts(files)

    def close(self, status: str = "FINISHED") -> None:
        plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")
        for backend in self.backends:
            backend.close(status)
        self.backends = []
        self.mlflow = None


def _missing(package: str, backend: str) -> UserError:
    return UserError(f"tracking.backend {backend} needs the {package} package",
                     hint=f"pip install 'tuneloop[tracking]' (or {package}), or set tracking.backend: none")


class MlflowBackend:
    """A local file store under the run directory by default; ``tracking.uri`` for a server."""

    def __init__(self, config, run_dir: Path, run_name: str, resume: bool):
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
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

    def log_params(self, flat: dict) -> None:
        flat = {k: str(v)[:500] for k, v in flat.items()}
        existing = self.run.data.params if hasattr(self.run, "data") else {}
        self.mlflow.log_params({k: v for k, v in flat.items() if k not in existing})

    def log_metrics(self, numbers: dict, step: int) -> None:
        self.mlflow.log_metrics(numbers, step=step)

    def log_artifacts(self, files: list[Path]) -> None:
        for path in files:
            self.mlflow.log_artifact(str(path))

    def close(self, status: str) -> None:
        self.mlflow.end_run(status=status)


class TensorBoardBackend:
    """Event files under ``runs/<name>/tensorboard`` (view: ``tensorboard --logdir runs``)."""

    def __init__(self, config, run_dir: Path, run_name: str, resume: bool):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_params(self, flat: dict) -> None:
        table = "\n".join(f"| {k} | {str(v)[:200]} |" for k, v in flat.items())
        self.writer.add_text("params", "| key | value |\n|---|---|\n" + table)

    def log_metrics(self, numbers: dict, step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_artifacts(self, files: list[Path]) -> None:
        pass  # TensorBoard has no artifact store; the files stay in the run directory

    def close(self, status: str) -> None:
        self.writer.close()


class WandbBackend:
    """Weights & Biases, offline by default (``runs/<name>/wandb``; ``wandb sync`` uploads it later).

    ``WANDB_MODE=online`` (with a login) logs live. ``--resume`` continues the same W&B run.
    """

    def __init__(self, config, run_dir: Path, run_name: str, resume: bool):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        marker = run_dir / "wandb_run_id"
        run_id = marker.read_text().strip() if resume and marker.is_file() else None
        self.run = wandb.init(project=config.experiment or "tuneloop", name=run_name, dir=str(run_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"), id=run_id,
                              resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(
                                  # metrics.jsonl is the record; no console capture, system stats,
                                  # git or code snapshot: they cost seconds per run on a small CPU
                                  console="off", x_disable_stats=True, x_disable_meta=True,
                                  disable_git=True, save_code=False, silent=True, x_save_requirements=False))
        marker.write_text(self.run.id)

    def log_params(self, flat: dict) -> None:
        self.run.config.update({k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                                for k, v in flat.items()}, allow_val_change=True)

    def log_metrics(self, numbers: dict, step: int) -> None:
        self.run.log(numbers, step=step)

    def log_artifacts(self, files: list[Path]) -> None:
        for path in files:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


BACKENDS = {"mlflow": MlflowBackend, "tensorboard": TensorBoardBackend, "wandb": WandbBackend}


def plot_loss_curve(metrics_path: Path, out: Path) -> Path | None:
    """``loss`` (and ``validation_loss``) against step as a PNG; None when nothing was logged."""
    if not metrics_path.is_file():
        return None
    rows = [r for r in read_jsonl(metrics_path) if isinstance(r, dict) and "step" in r]
    series = {key: [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
              for key in ("loss", "validation_loss")}
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


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
