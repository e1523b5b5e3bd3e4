"""What the multi-view methods share: the targets a scene offers, coarse-to-fine levels with a
cosine learning rate within each level, and the step scale that the loop's recovery lowers.

A levelled method (SDFDiff's lattice, the tet grid) subclasses `LevelledFit` and writes what is its
own: how to enter a level (`_enter_level`: refine the field, make an optimiser, resample the views)
and one update at the current level (`_update`); the schedule, the recovery hook and the common
state are here. Every method is driven by `optim.loop.run_loop`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..scene import Scene


_KIND_NAMES = {"normal": "normal maps", "mask": "masks", "image": "shaded images"}


def scene_targets(scene: Scene, device: torch.device, kinds: Sequence[str] = ("normal", "mask"),
                  mask_from_normals: bool = True, source: str = "scene") -> dict[str, torch.Tensor]:
    """The observations of a scene as float tensors: "normal" (V, H, W, 3) world-space unit normals,
    "mask" (V, H, W) in [0, 1], "image" (V, H, W) grey shading, each when every view has it and it
    is among `kinds`.

    With `mask_from_normals`, a scene with normal maps but no masks gets the normal maps' own
    silhouettes (their background is (0, 0, 0)). InputError naming `source` when none of `kinds` is
    there.
    """
    have = scene.modalities() & set(kinds)
    if not have:
        names = " or ".join(_KIND_NAMES.get(kind, kind) for kind in kinds)
        raise InputError(f"the scene has no {names} in every view: nothing to fit", source)
    targets = {kind: torch.as_tensor(scene.stack(kind), device=device).float() for kind in sorted(have)}
    if mask_from_normals and "mask" in kinds and "mask" not in targets and "normal" in targets:
        targets["mask"] = (targets["normal"].norm(dim=-1) > 0.5).float()
    return targets


def level_starts(iters: int, shares: Sequence[float]) -> list[int]:
    """The first iteration of each level when level i takes shares[i] / sum(shares) of `iters`."""
    weights = np.asarray(shares, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights <= 0).any():
        raise ValueError("level_shares needs one positive share per level")
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])[:-1]
    return [int(round(b * iters)) for b in bounds]


def cosine_factor(progress: float, floor: float) -> float:
    """From 1 at progress 0 down to `floor` at progress 1 along half a cosine."""
    progress = min(1.0, max(0.0, progress))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class LevelledFit:
    """A coarse-to-fine fit: levels by iteration, a learning rate `base_lr` set by each level and
    decayed within it (cosine to `lr_floor`), scaled by `step_scale`.

    Subclasses set `self.level_starts` and call `_enter_level(0, refine=False)` at the end of their
    constructor; they implement `_enter_level(level, refine)` (which sets `self.base_lr` and
    `self.optimizer`) and `_update(iteration) -> {loss: value}`, which may call `_apply(total)`.
    """

    name = ""  # the registry name, stored in the state

    def __init__(self, scene: Scene, iters: int, config: Any, device: str | torch.device, seed: int):
        self.config = config
        self.scene = scene
        self.iters = max(1, iters)
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        self.step_scale = 1.0  # scaled down by the loop when it recovers from a non-finite loss
        self.skipped_steps = 0  # updates skipped for a non-finite gradient
        self.level = -1
        self.level_starts: list[int] = [0]
        self.base_lr = 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self.budget_s: float | None = None  # set_budget: the schedule follows time, not iterations
        self.spent_s = 0.0  # seconds spent in `step`, in all (resumed runs count)

    def _enter_level(self, level: int, refine: bool = True) -> None:
        raise NotImplementedError

    def _update(self, iteration: int) -> dict[str, float]:
        raise NotImplementedError

    def _apply(self, total: torch.Tensor) -> None:
        """Back-propagate `total` and take the optimiser's step, unless a gradient is not finite
        (a degenerate triangle or a zero-length normal can make one NaN while the loss is finite):
        such a step would poison Adam's moments, so it is skipped and counted instead."""
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        gradients = [p.grad for group in self.optimizer.param_groups for p in group["params"]
                     if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in gradients):
            self.optimizer.step()
        else:
            self.skipped_steps += 1

    def set_budget(self, seconds: float | None) -> None:
        """Drive the schedule by time: with a budget, level changes and learning-rate decay happen at
        fractions of `seconds` spent in `step`, not of the iteration count, so a fit given 10 s
        runs every level, shortened, and ends converged rather than cut off mid-schedule."""
        self.budget_s = None if seconds is None else max(1e-3, float(seconds))

    def schedule_position(self, iteration: int) -> float:
        """Where the schedule stands, in iterations of `self.iters`: the iteration itself, or with a
        budget the same fraction of `self.iters` as the fraction of the budget spent."""
        if self.budget_s is None:
            return float(iteration)
        return self.iters * min(1.0, self.spent_s / self.budget_s)

    def step(self, iteration: int) -> dict[str, float]:
        """Move to the schedule position's level, set the learning rate, update."""
        started = time.perf_counter()
        at = self.schedule_position(iteration)
        level = max(i for i, start in enumerate(self.level_starts) if start <= at)
        while self.level < level:
            self._enter_level(self.level + 1)
        self._set_learning_rate(at)
        values = self._update(iteration)
        self.spent_s += time.perf_counter() - started
        return values

    def _set_learning_rate(self, at: float) -> None:
        """Cosine decay from the level's rate to `lr_floor` of it over the level's iterations: Adam
        moves every value by about the rate per step, so the steps that place the surface coarsely
        would keep shaking it at the end of a level."""
        starts = self.level_starts + [self.iters]
        span = max(1, starts[self.level + 1] - starts[self.level])
        factor = cosine_factor((at - starts[self.level]) / span, self.config.lr_floor)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * self.step_scale * factor

    def reschedule(self, iters: int) -> None:
        """Stretch or shrink the schedule (level starts, cosine decay) to `iters` iterations in all,
        keeping each level's share: for a run whose length a time budget decides, once the pace of
        its first steps is known. Levels already entered stay entered."""
        iters = max(1, int(iters))
        self.level_starts = [round(start * iters / self.iters) for start in self.level_starts]
        self.iters = iters

    def reduce_step(self, factor: float) -> None:
        """Scale the learning rate by `factor` from now on (recovery from a non-finite loss)."""
        self.step_scale *= factor

    def common_state(self) -> dict[str, Any]:
        """The state every levelled fit saves: name, settings, frame, level, optimiser, generator."""
        return {"method": self.name, "config": asdict(self.config),
                "to_world": np.asarray(self.scene.to_world).tolist(), "level": self.level,
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "step_scale": self.step_scale, "skipped_steps": self.skipped_steps, "spent_s": self.spent_s}

    def load_common_state(self, state: dict[str, Any]) -> None:
        """Enter the saved level (its field already restored by the subclass), then restore the
        optimiser, generator and step scale."""
        self.level = -1
        self._enter_level(state["level"], refine=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_scale = float(state["step_scale"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.spent_s = float(state.get("spent_s", 0.0))
