"""Command-line interface. ``main.py`` is the entry point; each command group lives in its own module."""
