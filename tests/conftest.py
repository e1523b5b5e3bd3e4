"""Shared test set-up: import the package from src/ even when it is not installed, and find shared data."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared test helpers (hashgrid_checks, softras_reference)


def assert_one_line_error(err: str, name: str) -> None:
    """The CLI's bad-input contract: one line on stderr, naming `name`, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and name in lines[0], lines[0]
    assert "Traceback" not in err


def run_state(run) -> dict:
    """A training run's checkpoint as tests read it: the task's state (config, net, model, ...) with
    the loop's iteration."""
    from zerolevel.optim.loop import load_checkpoint

    payload = load_checkpoint(run)
    return {**payload["state"], "iteration": payload["iteration"]}
