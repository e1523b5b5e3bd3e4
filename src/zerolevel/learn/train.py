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

Cost on 2 CPU cores (batch 64 at 64^2, baseline encoder, the untrained network's meshes): a
cross-render step (128 images encoded, 256 soft silhouettes of the 1280-face template, ~6.6M
pixel-triangle pairs) takes ~1.2-1.3 s, about 0.75 s of it in the network and 0.45-0.5 s in
`soft_silhouette`; a plain step (64 images, 64 silhouettes) ~0.55 s. SoftRas's recon `dist_eps`
1e-10 reaches pixels up to 1.54 px from a triangle (the renderer's default 1e-4: 0.97 px): ~1.8x
the pairs, ~1.5x the renderer's time, ~+15% per cross-render step. Larger (trained) meshes cost more:
silhouettes of radius-0.4 spheres are ~8.7M pairs and ~0.55-0.7 s per 256 renders.

The run folder: `checkpoint.pt` (model, optimiser, sampler and torch random states, iteration;
written atomically, so `resume=True` continues exactly where an uninterrupted run would be),
`log.jsonl` (losses every `log_every` iterations, validation IoU lines), `training.svg` (loss and
IoU curves) and `summary.json`. Validation: the predicted mesh (closed: template topology) of a
validation view is voxelised on the dataset's 32^3 grid over [-0.5, 0.5]^3 as the objects were
(`zerolevel.metrics.solid_voxels`) and compared with the object's voxels.

Distributed: launched with `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
in the environment) or inside an initialised process group, the same function runs
DistributedDataParallel (gloo on CPU, NCCL on CUDA). Every process draws the same global batch from
the same seeded sampler and takes its contiguous shard of batch_size / world samples; BatchNorm
statistics are global (`encoders.GlobalBatchNorm2d`) and DDP averages the gradients, so the weights
follow the single-process run on the same global batch (up to float rounding). Only rank 0 evaluates
and writes files.

    torchrun --nproc_per_node 2 -m zerolevel.learn.train DATASET RUN --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
import torch.distributed as dist
import trimesh
from torch import Tensor, nn
from tqdm import tqdm

from ..atomic import atomic_path, write_json
from ..cameras import Cameras
from ..errors import InputError
from ..metrics import solid_voxels
from ..recon.fit_report import loss_curves_svg
from ..recon.loop import DivergedError, read_log, truncate_log
from ..render.softras import soft_silhouette
from .encoders import ENCODERS
from .losses import flatten_loss, laplacian_loss, silhouette_loss
from .softras_net import NetConfig, SoftRasNet

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
PLOT = "training.svg"
SUMMARY = "summary.json"
FORMAT = "zerolevel-softras-net"
VOXEL_BOUNDS = np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])  # the dataset's voxel box


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


# ---------------------------------------------------------------------------------------- processes
@dataclass
class _Dist:
    """This process's place in the (possibly trivial) process group."""

    rank: int = 0
    world: int = 1
    owned: bool = False  # we initialised the group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK for CUDA under torchrun."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _init_distributed(device: torch.device) -> _Dist:
    """Join the initialised process group, or create one from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), True)


# ---------------------------------------------------------------------------------------- data
def _open_splits(dataset: Any, config: TrainConfig, val: Any) -> tuple[Any, Any]:
    """(train split, validation split or None) from a dataset folder or split objects."""
    if isinstance(dataset, (str, Path)):
        from .dataset import load_split  # the dataset folder reader (zerolevel.learn.dataset)
        train_split = load_split(dataset, config.train_split)
        val_split = load_split(dataset, config.val_split) if config.val_split else None
        return train_split, val_split
    return dataset, (val if config.val_split else None)


def _check_split(split: Any, name: str) -> None:
    """Raise InputError unless images are (N, V, S, S, 4) with V >= 2 ring cameras of size S."""
    shape = tuple(split.images.shape)
    cams = split.cameras
    if (len(shape) != 5 or shape[-1] != 4 or shape[1] < 2 or shape[2] != shape[3] or len(cams) != shape[1]
            or (cams.height, cams.width) != shape[2:4] or shape[0] < 1):
        raise InputError(f"the {name} split needs (N, V >= 2, S, S, 4) images and V cameras of S x S, "
                         f"got images {shape} and {len(cams)} cameras of {cams.width}x{cams.height}")


def _object_categories(split: Any) -> np.ndarray:
    """(N,) category label of each object (one shared label when the split has none per object)."""
    categories = getattr(split, "categories", None)
    categories = [] if categories is None else list(categories)
    if len(categories) != len(split):
        categories = ["all"] * len(split)
    return np.asarray(categories, dtype=object)


class PairSampler:
    """Global batches of (object, input view a, reference view b != a), class-balanced as SoftRas's
    get_random_batch (a uniform category, then a uniform object of it); identical on every process."""

    def __init__(self, categories: np.ndarray, num_views: int, seed: int):
        self.groups = [np.flatnonzero(categories == c) for c in dict.fromkeys(categories.tolist())]
        self.num_views = int(num_views)
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three (n,) int64 arrays: objects, views a, views b."""
        group = self.rng.integers(0, len(self.groups), n)
        objects = np.array([self.groups[g][self.rng.integers(0, len(self.groups[g]))] for g in group],
                           dtype=np.int64)
        view_a = self.rng.integers(0, self.num_views, n)
        view_b = (view_a + self.rng.integers(1, self.num_views, n)) % self.num_views
        return objects, view_a, view_b

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def split_images(split: Any, objects: np.ndarray, views: np.ndarray, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 4, S, S) RGBA in [0, 1] of the given (object, view) pairs."""
    array = np.ascontiguousarray(split.images[objects, views])  # (B, S, S, 4) uint8
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).to(dtype).div_(255.0)


def split_cameras(split: Any, views: np.ndarray, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> Cameras:
    """The split's cameras of the given (B,) views."""
    return split.cameras[torch.as_tensor(views, dtype=torch.long)].to(device=device, dtype=dtype)


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


# ---------------------------------------------------------------------------------------- evaluation
def voxel_iou(vertices: np.ndarray, faces: np.ndarray, voxels: np.ndarray) -> float:
    """IoU of a mesh's voxels (`solid_voxels`, n^3 over [-0.5, 0.5]^3) with (n, n, n) bool voxels
    indexed [x, y, z]; nan when both are empty."""
    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces), process=False,
                           validate=False)
    inside = solid_voxels(mesh, VOXEL_BOUNDS, voxels.shape[0])
    union = np.count_nonzero(inside | voxels)
    return float(np.count_nonzero(inside & voxels) / union) if union else float("nan")


@torch.no_grad()
def evaluate_iou(net: SoftRasNet, split: Any, views: int = 24, objects: int | None = None,
                 batch_size: int = 64) -> np.ndarray:
    """Voxel IoU of the network's mesh for each validation object and view.

    Args:
        net: the network (evaluated in eval mode; its mode is restored).
        split: a dataset split (images (N, V, S, S, 4), voxels (N, n, n, n)).
        views: views per object, evenly spaced over the V ring views.
        objects: the first `objects` objects (None: all).
    Returns:
        (N', views) float64 IoUs.
    """
    n_obj = len(split) if objects is None else min(int(objects), len(split))
    V = split.images.shape[1]
    view_ids = np.unique(np.linspace(0, V, min(views, V), endpoint=False).astype(np.int64))
    obj = np.repeat(np.arange(n_obj), len(view_ids))
    vid = np.tile(view_ids, n_obj)
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    faces = net.faces.cpu().numpy()
    was_training = net.training
    net.eval()
    ious = np.empty(len(obj))
    for start in range(0, len(obj), batch_size):
        o, v = obj[start:start + batch_size], vid[start:start + batch_size]
        vertices = net(split_images(split, o, v, device, dtype)).cpu().numpy()
        for k, (i, verts) in enumerate(zip(o, vertices)):
            ious[start + k] = voxel_iou(verts, faces, np.asarray(split.voxels[i], dtype=bool))
    net.train(was_training)
    return ious.reshape(n_obj, len(view_ids))


# ---------------------------------------------------------------------------------------- run state
@dataclass
class _State:
    iteration: int = 0
    elapsed: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    val_iou: float | None = None
    best_val_iou: float | None = None
    decay_from: int | None = None  # the iteration the budget-triggered decay started at


@dataclass
class _Run:
    """What the loop works on."""

    net: SoftRasNet
    model: nn.Module  # net or its DDP wrapper
    optimizer: torch.optim.Optimizer
    sampler: PairSampler
    train_split: Any
    val_split: Any
    config: TrainConfig
    ctx: _Dist
    device: torch.device
    run_dir: Path
    iterations: int
    eval_every: int
    state: _State


def _save_checkpoint(run: _Run) -> None:
    """Write the checkpoint atomically (rank 0 only)."""
    if not run.ctx.main:
        return
    s = run.state
    payload = {"format": FORMAT, "version": 1, "iteration": s.iteration, "elapsed": s.elapsed,
               "losses": s.losses, "val_iou": s.val_iou, "best_val_iou": s.best_val_iou,
               "decay_from": s.decay_from,
               "config": asdict(run.config), "net": asdict(run.net.config),
               "model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
               "sampler": run.sampler.state_dict(), "torch_rng": torch.get_rng_state()}
    with atomic_path(run.run_dir / CHECKPOINT) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a run folder or checkpoint file; InputError if it is missing or foreign."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise InputError("no such checkpoint (train a network first)", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"cannot read the checkpoint ({type(error).__name__})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} checkpoint", path)
    return payload


def _restore(run: _Run, payload: dict[str, Any]) -> None:
    """Continue from a checkpoint: weights, optimiser, sampler, random state, counters."""
    saved = TrainConfig(**payload["config"])
    changed = [f.name for f in fields(TrainConfig)
               if f.name not in _RUN_CONTROL and getattr(saved, f.name) != getattr(run.config, f.name)]
    if changed:
        raise InputError(f"cannot resume with different settings {changed}; only {sorted(_RUN_CONTROL)} "
                         "may change", run.run_dir / CHECKPOINT)
    run.net.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.sampler.load_state_dict(payload["sampler"])
    torch.set_rng_state(payload["torch_rng"])
    run.state = _State(int(payload["iteration"]), float(payload["elapsed"]), dict(payload["losses"]),
                       payload["val_iou"], payload["best_val_iou"], payload.get("decay_from"))


# ---------------------------------------------------------------------------------------- logs
def training_svg(log: list[dict[str, float]]) -> str:
    """Two stacked SVG charts: the training losses and the validation IoU against the iteration."""
    losses = [{k: row[k] for k in ("iter", "loss", "silhouette") if k in row} for row in log if "loss" in row]
    ious = [{"iter": row["iter"], "val_iou": row["val_iou"]} for row in log if "val_iou" in row]
    top = loss_curves_svg(losses)
    bottom = loss_curves_svg(ious).replace(">loss (log scale)<", ">IoU (log scale)<").replace(">loss<", ">IoU<")
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="720" height="800" viewBox="0 0 720 800">'
            f'<g>{top}</g><g transform="translate(0 400)">{bottom}</g></svg>\n')


def _write_plot(run: _Run) -> None:
    path = run.run_dir / LOG
    if run.ctx.main and path.is_file():
        with atomic_path(run.run_dir / PLOT) as tmp:
            tmp.write_text(training_svg(read_log(path)))


# ---------------------------------------------------------------------------------------- loop
_LOSS_NAMES = ("loss", "silhouette", "laplacian", "flatten")


def _step(run: _Run) -> tuple[Tensor, float]:
    """One optimisation step on this process's shard of the global batch.

    Returns (4,) float64 local losses (`_LOSS_NAMES`, detached, CPU) and the learning rate used.
    """
    cfg, ctx = run.config, run.ctx
    objects, view_a, view_b = run.sampler.sample(cfg.batch_size)
    shard = slice(ctx.rank * cfg.batch_size // ctx.world, (ctx.rank + 1) * cfg.batch_size // ctx.world)
    objects, view_a, view_b = objects[shard], view_a[shard], view_b[shard]
    lr, sigma = _schedule(cfg, run.state.iteration, run.state.decay_from)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    split, device, dtype = run.train_split, run.device, cfg.torch_dtype
    images = [split_images(split, objects, views, device, dtype) for views in (view_a, view_b)]
    cameras = [split_cameras(split, views, device, dtype) for views in (view_a, view_b)]
    parts = batch_losses(run.model, run.net, *images, *cameras, cfg, sigma)
    run.optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    run.optimizer.step()
    return torch.stack([parts[k].detach() for k in _LOSS_NAMES]).double().cpu(), lr


def _agree(run: _Run, local: Tensor, *flags: bool) -> tuple[dict[str, float], list[bool]]:
    """The global mean of the processes' (4,) losses, and rank 0's decisions (clock-based: the
    processes' clocks differ), on every process."""
    ctx = run.ctx
    decisions = torch.tensor([float(flag and ctx.main) for flag in flags], dtype=torch.float64)
    values = torch.cat([local / ctx.world, decisions])
    if ctx.world > 1:
        values = values.to(run.device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(values)
        values = values.cpu()
    return dict(zip(_LOSS_NAMES, values[:4].tolist())), [bool(v > 0) for v in values[4:]]


def _evaluate(run: _Run, log: TextIO) -> None:
    """Validation IoU (rank 0 only), logged and remembered."""
    if not run.ctx.main or run.val_split is None:
        return
    ious = evaluate_iou(run.net, run.val_split, run.config.val_views, run.config.val_objects)
    s = run.state
    s.val_iou = float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")
    if math.isfinite(s.val_iou) and (s.best_val_iou is None or s.val_iou > s.best_val_iou):
        s.best_val_iou = s.val_iou
    log.write(json.dumps({"iter": s.iteration, "time": round(s.elapsed, 3), "val_iou": s.val_iou}) + "\n")
    log.flush()


def _loop(run: _Run, log: TextIO, bar: tqdm) -> str:
    """Iterate until the iteration count, the budget or a non-finite loss; returns why it stopped."""
    cfg, s = run.config, run.state
    start = time.perf_counter() - s.elapsed
    while s.iteration < run.iterations:
        local, lr = _step(run)
        s.elapsed = time.perf_counter() - start
        out_of_time = cfg.budget_s is not None and s.elapsed >= cfg.budget_s
        decay_now = (cfg.decay_at_budget is not None and cfg.budget_s is not None and s.decay_from is None
                     and s.elapsed >= cfg.decay_at_budget * cfg.budget_s)
        losses, (out_of_time, decay_now) = _agree(run, local, out_of_time, decay_now)
        losses["lr"] = lr
        if not all(math.isfinite(v) for v in losses.values()):
            s.losses = losses
            return "diverged"
        s.iteration += 1
        s.losses = losses
        if decay_now:
            s.decay_from = s.iteration  # the next step on
        last = s.iteration == run.iterations or out_of_time
        if run.ctx.main and (s.iteration % cfg.log_every == 0 or last):
            log.write(json.dumps({"iter": s.iteration, "time": round(s.elapsed, 3), **losses}) + "\n")
            log.flush()
            bar.set_postfix_str(" ".join(f"{k}={v:.3g}" for k, v in losses.items() if k != "lr"), refresh=False)
        bar.update(1)
        if s.iteration % run.eval_every == 0 or last:
            _evaluate(run, log)
            s.elapsed = time.perf_counter() - start
        if s.iteration % cfg.checkpoint_every == 0 and not last:
            _save_checkpoint(run)
            _write_plot(run)
        if out_of_time:
            return "budget"
    return "iterations"


def _total_iterations(config: TrainConfig, num_objects: int) -> tuple[int, int]:
    """(iterations, iterations per epoch) where an epoch is num_objects samples."""
    per_epoch = max(1, math.ceil(num_objects / config.batch_size))
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * per_epoch)), per_epoch
    return config.iterations, per_epoch


def _build(dataset: Any, run_dir: Path, config: TrainConfig, device: torch.device, ctx: _Dist,
           val: Any) -> _Run:
    """Open the data; build the network (seeded), the optimiser and the sampler."""
    train_split, val_split = _open_splits(dataset, config, val)
    _check_split(train_split, config.train_split)
    if config.batch_size % ctx.world:
        raise ValueError(f"batch size {config.batch_size} is not divisible by {ctx.world} processes")
    torch.manual_seed(config.seed)
    net = SoftRasNet(config.encoder, image_size=train_split.images.shape[2]).to(device, config.torch_dtype)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=config.betas)
    sampler = PairSampler(_object_categories(train_split), train_split.images.shape[1], config.seed)
    iterations, per_epoch = _total_iterations(config, len(train_split))
    return _Run(net, net, optimizer, sampler, train_split, val_split, config, ctx, device, run_dir,
                iterations, config.eval_every or per_epoch, _State())


def _wrap(run: _Run) -> None:
    """DistributedDataParallel over the network when there are several processes (its buffer
    broadcast is redundant but harmless: global BatchNorm statistics keep the buffers identical)."""
    if run.ctx.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(run.net, device_ids=ids)


def train(dataset: str | Path | Any, run_dir: str | Path, config: TrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train a SoftRasNet; see the module docstring for the step, the files and distribution.

    Args:
        dataset: a dataset folder (splits `config.train_split` / `config.val_split` are read with
            `zerolevel.learn.dataset.load_split`) or a split object (images (N, V, S, S, 4) uint8,
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
        DivergedError: a loss became non-finite; the last good checkpoint is kept.
    """
    config = config or TrainConfig()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    device = _resolve_device(device)
    ctx = _init_distributed(device)
    try:
        return _train(dataset, Path(run_dir), config, device, ctx, val, resume, progress)
    finally:
        if ctx.owned:
            dist.destroy_process_group()
        torch.set_num_threads(previous_threads)


def _train(dataset: Any, run_dir: Path, config: TrainConfig, device: torch.device, ctx: _Dist, val: Any,
           resume: bool, progress: bool) -> TrainResult:
    run = _build(dataset, run_dir, config, device, ctx, val)
    if resume and (run_dir / CHECKPOINT).is_file():
        _restore(run, load_checkpoint(run_dir))
    _wrap(run)
    start_iter = run.state.iteration
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(run_dir / LOG, start_iter)
    bar = tqdm(total=run.iterations, initial=start_iter, desc=f"training {config.encoder}", unit="it",
               disable=not (progress and ctx.main), dynamic_ncols=True)
    log = (run_dir / LOG).open("a") if ctx.main else open(os.devnull, "w")
    try:
        stopped = _loop(run, log, bar)
    except KeyboardInterrupt:
        _save_checkpoint(run)
        raise
    finally:
        bar.close()
        log.close()
    return _finish(run, stopped, start_iter)


def _finish(run: _Run, stopped: str, start_iter: int) -> TrainResult:
    """Final checkpoint, plot and summary; raise DivergedError for a diverged run."""
    s = run.state
    if stopped == "diverged":
        raise DivergedError(f"training diverged at iteration {s.iteration + 1} ({s.losses}); the last good "
                            f"checkpoint {run.run_dir / CHECKPOINT} is kept")
    _save_checkpoint(run)
    _write_plot(run)
    done = s.iteration - start_iter
    result = TrainResult(s.iteration, s.elapsed, stopped, s.losses, s.val_iou, s.best_val_iou, start_iter,
                         run.ctx.world, run.config.batch_size * done / max(s.elapsed, 1e-9) if done else 0.0)
    if run.ctx.main:
        write_json(run.run_dir / SUMMARY, {**asdict(result), "summary": result.summary()})
    return result


# ---------------------------------------------------------------------------------------- prediction
def load_model(path: str | Path, device: str | torch.device = "cpu") -> SoftRasNet:
    """The trained network (eval mode) of a run folder or checkpoint file."""
    payload = load_checkpoint(path)
    net = SoftRasNet.from_config(NetConfig.from_dict(payload["net"]))
    net.load_state_dict(payload["model"])
    return net.to(device).eval()


def _check_image(image: np.ndarray, size: int, source: str) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (size, size, 4):
        raise InputError(f"the network takes {size}x{size} RGBA uint8 images, got {image.dtype} "
                         f"{tuple(image.shape)}", source)
    if not image[..., 3].any():
        raise InputError("the image has no foreground (its alpha channel is 0 everywhere)", source)


def predict(model: str | Path | SoftRasNet, image: np.ndarray, source: str = "image") -> trimesh.Trimesh:
    """The closed mesh a trained network predicts from one (S, S, 4) uint8 RGBA image.

    Args:
        model: a run folder, a checkpoint file or a SoftRasNet.
        image: (S, S, 4) uint8, S the network's image size; alpha is the object's coverage.
        source: how errors name the image.
    Returns:
        trimesh.Trimesh of the template's topology (642 vertices, 1280 faces) in the ring cameras' world.
    Raises:
        InputError: wrong size, type or channels, or an empty alpha channel.
    """
    net = model if isinstance(model, SoftRasNet) else load_model(model)
    _check_image(image, net.config.image_size, source)
    parameter = next(net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad():
        batch = torch.from_numpy(np.ascontiguousarray(image)).to(parameter.device).permute(2, 0, 1)[None]
        vertices = net(batch.to(parameter.dtype) / 255)[0].cpu().numpy()
    net.train(was_training)
    return trimesh.Trimesh(vertices.astype(np.float64), net.faces.cpu().numpy(), process=False)


# ---------------------------------------------------------------------------------------- torchrun entry
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m zerolevel.learn.train DATASET RUN [options]`, also under torchrun."""
    parser = argparse.ArgumentParser(prog="python -m zerolevel.learn.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("run_dir")
    parser.add_argument("--encoder", choices=ENCODERS, default="baseline")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--single-render", action="store_true", help="render from view b only (no cross-render)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--budget", type=float, help="seconds")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    config = TrainConfig(encoder=args.encoder, batch_size=args.batch_size, iterations=args.iterations,
                         epochs=args.epochs, lr=args.lr, cross_render=not args.single_render, seed=args.seed,
                         eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                         budget_s=args.budget)
    result = train(args.dataset, args.run_dir, config, args.device, resume=args.resume,
                   progress=not args.quiet, threads=args.threads)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
