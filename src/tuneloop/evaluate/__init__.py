"""Evaluation: task metrics, base-vs-tuned comparison with bootstrap CIs and release gates, slices, report.

``run_eval`` (``tuneloop eval``) is the entry point; ``validation_loss`` is the streaming loss helper
training calls. Submodules: metrics (pure scores), classification (label by likelihood, or answer ->
label), generation (text overlap), perplexity, inference (running a model), compare (bootstrap,
CI-decided gates), judge (LLM-as-judge), harness (lm-evaluation-harness tasks), slices, report.
"""

from __future__ import annotations

from tuneloop.evaluate.perplexity import validation_loss
from tuneloop.evaluate.run import run_eval

__all__ = ["run_eval", "validation_loss"]
