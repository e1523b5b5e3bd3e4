"""The one optimisation loop: every multi-view fit and every network's training runs through it.

A task (a fit method, a network's training) owns its parameters, renderer, losses and schedule and
exposes one optimisation `step(iteration) -> {name: value}` plus `state_dict()` /
`load_state_dict()`. The loop runs the steps and owns everything else:

- when to stop: an iteration count and a **budget**, the wall-clock seconds the loop itself has run
  (steps, evaluations, logging and checkpoints; not the set-up before it or the extraction and
  report after it), summed over resumed runs and checked after every step, so a run always takes at
  least one step;
- a progress bar with the current values, a JSON-lines log (`log.jsonl`) and a summary;
- atomic checkpoints every N iterations or S seconds, on Ctrl-C and at the end, and an exact resume
  from them (parameters, optimiser, schedule and random states: an interrupted run ends bit for bit
  where an uninterrupted one ends; the log is cut back to the checkpoint);
- hooks at named points (`Hooks`): a periodic evaluation whose values are logged, a call after each
  checkpoint, and events once a fraction of the budget has passed;
- data-parallel runs (`optim.distributed`): the values are averaged over the processes and rank 0
  decides everything that depends on a clock; only rank 0 evaluates and writes files;
- recovery from a non-finite value: back to the last good state (the last checkpoint, or the start)
  with the step size scaled by `recovery_factor` (`task.reduce_step`), logged as an event, at most
  `max_recoveries` times; then a `DivergedError` that names the iteration and the kept checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_path
from ..errors import InputError
from .distributed import Distributed

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
FORMAT = "zerolevel-checkpoint"
VERSION = 2


class Task(Protocol):
    """What the loop needs of a fit method or a network's training."""

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step (0-based iteration); returns the values (plain floats) to log and show."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: parameters, optimiser, schedule, generators."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@dataclass
class LoopConfig:
    """When to stop, checkpoint, log and recover."""

    iters: int | None = 2000          # stop after this many iterations in all (resumed runs count; None:
                                      # no limit, only the budget)
    budget_s: float | None = None     # ... or once the loop has run this many seconds in all
    checkpoint_every: int = 500       # iterations between checkpoints (and one at the end)
    checkpoint_every_s: float = 120.0  # ... or seconds, whichever comes first
    log_every: int = 10               # iterations between log lines
    max_recoveries: int = 3           # non-finite values survived (back to the last good state) ...
    recovery_factor: float = 0.5      # ... each time with the step size scaled by this
    progress: bool = True
    desc: str = "fitting"             # the progress bar's label


@dataclass
class Hooks:
    """Calls at named points of the loop (sdfstudio's callbacks, three of them)."""

    evaluate: Callable[[int], dict[str, float]] | None = None  # rank 0, after every `evaluate_every`-th
    evaluate_every: int = 0                                    # iteration and the last; values logged
    after_checkpoint: Callable[[Path], None] | None = None     # rank 0, after each checkpoint is written
    budget_events: Sequence[tuple[float, Callable[[int], None]]] = ()  # (fraction, call): every process,
    # once, after the step at which that fraction of the budget has passed (rank 0's clock); called with
    # the number of iterations done. The loop remembers which fired, across resume and recovery.


@dataclass
class LoopResult:
    """How a run ended: `stopped` is "iterations" or "budget"."""

    iterations: int
    seconds: float
    stopped: str
    losses: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    recoveries: int = 0

    def summary(self) -> str:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items())
        start = f" (resumed at {self.resumed_from})" if self.resumed_from else ""
        recovered = f", {self.recoveries} recoveries from non-finite values" if self.recoveries else ""
        return (f"{self.iterations} iterations{start} in {self.seconds:.1f} s, stopped by {self.stopped}"
                f"{recovered}; final losses: {losses or 'none'}")


class DivergedError(RuntimeError):
    """A value stayed non-finite after every recovery; the message names the iteration and the kept
    checkpoint."""


@dataclass
class _State:
    """The loop's own counters, saved in every checkpoint."""

    iteration: int = 0
    elapsed: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    fired: list[float] = field(default_factory=list)  # budget events already called
    recoveries: int = 0


@dataclass
class _Run:
    task: Task
    out_dir: Path
    config: LoopConfig
    hooks: Hooks
    dist: Distributed
    name: str
    state: _State = field(default_factory=_State)
    snapshot: bytes = b""                        # the last good state, serialised
    last_checkpoint: tuple[int, float] = (0, 0.0)
    bad: dict[str, float] = field(default_factory=dict)


def run_loop(task: Task, out_dir: str | Path, config: LoopConfig, resume: bool = False,
             hooks: Hooks | None = None, dist: Distributed | None = None, name: str = "") -> LoopResult:
    """Optimise `task` until `config.iters` or `config.budget_s`, checkpointing into `out_dir`.

    Args:
        task: the fit method or training (`Task`); with a `reduce_step(factor)` method it can be
            recovered from non-finite values.
        out_dir: the run folder: `checkpoint.pt`, `log.jsonl` (created).
        config: stops, intervals, recovery.
        resume: continue from `out_dir/checkpoint.pt` when it exists.
        hooks: evaluation, after-checkpoint and budget-event calls.
        dist: this process's place in a process group (default: a group of one).
        name: the task's registry name, stored in the checkpoint.
    Returns:
        LoopResult (the same on every process).
    Raises:
        DivergedError: a value stayed non-finite; the last good checkpoint is left in place.
        InputError: the checkpoint to resume from is unreadable, foreign or another run's (`name`).
    """
    run = _Run(task, Path(out_dir), config, hooks or Hooks(), dist or Distributed(), name)
    path = run.out_dir / CHECKPOINT
    if resume and path.is_file():
        payload = load_checkpoint(path)
        if name and payload.get("name") and payload["name"] != name:
            raise InputError(f"a checkpoint of a {payload['name']} run, not of a {name} one: resume it with "
                             "its own command, or write to another folder", path)
        try:
            _restore(run, payload)
        except InputError as error:  # e.g. the task refuses other settings: name the checkpoint
            raise error if error.path is not None else InputError(str(error), path) from None
    start_iter = run.state.iteration
    if run.dist.main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(run.out_dir / LOG, start_iter)
    run.snapshot = _serialise(_payload(run))
    run.last_checkpoint = (run.state.iteration, run.state.elapsed)
    if config.iters is None and config.budget_s is None:
        raise ValueError("a loop needs an iteration count or a budget")
    # a run without an iteration count shows its budget's seconds
    bar = tqdm(total=config.iters if config.iters is not None else round(config.budget_s, 1),
               initial=start_iter if config.iters is not None else round(run.state.elapsed, 1),
               desc=config.desc, unit="it" if config.iters is not None else "s",
               disable=not (config.progress and run.dist.main), dynamic_ncols=True,
               bar_format=None if config.iters is not None else
               "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{postfix}]")
    try:
        stopped = _iterate(run, bar)
    except KeyboardInterrupt:
        _save_checkpoint(run)
        raise
    finally:
        bar.close()
    s = run.state
    if stopped == "diverged":
        raise DivergedError(f"the run diverged at iteration {s.iteration + 1} ({_format(run.bad)})"
                            + (f" after {s.recoveries} recoveries" if s.recoveries else "")
                            + f"; the last good checkpoint {path} is kept")
    _save_checkpoint(run)
    return LoopResult(s.iteration, s.elapsed, stopped, s.losses, start_iter, s.recoveries)


def _iterate(run: _Run, bar: tqdm) -> str:
    """Step until the iteration count, the budget or an unrecoverable non-finite value; why it stopped."""
    config, hooks, s = run.config, run.hooks, run.state
    start = time.perf_counter() - s.elapsed
    if s.iteration > 0 and config.budget_s is not None and s.elapsed >= config.budget_s:
        return "budget"  # a resumed run whose budget is spent
    while config.iters is None or s.iteration < config.iters:
        values = run.task.step(s.iteration)
        s.elapsed = time.perf_counter() - start
        names = list(values)
        pending = [(f, call) for f, call in hooks.budget_events if f not in s.fired]
        flags = [config.budget_s is not None and s.elapsed >= config.budget_s,
                 s.elapsed - run.last_checkpoint[1] >= config.checkpoint_every_s]
        flags += [config.budget_s is not None and s.elapsed >= f * config.budget_s for f, _ in pending]
        means, agreed = run.dist.agree([float(values[k]) for k in names], flags)
        losses = dict(zip(names, means))
        if not all(math.isfinite(v) for v in losses.values()):
            if not _recover(run, losses):
                return "diverged"
            s = run.state  # the restored counters
            bar.n = s.iteration if config.iters is not None else min(s.elapsed, bar.total)
            continue
        out_of_time, checkpoint_time = agreed[0], agreed[1]
        s.iteration += 1
        s.losses = losses
        for (fraction, call), now in zip(pending, agreed[2:]):
            if now:
                call(s.iteration)
                s.fired.append(fraction)
        last = s.iteration == config.iters or out_of_time
        if s.iteration % config.log_every == 0 or last:
            _log(run, {"iter": s.iteration, "time": round(s.elapsed, 4), **losses})
            bar.set_postfix_str(_format(losses), refresh=False)
        bar.update(1 if config.iters is not None else min(s.elapsed, bar.total) - bar.n)
        if hooks.evaluate is not None and hooks.evaluate_every > 0 and (
                s.iteration % hooks.evaluate_every == 0 or last):
            if run.dist.main:
                _log(run, {"iter": s.iteration, "time": round(s.elapsed, 4), **hooks.evaluate(s.iteration)})
            s.elapsed = time.perf_counter() - start
        if not last and (checkpoint_time or s.iteration - run.last_checkpoint[0] >= config.checkpoint_every):
            _save_checkpoint(run)
        if out_of_time:
            return "budget"
    return "iterations"


def _recover(run: _Run, bad: dict[str, float]) -> bool:
    """Back to the last good state with a smaller step; False when that is not possible (any more)."""
    run.bad = bad
    reduce = getattr(run.task, "reduce_step", None)
    s = run.state
    if reduce is None or s.recoveries >= run.config.max_recoveries:
        return False
    elapsed, recoveries, failed_at = s.elapsed, s.recoveries + 1, s.iteration + 1
    _restore(run, torch.load(io.BytesIO(run.snapshot), map_location="cpu", weights_only=False))
    s = run.state
    s.elapsed, s.recoveries = elapsed, recoveries  # time spent is spent; recoveries count up
    reduce(run.config.recovery_factor)
    _save_checkpoint(run)  # the restored state with the smaller step is the new last good state
    if run.dist.main:
        truncate_log(run.out_dir / LOG, s.iteration)
        _log(run, {"iter": s.iteration, "time": round(s.elapsed, 4), "event": "recovery",
                   "failed_at": failed_at, "values": _format(bad), "step_scale": run.config.recovery_factor})
        tqdm.write(f"non-finite values at iteration {failed_at} ({_format(bad)}): back to iteration "
                   f"{s.iteration} with the step size x{run.config.recovery_factor} "
                   f"(recovery {recoveries} of {run.config.max_recoveries})")
    return True


def _log(run: _Run, row: dict[str, Any]) -> None:
    if run.dist.main:
        with (run.out_dir / LOG).open("a") as log:
            log.write(json.dumps(row) + "\n")


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in values.items())


# ------------------------------------------------------------------------------------------ checkpoints
def _payload(run: _Run) -> dict[str, Any]:
    s = run.state
    return {"format": FORMAT, "version": VERSION, "name": run.name, "iteration": s.iteration,
            "elapsed": s.elapsed, "losses": s.losses, "fired": list(s.fired), "recoveries": s.recoveries,
            "loop": asdict(run.config), "state": run.task.state_dict(), "rng": _rng_state()}


def _serialise(payload: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _save_checkpoint(run: _Run) -> None:
    """Write the checkpoint atomically (rank 0) and keep it as the last good state (every process)."""
    data = _serialise(_payload(run))
    run.snapshot = data
    run.last_checkpoint = (run.state.iteration, run.state.elapsed)
    if not run.dist.main:
        return
    with atomic_path(run.out_dir / CHECKPOINT) as tmp:
        tmp.write_bytes(data)
    if run.hooks.after_checkpoint is not None:
        run.hooks.after_checkpoint(run.out_dir)


def _restore(run: _Run, payload: dict[str, Any]) -> None:
    run.task.load_state_dict(payload["state"])
    _set_rng_state(payload["rng"])
    run.state = _State(int(payload["iteration"]), float(payload["elapsed"]), dict(payload["losses"]),
                       list(payload.get("fired", [])), int(payload.get("recoveries", 0)))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a run folder or checkpoint file: name, iteration, elapsed, losses,
    loop settings, the task's `state` and the random states.

    Raises:
        InputError: no such file, unreadable, or not a zerolevel checkpoint of this version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise InputError("no such checkpoint", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read the checkpoint ({type(error).__name__})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a zerolevel checkpoint", path)
    if payload.get("version") != VERSION:
        raise InputError(f"a checkpoint of format version {payload.get('version')}; this zerolevel "
                         f"reads version {VERSION}", path)
    return payload


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ------------------------------------------------------------------------------------------ the log
def truncate_log(path: Path, iteration: int) -> None:
    """Keep the log lines up to `iteration` (a resumed run rewrites the ones after it)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["iter"] <= iteration]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The log lines of a run as dicts: {iter, time, values...}, evaluations, and recovery events
    (lines with an "event" key)."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
