"""Placed primitive solids and the mesh of their union: constructive solid geometry on a grid.

One job: `box`, `capsule`, `cylinder`, `ellipsoid`, `torus`, `slab` and `revolve` place a primitive
of `geometry.primitives` (its local-frame SDF) in a world frame by `world = rot @ local + centre`,
with a world-space bounding box; `mesh_union(parts, resolution)` samples the minimum of their SDFs
on a grid (each part only inside its own box, plus two cells, so thin parts cost little), meshes
it by marching cubes and keeps the largest component. SDFs are evaluated on float32 numpy points.

    mesh = mesh_union([box((0, 0, 0), (0.3, 0.2, 0.1)), capsule((0, 0, 0), (0, 0.5, 0), 0.05)], 64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

from . import primitives
from .components import largest_component
from .extract import mesh_from_grid

SDF = Callable[[np.ndarray], np.ndarray]  # (M, 3) float32 points -> (M,) float32 signed distances


def mesh_union(parts: Sequence[Part], resolution: int) -> trimesh.Trimesh:
    """Marching-cubes mesh of the union of `parts`, largest component only, in the parts' frame.

    The grid has `resolution` samples along the longest side of the parts' joint bounding box, cubic
    cells, and three empty cells of margin on every side.
    """
    lo = np.min([p.lo for p in parts], axis=0)
    hi = np.max([p.hi for p in parts], axis=0)
    step = float(np.max(hi - lo)) / (resolution - 7)
    lo = lo - 3 * step
    shape = np.ceil((hi + 3 * step - lo) / step).astype(int) + 1
    values = np.full(shape, 1.0, dtype=np.float32)  # any positive value: outside every part
    for part in parts:
        _min_into(values, part, lo, step)
    # Samples within rounding error of the level set (parts whose faces are coplanar, rotated
    # frames) flicker in sign and make slivers and degenerate triangles: count them as outside.
    eps = np.float32(1e-3 * step)
    values[np.abs(values) < eps] = eps
    hi_grid = lo + (shape - 1) * step
    return largest_component(mesh_from_grid(values, (lo, hi_grid)))


@dataclass
class Part:
    """A primitive solid placed in the object's frame.

    Attributes:
        lo, hi: (3,) corners of a box that contains the solid (the SDF is only sampled there).
        sdf: (M, 3) float32 points -> (M,) signed distance (or a bound of it), negative inside.
    """

    lo: np.ndarray
    hi: np.ndarray
    sdf: SDF


def _min_into(values: np.ndarray, part: Part, lo: np.ndarray, step: float) -> None:
    """values[block] = min(values[block], part.sdf) over the grid block around the part's box."""
    start = np.maximum(np.floor((part.lo - lo) / step).astype(int) - 2, 0)
    stop = np.minimum(np.ceil((part.hi - lo) / step).astype(int) + 3, values.shape)
    axes = [(lo[k] + np.arange(start[k], stop[k]) * step).astype(np.float32) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    d = part.sdf(grid.reshape(-1, 3)).reshape(grid.shape[:3])
    block = tuple(slice(a, b) for a, b in zip(start, stop))
    np.minimum(values[block], d, out=values[block])


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) right-handed rotation by `degrees` about the world axis "x", "y" or "z"."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def placed(local_sdf: SDF, local_lo: Sequence[float], local_hi: Sequence[float],
           centre: Sequence[float] = (0.0, 0.0, 0.0), rot: np.ndarray | None = None) -> Part:
    """A primitive given in a local frame, placed by world = rot @ local + centre."""
    rot = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    corners = np.array(np.meshgrid(*zip(local_lo, local_hi), indexing="ij")).reshape(3, -1).T
    world = corners @ rot.T + centre
    c32, r32 = centre.astype(np.float32), rot.astype(np.float32)
    return Part(world.min(axis=0), world.max(axis=0), lambda p: local_sdf((p - c32) @ r32))


def box(centre: Sequence[float], half: Sequence[float], rot: np.ndarray | None = None,
        rounding: float = 0.0) -> Part:
    """Box with half-extents `half` (its local axes), edges rounded by `rounding`."""
    h = np.asarray(half, dtype=np.float32)
    r = np.float32(min(rounding, 0.99 * float(h.min())))
    return placed(lambda p: primitives.box(p, h, r), -h, h, centre, rot)


def capsule(a: Sequence[float], b: Sequence[float], radius: float) -> Part:
    """Segment a-b swept by a ball of `radius`."""
    a32, b32, r32 = np.asarray(a, np.float32), np.asarray(b, np.float32), np.float32(radius)
    lo = np.minimum(a32, b32) - radius
    hi = np.maximum(a32, b32) + radius
    return Part(lo.astype(np.float64), hi.astype(np.float64), lambda p: primitives.capsule(p, a32, b32, r32))


def cylinder(centre: Sequence[float], radius: float, half_height: float, rot: np.ndarray | None = None) -> Part:
    """Capped cylinder around its local y axis."""
    r, h = np.float32(radius), np.float32(half_height)
    return placed(lambda p: primitives.cylinder(p, r, h), (-radius, -half_height, -radius),
                  (radius, half_height, radius), centre, rot)


def ellipsoid(centre: Sequence[float], radii: Sequence[float], rot: np.ndarray | None = None,
              above: float | None = None) -> Part:
    """Ellipsoid (the usual SDF bound k0 (k0 - 1) / k1); `above`: cut off below local y = above."""
    rad = np.asarray(radii, dtype=np.float32)
    cut = None if above is None else np.float32(above)
    return placed(lambda p: primitives.ellipsoid(p, rad, cut), -rad, rad, centre, rot)


def torus(centre: Sequence[float], major: float, minor: float, rot: np.ndarray | None = None,
          keep: SDF | None = None) -> Part:
    """Torus around its local y axis; `keep` (a world-space SDF) intersects it with another solid."""
    R, r = np.float32(major), np.float32(minor)
    part = placed(lambda p: primitives.torus(p, R, r), (-major - minor, -minor, -major - minor),
                  (major + minor, minor, major + minor), centre, rot)
    if keep is not None:
        inner = part.sdf
        part.sdf = lambda p: np.maximum(inner(p), keep(p))
    return part


def slab(polygon: Sequence[Sequence[float]], half_thickness: float, centre: Sequence[float] = (0, 0, 0),
         rot: np.ndarray | None = None) -> Part:
    """Convex polygon in the local xz-plane (vertices (K, 2) as (x, z), either winding) extruded along y."""
    poly = np.asarray(polygon, dtype=np.float64)
    h = np.float32(half_thickness)
    lo2, hi2 = poly.min(axis=0), poly.max(axis=0)
    return placed(lambda p: primitives.prism(p, poly, h), (lo2[0], -half_thickness, lo2[1]),
                  (hi2[0], half_thickness, hi2[1]), centre, rot)


def revolve(ys: Sequence[float], radii: Sequence[float], centre: Sequence[float] = (0, 0, 0),
            rot: np.ndarray | None = None, wall: float = 0.0, bottom: float | None = None,
            top: float | None = None) -> Part:
    """Solid of revolution of the profile radius(y) (piecewise linear through (ys, radii)) around local y.

    With `wall > 0` it is hollow: the cavity is `wall` inside the profile, closed by a floor of
    thickness `bottom` and a ceiling of thickness `top` (None: open at that end).
    """
    ys32, rs32 = np.asarray(ys, np.float32), np.asarray(radii, np.float32)
    rmax = float(np.max(radii))
    return placed(lambda p: primitives.revolved(p, ys32, rs32, wall, bottom, top),
                  (-rmax, float(ys32[0]), -rmax), (rmax, float(ys32[-1]), rmax), centre, rot)
