"""The closed loop: ``tuneloop improve`` rounds (see :mod:`tuneloop.improve.round`)."""

from tuneloop.improve.round import ImproveSettings, describe, run_round

__all__ = ["ImproveSettings", "describe", "run_round"]
