"""The CLI run in-process through its entry point, as a user's shell would see it: the exit code,
stdout and stderr (its one-line errors included)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from latentwatch.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    argv = sys.argv
    sys.argv = ["latentwatch", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err
