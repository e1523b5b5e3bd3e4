"""Mesh extraction: triangle meshes from signed distance fields by marching cubes.

One job: turn a field — any callable mapping points `(N, 3)` to SDF values `(N,)` or `(N, 1)`,
negative inside, e.g. a `torch.nn.Module` on any device — into a `trimesh.Trimesh` whose faces
wind outward (right-hand-rule normals point towards positive SDF, so `mesh.volume > 0`).

- `marching_cubes`: evaluates the field on the whole dense grid (n^3 points, in chunks). The reference.
- `marching_cubes_narrow_band`: evaluates it only near the level set (coarse-to-fine octree,
  O(n^2) points) and gives the same mesh as `marching_cubes` at the same resolution whenever the
  field is Lipschitz with the bound it is given (exact SDFs: bound 1).
- `sample_grid` and `mesh_from_grid`: the two halves of the dense path, for callers that already
  hold a grid of values (a dense SDF grid field, a cached volume).

Conventions shared by every function here:
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

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from skimage import measure
from tqdm import tqdm

from .components import largest_component
from .mesh import transform_mesh

Field = Callable[[torch.Tensor], torch.Tensor]
Bounds = Sequence[Sequence[float]] | np.ndarray
DEFAULT_BOUNDS: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))  # working space: the object lies inside the unit sphere


# --------------------------------------------------------------------------------------------
# Public API


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
    grid = _Grid.make(resolution, bounds)
    sampler = _Sampler(field, grid, device)
    values = _sample_dense(sampler, grid, _positive_int(chunk_size, "chunk_size"), progress)
    mesh = mesh_from_grid(values, (grid.lo, grid.hi), level)
    return _finish(mesh, keep_largest_component, to_world, {
        "method": "dense", "resolution": grid.n, "bounds": grid.bounds_list(), "level": float(level),
        "grid_points": grid.n**3, "field_evaluations": sampler.evaluations})


def marching_cubes_narrow_band(
    field: Field,
    resolution: int = 256,
    bounds: Bounds = DEFAULT_BOUNDS,
    level: float = 0.0,
    *,
    lipschitz: float = 1.5,
    block_size: int = 4,
    coarse_resolution: int = 16,
    chunk_size: int = 2**18,
    device: torch.device | str | None = None,
    keep_largest_component: bool = False,
    to_world: np.ndarray | None = None,
    progress: bool = False,
) -> trimesh.Trimesh:
    """Mesh of `field == level` on the same n^3 grid as `marching_cubes`, evaluating only near it.

    Algorithm (coarse-to-fine octree over blocks of grid samples):
    1. Blocks of `block_size * 2**depth` samples per axis, at most `coarse_resolution` per axis,
       are tested by one evaluation at their centre c: if `|f(c) - level| > lipschitz * r`, with r
       the half-diagonal of the block grown by one sample spacing on every side, the field keeps
       one strict sign on the grown block, so no grid cell touching the block meets the level
       set. Such a block is pruned and remembers that sign; the others split into 8 children.
    2. The finest blocks (`block_size` samples per axis) that survive are evaluated at every sample.
    3. Band check and repair: an evaluated sample next to a pruned block must share its sign, and
       two adjacent pruned blocks must agree; a pruned block that breaks this (the field was
       steeper than `lipschitz` somewhere) is evaluated too, until the band's boundary is
       consistent. The band thus follows the surface even where the bound is wrong.
    4. Pruned samples get `level + sign * (box diagonal)`; marching cubes runs on the full grid,
       restricted (skimage's `mask`) to cells whose 8 corners were evaluated.

    Guarantees: no cell with an unevaluated corner can produce a triangle (its corners all carry
    one strict sign), so the band's edge never adds spurious faces or holes. If the field is
    `lipschitz`-Lipschitz, every cell the surface crosses is evaluated and the result equals
    `marching_cubes(field, resolution, bounds, level)` face for face. Surface pieces that lie wholly
    inside pruned blocks (only possible when the bound is wrong) are missed.

    Cost: about (area / h^2) * (1.7 * lipschitz * (block_size + 1) + block_size) evaluations, h the
    sample spacing (a few percent of n^3 at 512^3), plus one per tested block.

    Args:
        field, resolution, bounds, level, chunk_size, device, keep_largest_component, to_world,
            progress: as in `marching_cubes`.
        lipschitz: upper bound on |grad f|. 1 is exact for a true SDF; the default 1.5 leaves a
            margin for fitted fields, whose gradient norm is near 1 but not bounded by it.
            Fields that are not distance-like (occupancy logits) need the dense `marching_cubes`.
        block_size: samples per axis of the finest blocks, evaluated whole (>= 1). Smaller blocks
            make a thinner band and more tests; 4 is near the minimum of the total on spheres.
            A resolution that is a multiple of it avoids one copy of the grid.
        coarse_resolution: blocks per axis at the coarsest level (>= 1).

    Returns:
        As `marching_cubes`; `mesh.metadata` also holds `band_blocks` (finest blocks evaluated)
        and `band_repairs` (how many of them the band check added).
    """
    grid = _Grid.make(resolution, bounds)
    if not math.isfinite(level):
        raise ValueError(f"level must be finite, got {level}")
    if not (math.isfinite(lipschitz) and lipschitz > 0):
        raise ValueError(f"lipschitz must be a positive number, got {lipschitz}")
    block_size = _positive_int(block_size, "block_size")
    coarse_resolution = _positive_int(coarse_resolution, "coarse_resolution")
    chunk_size = _positive_int(chunk_size, "chunk_size")
    sampler = _Sampler(field, grid, device)
    n, bs = grid.n, block_size

    sign, blocks = _octree_band(sampler, grid, level, lipschitz, bs, coarse_resolution, chunk_size,
                                progress)
    block_values = [_evaluate_blocks(sampler, blocks, bs, chunk_size, progress)]
    evaluated = [blocks]
    repairs = 0
    conflicts = _union_rows(_band_conflicts(sign, blocks, block_values[0], level),
                            _pruned_conflicts(sign))
    while len(conflicts):  # each round evaluates new blocks, so it ends
        sign[conflicts[:, 0], conflicts[:, 1], conflicts[:, 2]] = 0
        repairs += len(conflicts)
        new_values = _evaluate_blocks(sampler, conflicts, bs, chunk_size, progress)
        evaluated.append(conflicts)
        block_values.append(new_values)
        conflicts = _band_conflicts(sign, conflicts, new_values, level)
    blocks = np.concatenate(evaluated)
    metadata = {"method": "narrow_band", "resolution": n, "bounds": grid.bounds_list(),
                "level": float(level), "grid_points": n**3,
                "field_evaluations": sampler.evaluations, "band_blocks": int(len(blocks)),
                "band_repairs": int(repairs), "lipschitz": float(lipschitz),
                "block_size": bs}
    if len(blocks) == 0:  # every block pruned: the level set does not cross the grid
        return _finish(_empty_mesh(), keep_largest_component, to_world, metadata)

    # Assemble the full grid: sign fills, then evaluated blocks; pad to whole blocks, crop after.
    m = sign.shape[0]
    size = m * bs
    fill = level + sign.astype(np.float32) * np.float32(np.linalg.norm(grid.hi - grid.lo))
    values = np.empty((size, size, size), np.float32)
    mask = np.zeros((size, size, size), bool)
    values6 = values.reshape(m, bs, m, bs, m, bs)
    mask6 = mask.reshape(m, bs, m, bs, m, bs)
    # broadcast over the two block-sample axes only: the inner loop runs along whole rows
    values.reshape(m, bs, m, bs, size)[...] = fill.repeat(bs, axis=2)[:, None, :, None, :]
    bi, bj, bk = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    values6[bi, :, bj, :, bk, :] = np.concatenate(block_values)  # (K, bs, bs, bs)
    mask6[bi, :, bj, :, bk, :] = True
    if size != n:  # padding samples (NaN) beyond the grid are cropped away
        values = np.ascontiguousarray(values[:n, :n, :n])
        mask = np.ascontiguousarray(mask[:n, :n, :n])
    mesh = mesh_from_grid(values, (grid.lo, grid.hi), level, mask=mask)
    return _finish(mesh, keep_largest_component, to_world, metadata)


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
    grid = _Grid.make(resolution, bounds)
    sampler = _Sampler(field, grid, device)
    return _sample_dense(sampler, grid, _positive_int(chunk_size, "chunk_size"), progress)


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
    lo, hi = _bounds_array(bounds)
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("grid holds non-finite values (NaN or inf)")
    if level < low or level > high:
        return _empty_mesh()
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
        return _empty_mesh()
    step = (hi - lo) / (np.asarray(values.shape, dtype=np.float64) - 1.0)
    verts = lo + verts.astype(np.float64) * step
    return trimesh.Trimesh(vertices=verts, faces=faces, process=True)  # process: merge vertices


# --------------------------------------------------------------------------------------------
# The grid and the counted field evaluation


@dataclass(frozen=True)
class _Grid:
    """n samples per axis spanning [lo, hi] (float64 3-vectors)."""

    lo: np.ndarray
    hi: np.ndarray
    n: int

    @staticmethod
    def make(resolution: int, bounds: Bounds) -> _Grid:
        n = _positive_int(resolution, "resolution")
        if n < 2:
            raise ValueError(f"resolution must be at least 2 samples per axis, got {n}")
        lo, hi = _bounds_array(bounds)
        return _Grid(lo, hi, n)

    @property
    def step(self) -> np.ndarray:
        return (self.hi - self.lo) / (self.n - 1)

    def bounds_list(self) -> list[list[float]]:
        return [self.lo.tolist(), self.hi.tolist()]


class _Sampler:
    """Evaluates the field on grid samples or arbitrary points, counting the points passed."""

    def __init__(self, field: Field, grid: _Grid, device: torch.device | str | None):
        if not callable(field):
            raise TypeError(f"field must be callable (points (N, 3) -> (N,)), got {type(field).__name__}")
        self.field = field
        self.device, self.dtype = _device_and_dtype(field, device)
        self.lo = torch.as_tensor(grid.lo, dtype=self.dtype, device=self.device)
        self.step = torch.as_tensor(grid.step, dtype=self.dtype, device=self.device)
        self.n = grid.n
        self.evaluations = 0

    def at_samples(self, ijk: torch.Tensor) -> np.ndarray:
        """`(N, 3)` integer sample indices (on `self.device`) -> `(N,)` float32 values.

        Both extraction paths compute coordinates with this one expression, so a sample has
        bit-identical coordinates whichever path or chunk evaluates it.
        """
        return self(self.lo + ijk.to(self.dtype) * self.step)

    def at_points(self, points: np.ndarray, chunk_size: int) -> np.ndarray:
        """`(N, 3)` float64 world points -> `(N,)` float64 values, in chunks."""
        out = np.empty(len(points), np.float64)
        for start in range(0, len(points), chunk_size):
            chunk = torch.as_tensor(points[start:start + chunk_size], dtype=self.dtype,
                                    device=self.device)
            out[start:start + len(chunk)] = self(chunk)
        return out

    def __call__(self, points: torch.Tensor) -> np.ndarray:
        count = points.shape[0]
        with torch.no_grad():
            out = self.field(points)
        if not isinstance(out, torch.Tensor) or out.numel() != count or out.ndim not in (1, 2):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"field returned {shape} for {count} points; expected ({count},) or ({count}, 1)")
        out = out.reshape(count)
        if not bool(torch.isfinite(out).all()):
            raise ValueError("field returned non-finite values (NaN or inf); cannot extract a surface")
        self.evaluations += count
        return out.detach().to(torch.float32).cpu().numpy()


def _device_and_dtype(field: Field, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    first = None
    if isinstance(field, torch.nn.Module):
        first = next(itertools.chain(field.parameters(), field.buffers()), None)
    if device is not None:
        device = torch.device(device)
    else:
        device = first.device if first is not None else torch.device("cpu")
    dtype = torch.float64 if first is not None and first.dtype == torch.float64 else torch.float32
    return device, dtype


def _sample_dense(sampler: _Sampler, grid: _Grid, chunk_size: int, progress: bool) -> np.ndarray:
    n = grid.n
    total = n**3
    values = np.empty(total, np.float32)
    with tqdm(total=total, disable=not progress, desc="marching cubes: field", unit="pt",
              unit_scale=True) as bar:
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            flat = torch.arange(start, stop, device=sampler.device)
            ijk = torch.stack((flat // (n * n), (flat // n) % n, flat % n), dim=1)
            values[start:stop] = sampler.at_samples(ijk)
            bar.update(stop - start)
    return values.reshape(n, n, n)


# --------------------------------------------------------------------------------------------
# Narrow band: octree search, block evaluation, band check


def _octree_band(sampler: _Sampler, grid: _Grid, level: float, lipschitz: float, bs: int,
                 coarse_resolution: int, chunk_size: int, progress: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Coarse-to-fine pruning.

    Returns:
        sign: `(m, m, m)` int8 over finest blocks (m = ceil(n / bs)): +-1 for pruned blocks (the
            field's strict sign relative to `level` there), 0 for blocks to evaluate.
        blocks: `(K, 3)` int64 indices of the finest blocks to evaluate.
    """
    n, step = grid.n, grid.step
    m = -(-n // bs)
    depth = 0
    while -(-m // (1 << depth)) > coarse_resolution:
        depth += 1
    sign = np.zeros((m, m, m), np.int8)
    m0 = -(-n // (bs << depth))
    blocks = np.stack(np.meshgrid(*(np.arange(m0),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    with tqdm(total=depth + 1, disable=not progress, desc="narrow band: octree", unit="level") as bar:
        for lvl in range(depth + 1):
            shift = depth - lvl
            size = bs << shift
            first = blocks * size
            last = np.minimum(first + size, n) - 1
            centers = grid.lo + 0.5 * (first + last) * step
            half = (0.5 * (last - first) + 1.0) * step  # grown by one sample spacing
            # 1e-4: float32 evaluation error must not turn a grazing block into a pruned one
            radius = lipschitz * np.linalg.norm(half, axis=1) * (1.0 + 1e-4)
            f = sampler.at_points(centers, chunk_size) - level
            near = np.abs(f) <= radius
            coarse = np.zeros((-(-n // size),) * 3, np.int8)
            far = blocks[~near]
            coarse[far[:, 0], far[:, 1], far[:, 2]] = np.sign(f[~near]).astype(np.int8)
            r = 1 << shift
            fine = coarse.repeat(r, 0).repeat(r, 1).repeat(r, 2)[:m, :m, :m]
            np.copyto(sign, fine, where=fine != 0)
            blocks = blocks[near]
            if lvl < depth:
                blocks = _children(blocks, -(-n // (size >> 1)))
            bar.update(1)
            bar.set_postfix(blocks=len(blocks))
    return sign, blocks


_CHILD_OFFSETS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=np.int64)
_NEIGHBOUR_OFFSETS = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]


def _children(blocks: np.ndarray, m_next: int) -> np.ndarray:
    """`(K, 3)` blocks -> `(<= 8K, 3)` child blocks that lie inside an `m_next`^3 block grid."""
    kids = (blocks[:, None, :] * 2 + _CHILD_OFFSETS[None]).reshape(-1, 3)
    return kids[(kids < m_next).all(axis=1)]


def _evaluate_blocks(sampler: _Sampler, blocks: np.ndarray, bs: int, chunk_size: int,
                     progress: bool) -> np.ndarray:
    """Every sample of the given finest blocks: `(K, bs, bs, bs)` float32, NaN beyond the grid."""
    n = sampler.n
    out = np.full((len(blocks), bs**3), np.nan, np.float32)
    if len(blocks) == 0:
        return out.reshape(0, bs, bs, bs)
    local = torch.arange(bs, device=sampler.device)
    local = torch.stack(torch.meshgrid(local, local, local, indexing="ij"), dim=-1).reshape(-1, 3)
    per_chunk = max(1, chunk_size // bs**3)
    with tqdm(total=len(blocks), disable=not progress, desc="narrow band: field",
              unit="block") as bar:
        for start in range(0, len(blocks), per_chunk):
            chunk = torch.as_tensor(blocks[start:start + per_chunk], device=sampler.device)
            ijk = (chunk[:, None, :] * bs + local[None]).reshape(-1, 3)
            inside = (ijk < n).all(dim=1)
            rows = out[start:start + len(chunk)].reshape(-1)  # a view into `out`
            if bool(inside.all()):
                rows[:] = sampler.at_samples(ijk)
            else:
                rows[inside.cpu().numpy()] = sampler.at_samples(ijk[inside])
            bar.update(len(chunk))
    return out.reshape(-1, bs, bs, bs)


def _band_conflicts(sign: np.ndarray, blocks: np.ndarray, values: np.ndarray,
                    level: float) -> np.ndarray:
    """Pruned blocks whose sign an adjacent evaluated sample contradicts.

    Args:
        sign: `(m, m, m)` int8 block signs (0: evaluated).
        blocks: `(K, 3)` evaluated blocks; values: their samples `(K, bs, bs, bs)` (NaN: padding).

    Returns:
        `(C, 3)` unique indices of pruned blocks to evaluate.
    """
    m = sign.shape[0]
    k = len(blocks)
    if k == 0:
        return np.zeros((0, 3), np.int64)
    bs = values.shape[1]
    above = ~(values <= level)  # strictly above, or padding (NaN compares False)
    below = ~(values >= level)
    found = []
    for d in _NEIGHBOUR_OFFSETS:
        nb = blocks + np.asarray(d)
        inside = ((nb >= 0) & (nb < m)).all(axis=1)
        s = np.zeros(k, np.int8)
        s[inside] = sign[nb[inside, 0], nb[inside, 1], nb[inside, 2]]
        if not s.any():
            continue
        face = (slice(None),) + tuple(slice(0, 1) if di < 0 else slice(bs - 1, bs) if di > 0
                                      else slice(None) for di in d)
        all_above = above[face].reshape(k, -1).all(axis=1)
        all_below = below[face].reshape(k, -1).all(axis=1)
        bad = ((s == 1) & ~all_above) | ((s == -1) & ~all_below)
        found.append(nb[bad])
    return _union_rows(*found)


def _pruned_conflicts(sign: np.ndarray) -> np.ndarray:
    """Pruned blocks with a pruned 26-neighbour of the opposite sign: `(C, 3)`."""
    above, below = sign > 0, sign < 0
    return _union_rows(np.argwhere(above & _dilate(below)), np.argwhere(below & _dilate(above)))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Boolean dilation by the 3x3x3 cube (separable: one 3-wide pass per axis)."""
    out = mask
    for axis in range(3):
        grown = out.copy()
        lead = [slice(None)] * 3
        tail = [slice(None)] * 3
        lead[axis], tail[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lead)] |= out[tuple(tail)]
        grown[tuple(tail)] |= out[tuple(lead)]
        out = grown
    return out


def _union_rows(*arrays: np.ndarray) -> np.ndarray:
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return np.zeros((0, 3), np.int64)
    return np.unique(np.concatenate(arrays).astype(np.int64), axis=0)


# --------------------------------------------------------------------------------------------
# Small helpers


def _finish(mesh: trimesh.Trimesh, keep_largest: bool, to_world: np.ndarray | None,
            metadata: dict) -> trimesh.Trimesh:
    if keep_largest:
        mesh = largest_component(mesh)
    if to_world is not None:
        matrix = np.asarray(to_world, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"to_world must be a finite (4, 4) matrix, got shape {matrix.shape}")
        mesh = transform_mesh(mesh, matrix)
    mesh.metadata.update(metadata)
    return mesh


def _empty_mesh() -> trimesh.Trimesh:
    return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), np.int64), process=False)


def _bounds_array(bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(bounds, dtype=np.float64)
    if array.shape != (2, 3) or not np.all(np.isfinite(array)) or not np.all(array[1] > array[0]):
        raise ValueError(f"bounds must be (lo, hi), two finite 3-vectors with hi > lo, got {bounds!r}")
    return array[0].copy(), array[1].copy()


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
