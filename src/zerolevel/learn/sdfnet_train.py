"""Training of SDFDiff's single-view network (`SDFNet`) through differentiable sphere tracing.

One job: the losses of a batch and the settings of `SDFNet`'s training; the step skeleton, validation,
resume, distribution and run folder are every network's (`learn.training`, `optim.loop`).

A step: every sample of the global batch is an object with two ring views a (the input) and b
(`PairSampler`, class-balanced), as SoftRas's pairs. The network maps image a to its lattices; each
lattice of the active levels is sphere-traced (`render.lattice_trace`, the whole batch in one march)
in views a and b at `render_size` pixels and compared with the dataset's images:

    w_image     * L1(shaded hit, target colour)   over pixels the lattice hits and the mask covers;
                  the shading is the dataset's own (Lambertian, its known light, ambient and object
                  colour per view: `learn.dataset.views.object_lighting`)
    w_mask      * BCE(soft silhouette, mask)      the soft silhouette sigmoid(-k f_min), k =
                  `soft_k` / cell, f_min the least value along the pixel's ray (as logits: its
                  gradient does not vanish far from the surface)
    w_eikonal   * mean of (|grad f| - 1)^2       over the lattice cubes within `band` cells of the
                  surface (forward differences from each cube's first corner)
    w_laplacian * mean of (lap f)^2              over the interior nodes within `band` cells, lap f the
                  7-point Laplacian times the cell (in cells: a plane's is 0, a sphere's of radius r
                  2 cell / r)
    w_carve     * carve (off by default): the lattice nodes outside the object's visual hull, carved
                  from the masks of all its training views once before the loop (tetnet_train's
                  `hull_outside`), pushed past +carve_margin cells, or with carve_floor="distance"
                  past a lower bound of their distance to the hull (`hull_distance`: so of their
                  distance to the object, which lies in its hull; the carved field stays one the
                  sphere tracer may step by, not a plateau at the margin)

each averaged over the samples, per level. Coarse to fine (the seed's multi-resolution idea): the
coarse lattice alone until `fine_at` iterations or the `fine_at_budget` fraction of the budget
(whichever comes first), then both levels, the coarse one's terms weighted `w_coarse`. Supervision is the split's images and
their masks (alpha) with the dataset's lighting record — never a mesh, voxels or normal maps
(`tests/test_sdfnet.py` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import losses as L
from ..cameras import Cameras
from ..geometry.visual_hull import hull_distance_bound
from ..optim.distributed import Distributed
from ..render.lattice_trace import Lattices, lattice_shading, render_lattices
from .dataset.views import object_lighting
from .encoders import ENCODERS
from .sdfnet import LEVELS, SDFNet
from .tetnet_train import hull_outside, split_mask_chunks
from .training import (Batch, TrainingConfig, TrainingTask, TrainResult, check_render_size,
                       encoder_from_normals_run, run_training)

TERMS = ("image", "mask", "eikonal", "laplacian", "carve")


@dataclass
class SDFNetTrainConfig(TrainingConfig):
    """Training settings of SDFDiff's single-view network (run settings: `TrainingConfig`)."""

    encoder: str = "baseline"          # encoders.py
    grid: int = 32                     # coarse lattice cells per axis (the fine one: twice as many)
    channels: tuple[int, ...] = (64, 32, 16)  # the coarse decoder's features (sdfnet.py)
    refine: int = 16                   # the refinement network's features (sdfnet.py)
    init: str = "he"                   # the network's starting weights ("he" or "torch")
    batch_size: int = 16
    lr: float = 3e-4
    iterations: int = 50_000
    decay_at: int = 30_000
    checkpoint_every: int = 250
    render_size: int | None = 64       # pixels per side of the loss renders (targets averaged down to
                                       # it); None: the dataset's; a divisor of it
    w_image: float = 1.0
    w_mask: float = 1.0
    w_eikonal: float = 0.1
    w_laplacian: float = 0.01
    w_carve: float = 0.0               # lattice nodes outside the object's visual hull pushed past
                                       # +carve_margin cells (tetnet_train's carve; 0: off)
    carve_margin: float = 0.1
    carve_floor: str = "margin"        # "margin": carved nodes pushed to +carve_margin cells; "distance":
                                       # to their distance to the hull (at least the margin)
    w_coarse: float = 1.0              # the coarse level's terms once both levels train
    band: float = 3.0                  # eikonal and Laplacian within this many cells of the surface
    soft_k: float = 2.0                # soft silhouette sharpness, per cell of the level's lattice
    max_steps: int = 48                # sphere-tracing steps per ray
    fine_at: int = 5_000               # iterations of the coarse level alone, then both ...
    fine_at_budget: float | None = 0.5  # ... or, with budget_s, until this fraction of it (the sooner)
    encoder_from: str | None = None    # a normals run (pix2pix) whose generator's first levels start
                                       # the "pix2pix" encoder (a fresh run only)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.render_size is not None and self.render_size < 8:
            raise ValueError(f"render_size must be >= 8 pixels, got {self.render_size}")
        if self.encoder_from is not None and self.encoder != "pix2pix":
            raise ValueError(f"encoder_from initialises the pix2pix encoder, not {self.encoder!r}")
        if self.band <= 0 or self.soft_k <= 0 or self.max_steps < 1 or self.fine_at < 0:
            raise ValueError("band and soft_k must be > 0, max_steps >= 1 and fine_at >= 0")
        if self.carve_floor not in ("margin", "distance"):
            raise ValueError(f"carve_floor must be margin or distance, got {self.carve_floor!r}")
        if self.fine_at_budget is not None and not 0 <= self.fine_at_budget <= 1:
            raise ValueError("fine_at_budget must be a fraction of the budget, in [0, 1]")


@dataclass
class SplitLighting:
    """The dataset's lighting of every (object, view) of a split, as tensors: light directions
    (N, V, 3) towards the light, intensities (N, V), ambient (N, V), object colours (N, 3). A split
    without a lighting record (`info["lighting"]`) is lit by the headlight."""

    directions: Tensor
    intensities: Tensor
    ambient: Tensor
    albedo: Tensor

    @staticmethod
    def of(split: Any) -> "SplitLighting":
        lighting = getattr(split, "info", {}).get("lighting", "headlight")
        cameras = split.cameras
        V = len(cameras)
        directions, intensities, ambient, albedo = [], [], [], []
        for object_id in getattr(split, "ids", None) or [str(i) for i in range(len(split))]:
            lit = object_lighting(lighting, object_id, cameras)
            directions.append([light.unit_direction() for light in lit.lights])
            intensities.append([light.intensity for light in lit.lights])
            ambient.append(np.broadcast_to(np.asarray(lit.ambient, dtype=np.float64), (V,)))
            albedo.append(lit.albedo)
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        return SplitLighting(as_tensor(directions), as_tensor(intensities), as_tensor(ambient), as_tensor(albedo))

    def views(self, objects: np.ndarray, views: np.ndarray, device: torch.device, dtype: torch.dtype
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(directions (B, 3), intensities (B,), ambient (B,), albedo (B, 3)) of (object, view) pairs."""
        o, v = torch.as_tensor(objects, dtype=torch.long), torch.as_tensor(views, dtype=torch.long)
        return tuple(x.to(device, dtype) for x in (self.directions[o, v], self.intensities[o, v],
                                                  self.ambient[o, v], self.albedo[o]))


class SDFNetTraining(TrainingTask):
    """SDFNet's task for the shared loop: its batch losses (module docstring) and the coarse-to-fine switch."""

    loss_names = ("loss", *(f"{level}_{term}" for level in LEVELS for term in TERMS))
    plotted = ("loss", "coarse_image", "coarse_mask", "fine_image", "fine_mask")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lighting = SplitLighting.of(self.train_split)
        self.fine_from: int | None = None  # the iteration the budget-triggered fine level started at
        self.current_levels: tuple[str, ...] = LEVELS  # the levels of the step being taken (`step` sets them)
        # (objects, n^3) coarse lattice nodes outside each training object's visual hull (the carve term);
        # the fine lattice's even nodes are the same points
        self.outside_hull = None
        self.hull_distance = None  # (objects, n^3) float16 world units, with carve_floor="distance"
        if self.config.w_carve:
            c = self.net.config
            axis = torch.linspace(-c.bounds, c.bounds, c.grid + 1, device=self.device)
            nodes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
            self.outside_hull = hull_outside(self.train_split, nodes)
            if self.config.carve_floor == "distance":
                self.hull_distance = hull_distance(self.train_split, nodes)

    def budget_events(self) -> list[tuple[float, Any]]:
        events = super().budget_events()
        if self.config.fine_at_budget is not None:
            events.append((self.config.fine_at_budget, self.start_fine))
        return events

    def start_fine(self, iterations_done: int) -> None:
        """The budget-triggered fine level: from the next step on."""
        self.fine_from = iterations_done

    def levels(self, iteration: int) -> tuple[str, ...]:
        """The levels trained at a 0-based iteration."""
        start = self.config.fine_at if self.fine_from is None else min(self.config.fine_at, self.fine_from)
        return LEVELS if iteration >= start else ("coarse",)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fine_from": self.fine_from}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fine_from = state["fine_from"]

    def step(self, iteration: int) -> dict[str, float]:
        self.current_levels = self.levels(iteration)
        return super().step(iteration)

    def batch_losses(self, batch: Batch) -> dict[str, Tensor]:
        cfg = self.config
        lattices = self.model(batch.images_a, levels=self.current_levels)
        targets = self.targets(batch)
        parts: dict[str, Tensor] = {}
        zero = batch.images_a.new_zeros(())
        for level in LEVELS:
            terms = self.level_terms(lattices[level], *targets) if level in lattices else {}
            if level in lattices and self.outside_hull is not None:
                terms["carve"] = self.carve(lattices[level], batch.objects)
            for term in TERMS:
                parts[f"{level}_{term}"] = terms.get(term, zero)
        weights = {"image": cfg.w_image, "mask": cfg.w_mask, "eikonal": cfg.w_eikonal, "laplacian": cfg.w_laplacian,
                   "carve": cfg.w_carve}
        scale = {"coarse": cfg.w_coarse if "fine" in lattices else 1.0, "fine": 1.0}
        parts["loss"] = sum(scale[level] * weights[term] * parts[f"{level}_{term}"]
                            for level in LEVELS for term in TERMS)
        return parts

    def carve(self, values: Tensor, objects: np.ndarray) -> Tensor:
        """The carve term of one level's (B, n, n, n) lattices: per sample, the mean hinge pushing its
        nodes outside the object's visual hull past +carve_margin cells (or past their distance to the
        hull, `carve_floor="distance"`, at least the margin), averaged over the samples
        (the fine lattice is read at its even nodes, the coarse lattice's points)."""
        step = (values.shape[-1] - 1) // self.net.config.grid
        cell = 2.0 * self.net.config.bounds / (values.shape[-1] - 1)
        nodes = values[:, ::step, ::step, ::step].reshape(len(values), -1)
        index = torch.as_tensor(objects, dtype=torch.long)
        outside = self.outside_hull[index].to(values.device)
        floor = torch.as_tensor(self.config.carve_margin * cell, dtype=values.dtype, device=values.device)
        if self.hull_distance is not None:
            floor = self.hull_distance[index].to(values.device, values.dtype).clamp_min(floor)
        hinge = torch.where(outside, (floor - nodes).clamp_min(0.0), 0.0)
        return (hinge.sum(dim=1) / outside.sum(dim=1).clamp_min(1)).mean()

    def targets(self, batch: Batch) -> tuple[Cameras, Tensor, Tensor, tuple[Tensor, ...]]:
        """The (2B) views a then b at `render_size`: cameras, masks (2B, s, s), colours (2B, s, s, 3)
        (un-premultiplied; 0 where the mask is) and their lighting."""
        cfg, device, dtype = self.config, self.device, self.config.torch_dtype
        cameras = Cameras.cat([batch.cameras_a, batch.cameras_b])
        images = torch.cat([batch.images_a, batch.images_b])  # (2B, 4, S, S), RGB premultiplied
        factor = images.shape[-1] // cfg.render_size if cfg.render_size else 1
        if factor > 1:
            cameras, images = cameras.downscaled(factor), F.avg_pool2d(images, factor)
        masks = images[:, 3]
        colours = (images[:, :3] / masks[:, None].clamp_min(1e-6)).clamp(0.0, 1.0).permute(0, 2, 3, 1)
        objects = np.concatenate([batch.objects, batch.objects])
        views = np.concatenate([batch.view_a, batch.view_b])
        return cameras, masks, colours, self.lighting.views(objects, views, device, dtype)

    def level_terms(self, values: Tensor, cameras: Cameras, masks: Tensor, colours: Tensor,
                    lighting: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """The terms of one level's (B, n, n, n) lattices seen by the (2B) cameras (sample i's views
        at i and i + B), each a mean over the samples."""
        cfg, B = self.config, len(values)
        lattices = Lattices(values, self.net.config.bounds)
        view_lattice = torch.arange(len(cameras), device=values.device) % B
        out = render_lattices(lattices, cameras, view_lattice, soft_k=cfg.soft_k / lattices.cell,
                              max_steps=cfg.max_steps)
        both = out["mask"] & (masks > 0.5)
        shaded = lattice_shading(out["normal"], both, *lighting)
        error = torch.where(both[..., None], (shaded - colours).abs(), 0.0).sum(dim=(-1, -2, -3))  # (2B,)
        image = (error.reshape(2, B).sum(0) / (3 * both.reshape(2, B, -1).sum(dim=(0, 2))).clamp_min(1)).mean()
        logits = -cfg.soft_k / lattices.cell * out["min_sdf"]
        mask = F.binary_cross_entropy_with_logits(logits, masks.to(logits.dtype))
        eikonal, laplacian = near_surface_regularisers(values, lattices.cell, cfg.band)
        return {"image": image, "mask": mask, "eikonal": eikonal, "laplacian": laplacian}


def hull_distance(split: Any, points: Tensor, chunk: int = 64) -> Tensor:
    """(objects, N) float16: a lower bound of each of the (N, 3) world points' distance to each object's
    visual hull (`geometry.visual_hull.hull_distance_bound` over the split's masks and cameras; 0
    where a point may lie in it), so a lower bound of its distance to the object."""
    cameras = split.cameras.to(device=points.device, dtype=torch.float32)
    return torch.cat([hull_distance_bound(cameras, masks, points.float()).half()
                      for masks in split_mask_chunks(split, points.device, chunk)])


def near_surface_regularisers(values: Tensor, cell: float, band: float) -> tuple[Tensor, Tensor]:
    """(eikonal, Laplacian) terms of (B, n, n, n) lattices: the mean of (|grad f| - 1)^2 over the cubes
    whose first corner lies within `band` cells of the surface (forward differences), and of the
    squared 7-point Laplacian (times the cell: in cells) over the interior nodes within the band.
    Only those nodes are read, in one gather from the flattened lattices (a band is a small part of a
    fine lattice, and one gather's backward is one dense gradient, not one per neighbour)."""
    n = values.shape[-1]
    near = values.detach().abs() < band * cell
    steps = torch.tensor([n * n, n, 1], device=values.device)  # the flat index's step along x, y, z
    zero = steps.new_zeros(1)

    def nodes(region: Tensor, offset: int) -> Tensor:  # flat indices of a sub-block's near nodes
        b, i, j, k = torch.nonzero(region).unbind(1)
        return ((b * n + i + offset) * n + j + offset) * n + k + offset

    corner, inner = nodes(near[:, :-1, :-1, :-1], 0), nodes(near[:, 1:-1, 1:-1, 1:-1], 1)
    # each corner and its 3 forward neighbours, each inner node and its 6 neighbours
    index = torch.cat([(corner[:, None] + torch.cat([zero, steps])).reshape(-1),
                       (inner[:, None] + torch.cat([zero, steps, -steps])).reshape(-1)])
    read = values.reshape(-1).index_select(0, index)  # index_select: its backward is an index_add
    cube, star = read[: 4 * len(corner)].reshape(-1, 4), read[4 * len(corner):].reshape(-1, 7)
    nothing = values.sum() * 0
    gradient = (cube[:, 1:] - cube[:, :1]) / cell
    eikonal = (gradient.norm(dim=-1) - 1.0).square().mean() if len(corner) else nothing
    laplacian = ((star[:, 1:].sum(dim=1) - 6.0 * star[:, 0]) / cell).square().mean() if len(inner) else nothing
    return eikonal, laplacian


def _make_task(train_split: Any, val_split: Any, config: SDFNetTrainConfig, dist: Distributed,
               device: torch.device) -> SDFNetTraining:
    check_render_size(train_split, config.render_size)
    size = train_split.images.shape[2]
    net = SDFNet(config.encoder, image_size=size, grid=config.grid, channels=config.channels,
                 refine=config.refine, init=config.init)
    encoder_from_normals_run(net.encoder, config.encoder_from)
    net = net.to(device, config.torch_dtype)
    return SDFNetTraining(net, train_split, val_split, config, dist, device)


def train(dataset: str | Path | Any, run_dir: str | Path, config: SDFNetTrainConfig | None = None,
          device: str | torch.device | None = None, *, val: Any = None, resume: bool = False,
          progress: bool = True, threads: int | None = None) -> TrainResult:
    """Train an SDFNet from the images and masks of a ring dataset (with its lighting record).

    Arguments as `learn.train.train` (SoftRas's).
    """
    config = config or SDFNetTrainConfig()
    return run_training(_make_task, dataset, run_dir, config, "sdfnet", device, val=val, resume=resume,
                        progress=progress, threads=threads, desc=f"training sdfnet ({config.encoder})")
