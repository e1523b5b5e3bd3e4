"""SDFDiff (Jiang et al., CVPR 2020): a dense SDF lattice fitted to multi-view images by
differentiable sphere tracing, coarse to fine.

The wiring of the method, nothing else: a `DenseGridSDF` initialised to a sphere, sphere-traced
renders (`render.spheretrace`: visibility without gradients, implicit-differentiated hits, normals
by central differences one voxel apart as SDFDiff computes them, a soft silhouette on the minimum
SDF along each ray) compared with the views, and the losses

    w_image * L1(Lambertian shading under the scene's lights, image)    where both see the object
    + w_normal * L1(rendered normal, input normal)                       where both see the object
    + w_mask * BCE(soft silhouette, mask)    (background pixels weighted `mask_background_weight`)
    + w_eikonal * mean((|grad f|^2 - 1)^2) + w_laplacian * mean((lap f)^2)   over the lattice,

each image term used when every view has it (grey shaded images only: a colour photograph is not a
Lambertian render under known lights); without masks, normal maps give the silhouettes (their
background is (0, 0, 0)). The lattice grows through `resolutions` (SDFDiff: 8, 16, ...,
64) by trilinear upsampling, optionally re-distanced, with the learning rate divided by 1.03 per
level; the views are rendered at a resolution tied to the lattice's (`pixels_per_node`), so coarse
levels see area-averaged images.

Two schedules drive the updates (one loop iteration = one optimiser step):
- "plain": each step renders `rays_per_iter` random pixels drawn from all views.
- "greedy" (SDFDiff's): views are visited in turn, one whole view per step; a view whose loss is
  above the mean of the previous round's losses gets up to 20 steps, the others 5; a view's turn ends
  as soon as its loss rises (that step is not applied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh
from scipy import ndimage

from .. import losses as L
from ..cameras import Cameras
from ..errors import InputError
from ..fields.analytic import SphereSDF
from ..fields.grid import DenseGridSDF, node_positions
from ..geometry.visual_hull import HullDistance
from ..geometry.narrowband import marching_cubes_narrow_band
from ..render.lights import DirectionalLight
from ..render.shading import lambertian, light_tensors
from ..render.spheretrace import sphere_trace
from ..scene import Scene
from .base import LevelledFit, level_starts, scene_targets
from .views import resample_views

SCHEDULES = ("plain", "greedy")


@dataclass
class SDFDiffConfig:
    """Settings; the schedule constants are SDFDiff's published ones."""

    resolutions: tuple[int, ...] = (16, 24, 32, 48, 64, 96)  # lattice nodes per axis, level by level
    level_shares: tuple[float, ...] | None = None  # fraction of the iterations per level (None: by size)
    pixels_per_node: float = 4.0        # render resolution = min(input, pixels_per_node * lattice)
    schedule: str = "plain"             # "plain" or "greedy"
    rays_per_iter: int = 12288          # plain schedule: random pixels per step
    lr: float = 0.4                     # Adam step at the first level, in voxels of the current lattice,
    lr_decay_per_level: float = 1.6     # divided by this per level (SDFDiff: 1.03): large early steps to
                                        # grow, small late ones to settle; flat rates either do not settle
                                        # (0.5, 0.1) or grow too slowly in 300 it. (0.05) (ablations.md,
                                        # sdfdiff_lr: spot from shading + masks, 32 views 256^2)
    lr_floor: float = 1.0               # ... and within a level it may decay (cosine) to this fraction
    w_image: float = 1.0
    image_with_normals: bool = False    # use shaded images when normal maps are there too (worse:
                                        # ablations.md sdfdiff_images)
    w_normal: float = 1.0
    w_mask: float = 0.5
    mask_background_weight: float = 1.0  # mask loss weight of background pixels (foreground: 1); > 1
                                         # leans a fit of slightly inconsistent real silhouettes to the
                                         # intersection of their cones (the visual hull), not the average
    w_eikonal: float = 0.1
    w_laplacian: float = 0.02
    regulariser_nodes: int = 0          # > 0: the regularisers at this many random nodes per step, drawn
                                        # within `regulariser_band` voxels of the surface (0: every node)
    regulariser_band: float = 4.0
    normal_mode: str = "fd"             # rendered normals: "fd" (central differences one voxel apart,
                                        # SDFDiff) or "autograd" (the trilinear field's own gradient)
    soft_k: float = 50.0                # soft silhouette sharpness at the first level ...
    soft_k_per_node: float = 1.5        # ... and soft_k = max(soft_k, soft_k_per_node * lattice)
    init: str = "sphere"                # the starting lattice: "sphere" (SDFDiff) or "hull" (the masks'
                                        # visual hull: thin parts and holes are there from the start)
    init_radius: float = 0.6            # the sphere's radius
    w_hull: float = 0.0                 # weight of the hull bound: mean over the lattice's nodes of
                                        # max(0, hull SDF - f) / voxel (the object lies in its visual hull,
                                        # so its SDF is nowhere below the hull's): pulls in what the masks
                                        # carve, at every node, not only where a sampled ray passes
    hull_resolution: int = 96           # the lattice the hull's signed distance is sampled on
    redistance: bool = True             # re-distance the lattice after each upsampling
    greedy_high: int = 20               # greedy: most steps of a view above the mean loss ...
    greedy_low: int = 5                 # ... and of the others
    ambient: float = 0.1                # shading model of the images (as `zerolevel render`)


class SDFDiff(LevelledFit):
    """The method object that `optim.loop.run_loop` drives (step / state_dict / load_state_dict)."""

    name = "sdfdiff"

    def __init__(self, scene: Scene, iters: int, config: SDFDiffConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, source: str = "scene"):
        super().__init__(scene, iters, config or SDFDiffConfig(), device, seed)
        c = self.config
        if c.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {c.schedule!r}")
        modalities = scene.modalities()
        grey_images = "image" in modalities and scene.views[0].image.ndim == 2 and (
            c.image_with_normals or "normal" not in modalities)
        kinds = ("normal", "mask", "image") if grey_images else ("normal", "mask")
        if not {"normal", "mask", "image"} & modalities:
            raise InputError("the scene has no normal maps, masks or shaded images in every view: "
                             "nothing to fit", source)
        self.targets = scene_targets(scene, self.device, kinds, source=source) if set(kinds) & modalities else {}
        self.full_cameras = scene.cameras(device=self.device)
        self.lights = light_tensors(_scene_lights(scene), self.full_cameras)
        self.level_starts = level_starts(self.iters, c.level_shares if c.level_shares is not None
                                         else c.resolutions)
        if len(self.level_starts) != len(c.resolutions):
            raise ValueError("level_shares needs one positive share per resolution")
        self.greedy = {"view": 0, "steps": 0, "budget": 0, "last": math.inf, "losses": [], "mean": math.inf}
        self.hull = self._hull_field(source) if c.init == "hull" or c.w_hull > 0 else None
        self.field = self._initial_field(source)
        self._enter_level(0, refine=False)

    def _hull_field(self, source: str) -> DenseGridSDF:
        """The masks' visual hull as a signed distance lattice (`hull_signed_distance`)."""
        if "mask" not in self.targets:
            raise InputError("init=hull and w_hull need masks (or normal maps, whose background gives them)", source)
        hull = DenseGridSDF.from_function(HullDistance(self.full_cameras, self.targets["mask"]),
                                          self.config.hull_resolution, device=self.device)
        if not bool((hull.values < 0).any()):
            raise InputError("the masks' visual hull is empty: no point is inside every silhouette "
                             "(do the masks and cameras agree?)", source)
        return hull

    def _initial_field(self, source: str) -> DenseGridSDF:
        """The first level's lattice: a sphere, or the visual hull's signed distance."""
        c = self.config
        if c.init == "sphere":
            return DenseGridSDF.from_function(SphereSDF((0.0, 0.0, 0.0), c.init_radius), c.resolutions[0],
                                              device=self.device)
        if c.init != "hull":
            raise ValueError(f"init must be 'sphere' or 'hull', got {c.init!r}")
        return DenseGridSDF.from_function(self.hull, c.resolutions[0], device=self.device)

    # ------------------------------------------------------------------ levels
    def _enter_level(self, level: int, refine: bool = True) -> None:
        """Switch to lattice `level`: upsample (and re-distance) the field, new optimiser and targets."""
        c = self.config
        if refine:
            self.field = self.field.upsample(c.resolutions[level])
            if c.redistance:
                self.field.values.data = redistance(self.field.values.data, float(self.field.voxel_size.max()))
        self.level = level
        voxel = float(self.field.voxel_size.max())
        self.base_lr = c.lr * voxel / c.lr_decay_per_level ** level
        self.optimizer = torch.optim.Adam([self.field.values], lr=self.base_lr, betas=(0.9, 0.99))
        self.cameras, self.level_targets = self._level_views(c.resolutions[level])
        self.pixels = self.cameras.pixel_centers().reshape(-1, 2)  # a whole view, for the greedy schedule
        self.hull_nodes = None
        if self.hull is not None and c.w_hull > 0:
            with torch.no_grad():
                nodes = node_positions(self.field.values.shape, self.field.lo, self.field.hi)
                self.hull_nodes = self.hull(nodes.reshape(-1, 3)).reshape(self.field.values.shape)
        self.soft_k = max(c.soft_k, c.soft_k_per_node * c.resolutions[level])

    def _level_views(self, lattice: int) -> tuple[Cameras, dict[str, torch.Tensor]]:
        """Cameras and targets at the render resolution tied to the lattice (area-averaged images)."""
        width = max(8, round(self.config.pixels_per_node * lattice))
        cameras, targets = resample_views(self.full_cameras, self.targets, width)
        return cameras, _unmix_images(targets)

    # ------------------------------------------------------------------ one step
    def _update(self, iteration: int) -> dict[str, float]:
        if self.config.schedule == "greedy":
            return self._greedy_step()
        views, uv = self._random_pixels()
        return self._update_pixels(views, uv)

    def _random_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`rays_per_iter` random pixel centres over all views: view index (N,), uv (N, 2)."""
        cams = self.cameras
        n = self.config.rays_per_iter
        views = torch.randint(0, len(cams), (n,), generator=self.generator)
        cols = torch.randint(0, cams.width, (n,), generator=self.generator)
        rows = torch.randint(0, cams.height, (n,), generator=self.generator)
        uv = torch.stack([cols, rows], -1).to(cams.dtype) + 0.5
        return views.to(self.device), uv.to(self.device)

    def _greedy_step(self) -> dict[str, float]:
        """One step of SDFDiff's per-view schedule on the current view (module docstring)."""
        g, c = self.greedy, self.config
        cams = self.cameras
        view = g["view"]
        views = torch.full((len(self.pixels),), view, device=self.device, dtype=torch.long)
        losses, total = self._losses(views, self.pixels)
        value = total.item()
        if g["steps"] == 0:
            g["budget"] = c.greedy_high if value > g["mean"] else c.greedy_low
        rose = g["steps"] > 0 and value > g["last"]
        if not rose:
            self._apply(total)
        g["steps"] += 1
        g["last"] = value
        if rose or g["steps"] >= g["budget"]:
            g["losses"].append(value)
            g["view"], g["steps"], g["last"] = (view + 1) % len(cams), 0, math.inf
            if g["view"] == 0:  # a round is over: its mean is the next round's bar
                g["mean"], g["losses"] = float(np.mean(g["losses"])), []
        report = {name: v.item() for name, v in losses.items()}
        report["view"] = float(view)
        return report

    def _update_pixels(self, views: torch.Tensor, uv: torch.Tensor) -> dict[str, float]:
        losses, total = self._losses(views, uv)
        self._apply(total)
        return {name: v.item() for name, v in losses.items()}

    def _losses(self, views: torch.Tensor, uv: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Render the pixels `uv` (N, 2) of `views` (N,) and compare them with the targets."""
        c, cams = self.config, self.cameras
        origins, directions = cams[views].rays(uv[:, None, :])
        out = sphere_trace(self.field, origins[:, 0], directions[:, 0], soft="mask" in self.level_targets,
                           soft_k=self.soft_k, normal_mode=c.normal_mode)
        rows = (uv[:, 1] - 0.5).long()
        cols = (uv[:, 0] - 0.5).long()
        target = {name: value[views, rows, cols] for name, value in self.level_targets.items()}
        seen = out["mask"]
        if "mask" in target:
            seen = seen & (target["mask"] > 0.5)
        weight = seen.float()
        losses: dict[str, torch.Tensor] = {}
        if "image" in target:
            dirs, intensities = self.lights
            shade = lambertian(out["normal"], dirs[views], intensities[views], c.ambient)
            losses["image"] = c.w_image * L.shading_l1(shade, target["image"], weight)
        if "normal" in target:
            losses["normal"] = c.w_normal * L.normal_l1(out["normal"], target["normal"], weight)
        if "mask" in target:
            pixel_weight = 1.0 + (c.mask_background_weight - 1.0) * (1.0 - target["mask"])
            losses["mask"] = c.w_mask * L.mask_bce(out["soft_mask"], target["mask"], pixel_weight)
        voxel = float(self.field.voxel_size.max())
        if self.hull_nodes is not None:
            losses["hull"] = c.w_hull * (self.hull_nodes - self.field.values).clamp_min(0.0).mean() / voxel
        nodes = None
        if c.regulariser_nodes > 0:
            nodes = band_nodes(self.field.values.detach(), voxel, c.regulariser_band, c.regulariser_nodes,
                               self.generator)
        eikonal, laplacian = lattice_regularisers(self.field.values, voxel, nodes)
        losses["eikonal"] = c.w_eikonal * eikonal
        losses["laplacian"] = c.w_laplacian * laplacian
        return losses, sum(losses.values())

    # ------------------------------------------------------------------ results
    def extract(self, resolution: int = 256, progress: bool = False) -> trimesh.Trimesh:
        """The zero level set as a mesh in the input's units (narrow band, largest component)."""
        mesh = marching_cubes_narrow_band(self.field, resolution, device=self.device,
                                          keep_largest_component=True, to_world=self.scene.to_world,
                                          progress=progress)
        if len(mesh.faces) == 0:
            raise RuntimeError("the fitted lattice has no zero level set inside the unit sphere")
        return mesh

    def state_dict(self) -> dict[str, Any]:
        return {**self.common_state(), "values": self.field.values.detach().clone(),
                "bounds": self.field.bounds.clone(),
                "greedy": dict(self.greedy, losses=list(self.greedy["losses"]))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.field = DenseGridSDF(state["values"].to(self.device), state["bounds"])
        self.load_common_state(state)
        self.greedy = dict(state["greedy"], losses=list(state["greedy"]["losses"]))


def field_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> tuple[DenseGridSDF, np.ndarray]:
    """The fitted lattice and the scene's `to_world` from an SDFDiff state (a checkpoint's "method")."""
    field = DenseGridSDF(state["values"].to(device), state["bounds"])
    return field, np.asarray(state["to_world"], dtype=np.float64)


def lattice_regularisers(values: torch.Tensor, voxel: float, nodes: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDFDiff's regularisers over the lattice's interior nodes, by central differences:
    eikonal mean((|grad f|^2 - 1)^2) and Laplacian smoothness mean((lap f * voxel)^2) (the
    Laplacian in units of 1 / voxel, so that its weight does not depend on the resolution).
    With `nodes` ((M,) flat indices of interior nodes), only at those: the same stencils gathered,
    a fraction of the cost on a large lattice."""
    if nodes is not None:
        return _regularisers_at(values, voxel, nodes)
    v = values
    centre = v[1:-1, 1:-1, 1:-1]
    dx = (v[2:, 1:-1, 1:-1] - v[:-2, 1:-1, 1:-1]) / (2 * voxel)
    dy = (v[1:-1, 2:, 1:-1] - v[1:-1, :-2, 1:-1]) / (2 * voxel)
    dz = (v[1:-1, 1:-1, 2:] - v[1:-1, 1:-1, :-2]) / (2 * voxel)
    eikonal = ((dx.square() + dy.square() + dz.square()) - 1.0).square().mean()
    lap = (v[2:, 1:-1, 1:-1] + v[:-2, 1:-1, 1:-1] + v[1:-1, 2:, 1:-1] + v[1:-1, :-2, 1:-1]
           + v[1:-1, 1:-1, 2:] + v[1:-1, 1:-1, :-2] - 6 * centre) / voxel
    return eikonal, lap.square().mean()


def _regularisers_at(values: torch.Tensor, voxel: float, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = values.reshape(-1)
    strides = values.stride()
    centre = flat[nodes]
    plus = [flat[nodes + step] for step in strides]
    minus = [flat[nodes - step] for step in strides]
    gradient2 = sum(((p - m) / (2 * voxel)).square() for p, m in zip(plus, minus))
    lap = (sum(plus) + sum(minus) - 6 * centre) / voxel
    return (gradient2 - 1.0).square().mean(), lap.square().mean()


@torch.no_grad()
def band_nodes(values: torch.Tensor, voxel: float, width: float, count: int, generator: torch.Generator
               ) -> torch.Tensor:
    """(count,) random flat indices of interior lattice nodes within `width` voxels of the zero
    level set (|f| < width * voxel), drawn with replacement; any interior nodes when none is."""
    interior = torch.zeros_like(values, dtype=torch.bool)
    interior[1:-1, 1:-1, 1:-1] = values[1:-1, 1:-1, 1:-1].abs() < width * voxel
    candidates = interior.reshape(-1).nonzero()[:, 0]
    if len(candidates) == 0:
        interior[1:-1, 1:-1, 1:-1] = True
        candidates = interior.reshape(-1).nonzero()[:, 0]
    pick = torch.randint(0, len(candidates), (count,), generator=generator).to(candidates.device)
    return candidates[pick]


@torch.no_grad()
def redistance(values: torch.Tensor, voxel: float) -> torch.Tensor:
    """Restore distances away from the zero level set, keeping it where it is.

    Nodes next to a sign change keep their values (they place the surface); every other node gets
    the distance to the nearest such node plus that node's own |value| (a Euclidean distance
    transform), with its sign. Cheap (scipy), exact enough to sphere-trace by, and it undoes the
    flattening that trilinear upsampling and smoothing leave far from the surface.
    """
    v = values.detach().cpu().numpy()
    inside = v < 0
    band = np.zeros_like(inside)
    for axis in range(3):
        change = np.diff(inside, axis=axis)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        band[tuple(lo)] |= change
        band[tuple(hi)] |= change
    if not band.any():
        return values
    distance, nearest = ndimage.distance_transform_edt(~band, return_indices=True)
    base = np.abs(v)[tuple(nearest)]
    magnitude = np.where(band, np.abs(v), distance * voxel + base)
    out = np.where(inside, -magnitude, magnitude).astype(v.dtype)
    return torch.as_tensor(out, device=values.device)


def _unmix_images(targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Shading of the object alone at silhouette pixels: an image over a black background that
    covers a fraction m of a pixel holds m * shading (anti-aliasing, area averaging), so where the
    mask says the pixel is mostly object the image is divided by the coverage. Without this the
    darker rim pulls rendered normals away from the lights."""
    if "image" in targets and "mask" in targets:
        mask = targets["mask"]
        unmixed = (targets["image"] / mask.clamp_min(1e-3)).clamp(0.0, 1.0)
        targets["image"] = torch.where(mask > 0.5, unmixed, targets["image"])
    return targets


def _scene_lights(scene: Scene) -> list[list[DirectionalLight] | None]:
    """Per-view lights as the renderer takes them: a one-light list per view (a flat list of
    lights would mean all of them in every view), None for the headlight `zerolevel render` uses."""
    return [None if v.light is None else [DirectionalLight(v.light["direction"], v.light.get("intensity", 1.0))]
            for v in scene.views]


def mesh_from_state(state: dict[str, Any], resolution: int = 256, device: str | torch.device = "cpu",
                    progress: bool = False) -> trimesh.Trimesh:
    """The fitted surface of an SDFDiff state in the input's units: narrow-band marching cubes of the
    lattice at `resolution`, largest component."""
    field, to_world = field_from_state(state, device)
    return marching_cubes_narrow_band(field, resolution, device=device, keep_largest_component=True,
                                      to_world=to_world, progress=progress)
