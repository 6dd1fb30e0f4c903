"""The CLI's answer to bad input, checked one way: exit 2, one line on stderr, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from brims_rl.cli import main


def refused(args: list[str], run_dir: Path, capsys: pytest.CaptureFixture) -> str:
    """Run `brims-rl ARGS`; assert it is refused with one clear line and no `run_dir`; return that line."""
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not run_dir.exists()
    return err.strip()
