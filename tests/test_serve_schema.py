"""Schemathesis against the server's own OpenAPI spec, on a tiny model over loopback: generated valid
and invalid requests for every operation; every response must match the spec (status documented,
content type, body schema) and none may be a 5xx. Bounded: 15 generated cases per operation and mode, plus
pinned feedback cases; the 200 answers of feedback, of one model and of /v1/classify (a random-head
classifier served beside the tiny model) are reached with real ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)
from serve_support import make_classifier_dir  # noqa: E402

from tuneloop.serve.app import build  # noqa: E402
from tuneloop.serve.runner import ServerThread  # noqa: E402
from tuneloop.serve.settings import ServeSettings  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CASES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    settings_ = ServeSettings(db_url=f"sqlite:///{tmp_path_factory.mktemp('schema') / 'serve.db'}",
                              max_tokens_limit=16, default_max_tokens=8, request_timeout_s=30)
    classifier = make_classifier_dir(tiny_model_dir, tmp_path_factory.mktemp("schema-cls") / "cls",
                                     ("alpha", "beta", "gamma"))
    served = build([str(tiny_model_dir), f"cls={classifier}"], settings_)
    with ServerThread(served.app) as thread:
        yield thread, served
    served.close()



def test_every_response_matches_the_spec_and_none_is_a_5xx(server):
    thread, served = server
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models", "/v1/chat/completions", "/v1/completions",
                                              "/v1/feedback", "/v1/classify", "/health"}
    counter: list[tuple[str, int]] = []  # (path, status) of every case sent
    failures: list[str] = []
    known = _known_ids(thread.url)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # requests that fit the spec, and not
            _run_cases(operation, mode, thread.url, failures, counter, known)
    _run_pinned_cases(schema, thread.url, failures, counter, known)
    cases = len(counter)
    print(f"schemathesis: {cases} cases over {len(operations)} operations, {len(failures)} failures")
    if os.environ.get("TUNELOOP_RESULTS_DIR"):  # benchmarks/reliability_table.py reads this
        Path(os.environ["TUNELOOP_RESULTS_DIR"], "schemathesis.json").write_text(json.dumps(
            {"cases": cases, "operations": len(operations), "failures": len(failures),
             "schemathesis": schemathesis.__version__ if hasattr(schemathesis, "__version__") else None}) + "\n")
    assert cases >= len(operations) * 5
    assert not failures, "\n".join(failures[:10])
    answered = {path for path, status in counter if status == 200}
    assert {"/v1/models/{model_id}", "/v1/feedback", "/v1/classify"} <= answered


def _known_ids(base_url: str) -> dict:
    """A real model id and the ids of a one-answer and a two-answer completion: generated ids are
    never found, so without these the 200 answers of feedback and of one model would go unchecked."""
    import httpx

    model = httpx.get(f"{base_url}/v1/models", timeout=60).json()["data"][0]["id"]  # the generative base
    ids = []
    for n in (1, 2):
        answer = httpx.post(f"{base_url}/v1/chat/completions", timeout=120, json={
            "model": model, "n": n, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    return {"model": model, "completions": ids, "classifier": "cls"}


def _with_known_ids(case, known: dict, pick: int) -> None:
    """In positive cases, half the time ask about what exists (pick: 1-4 of a drawn integer)."""
    if pick % 2:
        return
    if case.path == "/v1/models/{model_id}":
        case.path_parameters = {"model_id": known["model"]}
    elif case.path == "/v1/feedback" and isinstance(case.body, dict):
        case.body["completion_id"] = known["completions"][pick // 2 % 2]
    elif case.path == "/v1/classify" and isinstance(case.body, dict):
        case.body["model"] = known["classifier"]


# Feedback whose answer carries no thumbs (a 3 of 5, or only the preferred choice): rare among generated
# bodies, and once answered with "rating": null where the spec allowed only -1 or 1.
PINNED_FEEDBACK = [{"score": 3}, {"choice": 1, "completion": 1}, {"correction": "Paris."}, {"rating": -1, "score": 2}]


def _run_pinned_cases(schema, base_url: str, failures: list, counter: list, known: dict) -> None:
    operation = schema["/v1/feedback"]["POST"]
    for pinned in PINNED_FEEDBACK:
        body = {k: v for k, v in pinned.items() if k != "completion"}
        body["completion_id"] = known["completions"][pinned.get("completion", 0)]
        _check(operation.Case(body=body, media_type="application/json"), base_url, "pinned", failures, counter)


def _check(case, base_url: str, label: str, failures: list, counter: list) -> None:
    response = case.call(base_url=base_url, timeout=60)
    counter.append((case.path, response.status_code))
    try:
        case.validate_response(response, checks=CHECKS)
    except Exception as e:  # schemathesis raises a group of failures; collect every mismatch, so one run reports them all
        failures.append(f"{label} {case.method} {case.path} {case.body!r:.200} -> "
                        f"{response.status_code}: {str(e)[:400]}")


def _run_cases(operation, mode, base_url: str, failures: list, counter: list, known: dict) -> None:
    @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 3))
    def run(case, pick):
        if mode == GenerationMode.POSITIVE:
            _with_known_ids(case, known, pick)
        _check(case, base_url, mode.value, failures, counter)

    try:
        run()
    except Unsatisfiable:
        # An operation with no parameters and no body (GET /v1/models) has no invalid request to send.
        if mode != GenerationMode.NEGATIVE:
            raise
