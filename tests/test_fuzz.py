"""Fuzzing, CI-sized: every parser a user's file reaches gets a few hundred generated inputs and must
return or raise a UserError, never crash (``benchmarks/fuzz.py`` runs the same targets for longer).
Crashes found so far are pinned as regression inputs below."""

from __future__ import annotations

import shutil

import pytest
from fuzz_targets import TARGETS, check, workdir
from hypothesis import HealthCheck, given, settings

EXAMPLES = {"chat_template": 25, "ingest_parquet": 25}  # the slower ones; others get DEFAULT_EXAMPLES
DEFAULT_EXAMPLES = 60


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# The CI-sized run is derandomized so that make test is repeatable; benchmarks/fuzz.py explores with
# fresh seeds.


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_fuzz_target_never_crashes(target, tokenizer):
    directory = workdir()

    @settings(max_examples=EXAMPLES.get(target.name, DEFAULT_EXAMPLES), deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(target.strategy)
    def run(value):
        check(target, value, directory, tokenizer)

    try:
        run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
