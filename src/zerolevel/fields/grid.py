"""A dense grid of signed distances, trilinearly interpolated: the field SDFDiff fits.

One job: `DenseGridSDF`, an (Rx, Ry, Rz) grid of SDF values held as one `nn.Parameter` over an
axis-aligned box (default [-1, 1]^3, the working space), read by trilinear interpolation.

Conventions:
- Grid nodes sit ON the box: node (i, j, k) lies at `lo + (i, j, k) * (hi - lo) / (shape - 1)`,
  the same layout as `zerolevel.geometry.extract.sample_grid` / `mesh_from_grid`, so
  `mesh_from_grid(field.values.detach().cpu().numpy(), field.bounds)` extracts its zero level set.
  `torch.nn.functional.grid_sample` is called with `align_corners=True`, which is exactly this
  layout (normalised coordinate -1 at the first node, +1 at the last).
- Outside the box the point is clamped to the box, the grid is read there and the distance from
  the point to the box is added: `f(p) = f_grid(q) + |p - q|`, `q = clamp(p)`. It is continuous
  across the box's faces and grows with the distance to the box, so its gradient keeps pulling
  rays towards the box instead of stalling on a flat clamped value. For an exact SDF whose surface
  lies inside the box, `|p - q| <= distance(p) <= f(p)`: an upper bound, so a sphere-tracing step
  from outside the box may overshoot by up to f_grid(q) (the tracer's signed steps walk back).
  The sphere tracer starts rays on the unit bounding sphere, inside the default box.
- `gradient` is central differences one voxel apart (SDFDiff's normals), computed from six field
  evaluations without `torch.autograd.grad`; it is differentiable w.r.t. `values` when autograd is on.

Speed (2 threads, float32, CPU; see benchmarks/renderers_spheretrace.py): ~20-30M points/s forward
at 64^3 and 8-20M points/s at 128^3 (coherent points, as along rays, are at the fast end).

Left out: re-distancing (restoring |grad f| = 1 by a fast-marching or Eikonal solve); SDFDiff
regularises with an Eikonal-type loss instead, which belongs to the losses, not to the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage
from torch import Tensor, nn

from ..geometry.occupancy import occupancy

Bounds = Sequence[Sequence[float]] | Tensor
DEFAULT_BOUNDS: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))  # working space: the object lies inside the unit sphere


def _bounds_tensors(bounds: Bounds, dtype: torch.dtype, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """(lo (3,), hi (3,)) from `((lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z))`, checking lo < hi."""
    b = torch.as_tensor(bounds, dtype=dtype, device=device).reshape(2, 3)
    if not bool((b[1] > b[0]).all()):
        raise ValueError(f"bounds must have lo < hi on every axis, got {b.tolist()}")
    return b[0].clone(), b[1].clone()


class DenseGridSDF(nn.Module):
    """Signed distances on a dense grid, trilinearly interpolated between nodes.

    Attributes:
        values: (Rx, Ry, Rz) `nn.Parameter`, SDF at the nodes (negative inside), world units.
        lo, hi: (3,) buffers, the box corners; nodes include both corners.
    """

    def __init__(self, values: Tensor, bounds: Bounds = DEFAULT_BOUNDS):
        """Args:
            values: (Rx, Ry, Rz) node values, every axis >= 2 (copied into a Parameter).
            bounds: ((lo_x, lo_y, lo_z), (hi_x, hi_y, hi_z)) of the box, in world units.
        """
        super().__init__()
        values = torch.as_tensor(values)
        if values.dim() != 3 or min(values.shape) < 2:
            raise ValueError(f"values must be an (Rx, Ry, Rz) grid with every axis >= 2, "
                             f"got shape {tuple(values.shape)}")
        if not values.is_floating_point():
            values = values.float()
        self.values = nn.Parameter(values.detach().clone())
        lo, hi = _bounds_tensors(bounds, values.dtype, values.device)
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_function(cls, fn: Callable[[Tensor], Tensor], resolution: int | Sequence[int],
                      bounds: Bounds = DEFAULT_BOUNDS, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None, chunk_size: int = 1 << 18
                      ) -> "DenseGridSDF":
        """A grid holding `fn` sampled at its nodes (SDFDiff initialises from a sphere this way).

        Args:
            fn: any field, (M, 3) points -> (M,) or (M, 1) signed distances (e.g. `SphereSDF`,
                another `DenseGridSDF`); evaluated under `torch.no_grad()` on `device`.
            resolution: R (an R^3 grid) or (Rx, Ry, Rz), each >= 2.
            bounds: the box; nodes include its corners.
            dtype, device: of the new grid's values.
            chunk_size: points per call of `fn`.
        """
        shape = (int(resolution),) * 3 if isinstance(resolution, int) else tuple(int(r) for r in resolution)
        if len(shape) != 3 or min(shape) < 2:
            raise ValueError(f"resolution must be >= 2 per axis, got {resolution}")
        lo, hi = _bounds_tensors(bounds, dtype, device)
        points = node_positions(shape, lo, hi).reshape(-1, 3)
        out = torch.empty(len(points), dtype=dtype, device=lo.device)
        with torch.no_grad():
            for start in range(0, len(points), chunk_size):
                chunk = points[start:start + chunk_size]
                out[start:start + chunk_size] = fn(chunk).reshape(len(chunk)).to(dtype)
        return cls(out.reshape(shape), torch.stack([lo, hi]))

    @classmethod
    def from_mesh(cls, mesh: trimesh.Trimesh, resolution: int, bounds: Bounds = DEFAULT_BOUNDS, *,
                  band: float = 2.5, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> "DenseGridSDF":
        """Signed distance to a closed, outward-oriented mesh, sampled at the nodes of an R^3 grid.

        Sign: `zerolevel.geometry.occupancy.occupancy` (Embree ray crossings). Magnitude: exact
        point-to-triangle distance (trimesh) at nodes within `band` voxels of the surface; beyond,
        the Euclidean distance transform of the occupancy: the distance to the nearest node on
        the other side, which exceeds the true distance by at most a voxel diagonal — enough to
        step by, and the exact shell keeps steps from crossing the surface (most of the cost).

        Args:
            mesh: in world units, inside `bounds`.
            resolution: R nodes per axis.
            bounds, dtype, device: of the new grid.
            band: half-width, in voxels, of the exactly computed shell.
        """
        lo_t, hi_t = _bounds_tensors(bounds, torch.float64, None)
        lo, hi = lo_t.numpy(), hi_t.numpy()
        shape = (int(resolution),) * 3
        points = node_positions(shape, lo_t, hi_t).reshape(-1, 3).numpy()
        inside = occupancy(mesh, points, method="rays").reshape(shape)
        voxel = (hi - lo) / (np.asarray(shape) - 1)
        distance = np.where(inside, ndimage.distance_transform_edt(inside, sampling=voxel),
                            ndimage.distance_transform_edt(~inside, sampling=voxel)).reshape(-1)
        near = distance <= (band + math.sqrt(3.0)) * voxel.max()  # the transform may overestimate
        _, exact, _ = trimesh.proximity.closest_point(mesh, points[near])
        distance[near] = exact
        sdf = np.where(inside.reshape(-1), -distance, distance).reshape(shape)
        return cls(torch.as_tensor(sdf, dtype=dtype, device=device), torch.as_tensor(np.stack([lo, hi])))

    def upsample(self, resolution: int | Sequence[int]) -> "DenseGridSDF":
        """A new grid over the same box with this field trilinearly resampled at `resolution`.

        For coarse-to-fine fitting (SDFDiff: 32^3 -> 64^3 -> 128^3). The new values are detached
        (a fresh Parameter): make a new optimiser for them.
        """
        return DenseGridSDF.from_function(self, resolution, self.bounds, dtype=self.values.dtype,
                                          device=self.values.device)

    # ------------------------------------------------------------------ properties
    @property
    def bounds(self) -> Tensor:
        """(2, 3) [lo, hi]."""
        return torch.stack([self.lo, self.hi])

    @property
    def resolution(self) -> tuple[int, int, int]:
        """(Rx, Ry, Rz) nodes per axis."""
        return tuple(self.values.shape)

    @property
    def voxel_size(self) -> Tensor:
        """(3,) node spacing per axis, world units: (hi - lo) / (shape - 1)."""
        shape = torch.tensor(self.values.shape, dtype=self.lo.dtype, device=self.lo.device)
        return (self.hi - self.lo) / (shape - 1)

    def nodes(self) -> Tensor:
        """(Rx, Ry, Rz, 3) world positions of the nodes."""
        return node_positions(self.values.shape, self.lo, self.hi)

    # ------------------------------------------------------------------ evaluation
    def forward(self, points: Tensor) -> Tensor:
        """Trilinearly interpolated SDF, plus the distance to the box for points outside it.

        Args:
            points: (..., 3) world points, same dtype and device as `values`.
        Returns:
            (...) signed distances; differentiable w.r.t. `values` and `points`.
        """
        shape = points.shape[:-1]
        p = points.reshape(-1, 3)
        q = torch.clamp(p, self.lo, self.hi)
        # values are indexed [x, y, z] and grid_sample reads (D, H, W) = (x, y, z) from the grid's
        # last dimension in (W, H, D) order, so the coordinates go in as (z, y, x), mapped to
        # [-1, 1] with -1 and +1 on the first and last node (align_corners=True)
        scale = (2.0 / (self.hi - self.lo)).flip(0)
        grid = torch.addcmul(-1.0 - self.lo.flip(0) * scale, q.flip(-1), scale)
        f = F.grid_sample(self.values[None, None], grid.reshape(1, -1, 1, 1, 3), mode="bilinear",
                          padding_mode="border", align_corners=True).reshape(-1)
        if len(p) and self._maybe_outside(p):
            f = f + _distance_to_box(p, q)
        return f.reshape(shape)

    def _maybe_outside(self, p: Tensor) -> bool:
        """False only if every point (M, 3), M > 0, is in the box (one reduction, cheaper than
        comparing p with its clamped copy)."""
        low, high = torch.aminmax(p)
        return bool(low < self.lo.max()) or bool(high > self.hi.min())

    def gradient(self, points: Tensor) -> Tensor:
        """Central differences one voxel apart, as SDFDiff computes normals.

        df/dx_a ~ (f(p + h_a e_a) - f(p - h_a e_a)) / (2 h_a), h = `voxel_size`; six field
        evaluations, no `torch.autograd.grad`, differentiable w.r.t. `values` when grad is on.

        Args:
            points: (..., 3) world points.
        Returns:
            (..., 3) unnormalised gradient (unit length for an exact SDF).
        """
        h = self.voxel_size.to(points.dtype)
        offsets = torch.diag(h)  # (3, 3): row a is h_a e_a
        probes = torch.stack([points[..., None, :] + offsets, points[..., None, :] - offsets])
        f = self(probes)  # (2, ..., 3)
        return (f[0] - f[1]) / (2.0 * h)


def _distance_to_box(p: Tensor, q: Tensor) -> Tensor:
    """(M,) |p - q| for points p (M, 3) and their clamped copies q, with finite derivatives of
    every order: the norm is only taken where p is outside the box (|.| has no second derivative
    at 0, which autograd normals with create_graph=True would hit)."""
    outside = (p != q).any(dim=-1)
    diff = torch.where(outside[:, None], p - q, torch.ones_like(p))
    return torch.where(outside, torch.linalg.vector_norm(diff, dim=-1), torch.zeros_like(p[:, 0]))


def node_positions(shape: Sequence[int], lo: Tensor, hi: Tensor) -> Tensor:
    """(Rx, Ry, Rz, 3) positions `lo + (i, j, k) * (hi - lo) / (shape - 1)` of grid nodes."""
    axes = [torch.linspace(float(lo[a]), float(hi[a]), int(shape[a]), dtype=lo.dtype, device=lo.device)
            for a in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
