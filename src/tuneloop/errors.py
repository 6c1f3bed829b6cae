"""Errors a user can cause. They carry where the problem is and how to fix it.

The CLI catches :class:`UserError` once, prints its message and exits with code 1 (no traceback).
Inner code raises it with a location such as ``recipe.yaml: train.learning_rate`` or
``data.jsonl:12: messages[1].role``.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with where it is and how to fix it."""

    def __init__(self, message: str, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def did_you_mean(word: str, choices) -> str | None:
    """The closest of ``choices`` to a mistyped ``word``, or None when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None
