"""The optimisation loop every multi-view method shares, written once.

A method is an object that owns its field, renderer, losses and schedule and exposes one
optimisation `step(iteration) -> {loss name: value}` plus `state_dict()` / `load_state_dict()`.
This loop runs the steps and owns everything else: a progress bar with the current losses, a
wall-clock budget as well as an iteration count, periodic atomic checkpoints and resuming from
them (deterministic: the random states are saved too), a JSON-lines log of the losses, a stop with
a clear message when a loss turns non-finite (the last good checkpoint is kept), and a summary.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_path

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class Method(Protocol):
    """What the loop needs of a method."""

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step; returns the losses (plain floats) to log and show."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: parameters, optimiser, schedule, generators."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@dataclass
class LoopConfig:
    """When to stop, checkpoint and log."""

    iters: int = 2000                 # stop after this many iterations in all (resumed runs count)
    budget_s: float | None = None     # ... or after this many seconds of optimisation in all
    checkpoint_every: int = 500       # iterations between checkpoints (and one at the end)
    checkpoint_every_s: float = 120.0  # ... or seconds, whichever comes first
    log_every: int = 10               # iterations between log lines
    progress: bool = True


@dataclass
class LoopResult:
    """How a run ended: `stopped` is "iterations", "budget" or "diverged"."""

    iterations: int
    seconds: float
    stopped: str
    losses: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0

    def summary(self) -> str:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items())
        start = f" (resumed at {self.resumed_from})" if self.resumed_from else ""
        return (f"{self.iterations} iterations{start} in {self.seconds:.1f} s, stopped by {self.stopped}; "
                f"final losses: {losses or 'none'}")


class DivergedError(RuntimeError):
    """A loss became NaN or infinite; the message names the iteration and the kept checkpoint."""


def run_loop(method: Method, out_dir: str | Path, config: LoopConfig, resume: bool = False) -> LoopResult:
    """Optimise `method` until `config.iters` or `config.budget_s`, checkpointing into `out_dir`.

    With `resume`, continues from `out_dir/checkpoint.pt` (parameters, optimiser and random states,
    iteration, elapsed time) so that an interrupted run ends where an uninterrupted one would; the
    log keeps only the lines up to the checkpoint. A KeyboardInterrupt saves a checkpoint first.

    Raises:
        DivergedError: a loss is not finite; the last good checkpoint is left in place.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_iter, elapsed = 0, 0.0
    if resume and (out_dir / CHECKPOINT).is_file():
        start_iter, elapsed = _load_checkpoint(method, out_dir)
    truncate_log(out_dir / LOG, start_iter)
    state = _RunState(iteration=start_iter, elapsed=elapsed)
    bar = tqdm(total=config.iters, initial=start_iter, desc="fitting", unit="it", disable=not config.progress,
               dynamic_ncols=True)
    try:
        stopped = _iterate(method, out_dir, config, state, bar)
    except KeyboardInterrupt:
        _save_checkpoint(method, out_dir, state, config)
        raise
    finally:
        bar.close()
    if stopped != "diverged":
        _save_checkpoint(method, out_dir, state, config)
    result = LoopResult(state.iteration, state.elapsed, stopped, state.losses, start_iter)
    if stopped == "diverged":
        raise DivergedError(f"the fit diverged at iteration {state.iteration + 1} "
                            f"({_format(state.bad_losses)}); the last good checkpoint "
                            f"{out_dir / CHECKPOINT} is kept")
    return result


@dataclass
class _RunState:
    iteration: int
    elapsed: float
    losses: dict[str, float] = field(default_factory=dict)
    bad_losses: dict[str, float] = field(default_factory=dict)
    last_checkpoint: tuple[int, float] = (0, 0.0)


def _iterate(method: Method, out_dir: Path, config: LoopConfig, state: _RunState, bar: tqdm) -> str:
    state.last_checkpoint = (state.iteration, state.elapsed)
    with (out_dir / LOG).open("a") as log:
        while True:
            if state.iteration >= config.iters:
                return "iterations"
            if config.budget_s is not None and state.elapsed >= config.budget_s:
                return "budget"
            t0 = time.perf_counter()
            losses = {k: float(v) for k, v in method.step(state.iteration).items()}
            state.elapsed += time.perf_counter() - t0
            if not all(math.isfinite(v) for v in losses.values()):
                state.bad_losses = losses
                return "diverged"
            state.iteration += 1
            state.losses = losses
            if state.iteration % config.log_every == 0 or state.iteration == config.iters:
                log.write(json.dumps({"iter": state.iteration, "time": round(state.elapsed, 4), **losses}) + "\n")
                log.flush()
                bar.set_postfix_str(_format(losses), refresh=False)
            bar.update(1)
            since_iter, since_time = state.last_checkpoint
            if (state.iteration - since_iter >= config.checkpoint_every
                    or state.elapsed - since_time >= config.checkpoint_every_s):
                _save_checkpoint(method, out_dir, state, config)
                state.last_checkpoint = (state.iteration, state.elapsed)


def _format(losses: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in losses.items())


def _save_checkpoint(method: Method, out_dir: Path, state: _RunState, config: LoopConfig) -> None:
    payload = {"iteration": state.iteration, "elapsed": state.elapsed, "losses": state.losses,
               "config": asdict(config), "method": method.state_dict(), "rng": _rng_state()}
    with atomic_path(out_dir / CHECKPOINT) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(method: Method, out_dir: Path) -> tuple[int, float]:
    payload = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    method.load_state_dict(payload["method"])
    _set_rng_state(payload["rng"])
    return int(payload["iteration"]), float(payload["elapsed"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (iteration, elapsed, losses, config, method state, random states)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def truncate_log(path: Path, iteration: int) -> None:
    """Keep the log lines up to `iteration` (all of them are rewritten by a resumed run after it)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["iter"] <= iteration]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The log lines of a run as dicts (iter, time, losses)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
