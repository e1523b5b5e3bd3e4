"""Mesh extraction: triangle meshes from signed distance fields by marching cubes (the dense path).

One job: turn a field — any callable mapping points `(N, 3)` to SDF values `(N,)` or `(N, 1)`,
negative inside, e.g. a `torch.nn.Module` on any device — into a `trimesh.Trimesh` whose faces
wind outward (right-hand-rule normals point towards positive SDF, so `mesh.volume > 0`).

- `marching_cubes`: evaluates the field on the whole dense grid (n^3 points, in chunks). The reference.
- `marching_cubes_narrow_band` (in `geometry.narrowband`): evaluates it only near the level set
  (coarse-to-fine octree, O(n^2) points) and gives the same mesh as `marching_cubes` at the same
  resolution whenever the field is Lipschitz with the bound it is given (exact SDFs: bound 1).
- `sample_grid` and `mesh_from_grid`: the two halves of the dense path, for callers that already
  hold a grid of values (a dense SDF grid field, a cached volume).

Conventions shared by every function here and by the narrow band:
- `resolution` n is the number of samples per axis; sample (i, j, k) lies at
  `lo + (i, j, k) * (hi - lo) / (n - 1)` with `bounds = (lo, hi)`, so the outer samples lie on the
  bounds and a surface that touches the bounds is left open there.
- The field is evaluated under `torch.no_grad()` on `device` (given, else the device of the module's
  first parameter or buffer, else CPU), with float32 points (float64 if the module is float64).
- A level set that the grid does not cross gives an empty mesh (0 vertices, 0 faces), not an error:
  an early checkpoint of a fit may well have no surface yet; callers that need one check `mesh.is_empty`.
- `mesh.metadata` records `method`, `resolution`, `bounds`, `level`, `grid_points` (n^3) and
  `field_evaluations` (points passed to the field), so that the two paths can be compared.
"""


from __future__ import annotations

import math

import numpy as np
import torch
import trimesh
from skimage import measure

from .components import largest_component
from .fieldgrid import (DEFAULT_BOUNDS, Bounds, Field, FieldSampler, SampleGrid, bounds_array, positive_int,
                        sample_dense)
from .mesh import transform_mesh


def marching_cubes(
    field: Field,
    resolution: int = 256,
    bounds: Bounds = DEFAULT_BOUNDS,
    level: float = 0.0,
    *,
    chunk_size: int = 2**18,
    device: torch.device | str | None = None,
    keep_largest_component: bool = False,
    to_world: np.ndarray | None = None,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Mesh of the level set `field == level` from a dense n^3 grid of field values.

    Memory: the float32 grid of values (n^3 * 4 bytes: 512 MB at 512^3); coordinates are generated
    per chunk of `chunk_size` points, never all at once.

    Args:
        field: callable, points `(N, 3)` -> values `(N,)` or `(N, 1)`, negative inside.
        resolution: samples per axis n (>= 2).
        bounds: `(lo, hi)`, two 3-vectors: the box sampled, in the field's coordinates.
        level: iso-value extracted.
        chunk_size: points per field call.
        device: where points are created; default: the module's device, else CPU.
        keep_largest_component: keep only the connected component of largest area.
        to_world: optional `(4, 4)` similarity applied to the output (e.g. a scene's `to_world`).
        progress: show a tqdm bar over the field evaluations.

    Returns:
        `trimesh.Trimesh`, vertices `(V, 3)` float64 in the field's coordinates (then `to_world`),
        faces `(F, 3)` wound outward; empty when the grid does not cross `level`.
        `mesh.metadata["field_evaluations"] == n**3`.
    """
    grid = SampleGrid.make(resolution, bounds)
    sampler = FieldSampler(field, grid, device)
    values = sample_dense(sampler, grid, positive_int(chunk_size, "chunk_size"), progress)
    mesh = mesh_from_grid(values, (grid.lo, grid.hi), level)
    return finish_extraction(mesh, keep_largest_component, to_world, {
        "method": "dense", "resolution": grid.n, "bounds": grid.bounds_list(), "level": float(level),
        "grid_points": grid.n**3, "field_evaluations": sampler.evaluations})


def sample_grid(
    field: Field,
    resolution: int,
    bounds: Bounds = DEFAULT_BOUNDS,
    *,
    chunk_size: int = 2**18,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Field values on the dense grid: `(n, n, n)` float32, `values[i, j, k] = f(lo + (i, j, k) * step)`.

    Evaluated in chunks of `chunk_size` points (coordinates made per chunk on `device`).
    """
    grid = SampleGrid.make(resolution, bounds)
    sampler = FieldSampler(field, grid, device)
    return sample_dense(sampler, grid, positive_int(chunk_size, "chunk_size"), progress)


def mesh_from_grid(
    values: np.ndarray,
    bounds: Bounds = DEFAULT_BOUNDS,
    level: float = 0.0,
    *,
    mask: np.ndarray | None = None,
) -> trimesh.Trimesh:
    """Marching cubes (scikit-image, Lewiner) on a grid of SDF values, in world coordinates.

    Args:
        values: `(nx, ny, nz)` field values, each axis >= 2; sample (i, j, k) lies at
            `lo + (i, j, k) * (hi - lo) / (shape - 1)`.
        bounds: `(lo, hi)` of the grid.
        level: iso-value.
        mask: optional `(nx, ny, nz)` bool; only cells whose 8 corners are True are visited.

    Returns:
        Outward-wound `trimesh.Trimesh` (vertices merged, degenerate faces removed); empty when no
        cell crosses `level`.
    """
    values = np.asarray(values)
    if values.ndim != 3 or min(values.shape) < 2:
        raise ValueError(f"values must be a 3D grid with at least 2 samples per axis, got shape {values.shape}")
    if not math.isfinite(level):
        raise ValueError(f"level must be finite, got {level}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    lo, hi = bounds_array(bounds)
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("grid holds non-finite values (NaN or inf)")
    if level < low or level > high:
        return empty_mesh()
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=bool)
        if mask.shape != values.shape:
            raise ValueError(f"mask shape {mask.shape} differs from values shape {values.shape}")
    try:
        # skimage's default gradient_direction ("descent") winds faces so that right-hand-rule
        # normals point towards larger values: outward for an SDF (its docstring speaks of the
        # left-hand rule). tests/test_extract.py checks the orientation.
        verts, faces, _, _ = measure.marching_cubes(values, level, allow_degenerate=False, mask=mask)
    except RuntimeError:  # "No surface found at the given iso value."
        return empty_mesh()
    step = (hi - lo) / (np.asarray(values.shape, dtype=np.float64) - 1.0)
    verts = lo + verts.astype(np.float64) * step
    return trimesh.Trimesh(vertices=verts, faces=faces, process=True)  # process: merge vertices


def finish_extraction(mesh: trimesh.Trimesh, keep_largest: bool, to_world: np.ndarray | None,
                      metadata: dict) -> trimesh.Trimesh:
    """The last steps of both extraction paths: largest component, `to_world`, metadata."""
    if keep_largest:
        mesh = largest_component(mesh)
    if to_world is not None:
        matrix = np.asarray(to_world, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"to_world must be a finite (4, 4) matrix, got shape {matrix.shape}")
        mesh = transform_mesh(mesh, matrix)
    mesh.metadata.update(metadata)
    return mesh


def empty_mesh() -> trimesh.Trimesh:
    """0 vertices, 0 faces: what an uncrossed level set gives."""
    return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), np.int64), process=False)
