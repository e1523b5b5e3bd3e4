"""What every single-view network's training shares: the run settings, the task skeleton that
`optim.loop.run_loop` drives, and the run folder.

One job: a network's training module (`train.py` for SoftRas's, `tetnet_train.py` for the tet-SDF
network) writes only what is its own — its settings dataclass (a `TrainingConfig`), how its network is
built, and the losses of one batch (`TrainingTask.batch_losses`) — and hands them to `run_training`.
Shared here:

- the step skeleton: this process's shard of the seeded global batch (`PairSampler`: an object, an
  input view a and a second view b per sample, class-balanced), the learning rate of the step decay
  (`decay_at` iterations or a fraction of the budget, x `decay`), Adam, the loop's step scale;
- validation: voxel IoU of the predicted meshes on the validation split (`evaluate.evaluate_iou`,
  through the network's `predict_meshes`), the best kept (a task that validates otherwise overrides `evaluate`,
  `validation` and `result_metrics`, as the normals network's angular error);
- resume: the checkpoint holds the settings, the network's shape, weights, optimiser, sampler and
  the decay state; a resumed run may change only the run-control settings (`RUN_CONTROL`);
- distribution: DistributedDataParallel over the network when there are several processes (global
  BatchNorm statistics keep their buffers identical); only rank 0 evaluates and writes files;
- the run folder: `checkpoint.pt`, `log.jsonl` (the loop's), `training.svg` (loss and IoU curves,
  after every checkpoint) and `summary.json`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_path, write_json
from ..cameras import Cameras
from ..errors import InputError
from ..optim.distributed import Distributed, join, resolve_device
from ..optim.loop import LOG, Hooks, LoopConfig, read_log, run_loop
from ..report import loss_curves_svg
from .evaluate import evaluate_iou
from .sampling import PairSampler, check_split, object_categories, open_splits, split_cameras, split_images

PLOT = "training.svg"
SUMMARY = "summary.json"

# Settings a resumed run may change; any other difference from the checkpoint's is an error.
RUN_CONTROL = {"iterations", "epochs", "budget_s", "eval_every", "checkpoint_every", "log_every",
               "val_split", "val_objects", "val_views"}


@dataclass
class TrainingConfig:
    """The settings every network's training has (a network's config subclasses it)."""

    batch_size: int = 64               # the global batch, shared by all processes
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    iterations: int = 250_000
    epochs: float | None = None        # instead of iterations: passes of batch_size samples over the objects
    decay_at: int = 150_000            # the learning rate x decay from this iteration on ...
    decay: float = 0.3
    decay_at_budget: float | None = None  # ... or, with budget_s, once this fraction of it has passed
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    eval_every: int | None = None      # iterations between validations; None: once per epoch
    val_objects: int | None = None     # validate on the first N objects; None: all
    val_views: int = 24                # views per validation object, evenly spaced
    checkpoint_every: int = 1000
    log_every: int = 10
    budget_s: float | None = None      # stop after this many wall-clock seconds in all
    dtype: str = "float32"             # "float64" for exact comparisons (tests)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        positive = {"batch_size": self.batch_size, "lr": self.lr, "checkpoint_every": self.checkpoint_every,
                    "log_every": self.log_every, "val_views": self.val_views, "iterations": self.iterations}
        bad = [k for k, v in positive.items() if not v > 0]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be positive")
        if self.decay_at_budget is not None and not 0 <= self.decay_at_budget <= 1:
            raise ValueError("decay_at_budget must be a fraction of the budget, in [0, 1]")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def decay_factor(self, iteration: int, decay_from: int | None = None) -> float:
        """The step decay at a 0-based iteration: `decay` from `decay_at`, or from `decay_from`
        (where `decay_at_budget` started it) when sooner; 1 before."""
        start = self.decay_at if decay_from is None else min(self.decay_at, decay_from)
        return self.decay if iteration >= start else 1.0


@dataclass
class TrainResult:
    """How a run ended: `stopped` is "iterations", "budget" or "diverged"."""

    iterations: int
    seconds: float
    stopped: str
    losses: dict[str, float] = field(default_factory=dict)
    val_iou: float | None = None
    best_val_iou: float | None = None
    resumed_from: int = 0
    world_size: int = 1
    samples_per_s: float = 0.0
    metrics: dict[str, float | None] = field(default_factory=dict)  # a task's other validation values

    def summary(self) -> str:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items())
        start = f" (resumed at {self.resumed_from})" if self.resumed_from else ""
        val = ""
        if self.val_iou is not None:
            best = "none" if self.best_val_iou is None else f"{self.best_val_iou:.4f}"
            val = f"; validation IoU {self.val_iou:.4f} (best {best})"
        val += "".join(f"; {k} {'none' if v is None else f'{v:.4g}'}" for k, v in self.metrics.items())
        return (f"{self.iterations} iterations{start} in {self.seconds:.1f} s on {self.world_size} "
                f"process(es), {self.samples_per_s:.2f} samples/s, stopped by {self.stopped}; "
                f"final losses: {losses or 'none'}{val}")


@dataclass
class Batch:
    """This process's shard of a global batch: per sample an object, its input view a and a second
    view b, their RGBA images (B, 4, S, S) in [0, 1] and cameras, and the learning-rate decay."""

    objects: np.ndarray
    view_a: np.ndarray
    view_b: np.ndarray
    images_a: Tensor
    images_b: Tensor
    cameras_a: Cameras
    cameras_b: Cameras
    decay: float


class TrainingTask:
    """The task `optim.loop.run_loop` drives for a network: one step on this process's shard of the
    global batch, the validation IoU, the budget-triggered decay, and the state to resume from.

    A network's training subclasses it with `batch_losses(batch) -> {"loss": total, ...}` and
    `loss_names` (the values logged, "loss" first) and `plotted` (those drawn in training.svg)."""

    loss_names: tuple[str, ...] = ("loss",)
    plotted: tuple[str, ...] = ("loss",)  # the curves of training.svg
    validation: tuple[str, str] = ("val_iou", "IoU")  # what `evaluate` logs, and its name in training.svg

    def __init__(self, net: nn.Module, train_split: Any, val_split: Any, config: TrainingConfig,
                 dist: Distributed, device: torch.device):
        self.net, self.model = net, net  # model: net or its DDP wrapper (what is called)
        self.train_split, self.val_split = train_split, val_split
        self.config, self.dist, self.device = config, dist, device
        self.optimizer = adam(net.parameters(), config)
        self.sampler = PairSampler(object_categories(train_split), train_split.images.shape[1], config.seed)
        self.val_iou: float | None = None
        self.best_val_iou: float | None = None
        self.decay_from: int | None = None  # the iteration the budget-triggered decay started at
        self.step_scale = 1.0  # scaled down by the loop when it recovers from a non-finite loss

    # ------------------------------------------------------------------ for the subclass
    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop's task
    def wrap(self) -> None:
        """DistributedDataParallel over the network when there are several processes (its buffer
        broadcast is redundant but harmless: global BatchNorm statistics keep the buffers identical)."""
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    @property
    def shard(self) -> slice:
        """This process's contiguous share of the global batch's samples."""
        size, dist = self.config.batch_size, self.dist
        return slice(dist.rank * size // dist.world, (dist.rank + 1) * size // dist.world)

    def next_batch(self, iteration: int) -> Batch:
        """This process's shard of the global batch of `iteration` (every process draws the same)."""
        cfg = self.config
        objects, view_a, view_b = self.sampler.sample(cfg.batch_size)
        shard = self.shard
        objects, view_a, view_b = objects[shard], view_a[shard], view_b[shard]
        split, device, dtype = self.train_split, self.device, cfg.torch_dtype
        images = [split_images(split, objects, views, device, dtype) for views in (view_a, view_b)]
        cameras = [split_cameras(split, views, device, dtype) for views in (view_a, view_b)]
        return Batch(objects, view_a, view_b, *images, *cameras, cfg.decay_factor(iteration, self.decay_from))

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step on this process's shard; this process's losses and the learning rate."""
        batch = self.next_batch(iteration)
        lr = self.config.lr * batch.decay * self.step_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        parts = self.batch_losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        return {**{k: float(parts[k].detach().double()) for k in self.loss_names}, "lr": lr}

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The validation IoU (rank 0), remembered with the best so far."""
        ious = evaluate_iou(self.net, self.val_split, self.config.val_views, self.config.val_objects)
        self.val_iou = float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")
        if math.isfinite(self.val_iou) and (self.best_val_iou is None or self.val_iou > self.best_val_iou):
            self.best_val_iou = self.val_iou
        return {"val_iou": self.val_iou}

    def result_metrics(self) -> dict[str, float | None]:
        """Validation values of the run's summary besides the IoU (a task that validates otherwise)."""
        return {}

    def budget_events(self) -> list[tuple[float, Any]]:
        """(fraction of the budget, callback(iterations done)) pairs the loop calls once that much of
        the budget has passed: the budget-triggered decay (a task may add its own)."""
        decay_at = self.config.decay_at_budget
        return [] if decay_at is None else [(decay_at, self.start_decay)]

    def start_decay(self, iterations_done: int) -> None:
        """The budget-triggered decay: from the next step on."""
        self.decay_from = iterations_done

    def reduce_step(self, factor: float) -> None:
        """Scale the learning rate by `factor` from now on (recovery from a non-finite loss)."""
        self.step_scale *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "network": type(self.net).__name__, "net": asdict(self.net.config),
                "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
                "val_iou": self.val_iou, "best_val_iou": self.best_val_iou, "decay_from": self.decay_from,
                "step_scale": self.step_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; InputError when it was trained with other settings than the
        run-control ones (`RUN_CONTROL`)."""
        saved = type(self.config)(**state["config"])
        changed = [f.name for f in fields(self.config)
                   if f.name not in RUN_CONTROL and getattr(saved, f.name) != getattr(self.config, f.name)]
        if changed:
            raise InputError(f"cannot resume with different settings {changed}; only {sorted(RUN_CONTROL)} "
                             "may change")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.val_iou, self.best_val_iou = state["val_iou"], state["best_val_iou"]
        self.decay_from, self.step_scale = state["decay_from"], float(state["step_scale"])


def check_render_size(split: Any, render_size: int | None) -> None:
    """InputError (naming the dataset) unless `render_size` (the loss renders' pixels per side; None:
    the images') divides the split's images."""
    size = split.images.shape[2]
    if render_size is not None and (size % render_size or render_size > size):
        raise InputError(f"render_size={render_size} does not divide the dataset's {size}-pixel images",
                         getattr(split, "root", None))


def encoder_from_normals_run(encoder: nn.Module, run: str | None) -> None:
    """Start a pix2pix encoder from a normals run's generator (its first levels); nothing without `run`.
    InputError naming the run when it does not fit."""
    if run is None:
        return
    from .encoders import load_pix2pix_trunk
    from .pix2pix import NormalsNet
    from .predict import load_model

    try:
        load_pix2pix_trunk(encoder, load_model(run, network=NormalsNet).downs)
    except ValueError as error:
        raise InputError(str(error), run) from None


def total_iterations(config: TrainingConfig, num_objects: int) -> tuple[int, int]:
    """(iterations, iterations per epoch) where an epoch is num_objects samples."""
    per_epoch = max(1, math.ceil(num_objects / config.batch_size))
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * per_epoch)), per_epoch
    return config.iterations, per_epoch


# ---------------------------------------------------------------------------------------- the run
def adam(parameters: Any, config: TrainingConfig) -> torch.optim.Adam:
    """The networks' optimiser: Adam with the config's rate and betas, fused (one kernel over all
    parameters, much faster on the CPU than the per-tensor loop over the encoders' large linear
    layers)."""
    return torch.optim.Adam(parameters, lr=config.lr, betas=config.betas, fused=True)


def run_training(make_task: Any, dataset: Any, run_dir: str | Path, config: TrainingConfig, name: str,
                 device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
                 progress: bool = True, threads: int | None = None, desc: str = "training",
                 normals: bool = False, open_fn: Any = None, check_fn: Any = None) -> TrainResult:
    """Train a network through the shared loop and write the run folder.

    Args:
        make_task: (train split, val split or None, config, dist, device) -> a `TrainingTask`,
            its network already on the device in the config's dtype.
        dataset: a dataset folder (splits `config.train_split` / `config.val_split`) or a split object
            (images (N, V, S, S, 4) uint8, voxels, cameras: V Cameras, categories, len()).
        run_dir: the run folder (created).
        name: the network's registry name, stored in the checkpoint.
        device: torch device (default CUDA when available); cuda:LOCAL_RANK under torchrun.
        val: the validation split object when `dataset` is an object (None: no validation).
        resume: continue from run_dir/checkpoint.pt when it exists.
        threads: torch CPU threads of this process while training (restored afterwards).
        normals: the splits must hold normal maps (read from a folder with them).
        open_fn, check_fn: how a dataset of another format is opened, (dataset, train split name, val
            split name or None, val) -> (train, val), and checked, (split, name) -> None (raising
            InputError); default: the ring datasets' (`sampling.open_splits`, `sampling.check_split`).
    Returns:
        TrainResult (rank 0's view; every process returns one).
    Raises:
        DivergedError: a loss stayed non-finite; the last good checkpoint is kept.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    dist = join(device)
    try:
        if open_fn is None:
            train_split, val_split = open_splits(dataset, config.train_split, config.val_split, val, normals=normals)
        else:
            train_split, val_split = open_fn(dataset, config.train_split, config.val_split, val)
        (check_fn or check_split)(train_split, config.train_split)
        if config.batch_size % dist.world:
            raise ValueError(f"batch size {config.batch_size} is not divisible by {dist.world} processes")
        torch.manual_seed(config.seed)
        task = make_task(train_split, val_split, config, dist, device)
        return _run(task, Path(run_dir), config, dist, name, resume, progress, desc, len(train_split))
    finally:
        dist.close()
        torch.set_num_threads(previous_threads)


def _run(task: TrainingTask, run_dir: Path, config: TrainingConfig, dist: Distributed, name: str, resume: bool,
         progress: bool, desc: str, num_objects: int) -> TrainResult:
    iterations, per_epoch = total_iterations(config, num_objects)
    plot = functools.partial(write_plot, names=task.plotted, validation=task.validation)
    loop = LoopConfig(iters=iterations, budget_s=config.budget_s, checkpoint_every=config.checkpoint_every,
                      log_every=config.log_every, progress=progress, desc=desc)
    hooks = Hooks(evaluate=task.evaluate if task.val_split is not None else None,
                  evaluate_every=config.eval_every or per_epoch, after_checkpoint=plot,
                  budget_events=task.budget_events())
    task.wrap()  # a resumed run's weights are loaded into the wrapped network's own parameters
    result = run_loop(task, run_dir, loop, resume=resume, hooks=hooks, dist=dist, name=name)
    done = result.iterations - result.resumed_from
    summary = TrainResult(result.iterations, result.seconds, result.stopped, result.losses, task.val_iou,
                          task.best_val_iou, result.resumed_from, dist.world,
                          config.batch_size * done / max(result.seconds, 1e-9) if done else 0.0,
                          task.result_metrics())
    if dist.main:
        plot(run_dir)
        write_json(run_dir / SUMMARY, {**asdict(summary), "summary": summary.summary()})
    return summary


# ---------------------------------------------------------------------------------------- logs
def training_svg(log: list[dict[str, float]], names: tuple[str, ...] = ("loss",),
                 validation: tuple[str, str] = ("val_iou", "IoU")) -> str:
    """Two stacked SVG charts: the training losses `names` and the validation value (its log key,
    its label) against the iteration."""
    key, label = validation
    losses = [{k: row[k] for k in ("iter", *names) if k in row} for row in log if "loss" in row]
    values = [{"iter": row["iter"], key: row[key]} for row in log if key in row]
    top = loss_curves_svg(losses)
    bottom = loss_curves_svg(values).replace(">loss (log scale)<", f">{label} (log scale)<").replace(">loss<", f">{label}<")
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="720" height="800" viewBox="0 0 720 800">'
            f'<g>{top}</g><g transform="translate(0 400)">{bottom}</g></svg>\n')


def write_plot(run_dir: Path, names: tuple[str, ...] = ("loss",),
               validation: tuple[str, str] = ("val_iou", "IoU")) -> None:
    """training.svg from the run's log (atomically)."""
    path = run_dir / LOG
    if path.is_file():
        with atomic_path(run_dir / PLOT) as tmp:
            tmp.write_text(training_svg(read_log(path), names, validation))
