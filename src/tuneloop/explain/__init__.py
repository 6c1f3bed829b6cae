"""Explain and audit: token attributions, bias probes, group fairness.

Submodules: attribution (Captum LLM attribution on a chat prompt), explanations (``tuneloop
explain``: items from prompts or eval predictions, base and tuned side by side), render (the offline
HTML pages), counterfactual (word lists and swapped test sets), bias (change rate, per-group quality,
bootstrap CIs), fairness (fairlearn's demographic parity and equalized odds differences), audit
(``tuneloop audit`` with its gate). Model cards are export's (:mod:`tuneloop.export.model_card`): every
export writes one, reading the ``audit.json`` written here.
Nothing here imports torch at module level.
"""
