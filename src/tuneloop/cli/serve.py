"""``tuneloop serve``: an OpenAI-compatible server for a base model and its LoRA adapters.

Example: ``tuneloop serve --model smollm2-135m-instruct --model support=runs/support-bot --port 8000``
then point any OpenAI client at ``http://127.0.0.1:8000/v1``. Heavy imports happen inside the command.
"""

from __future__ import annotations

import click


@click.command()
@click.option("--model", "models", multiple=True, required=True, metavar="[NAME=]M",
              help="Base model (first) and adapters, each served as its own model id (NAME, or the "
                   "model's own name). M: catalog name, hub id, local dir, .gguf, run dir, or "
                   "registry:NAME@ALIAS (followed as the alias moves). A sequence classifier directory "
                   "is served on /v1/classify.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="TUNELOOP_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1/* (also from TUNELOOP_API_KEY); this key has "
                   "every scope. Keys made with `tuneloop keys add` work too.")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy URL of the request/feedback store [default: sqlite under TUNELOOP_HOME].")
@click.option("--engine", type=click.Choice(["transformers", "vllm"]), default="transformers",
              show_default=True, help="vllm needs CUDA and the vllm package.")
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests per shared forward pass.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a batch that is not full waits for more requests.")
@click.option("--max-tokens-limit", default=1024, show_default=True, type=click.IntRange(1),
              help="Largest max_tokens a request may ask for (more: 400).")
@click.option("--max-concurrency", default=64, show_default=True, type=click.IntRange(1),
              help="Generations in flight; more get 429.")
@click.option("--request-timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a generation may take (more: 504).")
@click.option("--rate-limit", "rate_limit", type=click.IntRange(1), default=None, metavar="N",
              help="Requests per minute per API key (per client address without keys); more get 429 "
                   "with Retry-After. A stored key's own limit wins [default: no limit].")
@click.option("--max-body-bytes", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="Largest request body (more: 413).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for the model [default: all cores]; 1 is often faster on a busy shared machine.")
@click.option("--registry-poll", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between checks of a registry:NAME@ALIAS model's alias (it follows promotions).")
def serve(models, host, port, api_key, db_url, engine, max_batch_size, batch_wait_ms, max_tokens_limit,
          max_concurrency, request_timeout, rate_limit, max_body_bytes, threads, registry_poll):
    """OpenAI-compatible server: /v1/models, /v1/chat/completions, /v1/completions, /v1/feedback,
    /metrics, /health. A classifier (`tuneloop export` of a `tuneloop auto` classifier run, or the
    run itself) given as --model NAME=DIR answers POST /v1/classify. Every request and feedback is
    stored (see `tuneloop monitor`)."""
    from tuneloop.serve.access import active_principals
    from tuneloop.serve.app import build
    from tuneloop.serve.runner import bind_socket, run_foreground
    from tuneloop.serve.settings import ServeSettings

    settings = ServeSettings(host=host, port=port, api_key=api_key or None, db_url=db_url, engine=engine,
                             max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                             max_tokens_limit=max_tokens_limit,
                             default_max_tokens=min(256, max_tokens_limit), max_concurrency=max_concurrency,
                             request_timeout_s=request_timeout, max_body_bytes=max_body_bytes, threads=threads,
                             rate_limit_per_minute=rate_limit, registry_poll_s=registry_poll)
    sock = bind_socket(host, port)  # before loading weights: a busy port fails in a second
    served = build(list(models), settings)
    shown_host = f"[{host}]" if ":" in host else host
    ids = ", ".join(served.model_ids)
    stored = len(active_principals(served.store.engine))
    auth = " + ".join(([] if not api_key else ["--api-key"]) + ([] if not stored else [f"{stored} stored keys"]))
    click.echo(f"serving {ids} at http://{shown_host}:{sock.getsockname()[1]}/v1"
               f" (store: {served.store.url}; auth: {auth or 'none'})", err=True)
    try:
        run_foreground(served.app, sock)
    finally:
        served.close()
