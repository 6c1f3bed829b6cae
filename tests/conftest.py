"""Shared fixtures: a tiny random model with the real tokenizer, and paths to shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BANKING77 = SHARED / "data" / "banking77" / "train.csv"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tuneloop.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def banking77_csv() -> Path:
    if not BANKING77.is_file():
        pytest.skip(f"Banking77 not found at {BANKING77} (CI has ../shared beside the checkout)")
    return BANKING77
