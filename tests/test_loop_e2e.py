"""The closed loop end to end on the embedded SmolLM2-135M, with simulated users over HTTP.

The served model (``serve --model registry:brightcart@production``) is asked about Brightcart; each
answer is rated against the store's fact table, which now says the return window is 60 days (it
was 45); wrong answers get the support team's correction. One ``improve`` round trains a candidate
on the corrections plus replay, the gate compares it with production on held-out corrections and
on the unchanged facts, the alias moves, and the server follows it while a client keeps sending
requests. Slow (the embedded model trains and is evaluated twice, ~6 min on 2 cores): marked ``slow``
and ``long``, so ``make test-long`` runs it and ``make test`` does not.
"""

from __future__ import annotations

import pytest

from tuneloop.models.loading import resolve_model
from tuneloop.quickstart.loop_act import run_loop_act


@pytest.mark.slow
@pytest.mark.long  # ~6 min: `make test-long`
def test_after_a_round_the_served_model_answers_the_changed_policy(tmp_path):
    summary = run_loop_act(tmp_path / "loop", str(resolve_model("smollm2-135m-instruct").path))
    round_ = summary["round"]
    assert round_["status"] == "promoted", round_["gate"]
    gain, regression = round_["gate"]["checks"][:2]
    assert gain["passed"] and gain["ci95"][0] > 0
    assert regression["check"] == "no regression" and regression["passed"]  # unchanged facts within the margin
    assert summary["answers_new_fact_before"] == 0 and summary["answers_new_fact_after"] >= 1, summary["after"]
    assert summary["satisfaction_after"] > summary["satisfaction_before"]
    outcomes = summary["requests_during_switch"]
    assert set(outcomes) == {"ok"} and outcomes["ok"] >= 1, outcomes  # no 5xx, nothing dropped
