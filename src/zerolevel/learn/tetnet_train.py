"""Training of the image -> tet-grid SDF network (Wu, Thomas, Fedkiw) from normal maps and masks alone.

One job: the losses of a batch and the settings of `TetNet`'s training; the step skeleton, validation,
resume, distribution and run folder are every network's (`learn.training`, `optim.loop`).

A step: every sample of the global batch is an object with two ring views a (the input) and b
(`PairSampler`, class-balanced). The network maps image a to SDF values on its tet grid; marching
tetrahedra makes the mesh, which is rasterised (`render.raster.render_normals`: world-space normals
and antialiased coverage) in views a and b and compared with the dataset's normal maps and masks:

    w_normal    * L1(rendered normal, target normal)   over pixels both call foreground
    w_mask      * L2(antialiased coverage, target mask)
    w_shrink    * shrink: a pixel covered but not wanted raises the inside ends of the grid edges
                  under its visible triangle past +margin (the tet fit's term)
    w_expand    * expand: a wanted pixel the mesh misses lowers the smallest value along its ray
                  past -margin, so a surface grows there (also the only signal when a sample's
                  surface has vanished)
    w_eikonal   * mean over the lattice cubes of (|grad f| - 1)^2, grad f by forward differences
                  along the three axes (the whole grid: the decoder's values away from the surface
                  stay a distance)
    w_curvature * the mesh's area (surface-area form of mean-curvature flow: its gradient with
                  respect to the vertices is the mean curvature normal)

each averaged over the samples. Supervision is the split's images (the input, and the masks in
their alpha) and normal maps — never a mesh or voxels (`tests/test_tetnet.py` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import losses as L
from ..cameras import Cameras
from ..geometry.rays import ray_sphere_interval
from ..geometry.tetgrid import inside_ends
from ..optim.distributed import Distributed
from ..render.raster import render_normals
from .encoders import ENCODERS
from .normals_predict import with_predicted_normals
from .sampling import split_normals
from .tetnet import TetNet
from .training import Batch, TrainingConfig, TrainingTask, TrainResult, run_training

TERMS = ("normal", "mask", "shrink", "expand", "eikonal", "curvature")


@dataclass
class TetNetTrainConfig(TrainingConfig):
    """Training settings of the tet-SDF network (run settings: `TrainingConfig`)."""

    encoder: str = "baseline"          # encoders.py
    grid: int = 32                     # tet grid cubes per axis over [-0.55, 0.55]^3
    channels: tuple[int, ...] = (64, 32, 16, 8)  # decoder features, coarsest lattice to the finest (tetnet.py)
    batch_size: int = 16
    lr: float = 3e-4
    iterations: int = 50_000
    decay_at: int = 30_000
    checkpoint_every: int = 250
    w_normal: float = 1.0              # the tet fit's weights (recon/tetsdf.py)
    w_mask: float = 1.0
    w_shrink: float = 0.1
    w_expand: float = 0.1
    w_eikonal: float = 0.1
    w_curvature: float = 0.01
    margin: float = 0.1                # shrink / expand push values this many cells past zero
    expand_rays: int = 256             # at most this many uncovered pixels per sample
    normals_from: str | None = None    # a normals run (pix2pix): train on its predicted normal maps
                                       # of the training split instead of the dataset's (Wu et al.)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.expand_rays < 0 or self.margin < 0:
            raise ValueError("expand_rays and margin must be >= 0")


class TetNetTraining(TrainingTask):
    """The tet-SDF network's task for the shared loop: its batch losses (module docstring)."""

    loss_names = ("loss", *TERMS)
    plotted = ("loss", "normal", "mask")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(self.config.seed + 1)  # expand-ray picks

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        cfg, net, split = self.config, self.net, self.train_split
        B, device, dtype = len(batch.objects), self.device, cfg.torch_dtype
        values = self.model(batch.images_a)  # (B, N)
        cameras = Cameras.cat([batch.cameras_a, batch.cameras_b])
        masks = torch.cat([batch.images_a[:, 3], batch.images_b[:, 3]])  # (2B, S, S), sample i: i, B + i
        normals = torch.cat([split_normals(split, batch.objects, views, device, dtype)
                             for views in (batch.view_a, batch.view_b)])
        sums = {name: values.new_zeros(()) for name in TERMS}
        for i in range(B):
            views = torch.tensor([i, B + i], device=device)
            for name, term in self.sample_terms(values[i], cameras[views], masks[views], normals[views]).items():
                sums[name] = sums[name] + term
        parts = {name: total / B for name, total in sums.items()}
        parts["eikonal"] = lattice_eikonal(values, net.config.grid, net.grid.cell)
        weights = {"normal": cfg.w_normal, "mask": cfg.w_mask, "shrink": cfg.w_shrink, "expand": cfg.w_expand,
                   "eikonal": cfg.w_eikonal, "curvature": cfg.w_curvature}
        parts["loss"] = sum(weights[name] * parts[name] for name in TERMS)
        return parts

    def sample_terms(self, values: Tensor, cameras: Cameras, masks: Tensor, normals: Tensor) -> dict[str, Tensor]:
        """The image terms of one sample: its (N,) grid values seen by its cameras, against their
        (K, S, S) masks and (K, S, S, 3) normal maps."""
        cfg, grid = self.config, self.net.grid
        margin = cfg.margin * grid.cell
        wanted = masks > 0.5
        verts, faces, edges = self.net.mesh(values, return_edges=True)
        if len(faces) == 0:  # the surface vanished: only the expand term can bring it back
            zero = values.sum() * 0
            expand = L.expand_loss(self.lowest_values(values, cameras, wanted), margin)
            return {"normal": zero, "mask": zero, "shrink": zero, "expand": expand, "eikonal": zero,
                    "curvature": zero}
        out = render_normals(verts, faces, cameras)
        frags = out["fragments"]
        covered = frags.mask > 0.5
        extra = covered & ~wanted
        return {"normal": L.normal_l1(out["normal"], normals, covered & wanted),
                "mask": L.mask_l2(out["mask"], masks),
                "shrink": L.shrink_loss(inside_ends(values, edges[faces[frags.face[extra]]]), margin),
                "expand": L.expand_loss(self.lowest_values(values, cameras, wanted & ~covered), margin),
                "eikonal": values.new_zeros(()),  # over the whole batch's lattice, in batch_losses
                "curvature": L.mesh_area(verts, faces)}

    def lowest_values(self, values: Tensor, cameras: Cameras, missing: Tensor) -> Tensor:
        """The smallest grid value along the rays of (at most `expand_rays`) missing pixels."""
        index = missing.nonzero()
        if len(index) > self.config.expand_rays:
            pick = torch.randperm(len(index), generator=self.generator)[:self.config.expand_rays]
            index = index[pick.to(index.device)]
        if len(index) == 0:
            return values[:0]
        grid = self.net.grid
        uv = index[:, [2, 1]].to(cameras.dtype) + 0.5
        origins, directions = cameras[index[:, 0]].rays(uv[:, None, :])
        radius = grid.bounds[1] * 3 ** 0.5  # the sphere around the grid's box
        near, far, _ = ray_sphere_interval(origins[:, 0], directions[:, 0], radius)
        return grid.lowest_on_rays(values, origins[:, 0].to(values.dtype), directions[:, 0].to(values.dtype),
                                   near.to(values.dtype), far.to(values.dtype), length=2 * radius)


def lattice_eikonal(values: Tensor, grid: int, cell: float) -> Tensor:
    """Mean over the batch's lattice cubes of (|grad f| - 1)^2, grad f by forward differences from
    each cube's first corner; values (B, (grid + 1)^3) in the grid's [x, y, z] vertex order."""
    n = grid + 1
    f = values.reshape(-1, n, n, n)
    corner = f[:, :-1, :-1, :-1]
    gradient = torch.stack([f[:, 1:, :-1, :-1] - corner, f[:, :-1, 1:, :-1] - corner,
                            f[:, :-1, :-1, 1:] - corner], dim=-1) / cell
    return L.eikonal_loss(gradient.reshape(-1, 3))


def _make_task(train_split: Any, val_split: Any, config: TetNetTrainConfig, dist: Distributed,
               device: torch.device) -> TetNetTraining:
    if config.normals_from is not None:
        train_split = with_predicted_normals(train_split, config.normals_from, device)
    size = train_split.images.shape[2]
    net = TetNet(config.encoder, image_size=size, grid=config.grid, channels=config.channels)
    net = net.to(device, config.torch_dtype)
    return TetNetTraining(net, train_split, val_split, config, dist, device)


def train(dataset: str | Path | Any, run_dir: str | Path, config: TetNetTrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train a TetNet from the normal maps and masks of a dataset (version 2, with normals).

    Arguments as `learn.train.train` (SoftRas's); the training split must hold normal maps, unless
    `config.normals_from` names a normals run whose predictions replace them.
    """
    config = config or TetNetTrainConfig()
    return run_training(_make_task, dataset, run_dir, config, "tetnet", device, val=val, resume=resume,
                        progress=progress, threads=threads, desc=f"training tetnet ({config.encoder})",
                        normals=config.normals_from is None)
