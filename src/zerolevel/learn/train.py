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
recovery from non-finite losses, distributed reduction), and the task skeleton, validation and run
folder those every network shares (`learn.training`); this module holds what is SoftRas's own: its
settings, its network and the losses of a batch. The run
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..losses import flatten_loss, laplacian_loss, silhouette_loss
from ..optim.distributed import Distributed
from ..render.softras import soft_silhouette
from .encoders import ENCODERS
from .softras_net import SoftRasNet
from .training import Batch, TrainingConfig, TrainingTask, TrainResult, run_training

__all__ = ["TrainConfig", "TrainResult", "SoftRasTraining", "batch_losses", "train"]


@dataclass
class TrainConfig(TrainingConfig):
    """Training settings; defaults are SoftRas's examples/recon/train.py unless noted (the run
    settings every network has are `TrainingConfig`'s)."""

    encoder: str = "baseline"          # the seed's baseline; "resnet" / "attention" are its variants
    batch_size: int = 64               # BATCH_SIZE = 64 (the global batch, shared by all processes)
    lr: float = 1e-4                   # LEARNING_RATE = 1e-4, Adam with torch's default betas
    iterations: int = 250_000          # NUM_ITERATIONS = 250000
    decay_at: int = 150_000            # adjust_learning_rate / adjust_sigma: x decay from 150k on
    decay: float = 0.3                 # ... decay = 0.3 (learning rate and sigma)
    sigma: float = 1e-4                # SIGMA_VAL = 1e-4 (NDC^2)
    dist_eps: float = 1e-10            # models.py SoftRenderer(dist_eps=1e-10); ~1.8x the pairs of the
                                       # renderer's default 1e-4 (see the module docstring)
    lambda_laplacian: float = 5e-3     # LAMBDA_LAPLACIAN = 5e-3
    lambda_flatten: float = 5e-4       # LAMBDA_FLATTEN = 5e-4
    cross_render: bool = True          # models.py predict_multiview: both views in, 4 renders
    checkpoint_every: int = 1000       # SAVE_FREQ = 10000; more often here (CPU runs are slow)
    log_every: int = 10                # PRINT_FREQ = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if not self.sigma > 0:
            raise ValueError("sigma must be positive")


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


class SoftRasTraining(TrainingTask):
    """SoftRas's task for the shared loop: its batch losses, the renderer's sigma decaying with the
    learning rate (SoftRas's adjust_sigma)."""

    loss_names = ("loss", "silhouette", "laplacian", "flatten")
    plotted = ("loss", "silhouette")

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        return batch_losses(self.model, self.net, batch.images_a, batch.images_b, batch.cameras_a,
                            batch.cameras_b, self.config, self.config.sigma * batch.decay)


def _make_task(train_split: Any, val_split: Any, config: TrainConfig, dist: Distributed,
               device: torch.device) -> SoftRasTraining:
    net = SoftRasNet(config.encoder, image_size=train_split.images.shape[2]).to(device, config.torch_dtype)
    return SoftRasTraining(net, train_split, val_split, config, dist, device)


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
    return run_training(_make_task, dataset, run_dir, config, "softras", device, val=val, resume=resume,
                        progress=progress, threads=threads, desc=f"training {config.encoder}")
