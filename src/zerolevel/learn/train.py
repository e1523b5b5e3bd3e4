"""Training of the single-view mesh network (Soft Rasterizer's examples/recon/train.py), on one
process or many.

One job: `train(dataset, run_dir, config)` optimises a `SoftRasNet` on a dataset split and writes
the run folder; `predict` turns one RGBA image into a mesh with a trained network.

A step (SoftRas): every sample of the global batch is an object with two different random ring
views a and b (objects drawn class-balanced: a category, then one of its objects). The plain
variant encodes view a and renders the predicted mesh from view b's camera with `soft_silhouette`;
SoftRas's published "cross-render" variant (the default) encodes both views and renders each of the
two meshes from both cameras, the loss averaging the four. loss = L_s + 5e-3 Laplacian + 5e-4
flatten (`losses.py`), Adam(lr 1e-4, betas (0.9, 0.999)); after 150k iterations the learning rate and
the renderer's sigma are multiplied by 0.3, as in SoftRas.

Cost on 2 CPU cores: a cross-render step encodes twice the images and renders four times the
silhouettes of a plain one; `benchmarks/results/singleview.md` gives the step time and the
renderer's share per encoder, `renderers.md` the soft rasteriser's time for a training batch.
SoftRas's recon `dist_eps` 1e-10 reaches pixels up to 1.54 px from a triangle (the renderer's
default 1e-4: 0.97 px), so it pairs more pixels with each triangle.

The loop is the one every fit and network shares (`optim.loop`: budget, checkpoints, exact resume,
recovery from non-finite losses, distributed reduction); this module is the task it runs. The run
folder: `checkpoint.pt` (model, optimiser, sampler and random states, iteration; written atomically,
so `resume=True` continues exactly where an uninterrupted run would be),
`log.jsonl` (losses every `log_every` iterations, validation IoU lines), `training.svg` (loss and
IoU curves) and `summary.json`. Validation: the predicted mesh (closed: template topology) of a
validation view is voxelised on the dataset's 32^3 grid over [-0.5, 0.5]^3 as the objects were
(`zerolevel.geometry.occupancy.solid_voxels`) and compared with the object's voxels.

Distributed: launched with `torchrun` (`optim.distributed`) or inside an initialised process
group, the same function runs
DistributedDataParallel (gloo on CPU, NCCL on CUDA). Every process draws the same global batch from
the same seeded sampler and takes its contiguous shard of batch_size / world samples; BatchNorm
statistics are global (`encoders.GlobalBatchNorm2d`) and DDP averages the gradients, so the weights
follow the single-process run on the same global batch (up to float rounding). Only rank 0 evaluates
and writes files.

    torchrun --nproc_per_node 2 -m zerolevel train softras DATASET -o RUN --batch-size 64
"""

from __future__ import annotations

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
from ..render.softras import soft_silhouette
from ..report import loss_curves_svg
from .encoders import ENCODERS
from .evaluate import evaluate_iou
from ..losses import flatten_loss, laplacian_loss, silhouette_loss
from .sampling import PairSampler, check_split, object_categories, open_splits, split_cameras, split_images
from .softras_net import SoftRasNet

PLOT = "training.svg"
SUMMARY = "summary.json"


@dataclass
class TrainConfig:
    """Training settings; defaults are SoftRas's examples/recon/train.py unless noted."""

    encoder: str = "baseline"          # the seed's baseline; "resnet" / "attention" are its variants
    batch_size: int = 64               # BATCH_SIZE = 64 (the global batch, shared by all processes)
    lr: float = 1e-4                   # LEARNING_RATE = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # torch.optim.Adam's defaults, which SoftRas uses
    iterations: int = 250_000          # NUM_ITERATIONS = 250000
    epochs: float | None = None        # instead of iterations: passes of batch_size samples over the objects
    decay_at: int = 150_000            # adjust_learning_rate / adjust_sigma: x decay from 150k on
    decay: float = 0.3                 # ... decay = 0.3 (learning rate and sigma)
    sigma: float = 1e-4                # SIGMA_VAL = 1e-4 (NDC^2)
    dist_eps: float = 1e-10            # models.py SoftRenderer(dist_eps=1e-10); ~1.8x the pairs of the
                                       # renderer's default 1e-4 (see the module docstring)
    lambda_laplacian: float = 5e-3     # LAMBDA_LAPLACIAN = 5e-3
    lambda_flatten: float = 5e-4       # LAMBDA_FLATTEN = 5e-4
    cross_render: bool = True          # models.py predict_multiview: both views in, 4 renders
    seed: int = 0                      # RANDOM_SEED = 0
    train_split: str = "train"         # (zerolevel) dataset split names
    val_split: str | None = "val"
    eval_every: int | None = None      # (zerolevel) iterations between validations; None: once per epoch
    val_objects: int | None = None     # (zerolevel) validate on the first N objects; None: all
    val_views: int = 24                # test.py: every one of the 24 views, evenly spaced when fewer
    checkpoint_every: int = 1000       # SAVE_FREQ = 10000; more often here (CPU runs are slow)
    log_every: int = 10                # PRINT_FREQ = 100
    budget_s: float | None = None      # (zerolevel) stop after this many wall-clock seconds in all
    decay_at_budget: float | None = None  # (zerolevel) with budget_s: decay once this fraction of it
                                       # has passed (or at decay_at, if sooner); the iteration is kept
                                       # in the checkpoint, so a resumed run decays where it did
    dtype: str = "float32"             # (zerolevel) "float64" for exact comparisons (tests)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        positive = {"batch_size": self.batch_size, "lr": self.lr, "sigma": self.sigma,
                    "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
                    "val_views": self.val_views, "iterations": self.iterations}
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


# Settings a resumed run may change; any other difference from the checkpoint's is an error.
_RUN_CONTROL = {"iterations", "epochs", "budget_s", "eval_every", "checkpoint_every", "log_every",
                "val_split", "val_objects", "val_views"}


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

    def summary(self) -> str:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in self.losses.items())
        start = f" (resumed at {self.resumed_from})" if self.resumed_from else ""
        val = ""
        if self.val_iou is not None:
            best = "none" if self.best_val_iou is None else f"{self.best_val_iou:.4f}"
            val = f"; validation IoU {self.val_iou:.4f} (best {best})"
        return (f"{self.iterations} iterations{start} in {self.seconds:.1f} s on {self.world_size} "
                f"process(es), {self.samples_per_s:.2f} samples/s, stopped by {self.stopped}; "
                f"final losses: {losses or 'none'}{val}")


# ---------------------------------------------------------------------------------------- step
def batch_losses(model: nn.Module, net: SoftRasNet, images_a: Tensor, images_b: Tensor,
                 cameras_a: Cameras, cameras_b: Cameras, config: TrainConfig,
                 sigma: float | None = None) -> dict[str, Tensor]:
    """The training losses of one (shard of a) batch.

    Args:
        model: `net` itself or its DistributedDataParallel wrapper (what is called).
        images_a, images_b: (B, 4, S, S) RGBA in [0, 1] of views a (input) and b (reference).
        cameras_a, cameras_b: B cameras of those views.
        sigma: the renderer's sharpness (default config.sigma).
    Returns:
        dict of scalars: loss (the total), silhouette, laplacian, flatten.
    """
    sigma = config.sigma if sigma is None else sigma
    alpha_a, alpha_b = images_a[:, 3], images_b[:, 3]
    if config.cross_render:  # [Ma, Mb] seen from [a, a, b, b] as [Ma, Mb, Ma, Mb]
        vertices = model(torch.cat([images_a, images_b]))
        meshes = torch.cat([vertices, vertices])
        cameras = Cameras.cat([cameras_a, cameras_a, cameras_b, cameras_b])
        reference = torch.cat([alpha_a, alpha_a, alpha_b, alpha_b])
    else:
        vertices = model(images_a)
        meshes, cameras, reference = vertices, cameras_b, alpha_b
    rendered = soft_silhouette(meshes, net.faces, cameras, sigma=sigma, dist_eps=config.dist_eps)
    parts = {"silhouette": silhouette_loss(rendered, reference),
             "laplacian": laplacian_loss(vertices, net.template.edges),
             "flatten": flatten_loss(vertices, net.template.wings)}
    parts["loss"] = (parts["silhouette"] + config.lambda_laplacian * parts["laplacian"]
                     + config.lambda_flatten * parts["flatten"])
    return parts


def _schedule(config: TrainConfig, iteration: int, decay_from: int | None = None) -> tuple[float, float]:
    """(learning rate, sigma) at a 0-based iteration: SoftRas's step decay, from `decay_at` or from
    `decay_from` (where `decay_at_budget` started it), whichever is sooner."""
    start = config.decay_at if decay_from is None else min(config.decay_at, decay_from)
    factor = config.decay if iteration >= start else 1.0
    return config.lr * factor, config.sigma * factor


# ---------------------------------------------------------------------------------------- the task
class SoftRasTraining:
    """The task `optim.loop.run_loop` drives: one step on this process's shard of the global batch,
    the validation IoU, the budget-triggered decay, and the state to resume from."""

    def __init__(self, net: SoftRasNet, train_split: Any, val_split: Any, config: TrainConfig,
                 dist: Distributed, device: torch.device):
        self.net, self.model = net, net  # model: net or its DDP wrapper (what is called)
        self.train_split, self.val_split = train_split, val_split
        self.config, self.dist, self.device = config, dist, device
        self.optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
        self.sampler = PairSampler(object_categories(train_split), train_split.images.shape[1], config.seed)
        self.val_iou: float | None = None
        self.best_val_iou: float | None = None
        self.decay_from: int | None = None  # the iteration the budget-triggered decay started at
        self.step_scale = 1.0  # scaled down by the loop when it recovers from a non-finite loss

    def wrap(self) -> None:
        """DistributedDataParallel over the network when there are several processes (its buffer
        broadcast is redundant but harmless: global BatchNorm statistics keep the buffers identical)."""
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step on this process's shard; this process's losses and the learning rate."""
        cfg, dist = self.config, self.dist
        objects, view_a, view_b = self.sampler.sample(cfg.batch_size)
        shard = slice(dist.rank * cfg.batch_size // dist.world, (dist.rank + 1) * cfg.batch_size // dist.world)
        objects, view_a, view_b = objects[shard], view_a[shard], view_b[shard]
        lr, sigma = _schedule(cfg, iteration, self.decay_from)
        lr *= self.step_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        split, device, dtype = self.train_split, self.device, cfg.torch_dtype
        images = [split_images(split, objects, views, device, dtype) for views in (view_a, view_b)]
        cameras = [split_cameras(split, views, device, dtype) for views in (view_a, view_b)]
        parts = batch_losses(self.model, self.net, *images, *cameras, cfg, sigma)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        return {**{k: float(parts[k].detach().double()) for k in _LOSS_NAMES}, "lr": lr}

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The validation IoU (rank 0), remembered with the best so far."""
        ious = evaluate_iou(self.net, self.val_split, self.config.val_views, self.config.val_objects)
        self.val_iou = float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")
        if math.isfinite(self.val_iou) and (self.best_val_iou is None or self.val_iou > self.best_val_iou):
            self.best_val_iou = self.val_iou
        return {"val_iou": self.val_iou}

    def start_decay(self, iterations_done: int) -> None:
        """The budget-triggered decay: from the next step on."""
        self.decay_from = iterations_done

    def reduce_step(self, factor: float) -> None:
        """Scale the learning rate by `factor` from now on (recovery from a non-finite loss)."""
        self.step_scale *= factor

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "net": asdict(self.net.config), "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
                "val_iou": self.val_iou, "best_val_iou": self.best_val_iou, "decay_from": self.decay_from,
                "step_scale": self.step_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint; InputError when it was trained with other settings than the
        run-control ones (`_RUN_CONTROL`)."""
        saved = TrainConfig(**state["config"])
        changed = [f.name for f in fields(TrainConfig)
                   if f.name not in _RUN_CONTROL and getattr(saved, f.name) != getattr(self.config, f.name)]
        if changed:
            raise InputError(f"cannot resume with different settings {changed}; only {sorted(_RUN_CONTROL)} "
                             "may change")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.val_iou, self.best_val_iou = state["val_iou"], state["best_val_iou"]
        self.decay_from, self.step_scale = state["decay_from"], float(state["step_scale"])


_LOSS_NAMES = ("loss", "silhouette", "laplacian", "flatten")


def _total_iterations(config: TrainConfig, num_objects: int) -> tuple[int, int]:
    """(iterations, iterations per epoch) where an epoch is num_objects samples."""
    per_epoch = max(1, math.ceil(num_objects / config.batch_size))
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * per_epoch)), per_epoch
    return config.iterations, per_epoch


# ---------------------------------------------------------------------------------------- training
def train(dataset: str | Path | Any, run_dir: str | Path, config: TrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train a SoftRasNet; see the module docstring for the step, the files and distribution.

    Args:
        dataset: a dataset folder (splits `config.train_split` / `config.val_split` are read with
            `zerolevel.learn.dataset.folder.load_split`) or a split object (images (N, V, S, S, 4) uint8,
            voxels (N, n, n, n) bool, cameras: V Cameras, categories, len()).
        run_dir: the run folder (created).
        config: TrainConfig (default SoftRas's settings).
        device: torch device (default CUDA when available); cuda:LOCAL_RANK under torchrun.
        val: the validation split object when `dataset` is an object (None: no validation).
        resume: continue from run_dir/checkpoint.pt when it exists.
        progress: show a tqdm bar (rank 0).
        threads: torch CPU threads of this process while training (restored afterwards).
    Returns:
        TrainResult (rank 0's view; every process returns one).
    Raises:
        DivergedError: a loss stayed non-finite; the last good checkpoint is kept.
    """
    config = config or TrainConfig()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    dist = join(device)
    try:
        return _train(dataset, Path(run_dir), config, device, dist, val, resume, progress)
    finally:
        dist.close()
        torch.set_num_threads(previous_threads)


def _train(dataset: Any, run_dir: Path, config: TrainConfig, device: torch.device, dist: Distributed, val: Any,
           resume: bool, progress: bool) -> TrainResult:
    train_split, val_split = open_splits(dataset, config.train_split, config.val_split, val)
    check_split(train_split, config.train_split)
    if config.batch_size % dist.world:
        raise ValueError(f"batch size {config.batch_size} is not divisible by {dist.world} processes")
    torch.manual_seed(config.seed)
    net = SoftRasNet(config.encoder, image_size=train_split.images.shape[2]).to(device, config.torch_dtype)
    task = SoftRasTraining(net, train_split, val_split, config, dist, device)
    iterations, per_epoch = _total_iterations(config, len(train_split))
    loop = LoopConfig(iters=iterations, budget_s=config.budget_s, checkpoint_every=config.checkpoint_every,
                      log_every=config.log_every, progress=progress, desc=f"training {config.encoder}")
    hooks = Hooks(evaluate=task.evaluate if val_split is not None else None,
                  evaluate_every=config.eval_every or per_epoch, after_checkpoint=_write_plot,
                  budget_events=[] if config.decay_at_budget is None else [(config.decay_at_budget, task.start_decay)])
    task.wrap()  # a resumed run's weights are loaded into the wrapped network's own parameters
    result = run_loop(task, run_dir, loop, resume=resume, hooks=hooks, dist=dist, name="softras")
    done = result.iterations - result.resumed_from
    summary = TrainResult(result.iterations, result.seconds, result.stopped, result.losses, task.val_iou,
                          task.best_val_iou, result.resumed_from, dist.world,
                          config.batch_size * done / max(result.seconds, 1e-9) if done else 0.0)
    if dist.main:
        _write_plot(run_dir)
        write_json(run_dir / SUMMARY, {**asdict(summary), "summary": summary.summary()})
    return summary


# ---------------------------------------------------------------------------------------- logs
def training_svg(log: list[dict[str, float]]) -> str:
    """Two stacked SVG charts: the training losses and the validation IoU against the iteration."""
    losses = [{k: row[k] for k in ("iter", "loss", "silhouette") if k in row} for row in log if "loss" in row]
    ious = [{"iter": row["iter"], "val_iou": row["val_iou"]} for row in log if "val_iou" in row]
    top = loss_curves_svg(losses)
    bottom = loss_curves_svg(ious).replace(">loss (log scale)<", ">IoU (log scale)<").replace(">loss<", ">IoU<")
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="720" height="800" viewBox="0 0 720 800">'
            f'<g>{top}</g><g transform="translate(0 400)">{bottom}</g></svg>\n')


def _write_plot(run_dir: Path) -> None:
    path = run_dir / LOG
    if path.is_file():
        with atomic_path(run_dir / PLOT) as tmp:
            tmp.write_text(training_svg(read_log(path)))
