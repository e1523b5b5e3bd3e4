"""Tetrahedral grids over the working box: cubes of a regular lattice, each split into six tetrahedra.

One job: the tetrahedral mesh that a tet-grid SDF lives on (Wu et al.; DMTet). Every cube of an
n^3 lattice over `bounds` is split along its main diagonal into the six tetrahedra of Kuhn's
(Freudenthal's) triangulation, one per ordering of the three axes: for the ordering (a, b, c) the
tetrahedron is

    corner 000 -> +e_a -> +e_a +e_b -> +e_a +e_b +e_c = corner 111.

All cubes are split the same way, so neighbouring cubes share their faces' triangles (the mesh is
conforming), and the triangulation is nested under halving the lattice step: each tetrahedron of the
2n lattice lies inside one of the n lattice. A piecewise-linear function on the grid is therefore
carried to a finer grid without change (`TetGrid.interpolate`), which is what coarse-to-fine needs.

A grid holds an arbitrary set of active cubes (`cubes`, integer lattice coordinates), not
necessarily all n^3: `subdivide` halves the lattice step inside a band of cubes around the surface and
drops the cubes away from it, so the tetrahedra concentrate where the surface is; the surface must
stay inside the band (callers re-band as it moves). Tetrahedra are positively oriented (det > 0),
which `geometry.marching` relies on to orient triangles outward.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import atomic_path
from ..errors import InputError

# The 8 corners of a unit cube (bit k of the index = offset along axis k) and the 6 Kuhn tetrahedra
# as corner indices, reordered where needed so that each is positively oriented.
_CORNERS = np.array([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=np.int64)


def _kuhn_tetrahedra() -> np.ndarray:
    tets = []
    for order in itertools.permutations(range(3)):
        index, path = 0, [0]
        for axis in order:
            index |= 1 << axis
            path.append(index)
        corners = _CORNERS[path].astype(np.float64)
        if np.linalg.det(corners[1:] - corners[0]) < 0:
            path[2], path[3] = path[3], path[2]
        tets.append(path)
    return np.array(tets, dtype=np.int64)


KUHN_TETS = _kuhn_tetrahedra()  # (6, 4) corner indices per cube
# (6, 3, 3) inverse edge matrices of the Kuhn tetrahedra of a unit cube: the gradient of the linear
# function on a tetrahedron of kind k (tets[i] is of kind i % 6) is KUHN_GRADIENT[k] @ (f1 - f0,
# f2 - f0, f3 - f0) / cell
KUHN_GRADIENT = np.linalg.inv(_CORNERS[KUHN_TETS][:, 1:] - _CORNERS[KUHN_TETS][:, :1])
TET_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=np.int64)  # local edges


@dataclass
class TetGrid:
    """A Kuhn-split lattice over a box, restricted to a set of active cubes.

    Attributes:
        resolution: n, cubes per axis of the full lattice over `bounds`.
        bounds: (lo, hi) of the cubic box, the same on every axis.
        cubes: (C, 3) int64 lattice coordinates of the active cubes (each in [0, n)).
        coords: (N, 3) int64 lattice coordinates of the vertices (corners of active cubes), sorted.
        tets: (T, 4) int64 vertex indices, 6 per active cube, positively oriented.
        vertices: (N, 3) float32 positions on `device`.
    """

    resolution: int
    bounds: tuple[float, float]
    cubes: Tensor
    coords: Tensor = field(repr=False)
    tets: Tensor = field(repr=False)
    vertices: Tensor = field(repr=False)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_cubes(cubes: Tensor, resolution: int, bounds: tuple[float, float] = (-1.0, 1.0),
                   device: str | torch.device = "cpu") -> "TetGrid":
        """The grid of the given active cubes ((C, 3) integer coordinates at `resolution`)."""
        cubes = torch.as_tensor(cubes, dtype=torch.int64).reshape(-1, 3).cpu()
        if len(cubes) and (cubes.min() < 0 or cubes.max() >= resolution):
            raise ValueError(f"cube coordinates must lie in [0, {resolution})")
        cubes = torch.unique(cubes, dim=0)
        corners = cubes[:, None, :] + torch.from_numpy(_CORNERS)  # (C, 8, 3)
        keys = _keys(corners.reshape(-1, 3), resolution)
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        coords = _unkey(unique_keys, resolution)
        tets = inverse.reshape(-1, 8)[:, torch.from_numpy(KUHN_TETS)].reshape(-1, 4)
        lo, hi = float(bounds[0]), float(bounds[1])
        vertices = (lo + coords.double() * ((hi - lo) / resolution)).float().to(device)
        return TetGrid(int(resolution), (lo, hi), cubes, coords, tets.to(device), vertices)

    @staticmethod
    def regular(resolution: int, bounds: tuple[float, float] = (-1.0, 1.0),
                device: str | torch.device = "cpu") -> "TetGrid":
        """All n^3 cubes of the lattice: (n + 1)^3 vertices, 6 n^3 tetrahedra."""
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        axis = torch.arange(resolution)
        cubes = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        return TetGrid.from_cubes(cubes, resolution, bounds, device)

    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def cell(self) -> float:
        """The lattice step (edge length of a cube)."""
        return (self.bounds[1] - self.bounds[0]) / self.resolution

    @property
    def edges(self) -> Tensor:
        """(E, 2) int64 unique edges of the tetrahedra (a < b), on the grid's device."""
        if getattr(self, "_edges", None) is None:
            pairs = self.tets[:, torch.from_numpy(TET_EDGES).to(self.device)].reshape(-1, 2)
            pairs = torch.sort(pairs, dim=1).values
            n = len(self.vertices)
            keys = torch.unique(pairs[:, 0] * n + pairs[:, 1])
            self._edges = torch.stack([keys // n, keys % n], dim=1)
        return self._edges

    # ------------------------------------------------------------------ functions on the grid
    def evaluate(self, points: Tensor, values: Tensor, outside: float | None = None) -> Tensor:
        """The piecewise-linear function with `values` (N,) at the vertices, at `points` (P, 3).

        The value is Kuhn's interpolation from the 8 corners of the containing cube, exactly linear
        inside each tetrahedron; differentiable with respect to `values`. Points must lie in active
        cubes (closed) unless `outside` is given, which is then their value (without gradient).
        """
        lo, cell = self.bounds[0], self.cell
        local = (points.double() - lo) / cell
        cube = local.floor().long().clamp(0, self.resolution - 1)
        corner_index = self._vertex_index(cube.cpu()[:, None, :] + torch.from_numpy(_CORNERS))
        # a point on a face of an active cube may floor into an inactive neighbour: try the cubes
        # on the other side of every lattice plane the point lies on
        on_plane = (local == local.floor()) & (local > 0)
        for offset in _CORNERS[1:]:
            retry = (corner_index < 0).any(dim=1) & on_plane.cpu()[:, torch.from_numpy(offset).bool()].all(dim=1)
            if not retry.any():
                continue
            other = cube[retry.to(cube.device)] - torch.from_numpy(offset).to(cube.device)
            index = self._vertex_index(other.cpu()[:, None, :] + torch.from_numpy(_CORNERS))
            found = (index >= 0).all(dim=1)
            rows = retry.nonzero()[:, 0][found]
            cube[rows.to(cube.device)] = other[found.to(cube.device)]
            corner_index[rows] = index[found]
        corner_index = corner_index.to(values.device)
        missing = (corner_index < 0).any(dim=1) | ((local < 0) | (local > self.resolution)).any(dim=1).to(values.device)
        if outside is None and missing.any():
            raise ValueError("some points lie outside the grid's active cubes")
        corner_values = values[corner_index.clamp_min(0)]  # (P, 8)
        u = (local - cube.double()).clamp(0, 1).to(values.dtype).to(values.device)
        result = kuhn_interpolate(corner_values, u)
        if outside is not None:
            result = torch.where(missing, torch.full_like(result, outside), result)
        return result

    def tet_gradients(self, values: Tensor, near_cells: float | None = None) -> Tensor:
        """(T', 3) gradient of the linear function on each tetrahedron (differences along its edges),
        for the tetrahedra with a corner value within `near_cells` cells of zero (all when None)."""
        f = gather_rows(values, self.tets)  # (T, 4)
        if near_cells is None:
            near = torch.ones(len(f), dtype=torch.bool, device=f.device)
        else:
            near = (f.detach().abs() < near_cells * self.cell).any(dim=1)
        kind = torch.arange(len(self.tets), device=f.device)[near] % 6  # 6 Kuhn tetrahedra per cube
        operator = torch.as_tensor(KUHN_GRADIENT, dtype=f.dtype, device=f.device)
        differences = (f[near, 1:] - f[near, :1]) / self.cell
        return torch.einsum("tij,tj->ti", operator[kind], differences)

    def lowest_on_rays(self, values: Tensor, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor,
                       spacing: float = 0.5, length: float | None = None) -> Tensor:
        """The smallest value of the function along each ray segment `origins + t directions`, t in
        [near, far], found among samples evenly spread over each segment, as many as put `spacing`
        cells apart over `length` (default: the longest segment), without gradients, and evaluated
        again at the lowest sample with gradients: (R',) for the R' rays with a sample in the grid."""
        if length is None:
            length = float((far - near).max()) if len(near) else 0.0
        count = max(2, int(math.ceil(length / (spacing * self.cell))) + 1)
        t = torch.linspace(0.0, 1.0, count, device=origins.device)
        depth = near[:, None] + (far - near)[:, None] * t
        points = origins[:, None, :] + depth[..., None] * directions[:, None, :]
        with torch.no_grad():
            sampled = self.evaluate(points.reshape(-1, 3), values, outside=math.inf).reshape(len(origins), -1)
        lowest = points[torch.arange(len(origins), device=points.device), sampled.argmin(dim=1)]
        usable = torch.isfinite(sampled.min(dim=1).values)
        return self.evaluate(lowest[usable], values)

    def interpolate(self, finer: "TetGrid", values: Tensor) -> Tensor:
        """`values` on this grid's vertices carried to the vertices of a grid that refines it."""
        return self.evaluate(finer.vertices, values)

    def surface_cubes(self, values: Tensor) -> Tensor:
        """(C,) bool: the active cubes whose 8 corners do not all have the same sign (< 0 vs >= 0)."""
        corners = self._vertex_index(self.cubes[:, None, :] + torch.from_numpy(_CORNERS))
        inside = (values.detach().cpu() < 0)[corners]
        return inside.any(dim=1) & ~inside.all(dim=1)

    def subdivide(self, values: Tensor, band: int = 2) -> tuple["TetGrid", Tensor]:
        """Halve the lattice step in a band around the surface; drop the cubes away from it.

        The active cubes within `band` cubes (Chebyshev distance) of a cube that the zero level of
        `values` crosses are split into their 8 children; the others are dropped.
        Returns the finer grid and `values` carried to it (the same piecewise-linear function).
        """
        near = self._dilate(self.surface_cubes(values), band)
        if not near.any():
            raise ValueError("the zero level set crosses no cube of the grid: nothing to subdivide")
        children = (2 * self.cubes[near])[:, None, :] + torch.from_numpy(_CORNERS)
        finer = TetGrid.from_cubes(children.reshape(-1, 3), 2 * self.resolution, self.bounds, self.device)
        return finer, self.interpolate(finer, values)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> None:
        """Write the grid (resolution, bounds, active cubes) atomically; `load` rebuilds the rest."""
        with atomic_path(path) as tmp:
            torch.save({"format": "zerolevel-tetgrid", "resolution": self.resolution,
                        "bounds": list(self.bounds), "cubes": self.cubes.to(torch.int32)}, tmp)

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> "TetGrid":
        path = Path(path)
        if not path.is_file():
            raise InputError("no such file", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") != "zerolevel-tetgrid":
                raise KeyError("format")
            return TetGrid.from_cubes(state["cubes"].long(), int(state["resolution"]),
                                      tuple(state["bounds"]), device)
        except Exception as exc:
            raise InputError(f"not a zerolevel tet grid ({type(exc).__name__}: {exc})", path) from None

    # ------------------------------------------------------------------ helpers
    def _vertex_index(self, coords: Tensor) -> Tensor:
        """Vertex index of each lattice coordinate (..., 3), -1 where there is no such vertex."""
        sorted_keys = _keys(self.coords, self.resolution)  # coords are sorted by key
        keys = _keys(coords.reshape(-1, 3), self.resolution)
        index = torch.searchsorted(sorted_keys, keys).clamp(max=len(sorted_keys) - 1)
        found = sorted_keys[index] == keys
        return torch.where(found, index, torch.full_like(index, -1)).reshape(coords.shape[:-1])

    def _dilate(self, selected: Tensor, band: int) -> Tensor:
        """(C,) bool: active cubes within `band` cubes of a selected one."""
        n = self.resolution
        volume = torch.zeros((1, 1, n, n, n))
        picked = self.cubes[selected]
        volume[0, 0, picked[:, 0], picked[:, 1], picked[:, 2]] = 1
        if band > 0:
            volume = F.max_pool3d(volume, kernel_size=2 * band + 1, stride=1, padding=band)
        return volume[0, 0, self.cubes[:, 0], self.cubes[:, 1], self.cubes[:, 2]] > 0


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """`values[index]` by `index_select`, whose backward sums in a fixed order (advanced indexing's
    multi-threaded accumulate differs run to run in the last bits, which breaks exact resume)."""
    return values.index_select(0, index.reshape(-1)).reshape(*index.shape, *values.shape[1:])


def inside_ends(values: Tensor, edges: Tensor) -> Tensor:
    """The value at the inside (< 0) end of each grid edge (..., 2) that the zero level crosses:
    raising them pushes the crossing point (and the surface) inwards along the edge."""
    ends = gather_rows(values, edges)
    return torch.where(ends[..., 0] < 0, ends[..., 0], ends[..., 1])


def lattice_evaluate(values: Tensor, points: Tensor, resolution: int, bounds: tuple[float, float]) -> Tensor:
    """The piecewise-linear functions of a batch of full regular grids (`TetGrid.regular`) at points.

    values: (B, (n + 1)^3) in the regular grid's vertex order ([x, y, z], z fastest); points:
    (B, P, 3). Returns (B, P), `TetGrid.evaluate`'s value for each batch's points (with index
    arithmetic instead of a vertex search, for every grid of a batch at once), +inf (no gradient)
    outside the box; differentiable with respect to `values`.
    """
    n, m = resolution, resolution + 1
    lo, hi = bounds
    local = (points.double() - lo) / ((hi - lo) / n)
    cube = local.floor().long().clamp(0, n - 1)
    corners = cube[..., None, :] + torch.as_tensor(_CORNERS, device=cube.device)  # (B, P, 8, 3)
    index = (corners[..., 0] * m + corners[..., 1]) * m + corners[..., 2]
    B, P = points.shape[:2]
    index = index + torch.arange(B, device=index.device)[:, None, None] * m ** 3  # rows of values.reshape(-1)
    corner_values = gather_rows(values.reshape(-1), index).reshape(B * P, 8)
    u = (local - cube.double()).clamp(0, 1).to(values.dtype).reshape(-1, 3)
    result = kuhn_interpolate(corner_values, u).reshape(B, P)
    inside = ((local >= 0) & (local <= n)).all(dim=-1)
    return torch.where(inside, result, torch.full_like(result, math.inf))


def lattice_trilinear(values: Tensor, points: Tensor, resolution: int,
                      bounds: tuple[float | Tensor, float | Tensor]) -> Tensor:
    """Trilinear interpolation of a batch of regular vertex lattices at points, +inf outside the box.

    Arguments and result as `lattice_evaluate` (here `bounds` may also be (3,) tensors: a box of
    other sides, still `resolution` cells along each), whose piecewise-linear (Kuhn) function this is not:
    within a cube the two agree at the corners and differ by at most the corner values' spread. It
    is one fused kernel (`grid_sample`), several times faster: for searches (e.g. a ray's lowest value) whose
    result is then evaluated exactly. Differentiable twice in the points (`grid_sample`'s 3D kernel).
    """
    n = resolution + 1
    lo, hi = bounds
    volume = values.reshape(-1, 1, n, n, n)  # (B, 1, x, y, z): grid_sample's (D, H, W)
    normalised = (points - lo) * (2.0 / (hi - lo)) - 1.0
    grid = normalised.flip(-1).reshape(len(volume), -1, 1, 1, 3).to(values.dtype)  # (z, y, x) order
    result = F.grid_sample(volume, grid, mode="bilinear", align_corners=True).reshape(points.shape[:-1])
    inside = ((normalised >= -1) & (normalised <= 1)).all(dim=-1)
    return torch.where(inside, result, torch.full_like(result, math.inf))


def kuhn_interpolate(corner_values: Tensor, u: Tensor) -> Tensor:
    """Kuhn's piecewise-linear interpolation inside unit cubes.

    corner_values: (P, 8) values at the corners (bit k of the corner index = offset along axis k);
    u: (P, 3) local coordinates in [0, 1]. Sorting u's components descending, u_a >= u_b >= u_c,
    picks the Kuhn tetrahedron 000 -> e_a -> e_a + e_b -> 111 that holds u, whose barycentric
    weights are (1 - u_a, u_a - u_b, u_b - u_c, u_c).
    """
    sorted_u, order = torch.sort(u, dim=1, descending=True, stable=True)  # ties: the same tet every run
    bits = torch.tensor([1, 2, 4], device=u.device)[order]  # (P, 3) corner bit of each step
    path = torch.cumsum(bits, dim=1)  # corners after 1, 2, 3 steps
    corners = torch.cat([torch.zeros_like(path[:, :1]), path], dim=1)  # (P, 4)
    ones = torch.ones_like(sorted_u[:, :1])
    zeros = torch.zeros_like(sorted_u[:, :1])
    weights = torch.cat([ones, sorted_u], dim=1) - torch.cat([sorted_u, zeros], dim=1)
    return (torch.gather(corner_values, 1, corners) * weights).sum(dim=1)


def _keys(coords: Tensor, resolution: int) -> Tensor:
    m = resolution + 1
    return (coords[:, 0] * m + coords[:, 1]) * m + coords[:, 2]


def _unkey(keys: Tensor, resolution: int) -> Tensor:
    m = resolution + 1
    return torch.stack([keys // (m * m), (keys // m) % m, keys % m], dim=1)
