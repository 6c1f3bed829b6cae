"""The package layering holds (import-linter, contracts in pyproject.toml) and every training method
the recipe schema accepts has exactly one trainer in the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.is_file(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_every_recipe_method_has_one_registered_trainer():
    from tuneloop.config.recipe import PREFERENCE_METHODS, SFT_METHODS, Method
    from tuneloop.train.registry import TRAINERS

    assert tuple(TRAINERS) == typing.get_args(Method) == SFT_METHODS + PREFERENCE_METHODS
    for name, (train, report) in TRAINERS.items():
        assert callable(train) and callable(report), name
