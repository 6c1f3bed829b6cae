"""Helpers for tests that run ``tuneloop`` commands in-process (``main(argv)``) and read what they print."""

from __future__ import annotations

from tuneloop.cli.main import main


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``tuneloop ARGV`` in this process: (exit code, stdout, stderr); a bare return is exit code 0."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err
