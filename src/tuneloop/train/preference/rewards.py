"""Ready-made GRPO reward functions: name one in a recipe as ``tuneloop.train.preference.rewards:NAME``.

A reward function takes the prompts (the last user message of each) and the sampled completions,
and returns one number per completion; higher is better. Write your own with the same signature in
any file and name it ``path/to/file.py:function``.
"""

from __future__ import annotations

import re


def concise(prompts: list[str], completions: list[str]) -> list[float]:
    """1 for an answer of up to 20 words, falling smoothly towards 0 as it gets longer."""
    return [1.0 / (1.0 + max(0, len(c.split()) - 20) / 20) for c in completions]


def short(prompts: list[str], completions: list[str]) -> list[float]:
    """Minus the answer's length in characters / 100: the shorter the better, without a floor."""
    return [-len(c) / 100 for c in completions]


def no_filler(prompts: list[str], completions: list[str]) -> list[float]:
    """Minus the number of stock filler phrases ("thank you for reaching out", "I hope", ...)."""
    filler = re.compile(r"thank you (so much )?for|i hope|please do not hesitate|let me|happy to help",
                        re.IGNORECASE)
    return [-float(len(filler.findall(c))) for c in completions]
