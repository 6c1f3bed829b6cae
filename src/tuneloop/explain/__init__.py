"""Explain and audit: token attributions, bias probes, group fairness, model cards.

Submodules: attribution (Captum LLM attribution on a chat prompt), explanations (``tuneloop
explain``: items from prompts or eval predictions, base and tuned side by side), render (the offline
HTML pages), counterfactual (word lists and swapped test sets), bias (change rate, per-group quality,
bootstrap CIs), fairness (fairlearn's demographic parity and equalized odds differences), audit
(``tuneloop audit`` with its gate), model_card (the Hugging Face README.md that every export carries).
Nothing here imports torch at module level.
"""
