"""Preference optimisation and RLHF: ``method: dpo | orpo | kto | reward | grpo`` in a recipe.

Layout (one module per method, all with the same shape: a docstring with its recipe keys, the
method's loss, and a ``METHOD`` record at the bottom):

* ``dpo.py``, ``orpo.py``, ``kto.py``: offline learning from preference pairs;
* ``reward.py``: a scalar reward model (Bradley-Terry) on the causal LM's trunk;
* ``grpo.py``: online RL, rewards from a reward run or a Python function named in the recipe.

Shared library: ``data.py`` (records -> token ids through the one chat-template module),
``losses.py`` (pure loss functions), ``pairs.py`` (scoring pairs), ``engine.py`` (model, session and
the step every method runs inside the run shell, :mod:`tuneloop.train.shell`).

Each method is registered in :mod:`tuneloop.train.registry`; train through
:func:`tuneloop.train.run_training`.
"""
