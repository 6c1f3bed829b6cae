"""The server's settings, one typed object built from the ``tuneloop serve`` options."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # every /v1/* call needs "Authorization: Bearer <api_key>"
    db_url: str | None = None  # None: sqlite under $TUNELOOP_HOME/serve.db
    engine: str = "transformers"  # or "vllm"
    max_batch_size: int = 8  # requests per shared forward pass
    batch_wait_ms: float = 5.0  # how long a non-full batch waits for more requests
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request names none
    max_concurrency: int = 64  # generations in flight (running or queued); more get 429
    request_timeout_s: float = 300.0  # a generation still running after this gets 504
    rate_limit_per_minute: int | None = None  # per key (or per address without keys); more get 429
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    # CPU threads for the model (None: torch's default, all cores). On a machine shared with other
    # busy processes, 1 thread is often much faster: multi-threaded ops wait for descheduled peers.
    threads: int | None = None
    registry_poll_s: float = 5.0  # how often a server of registry:NAME@ALIAS checks whether the alias moved
