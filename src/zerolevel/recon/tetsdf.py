"""Tet-grid SDF fitted to normal maps and masks (Wu, Thomas, Fedkiw: "Weakly-supervised 3D
reconstruction of clothed humans via normal maps"), the multi-view fit.

The wiring of the method: SDF values on the vertices of a `TetGrid` -> differentiable marching
tetrahedra -> a triangle mesh -> rasterised normal maps and antialiased masks of a few views per step
(`render.raster`) -> losses

    w_normal    * L1(rendered normal, input normal)      over pixels both call foreground
    w_mask      * L2(antialiased coverage, input mask)   (gradients along silhouette edges)
    w_shrink    * shrink: a pixel rendered as foreground where the input mask is background pushes
                  up the inside SDF values of the grid edges under its visible triangle
    w_expand    * expand: an input-foreground pixel the mesh misses pulls down the smallest SDF
                  value along its ray, so the surface grows out to cover it
    w_eikonal   * mean over the tetrahedra of (|grad f| - 1)^2 (the gradient of the
                  linear function on each tetrahedron: finite differences along its edges), over
                  the whole band so that values away from the surface do not drift
    w_curvature * area of the mesh: its gradient with respect to the mesh vertices is the mean
                  curvature normal, so descending it moves the surface by mean curvature.

Surface energies (normals, masks, shrink, area) reach the SDF values through the marching step's
crossing points (the paper's Lagrangian view); volumetric ones (eikonal, expand) act on the grid
directly. The grid starts as the visual hull of the masks (signed distance by EDT) on a coarse
lattice and is subdivided in a band around the surface level by level (`TetGrid.subdivide`, which
keeps the same piecewise-linear function); the surface must stay in the band, so the band is
re-selected at every level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage

from ..errors import InputError
from ..geometry.marching import marching_tetrahedra
from ..geometry.tetgrid import KUHN_GRADIENT, TetGrid
from ..render.raster import render_normals
from ..scene import Scene
from .views import resample_views
from .visual_hull import VisualHullField


@dataclass
class TetSDFConfig:
    """Settings of the tet-grid fit."""

    resolutions: tuple[int, ...] = (32, 64, 128)  # lattice cubes per axis, level by level (each x2);
                                         # (64, 128) for figures with limbs ~1 cell of 32 thick, which
                                         # the 32 level bloats (MakeHuman F@0.5% 0.74 -> 0.84, ~1.8x time)
    level_shares: tuple[float, ...] = (0.3, 0.35, 0.35)  # fraction of the iterations per level
    band: int = 2                        # coarse cubes kept on each side of the surface when subdividing
    pixels_per_cube: float = 2.0         # render resolution = min(input, this * lattice)
    views_per_iter: int = 4
    lr: float = 0.1                      # Adam step in cells of the current lattice (Spot, 16 views at
                                         # 128^2, 32^3 lattice, 100 it.: F@0.5% 0.895 at 0.02, 0.91 at
                                         # 0.05-0.2; 0.5 diverges: Adam moves every value ~lr a step)...
    lr_floor: float = 0.1                # ... decaying (cosine) to this fraction within a level
    lr_decay_per_level: float = 2.5      # ... and divided by this at each finer level: with 1.0 the 128
                                         # level lost accuracy in long runs (32 views 256^2, 600 it.: Lee
                                         # Perry-Smith F@0.5% 0.944 at 300 -> 0.906 at 600, spot 0.994 ->
                                         # 0.981); 1.6: 0.943, 0.9999; 2.5: 0.953, nefertiti 0.982 -> 0.994
    w_normal: float = 1.0
    w_mask: float = 1.0
    w_shrink: float = 0.1
    w_expand: float = 0.1
    w_eikonal: float = 0.1
    w_curvature: float = 0.01
    eikonal_cells: float | None = None   # eikonal over tetrahedra with a value within this many cells
                                         # of zero (None: every tetrahedron of the band). Within 2 cells
                                         # only, the rest of the band drifted and long runs degraded
                                         # (nefertiti, 16 views 128^2, 600 it.: 0.95 -> 0.93; all: 0.97 ->
                                         # 0.991 -> 0.991)
    margin: float = 0.1                  # shrink / expand push values this many cells past zero
    expand_rays: int = 1024              # at most this many uncovered pixels per step
    init: str = "visual_hull"            # "visual_hull" (of the masks) or "sphere"
    init_radius: float = 0.6


class TetSDF:
    """The method object that `optim.loop.run_loop` drives (step / state_dict / load_state_dict)."""

    def __init__(self, scene: Scene, iters: int, config: TetSDFConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, source: str = "scene"):
        self.config = config or TetSDFConfig()
        c = self.config
        if len(c.level_shares) != len(c.resolutions) or any(b != 2 * a for a, b in
                                                               zip(c.resolutions, c.resolutions[1:])):
            raise ValueError("resolutions must double level by level, with one share per level")
        self.iters = max(1, iters)
        self.device = torch.device(device)
        self.scene = scene
        modalities = scene.modalities()
        if not {"normal", "mask"} & modalities:
            raise InputError("the scene has no normal maps or masks in every view: nothing to fit", source)
        self.full_cameras = scene.cameras(device=self.device)
        self.gradient_operator = torch.as_tensor(KUHN_GRADIENT, dtype=torch.float32, device=self.device)
        self.targets: dict[str, torch.Tensor] = {}
        if "normal" in modalities:
            self.targets["normal"] = torch.as_tensor(scene.stack("normal"), device=self.device).float()
        if "mask" in modalities:
            self.targets["mask"] = torch.as_tensor(scene.stack("mask"), device=self.device).float()
        else:  # normal maps have a (0, 0, 0) background: their own silhouettes
            self.targets["mask"] = (self.targets["normal"].norm(dim=-1) > 0.5).float()
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.step_scale = 1.0  # scaled down by the loop when it recovers from a non-finite loss
        torch.manual_seed(seed)
        bounds = np.concatenate([[0.0], np.cumsum(c.level_shares) / np.sum(c.level_shares)])[:-1]
        self.level_starts = [int(round(b * self.iters)) for b in bounds]
        self.grid = TetGrid.regular(c.resolutions[0], device=self.device)
        self.values = torch.nn.Parameter(self._initial_values())
        self.level = -1
        self._enter_level(0, subdivide=False)

    # ------------------------------------------------------------------ set-up
    def _initial_values(self) -> torch.Tensor:
        """Signed distances (EDT on the vertex lattice) to the masks' visual hull, or to a sphere."""
        c, grid = self.config, self.grid
        if c.init == "sphere":
            return (grid.vertices.norm(dim=1) - c.init_radius).float()
        if c.init != "visual_hull":
            raise ValueError(f"init must be 'visual_hull' or 'sphere', got {c.init!r}")
        with torch.no_grad():
            hull = VisualHullField(self.full_cameras, self.targets["mask"])
            inside = torch.cat([hull(chunk) < 0 for chunk in grid.vertices.split(65536)])
        n = grid.resolution + 1
        occupied = np.zeros((n, n, n), dtype=bool)
        coords = grid.coords.numpy()
        occupied[coords[:, 0], coords[:, 1], coords[:, 2]] = inside.cpu().numpy()
        if not occupied.any():
            raise InputError("the masks' visual hull is empty: no point projects into every mask")
        distance = ndimage.distance_transform_edt(~occupied) - ndimage.distance_transform_edt(occupied)
        sdf = (distance + np.where(occupied, 0.5, -0.5)) * grid.cell  # the surface between nodes
        return torch.as_tensor(sdf[coords[:, 0], coords[:, 1], coords[:, 2]], dtype=torch.float32,
                               device=self.device)

    def _enter_level(self, level: int, subdivide: bool = True) -> None:
        """Switch to `level`: subdivide the grid in the band, new optimiser, views at this resolution."""
        c = self.config
        if subdivide:
            self.grid, values = self.grid.subdivide(self.values.detach(), band=c.band)
            self.values = torch.nn.Parameter(values.float())
        self.level = level
        self.base_lr = c.lr * self.grid.cell / c.lr_decay_per_level ** level
        self.optimizer = torch.optim.Adam([self.values], lr=self.base_lr, betas=(0.9, 0.99))
        width = max(16, round(c.pixels_per_cube * self.grid.resolution))
        self.cameras, self.level_targets = resample_views(self.full_cameras, self.targets, width)

    # ------------------------------------------------------------------ one step
    def step(self, iteration: int) -> dict[str, float]:
        level = max(i for i, start in enumerate(self.level_starts) if start <= iteration)
        while self.level < level:
            self._enter_level(self.level + 1)
        self._set_learning_rate(iteration)
        views = torch.randperm(len(self.cameras), generator=self.generator)[:self.config.views_per_iter]
        losses = self._losses(views.to(self.device))
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {name: value.item() for name, value in losses.items()}

    def _set_learning_rate(self, iteration: int) -> None:
        starts = self.level_starts + [self.iters]
        span = max(1, starts[self.level + 1] - starts[self.level])
        progress = min(1.0, (iteration - starts[self.level]) / span)
        floor = self.config.lr_floor
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * self.step_scale * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _losses(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        c, grid = self.config, self.grid
        verts, faces, edges = marching_tetrahedra(grid.vertices, grid.tets, self.values, return_edges=True)
        if len(faces) == 0:
            raise FloatingPointError("the SDF has no zero level set left on the grid")
        cameras = self.cameras[views]
        out = render_normals(verts, faces, cameras)
        frags = out["fragments"]
        target_mask = self.level_targets["mask"][views]
        covered, wanted = frags.mask > 0.5, target_mask > 0.5
        losses: dict[str, torch.Tensor] = {}
        if "normal" in self.level_targets:
            both = (covered & wanted).float()
            error = (out["normal"] - self.level_targets["normal"][views]).abs().sum(-1)
            losses["normal"] = c.w_normal * (error * both).sum() / both.sum().clamp_min(1.0)
        losses["mask"] = c.w_mask * (out["mask"] - target_mask).square().mean()
        losses["shrink"] = c.w_shrink * self._shrink(frags, covered & ~wanted, faces, edges)
        losses["expand"] = c.w_expand * self._expand(cameras, wanted & ~covered)
        losses["eikonal"] = c.w_eikonal * self._eikonal()
        tri = gather_rows(verts, faces)
        area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1).sum()
        losses["curvature"] = c.w_curvature * area
        return losses

    def _shrink(self, frags, extra: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Mean over pixels covered but not wanted of (margin - f) at the inside ends of the grid
        edges under the visible triangle: raising them lifts the triangle off the pixel."""
        face = frags.face[extra]
        if len(face) == 0:
            return self.values.sum() * 0.0
        ends = edges[faces[face]]  # (P, 3, 2) grid vertices
        values = gather_rows(self.values, ends)
        inside = torch.where(values[..., 0] < 0, values[..., 0], values[..., 1])  # one end of each is < 0
        return (self.config.margin * self.grid.cell - inside).clamp_min(0.0).mean()

    def _expand(self, cameras, missing: torch.Tensor) -> torch.Tensor:
        """Mean over wanted but uncovered pixels of (min along the ray of f + margin)^+: lowering the
        smallest value on the ray makes the surface reach out to it."""
        index = missing.nonzero()
        if len(index) == 0:
            return self.values.sum() * 0.0
        if len(index) > self.config.expand_rays:
            pick = torch.randperm(len(index), generator=self.generator)[:self.config.expand_rays]
            index = index[pick.to(index.device)]
        uv = index[:, [2, 1]].to(cameras.dtype) + 0.5
        origins, directions = cameras[index[:, 0]].rays(uv[:, None, :])
        origins, directions = origins[:, 0], directions[:, 0]
        # samples half a cell apart over the ray's chord of the unit sphere
        b = (origins * directions).sum(-1)
        disc = (b.square() - (origins.square().sum(-1) - 1.0)).clamp_min(0.0).sqrt()
        near, far = -b - disc, -b + disc
        count = int(math.ceil(2.0 / (0.5 * self.grid.cell))) + 1
        t = torch.linspace(0.0, 1.0, count, device=origins.device)
        depth = near[:, None] + (far - near)[:, None] * t
        points = origins[:, None, :] + depth[..., None] * directions[:, None, :]
        with torch.no_grad():
            values = self.grid.evaluate(points.reshape(-1, 3), self.values, outside=math.inf).reshape(len(uv), -1)
        lowest = points[torch.arange(len(uv)), values.argmin(dim=1)]
        usable = torch.isfinite(values.min(dim=1).values)
        if not usable.any():
            return self.values.sum() * 0.0
        value = self.grid.evaluate(lowest[usable], self.values)
        return (value + self.config.margin * self.grid.cell).clamp_min(0.0).mean()

    def _eikonal(self) -> torch.Tensor:
        """Mean of (|grad f| - 1)^2 over the tetrahedra with a corner within `eikonal_cells` of zero."""
        grid, cells = self.grid, self.config.eikonal_cells
        f = gather_rows(self.values, grid.tets)  # (T, 4)
        if cells is None:
            near = torch.ones(len(f), dtype=torch.bool, device=self.device)
        else:
            near = (f.detach().abs() < cells * grid.cell).any(dim=1)
        kind = torch.arange(len(grid.tets), device=self.device)[near] % 6  # 6 Kuhn tetrahedra per cube
        differences = (f[near, 1:] - f[near, :1]) / grid.cell
        gradient = torch.einsum("tij,tj->ti", self.gradient_operator[kind], differences)
        return (gradient.norm(dim=1) - 1.0).square().mean() if len(kind) else self.values.sum() * 0.0

    def reduce_step(self, factor: float) -> None:
        """Scale the learning rate by `factor` from now on (recovery from a non-finite loss)."""
        self.step_scale *= factor

    # ------------------------------------------------------------------ results
    def mesh(self) -> trimesh.Trimesh:
        """The current zero level set in working space (largest component)."""
        with torch.no_grad():
            verts, faces = marching_tetrahedra(self.grid.vertices, self.grid.tets, self.values)
        return _largest_component(trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False))

    def extract(self, resolution: int = 256, progress: bool = False) -> trimesh.Trimesh:
        """The zero level set by marching tetrahedra on the grid (the grid fixes the resolution), in
        the input's units."""
        mesh = self.mesh()
        if len(mesh.faces) == 0:
            raise RuntimeError("the fitted grid has no zero level set")
        mesh.apply_transform(np.asarray(self.scene.to_world, dtype=np.float64))
        return mesh

    def state_dict(self) -> dict[str, Any]:
        return {"method": "tetsdf", "config": asdict(self.config),
                "to_world": np.asarray(self.scene.to_world).tolist(), "level": self.level,
                "grid": {"resolution": self.grid.resolution, "bounds": list(self.grid.bounds),
                         "cubes": self.grid.cubes.to(torch.int32)},
                "values": self.values.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "step_scale": self.step_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grid = grid_from_state(state, self.device)
        self.values = torch.nn.Parameter(state["values"].to(self.device))
        self.level = -1
        self._enter_level(state["level"], subdivide=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_scale = float(state["step_scale"])


def grid_from_state(state: dict[str, Any], device: str | torch.device = "cpu") -> TetGrid:
    """The tet grid of a tet-SDF state (a checkpoint's "method")."""
    g = state["grid"]
    return TetGrid.from_cubes(g["cubes"].long(), int(g["resolution"]), tuple(g["bounds"]), device)


def mesh_from_state(state: dict[str, Any], resolution: int | None = None, device: str | torch.device = "cpu",
                    progress: bool = False) -> trimesh.Trimesh:
    """The fitted surface of a tet-SDF state in the input's units (largest component), by marching
    tetrahedra on its own grid: the grid fixes the resolution, so `resolution` is not used."""
    grid = grid_from_state(state, device)
    verts, faces = marching_tetrahedra(grid.vertices, grid.tets, state["values"].to(device))
    mesh = _largest_component(trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False))
    mesh.apply_transform(np.asarray(state["to_world"], dtype=np.float64))
    return mesh


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`values[index]` by `index_select`, whose backward sums in a fixed order (advanced indexing's
    multi-threaded accumulate differs run to run in the last bits, which breaks exact resume)."""
    return values.index_select(0, index.reshape(-1)).reshape(*index.shape, *values.shape[1:])


def _largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    if len(mesh.faces) == 0:
        return mesh
    mesh.merge_vertices()
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda part: len(part.faces)) if len(parts) > 1 else mesh
