"""Serving: an OpenAI-compatible HTTP server for one base model and its LoRA adapters.

``app`` (routes, errors, limits), ``engine`` (dynamic batching on CPU with transformers),
``decoding`` (the per-token step loop, sampling and stop strings), ``adapters`` (which model ids are
served), ``store`` (every request and feedback, through SQLAlchemy), ``metrics`` (Prometheus).
Run it with ``tuneloop serve --model M``.
"""
