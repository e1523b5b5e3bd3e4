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
    w_prior     * mean over the grid's vertices of ((f - f_start) / cell)^2, with `init="field"`
                  only: keeps what the views do not constrain at the start field's values (a
                  single-view network's prediction refined from its one view: `learn.refine`)

Surface energies (normals, masks, shrink, area) reach the SDF values through the marching step's
crossing points (the paper's Lagrangian view); volumetric ones (eikonal, expand) act on the grid
directly. The grid starts as the visual hull of the masks (signed distance by EDT) on a coarse
lattice, as a sphere, or as a given field (`init="field"`, `start=`: e.g. a single-view network's
prediction, which `learn.refine` continues from), and is subdivided in a band around the surface level by level (`TetGrid.subdivide`, which
keeps the same piecewise-linear function); the surface must stay in the band, so the band is
re-selected at every level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import trimesh
from scipy import ndimage

from .. import losses as L
from ..errors import InputError
from ..geometry.components import large_components, largest_component
from ..geometry.marching import marching_tetrahedra
from ..geometry.rays import ray_sphere_interval
from ..geometry.tetgrid import TetGrid, inside_ends
from ..geometry.visual_hull import VisualHullField
from ..render.raster import render_normals
from ..scene import Scene
from .base import LevelledFit, level_starts, scene_targets
from .views import resample_views


@dataclass
class TetSDFConfig:
    """Settings of the tet-grid fit."""

    resolutions: tuple[int, ...] = (32, 64, 128)  # lattice cubes per axis, level by level (each x2);
                                         # (64, 128) for figures with limbs ~1 cell of 32 thick, which
                                         # the 32 level bloats (benchmarks/results/multiview_tetsdf.md:
                                         # MakeHuman F@0.5% 0.74 -> 0.83 in ~1.6x the time)
    level_shares: tuple[float, ...] = (0.3, 0.35, 0.35)  # fraction of the iterations per level
    band: int = 2                        # coarse cubes kept on each side of the surface when subdividing
    pixels_per_cube: float = 2.0         # render resolution = min(input, this * lattice)
    views_per_iter: int = 4
    lr: float = 0.1                      # Adam step in cells of the current lattice: 0.05-0.2 alike,
                                         # 0.02 slower, 0.5 diverges (Adam moves every value ~lr a step;
                                         # benchmarks/results/ablations.md, tetsdf_lr) ...
    lr_floor: float = 0.1                # ... decaying (cosine) to this fraction within a level
    lr_decay_per_level: float = 2.5      # ... and divided by this at each finer level (Lee Perry-Smith, 600
                                         # it.: F@0.5% 0.91 at 1.0, 0.95 at 1.6 and 2.5; ablations.md,
                                         # tetsdf_lr_decay)
    w_normal: float = 1.0
    w_mask: float = 1.0
    w_shrink: float = 0.1
    w_expand: float = 0.1
    w_eikonal: float = 0.1
    w_curvature: float = 0.01
    w_prior: float = 0.0                 # pull towards the start field (init="field" only)
    eikonal_cells: float | None = None   # eikonal over tetrahedra with a value within this many cells
                                         # of zero (None: every tetrahedron of the band). An early study
                                         # chose the whole band; rerun on today's fit, nefertiti at 600 it.
                                         # scores 0.975 within 2 cells vs 0.952 (ablations.md,
                                         # tetsdf_eikonal): to settle on more scenes with issue 20
    margin: float = 0.1                  # shrink / expand push values this many cells past zero
    expand_rays: int = 1024              # at most this many uncovered pixels per step
    init: str = "visual_hull"            # "visual_hull" (of the masks), "sphere", or "field" (the
                                         # constructor's `start`: values on the first grid)
    init_radius: float = 0.6
    min_piece: float = 1.0               # the surface keeps the pieces of at least this share of the
                                         # largest's area: 1, the largest alone (a fit's floaters go);
                                         # a refined prediction keeps its predicted parts (learn/refine.py)


class TetSDF(LevelledFit):
    """The method object that `optim.loop.run_loop` drives (step / state_dict / load_state_dict)."""

    name = "tetsdf"

    def __init__(self, scene: Scene, iters: int, config: TetSDFConfig | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, source: str = "scene",
                 start: Callable[[TetGrid], torch.Tensor] | None = None):
        """`start` (with `init="field"`): the starting SDF, a call from the first grid (vertices in
        working space) to its (N,) values in working-space units."""
        super().__init__(scene, iters, config or TetSDFConfig(), device, seed)
        c = self.config
        if (c.init == "field") != (start is not None):
            raise ValueError("init='field' and a start field go together (the start field is code, not a setting)")
        if c.w_prior and c.init != "field":
            raise ValueError("w_prior pulls towards a start field: it needs init='field'")
        self.start = start
        if len(c.level_shares) != len(c.resolutions) or any(b != 2 * a for a, b in
                                                               zip(c.resolutions, c.resolutions[1:])):
            raise ValueError("resolutions must double level by level, with one share per level")
        self.targets = scene_targets(scene, self.device, ("normal", "mask"), source=source)
        self.full_cameras = scene.cameras(device=self.device)
        self.level_starts = level_starts(self.iters, c.level_shares)
        self.grid = TetGrid.regular(c.resolutions[0], device=self.device)
        self.values = torch.nn.Parameter(self._initial_values())
        self._enter_level(0, refine=False)

    # ------------------------------------------------------------------ set-up
    def _initial_values(self) -> torch.Tensor:
        """Signed distances (EDT on the vertex lattice) to the masks' visual hull, to a sphere, or
        the start field's values."""
        c, grid = self.config, self.grid
        if c.init == "sphere":
            return (grid.vertices.norm(dim=1) - c.init_radius).float()
        if c.init == "field":
            return self._start_values()
        if c.init != "visual_hull":
            raise ValueError(f"init must be 'visual_hull', 'sphere' or 'field', got {c.init!r}")
        with torch.no_grad():
            hull = VisualHullField(self.full_cameras, self.targets["mask"])
            inside = torch.cat([hull(chunk) < 0 for chunk in grid.vertices.split(65536)])
        if not bool(inside.any()):
            raise InputError("the masks' visual hull is empty: no point projects into every mask")
        return lattice_sdf(grid, inside)

    def _start_values(self) -> torch.Tensor:
        """The start field's (N,) values on the current grid."""
        with torch.no_grad():
            values = torch.as_tensor(self.start(self.grid), dtype=torch.float32, device=self.device).reshape(-1)
        if len(values) != len(self.grid.vertices) or not bool(torch.isfinite(values).all()):
            raise ValueError(f"the start field must give {len(self.grid.vertices)} finite values, one per vertex")
        return values

    def _enter_level(self, level: int, refine: bool = True) -> None:
        """Switch to `level`: subdivide the grid in the band, new optimiser, views at this resolution."""
        c = self.config
        if refine:
            self.grid, values = self.grid.subdivide(self.values.detach(), band=c.band)
            self.values = torch.nn.Parameter(values.float())
        self.level = level
        self.prior = self._start_values() if c.w_prior else None
        self.base_lr = c.lr * self.grid.cell / c.lr_decay_per_level ** level
        self.optimizer = torch.optim.Adam([self.values], lr=self.base_lr, betas=(0.9, 0.99))
        width = max(16, round(c.pixels_per_cube * self.grid.resolution))
        self.cameras, self.level_targets = resample_views(self.full_cameras, self.targets, width)

    # ------------------------------------------------------------------ one step
    def _update(self, iteration: int) -> dict[str, float]:
        views = torch.randperm(len(self.cameras), generator=self.generator)[:self.config.views_per_iter]
        losses = self._losses(views.to(self.device))
        self._apply(sum(losses.values()))
        return {name: value.item() for name, value in losses.items()}

    def _losses(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        verts, faces, edges = marching_tetrahedra(self.grid.vertices, self.grid.tets, self.values,
                                                  return_edges=True)
        if len(faces) == 0:
            raise FloatingPointError("the SDF has no zero level set left on the grid")
        cameras = self.cameras[views]
        out = render_normals(verts, faces, cameras)
        frags = out["fragments"]
        target_mask = self.level_targets["mask"][views]
        covered, wanted = frags.mask > 0.5, target_mask > 0.5
        margin = c.margin * self.grid.cell
        losses: dict[str, torch.Tensor] = {}
        if "normal" in self.level_targets:
            losses["normal"] = c.w_normal * L.normal_l1(out["normal"], self.level_targets["normal"][views],
                                                        covered & wanted)
        losses["mask"] = c.w_mask * L.mask_l2(out["mask"], target_mask)
        losses["shrink"] = c.w_shrink * L.shrink_loss(self._inside_values(frags, covered & ~wanted, faces, edges),
                                                      margin)
        losses["expand"] = c.w_expand * L.expand_loss(self._lowest_values(cameras, wanted & ~covered), margin)
        losses["eikonal"] = c.w_eikonal * L.eikonal_loss(self._tet_gradients())
        losses["curvature"] = c.w_curvature * L.mesh_area(verts, faces)
        if self.prior is not None:
            losses["prior"] = c.w_prior * ((self.values - self.prior) / self.grid.cell).square().mean()
        return losses

    def _inside_values(self, frags, extra: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """For the shrink term: the inside (< 0) end of each grid edge under the triangle visible at
        each pixel covered but not wanted (P * 3,): raising them lifts the triangle off the pixel."""
        return inside_ends(self.values, edges[faces[frags.face[extra]]])

    def _lowest_values(self, cameras, missing: torch.Tensor) -> torch.Tensor:
        """For the expand term: the smallest SDF value along the ray of each wanted but uncovered
        pixel (at most `expand_rays` of them), over the ray's chord of the unit sphere."""
        index = missing.nonzero()
        if len(index) > self.config.expand_rays:
            pick = torch.randperm(len(index), generator=self.generator)[:self.config.expand_rays]
            index = index[pick.to(index.device)]
        if len(index) == 0:
            return self.values[:0]
        uv = index[:, [2, 1]].to(cameras.dtype) + 0.5
        origins, directions = cameras[index[:, 0]].rays(uv[:, None, :])
        origins, directions = origins[:, 0], directions[:, 0]
        near, far, _ = ray_sphere_interval(origins, directions)
        return self.grid.lowest_on_rays(self.values, origins, directions, near, far, length=2.0)

    def _tet_gradients(self) -> torch.Tensor:
        """The gradient on each tetrahedron with a corner within `eikonal_cells` of zero (all of
        them when None): (T, 3)."""
        return self.grid.tet_gradients(self.values, self.config.eikonal_cells)

    # ------------------------------------------------------------------ results
    def mesh(self) -> trimesh.Trimesh:
        """The current zero level set in working space: its pieces of at least `min_piece` of the largest's
        area (the largest alone by default)."""
        with torch.no_grad():
            verts, faces = marching_tetrahedra(self.grid.vertices, self.grid.tets, self.values)
        mesh = trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False)
        return large_components(mesh, self.config.min_piece)

    def extract(self, resolution: int = 256, progress: bool = False) -> trimesh.Trimesh:
        """The zero level set by marching tetrahedra on the grid (the grid fixes the resolution), in
        the input's units."""
        mesh = self.mesh()
        if len(mesh.faces) == 0:
            raise RuntimeError("the fitted grid has no zero level set")
        mesh.apply_transform(np.asarray(self.scene.to_world, dtype=np.float64))
        return mesh

    def state_dict(self) -> dict[str, Any]:
        return {**self.common_state(),
                "grid": {"resolution": self.grid.resolution, "bounds": list(self.grid.bounds),
                         "cubes": self.grid.cubes.to(torch.int32)},
                "values": self.values.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grid = grid_from_state(state, self.device)
        self.values = torch.nn.Parameter(state["values"].to(self.device))
        self.load_common_state(state)


def lattice_sdf(grid: TetGrid, inside: torch.Tensor) -> torch.Tensor:
    """(N,) float32 signed distances on a regular grid's vertices to the solid of the vertices marked
    `inside` ((N,) bool), by EDT on the vertex lattice, the surface half a cell from inside nodes,
    in the grid's units and on its device."""
    n = grid.resolution + 1
    occupied = np.zeros((n, n, n), dtype=bool)
    coords = grid.coords.numpy()
    occupied[coords[:, 0], coords[:, 1], coords[:, 2]] = torch.as_tensor(inside).cpu().numpy()
    distance = ndimage.distance_transform_edt(~occupied) - ndimage.distance_transform_edt(occupied)
    sdf = (distance + np.where(occupied, 0.5, -0.5)) * grid.cell  # the surface between nodes
    return torch.as_tensor(sdf[coords[:, 0], coords[:, 1], coords[:, 2]], dtype=torch.float32, device=grid.device)


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
    mesh = largest_component(trimesh.Trimesh(verts.cpu().numpy(), faces.cpu().numpy(), process=False))
    mesh.apply_transform(np.asarray(state["to_world"], dtype=np.float64))
    return mesh
