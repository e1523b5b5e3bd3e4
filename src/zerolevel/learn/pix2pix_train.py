"""Training of pix2pix's normal-map network (Isola et al. 2017): RGBA images -> normal maps.

One job: the settings and the two-player step of `NormalsNet`'s training; the sampling, decay,
resume, distribution and run folder are every network's (`learn.training`, `optim.loop`).

A step: every sample of the global batch is an object and its input view a (`PairSampler`,
class-balanced; view b is unused). With x the RGBA image, y the dataset's normal map (turned into view
a's camera frame when `space="camera"`) and G(x) the generator's (both 0 on the background, so neither
network can tell them apart there):

    discriminator: 0.5 * (GAN(D(x, y), real) + GAN(D(x, G(x)), fake))      (pix2pix halves it)
    generator:     w_gan * GAN(D(x, G(x)), real) + w_l1 * L1(G(x), y)

with GAN the per-patch binary cross-entropy on logits (pix2pix's "vanilla" GAN, the default) or the
least-squares GAN (`gan_loss="lsgan"`), and L1 the sum over the 3 channels of |G(x) - y|, averaged
over the foreground pixels (the dataset's normals are 0 elsewhere). The discriminator steps first,
on G(x) detached; the generator then steps against the updated discriminator, whose parameters take
no gradient in that pass. Both use Adam(lr 2e-4, betas (0.5, 0.999)), pix2pix's, the step decay of
`TrainingConfig` on both.

Validation (instead of the mesh networks' voxel IoU): the mean angular error in degrees over the
foreground pixels of the validation split (`normals_eval.normal_errors`), the lowest kept as the best.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import losses as L
from ..errors import InputError
from ..optim.distributed import Distributed
from .evaluate import view_indices
from .normals_eval import normal_errors
from .pix2pix import SPACES, NormalsNet, PatchDiscriminator, to_camera
from .sampling import split_normals
from .training import TrainingConfig, TrainingTask, TrainResult, adam, run_training

GAN_LOSSES = ("bce", "lsgan")


@dataclass
class NormalsTrainConfig(TrainingConfig):
    """Training settings of the normals network; defaults are pix2pix's unless noted (run settings:
    `TrainingConfig`)."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 128, 128, 128)  # generator widths (pix2pix.py); fewer
                                                                  # levels for images under 128^2
    dropout: float = 0.5               # pix2pix's decoder dropout
    space: str = "camera"              # the normals the generator predicts: "camera" (the input view's
                                       # frame) or "world" (the dataset's); pix2pix.py's docstring
    d_channels: tuple[int, ...] = (16, 32, 64, 128)  # PatchGAN widths: n_layers 3, 70x70 patches (ndf 64 / 4)
    gan_loss: str = "bce"              # pix2pix's --gan_mode vanilla; "lsgan": least squares
    w_l1: float = 100.0                # pix2pix's lambda_L1
    w_gan: float = 1.0
    batch_size: int = 16               # pix2pix trains with 1; 16 uses a CPU's cores
    lr: float = 2e-4                   # pix2pix's --lr 0.0002, --beta1 0.5
    betas: tuple[float, float] = (0.5, 0.999)
    iterations: int = 20_000
    decay_at: int = 10_000             # pix2pix: a constant rate for half the run, then down (here x decay)
    decay: float = 0.1
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        self.d_channels = tuple(int(c) for c in self.d_channels)
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, not {self.space!r}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, not {self.gan_loss!r}")
        if len(self.d_channels) < 2 or min(self.d_channels) < 1:
            raise ValueError("d_channels needs at least 2 positive widths")


def gan_loss(logits: Tensor, real: bool, kind: str = "bce") -> Tensor:
    """The adversarial loss of per-patch logits against the label real (1) or fake (0)."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


class NormalsTraining(TrainingTask):
    """pix2pix's task for the shared loop: the generator is the task's network (`net`, `optimizer`),
    the discriminator its second player (`disc`, `d_optimizer`); both are in the checkpoint."""

    loss_names = ("loss", "l1", "gan", "d")
    plotted = ("l1", "gan", "d")
    validation = ("val_angle", "angular error (degrees)")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg = self.config
        if self.val_split is not None and getattr(self.val_split, "normals", None) is None:
            raise InputError("the validation split has no normal maps")
        self.disc = PatchDiscriminator(cfg.d_channels).to(self.device, cfg.torch_dtype)
        self.d_model = self.disc
        self.d_optimizer = adam(self.disc.parameters(), cfg)
        self.val_angle: float | None = None
        self.best_val_angle: float | None = None

    def wrap(self) -> None:
        super().wrap()
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.d_model = nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)

    def step(self, iteration: int) -> dict[str, float]:
        cfg = self.config
        batch = self.next_batch(iteration)
        lr = cfg.lr * batch.decay * self.step_scale
        for optimizer in (self.optimizer, self.d_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr
        images = batch.images_a
        target = split_normals(self.train_split, batch.objects, batch.view_a, self.device, cfg.torch_dtype)
        if cfg.space == "camera":
            target = to_camera(target, batch.cameras_a.R)
        target = target.permute(0, 3, 1, 2)
        foreground = target.abs().sum(1, keepdim=True) > 0
        fake = self.model(images) * foreground
        # the discriminator, on real and (detached) fake pairs in one call
        scores = self.d_model(torch.cat([torch.cat([images, target], 1), torch.cat([images, fake.detach()], 1)]))
        real, false = scores.chunk(2)
        d_loss = 0.5 * (gan_loss(real, True, cfg.gan_loss) + gan_loss(false, False, cfg.gan_loss))
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        # the generator, against the updated discriminator (the plain module: its parameters take no
        # gradient here, so no DDP reduction is expected of them)
        self.disc.requires_grad_(False)
        try:
            adversarial = gan_loss(self.disc(torch.cat([images, fake], 1)), True, cfg.gan_loss)
        finally:
            self.disc.requires_grad_(True)
        l1 = L.normal_l1(fake.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1), foreground[:, 0].to(fake.dtype))
        loss = cfg.w_l1 * l1 + cfg.w_gan * adversarial
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        parts = {"loss": loss, "l1": l1, "gan": adversarial, "d": d_loss}
        return {**{k: float(v.detach().double()) for k, v in parts.items()}, "lr": lr}

    def evaluate(self, iteration: int) -> dict[str, float]:
        """The validation split's mean angular error in degrees (rank 0), remembered with the lowest."""
        cfg, split = self.config, self.val_split
        errors, _ = normal_errors(self.net, split, view_indices(split.images.shape[1], cfg.val_views), cfg.val_objects)
        self.val_angle = float(errors.mean()) if errors.size else float("nan")
        if np.isfinite(self.val_angle) and (self.best_val_angle is None or self.val_angle < self.best_val_angle):
            self.best_val_angle = self.val_angle
        return {"val_angle": self.val_angle}

    def result_metrics(self) -> dict[str, float | None]:
        return {"val_angle": self.val_angle, "best_val_angle": self.best_val_angle}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "disc": self.disc.state_dict(), "d_optimizer": self.d_optimizer.state_dict(),
                "val_angle": self.val_angle, "best_val_angle": self.best_val_angle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.disc.load_state_dict(state["disc"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.val_angle, self.best_val_angle = state["val_angle"], state["best_val_angle"]


def _make_task(train_split: Any, val_split: Any, config: NormalsTrainConfig, dist: Distributed,
               device: torch.device) -> NormalsTraining:
    size = train_split.images.shape[2]
    try:
        net = NormalsNet(image_size=size, channels=config.channels, dropout=config.dropout, space=config.space)
    except ValueError as error:  # e.g. 7 levels for a 32^2 dataset
        raise InputError(f"{error}: set channels to fewer levels for {size}x{size} images") from None
    return NormalsTraining(net.to(device, config.torch_dtype), train_split, val_split, config, dist, device)


def train(dataset: str | Path | Any, run_dir: str | Path, config: NormalsTrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train a NormalsNet on the images and normal maps of a dataset (version 2, with normals).

    Arguments as `learn.train.train` (SoftRas's); the training and validation splits must hold
    normal maps. The run folder's log has the losses and `val_angle` (degrees) lines.
    """
    config = config or NormalsTrainConfig()
    return run_training(_make_task, dataset, run_dir, config, "normals", device, val=val, resume=resume,
                        progress=progress, threads=threads, desc="training normals (pix2pix)", normals=True)
