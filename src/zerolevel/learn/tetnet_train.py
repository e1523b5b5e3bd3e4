"""Training of the image -> tet-grid SDF network (Wu, Thomas, Fedkiw) from normal maps and masks alone.

One job: the losses of a batch and the settings of `TetNet`'s training; the step skeleton, validation,
resume, distribution and run folder are every network's (`learn.training`, `optim.loop`).

A step: every sample of the global batch is an object with two ring views a (the input) and b
(`PairSampler`, class-balanced). The network maps image a to SDF values on its tet grid; marching
tetrahedra makes the mesh, which is rasterised (`render.raster.render_normals`: world-space normals
and antialiased coverage) in views a and b (and `views` - 2 more of the object's views, drawn at
random) and compared with the dataset's normal maps and masks:

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
    w_carve     * carve: every lattice vertex outside the object's visual hull (carved from the
                  masks of all its training views, once, before the loop) is pushed past +margin:
                  dense 3D evidence of empty space, from masks alone

each averaged over the samples. Supervision is the split's images (the input, and the masks in
their alpha) and normal maps — never a mesh or voxels (`tests/test_tetnet.py` checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import losses as L
from ..cameras import Cameras
from ..errors import InputError
from ..geometry.rays import ray_sphere_interval
from ..geometry.tetgrid import inside_ends, lattice_evaluate, lattice_trilinear
from ..geometry.visual_hull import mask_coverage
from ..optim.distributed import Distributed
from ..render.raster import ViewMeshes, render_normals
from .encoders import ENCODERS
from .normals_predict import with_predicted_normals
from .sampling import split_cameras, split_images, split_normals
from .tetnet import TetNet
from .training import (Batch, TrainingConfig, TrainingTask, TrainResult, check_render_size,
                       encoder_from_normals_run, run_training)

SURFACE_TERMS = ("normal", "mask", "shrink", "curvature")  # of each sample's mesh
TERMS = ("normal", "mask", "shrink", "expand", "carve", "eikonal", "curvature")


@dataclass
class TetNetTrainConfig(TrainingConfig):
    """Training settings of the tet-SDF network (run settings: `TrainingConfig`)."""

    encoder: str = "baseline"          # encoders.py
    grid: int = 32                     # tet grid cubes per axis over [-0.55, 0.55]^3
    channels: tuple[int, ...] = (64, 32, 16)  # decoder features, coarsest lattice to the finest (tetnet.py)
    head: str = "shuffle"              # the decoder's finest lattice (tetnet.py)
    norm: str = "none"                 # the decoder's normalisation (tetnet.py)
    basis: int = 0                     # the decoder's linear full-lattice term (tetnet.py; 0: none)
    pixel: int = 0                     # pixel-aligned features' channels (tetnet.py; 0: none)
    init: str = "he"                   # the network's starting weights (tetnet.py: "he" or "torch")
    batch_size: int = 16
    lr: float = 3e-4
    iterations: int = 50_000
    decay_at: int = 30_000
    checkpoint_every: int = 250
    w_normal: float = 1.0              # the tet fit's weights (recon/tetsdf.py), but the silhouette
    w_mask: float = 20.0               # terms' x20: a network must first learn where the object is, and
    w_shrink: float = 2.0              # learnt it faster so (benchmarks/results/tetnet_ablation.md:
    w_expand: float = 2.0              # x20 vs x1 at 15 min; x5 between them in issue 17's notes)
    w_eikonal: float = 0.1
    w_curvature: float = 0.01
    w_carve: float = 20.0              # volumetric shrink outside the object's visual hull (`carve`):
                                       # +0.04-0.06 val IoU from 300 to 750 iterations
                                       # (benchmarks/results/tetnet_carve_long.md)
    margin: float = 0.1                # shrink / expand push values this many cells past zero
    expand_rays: int = 256             # at most this many uncovered pixels per sample
    render_size: int | None = None     # pixels per side of the loss renders (masks and normal maps
                                       # averaged down to it); None: the dataset's; a divisor of it
    views: int = 2                     # views rendered per sample: the input (1), the pair's second
                                       # view (2) and views - 2 more of the object's, drawn at random
    normals_from: str | None = None    # a normals run (pix2pix): train on its predicted normal maps
                                       # of the training split instead of the dataset's (Wu et al.)
    encoder_from: str | None = None    # a normals run (pix2pix) whose generator's first levels start
                                       # the "pix2pix" encoder (a fresh run only; resume reads its own)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.expand_rays < 0 or self.margin < 0:
            raise ValueError("expand_rays and margin must be >= 0")
        if self.render_size is not None and self.render_size < 8:
            raise ValueError(f"render_size must be >= 8 pixels, got {self.render_size}")
        if self.encoder_from is not None and self.encoder != "pix2pix":
            raise ValueError(f"encoder_from initialises the pix2pix encoder, not {self.encoder!r}")
        if self.views < 1:
            raise ValueError(f"views must be >= 1 (the input view, then the pair's second view), got {self.views}")


class TetNetTraining(TrainingTask):
    """The tet-SDF network's task for the shared loop: its batch losses (module docstring)."""

    loss_names = ("loss", *TERMS)
    plotted = ("loss", "normal", "mask")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generator = torch.Generator().manual_seed(self.config.seed + 1)  # expand rays, extra views
        available = self.train_split.images.shape[1]
        if self.config.views > available:
            raise InputError(f"views={self.config.views} per sample, but the dataset has {available} per object",
                             getattr(self.train_split, "root", None))
        # (objects, N) lattice vertices outside each training object's visual hull (the carve term)
        self.outside_hull = (hull_outside(self.train_split, self.net.grid_vertices) if self.config.w_carve
                             else None)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        cfg, net, split = self.config, self.net, self.train_split
        B, device, dtype = len(batch.objects), self.device, cfg.torch_dtype
        values = self.model(batch.images_a, batch.cameras_a)  # (B, N)
        extra = self.extra_views(batch)  # (V - 2, B)
        pair = [(batch.view_a, batch.cameras_a, batch.images_a), (batch.view_b, batch.cameras_b, batch.images_b)]
        pair = pair[:cfg.views]  # views = 1: the input view alone
        cameras = Cameras.cat([c for _, c, _ in pair] + [split_cameras(split, views, device, dtype) for views in extra])
        masks = torch.cat([i[:, 3] for _, _, i in pair]  # (V B, S, S), sample i: i + k B
                          + [split_images(split, batch.objects, views, device, dtype)[:, 3] for views in extra])
        normals = torch.cat([split_normals(split, batch.objects, views, device, dtype)
                             for views in (*(v for v, _, _ in pair), *extra)])
        factor = masks.shape[-1] // cfg.render_size if cfg.render_size else 1
        if factor > 1:  # the loss renders at render_size: the targets averaged down to it
            cameras, masks, normals = cameras.downscaled(factor), *downscale_targets(masks, normals, factor)
        parts, missing = self.surface_terms(values, cameras, masks, normals)
        parts["expand"] = self.expand(values, cameras, missing)
        parts["carve"] = self.carve(values, batch.objects) if cfg.w_carve else values.new_zeros(())
        parts["eikonal"] = lattice_eikonal(values, net.config.grid, net.grid.cell)
        weights = {"normal": cfg.w_normal, "mask": cfg.w_mask, "shrink": cfg.w_shrink, "expand": cfg.w_expand,
                   "carve": cfg.w_carve, "eikonal": cfg.w_eikonal, "curvature": cfg.w_curvature}
        parts["loss"] = sum(weights[name] * parts[name] for name in TERMS)
        return parts

    def extra_views(self, batch: Batch) -> np.ndarray:
        """(views - 2, B) further views of each sample's object, distinct and neither a nor b: drawn for
        the global batch and cut to this process's shard, so that torchrun's processes draw as one."""
        cfg = self.config
        if cfg.views <= 2:
            return np.zeros((0, len(batch.objects)), np.int64)
        scores = torch.rand(cfg.batch_size, self.train_split.images.shape[1], generator=self.generator)[self.shard]
        rows = torch.arange(len(scores))
        scores[rows, torch.from_numpy(batch.view_a)] = scores[rows, torch.from_numpy(batch.view_b)] = 2.0
        return scores.argsort(dim=1)[:, :cfg.views - 2].T.numpy()

    def surface_terms(self, values: Tensor, cameras: Cameras, masks: Tensor,
                      normals: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The terms of the samples' meshes, each a mean over the samples (a sample's term is 0 when
        its surface has vanished): their (B, N) grid values seen by the (V B) cameras against their
        (V B, S, S) masks and (V B, S, S, 3) normal maps (sample i's views at i + k B); and the (V B,
        S, S) wanted pixels the meshes miss. All samples' meshes are made, rendered and scored at
        once (`marching_tetrahedra_batch`, `ViewMeshes`), not one by one."""
        B, wanted = len(values), masks > 0.5
        packed = self.net.meshes(values)
        present = packed.face_counts() > 0  # (B,) samples with a surface
        if not bool(present.any()):  # every surface vanished: only the expand and carve terms act
            zero = values.sum() * 0
            return {name: zero for name in SURFACE_TERMS}, wanted
        view_mesh = torch.arange(len(cameras), device=values.device) % B
        out = render_normals(packed.verts, packed.faces, cameras,
                             meshes=ViewMeshes(view_mesh, packed.vert_first, packed.face_first))
        frags = out["fragments"]
        covered = frags.mask > 0.5

        def per_sample(x: Tensor) -> Tensor:  # (V B, ...) -> (B,) sums over each sample's views
            return x.reshape(-1, B, x[0].numel()).sum(dim=(0, 2))

        both = covered & wanted
        error = torch.where(both, (out["normal"] - normals).abs().sum(-1), 0.0)
        normal = per_sample(error) / per_sample(both).clamp_min(1)
        mask = per_sample((out["mask"] - masks.to(out["mask"].dtype)).square()) / masks[0].numel() / (len(cameras) // B)
        # shrink: the inside ends of the grid edges under each pixel covered but not wanted
        extra = (covered & ~wanted).reshape(-1).nonzero()[:, 0]
        sample = torch.div(extra, masks[0].numel(), rounding_mode="floor") % B
        inside = inside_ends(values.reshape(-1), packed.edges[packed.faces[frags.face.reshape(-1)[extra]]])  # (P, 3)
        hinge = (self.config.margin * self.net.grid.cell - inside).clamp_min(0.0).sum(dim=1)
        shrink = values.new_zeros(B).index_add(0, sample, hinge) / (3 * torch.bincount(sample, minlength=B)).clamp_min(1)
        terms = {"normal": normal, "mask": torch.where(present, mask, 0.0), "shrink": shrink}
        parts = {name: term.sum() / B for name, term in terms.items()}
        parts["curvature"] = L.mesh_area(packed.verts, packed.faces) / B
        return parts, wanted & ~covered

    def expand(self, values: Tensor, cameras: Cameras, missing: Tensor) -> Tensor:
        """The expand term of the batch: per sample, the mean hinge on the smallest grid value along
        the rays of (at most `expand_rays` of) its missing pixels, averaged over the samples.
        values (B, N); cameras and missing (V B, ...), sample i's views at i + k B."""
        B, limit = len(values), self.config.expand_rays
        picks = []
        for i in range(B):
            index = missing[i::B].nonzero()  # (view k, row, column)
            if len(index) > limit:
                index = index[torch.randperm(len(index), generator=self.generator)[:limit].to(index.device)]
            picks.append(index)
        count = max(len(index) for index in picks)
        if count == 0:
            return values.sum() * 0
        # pad every sample to `count` rays (view 0's corner pixel; masked out below)
        padded = torch.zeros(B, count, 3, dtype=torch.long, device=values.device)
        valid = torch.zeros(B, count, dtype=torch.bool, device=values.device)
        for i, index in enumerate(picks):
            padded[i, :len(index)], valid[i, :len(index)] = index, True
        camera = padded[..., 0] * B + torch.arange(B, device=values.device)[:, None]  # (B, count)
        uv = padded[..., [2, 1]].to(cameras.dtype) + 0.5
        origins, directions = cameras[camera.reshape(-1)].rays(uv.reshape(-1, 1, 2))
        origins, directions = origins[:, 0].to(values.dtype), directions[:, 0].to(values.dtype)
        lowest = self.lowest_on_rays(values, origins.reshape(B, count, 3), directions.reshape(B, count, 3))
        hinge = (lowest + self.config.margin * self.net.grid.cell).clamp_min(0.0)
        hinge = torch.where(valid & torch.isfinite(lowest), hinge, torch.zeros_like(hinge))
        rays = (valid & torch.isfinite(lowest)).sum(dim=1)
        return (hinge.sum(dim=1) / rays.clamp_min(1)).sum() / B

    def lowest_on_rays(self, values: Tensor, origins: Tensor, directions: Tensor, spacing: float = 0.5,
                       candidates: int = 4) -> Tensor:
        """(B, R) smallest grid value along each ray of each sample (origins, directions (B, R, 3)),
        over samples `spacing` cells apart inside the sphere around the grid's box: the `candidates`
        lowest by trilinear interpolation (fast), of which the lowest by the grid's own function
        (which marching tetrahedra meshes), chosen without gradients and evaluated again with them;
        +inf for a ray that misses the box."""
        net = self.net
        lo, hi = net.grid.bounds
        radius = hi * 3 ** 0.5  # the sphere around the grid's box
        near, far, _ = ray_sphere_interval(origins.reshape(-1, 3), directions.reshape(-1, 3), radius)
        count = max(2, math.ceil(2 * radius / (spacing * net.grid.cell)) + 1)
        t = torch.linspace(0.0, 1.0, count, device=values.device, dtype=values.dtype)
        depth = (near[:, None] + (far - near)[:, None] * t).reshape(*origins.shape[:2], count)
        points = origins[..., None, :] + depth[..., None] * directions[..., None, :]  # (B, R, K, 3)
        B, R = origins.shape[:2]
        with torch.no_grad():  # the lowest `candidates` samples by trilinear search, then exactly
            sampled = lattice_trilinear(values, points.reshape(B, -1, 3), net.config.grid, (lo, hi))
            sampled = sampled.reshape(B, R, count)
            k = min(candidates, count)
            nearest = torch.gather(points, 2, sampled.topk(k, dim=2, largest=False).indices[..., None].expand(B, R, k, 3))
            exact = lattice_evaluate(values, nearest.reshape(B, -1, 3), net.config.grid, (lo, hi)).reshape(B, R, k)
        lowest = torch.gather(nearest, 2, exact.argmin(dim=2)[..., None, None].expand(B, R, 1, 3))[:, :, 0]
        result = lattice_evaluate(values, lowest, net.config.grid, (lo, hi))
        return torch.where(torch.isfinite(sampled.min(dim=2).values), result, torch.full_like(result, math.inf))

    def carve(self, values: Tensor, objects: np.ndarray) -> Tensor:
        """Shrink over the volume: the (B, N) values of the lattice vertices outside each sample's
        visual hull (`hull_outside`) pushed past +margin; per sample the mean hinge over those
        vertices, averaged over the samples (as every term: so data-parallel shards average alike)."""
        outside = self.outside_hull[torch.as_tensor(objects, dtype=torch.long)].to(values.device)
        hinge = torch.where(outside, (self.config.margin * self.net.grid.cell - values).clamp_min(0.0), 0.0)
        return (hinge.sum(dim=1) / outside.sum(dim=1).clamp_min(1)).mean()


@torch.no_grad()
def hull_outside(split: Any, points: Tensor, chunk: int = 64) -> Tensor:
    """(objects, N) bool: the (N, 3) world points that lie outside each object's visual hull, i.e.
    project onto the background (mask < 0.5, or off the image) of at least one of the split's views
    of that object. Masks only: the split's alpha channels and cameras."""
    cameras = split.cameras.to(device=points.device, dtype=torch.float32)
    return torch.cat([(mask_coverage(cameras, masks, points) < 0.5).any(dim=0)
                      for masks in split_mask_chunks(split, points.device, chunk)])


def split_mask_chunks(split: Any, device: torch.device, chunk: int = 64):
    """The split's masks (alpha / 255), `chunk` objects at a time as channels of each view: (V, C, S, S)
    float32 tensors on `device`, in object order."""
    for first in range(0, len(split.images), chunk):
        masks = torch.from_numpy(np.ascontiguousarray(split.images[first:first + chunk, ..., 3]))
        yield masks.to(device, torch.float32).div_(255.0).transpose(0, 1)


def downscale_targets(masks: Tensor, normals: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """(V, S, S) masks and (V, S, S, 3) unit normal maps (0 on the background) -> the same `factor`
    times smaller per side: masks by their block mean (coverage), normals by the mean over the
    block's foreground, renormalised (0 where the block has none)."""
    small = torch.nn.functional.avg_pool2d(masks[:, None], factor)[:, 0]
    mean = torch.nn.functional.avg_pool2d(normals.permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1)
    length = mean.norm(dim=-1, keepdim=True)
    return small, torch.where(length > 1e-6, mean / length.clamp_min(1e-6), torch.zeros_like(mean))


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
    check_render_size(train_split, config.render_size)
    size = train_split.images.shape[2]
    net = TetNet(config.encoder, image_size=size, grid=config.grid, channels=config.channels,
                 head=config.head, norm=config.norm, basis=config.basis, pixel=config.pixel, init=config.init)
    encoder_from_normals_run(net.encoder, config.encoder_from)
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
