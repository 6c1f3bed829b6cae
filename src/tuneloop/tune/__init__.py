"""Automated fine-tuning: ``tuneloop tune`` (Optuna search over a recipe) and ``tuneloop auto``.

``space`` turns a recipe's ``search:`` section into trials, ``study`` runs trials as one worker of a
shared SQL study (pruning on validation loss, memory-aware skips), ``launch`` runs a whole study
(K worker processes, progress, report), ``report`` writes the best recipe and the HTML report.
"""
