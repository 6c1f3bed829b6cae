"""A version's lineage, read from its run directory, and what differs between two versions.

Recipe: the run's ``recipe.resolved.yaml``. Base model: ``tuneloop_base.json`` (adapter runs) or the
recipe's ``model``. Data manifest hash: the sha256 of the training data file's content (the same file
``data prepare`` lists in its ``manifest.json``), so two versions trained on the same data match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tuneloop.registry.store import ModelVersion


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_recipe(run_dir: Path) -> dict | None:
    import yaml

    path = run_dir / "recipe.resolved.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def base_model_of(run_dir: Path, recipe: dict | None) -> str | None:
    meta = run_dir / "tuneloop_base.json"
    if meta.is_file():
        return json.loads(meta.read_text(encoding="utf-8")).get("base_model")
    return (recipe or {}).get("model") or (str(run_dir) if (run_dir / "config.json").is_file() else None)


def version_from_run(name: str, run_dir: Path, *, train_data: str | None = None,
                     regression_data: str | None = None, parent_version: int | None = None,
                     eval_results: dict | None = None, source: str | None = None,
                     created_by: str | None = None) -> ModelVersion:
    """A :class:`ModelVersion` (number not yet assigned) for a run directory or model directory.

    That ``run_dir`` holds a model is the caller's to check (``resolve_model``, which sits above the
    registry: it resolves ``registry:`` references through it).
    """
    run_dir = Path(run_dir).resolve()
    recipe = read_recipe(run_dir)
    if train_data is None and recipe:
        train_data = (recipe.get("data") or {}).get("train")
    train_data = str(Path(train_data).resolve()) if train_data else None
    return ModelVersion(
        name=name, version=0, path=str(run_dir), base_model=base_model_of(run_dir, recipe),
        parent_version=parent_version, recipe=recipe,
        data_manifest_hash=file_sha256(train_data) if train_data and Path(train_data).is_file() else None,
        train_data=train_data,
        regression_data=str(Path(regression_data).resolve()) if regression_data else None,
        eval=eval_results, source=source, created_by=created_by)


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_versions(a: ModelVersion, b: ModelVersion) -> list[tuple[str, object, object]]:
    """(field, value in a, value in b) for every lineage field, recipe key or eval figure that differs."""
    fields = ("path", "base_model", "parent_version", "data_manifest_hash", "train_data", "regression_data",
              "source", "created_by")
    rows = [(f, getattr(a, f), getattr(b, f)) for f in fields if getattr(a, f) != getattr(b, f)]
    for section in ("recipe", "eval"):
        left, right = _flatten(getattr(a, section) or {}), _flatten(getattr(b, section) or {})
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                rows.append((f"{section}.{key}", left.get(key), right.get(key)))
    return rows
