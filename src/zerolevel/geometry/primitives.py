"""Signed distance functions of primitive solids, each in its own local frame: the one set of formulas.

One job: points `(..., 3)` -> signed distances `(...)`, negative inside, in the points' units. Every
function takes numpy arrays or torch tensors and computes with that same library (`_xp` picks it),
so the procedural shape builder (`geometry.solids`, numpy float32 grids) and the analytic fields
(`fields.analytic`, differentiable torch modules) evaluate the same formulas; dtype and device
follow the points. Parameters are Python floats, numpy arrays or tensors of the points' kind.

Local frames: centred at the origin; solids of revolution (cylinder, torus, `revolved`) turn around
the local y axis. Callers place a solid by mapping world points into its frame first. `box`,
`sphere`, `capsule`, `cylinder` and `torus` are exact; `ellipsoid` is the usual bound
k0 (k0 - 1) / k1; `prism` is exact inside and a lower bound outside; `revolved` (numpy only: it
interpolates the profile with `np.interp`) is a bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _xp(points: np.ndarray | torch.Tensor) -> ModuleType:
    """The array library of `points`: `torch` for tensors, else `numpy`."""
    return torch if isinstance(points, torch.Tensor) else np


def sphere(points: Array, radius: float | Array) -> Array:
    """Sphere of `radius` around the origin: `|p| - radius`."""
    return _xp(points).linalg.vector_norm(points, axis=-1) - radius


def box(points: Array, half: Array, rounding: float | Array = 0.0) -> Array:
    """Box with half-extents `half` (3,), edges rounded by `rounding` (<= the smallest half-extent)."""
    xp = _xp(points)
    q = xp.abs(points) - (half - rounding)
    outside = xp.linalg.vector_norm(xp.clip(q, 0, None), axis=-1)
    return outside + xp.clip(xp.amax(q, axis=-1), None, 0) - rounding


def capsule(points: Array, a: Array, b: Array, radius: float) -> Array:
    """Segment a-b (two (3,) points) swept by a ball of `radius`."""
    xp = _xp(points)
    ab = b - a
    denom = max(float(ab @ ab), 1e-12)
    pa = points - a
    t = xp.clip(pa @ ab / denom, 0, 1)
    return xp.linalg.vector_norm(pa - t[..., None] * ab, axis=-1) - radius


def cylinder(points: Array, radius: float, half_height: float) -> Array:
    """Capped cylinder around the y axis, from y = -half_height to +half_height."""
    xp = _xp(points)
    d0 = xp.hypot(points[..., 0], points[..., 2]) - radius
    d1 = xp.abs(points[..., 1]) - half_height
    return xp.clip(xp.maximum(d0, d1), None, 0) + xp.hypot(xp.clip(d0, 0, None), xp.clip(d1, 0, None))


def ellipsoid(points: Array, radii: Array, above: float | None = None) -> Array:
    """Ellipsoid with semi-axes `radii` (3,); `above`: cut off below y = above."""
    xp = _xp(points)
    k0 = xp.linalg.vector_norm(points / radii, axis=-1)
    k1 = xp.clip(xp.linalg.vector_norm(points / (radii * radii), axis=-1), 1e-9, None)
    d = k0 * (k0 - 1) / k1
    return d if above is None else xp.maximum(d, above - points[..., 1])


def torus(points: Array, major: float | Array, minor: float | Array) -> Array:
    """Torus around the y axis: tube centre at distance `major` from the axis, tube radius `minor`."""
    xp = _xp(points)
    ring = xp.hypot(points[..., 0], points[..., 2]) - major
    return xp.hypot(ring, points[..., 1]) - minor


def prism(points: Array, polygon: Sequence[Sequence[float]], half_thickness: float) -> Array:
    """Convex polygon in the xz-plane ((K, 2) vertices as (x, z), either winding) extruded along y."""
    xp = _xp(points)
    normals, offsets = _half_planes(polygon)
    if xp is torch:
        normals, offsets = (torch.as_tensor(a, dtype=points.dtype, device=points.device) for a in (normals, offsets))
    d2 = xp.amax(points[..., [0, 2]] @ normals.T - offsets, axis=-1)
    return xp.maximum(d2, xp.abs(points[..., 1]) - half_thickness)


def _half_planes(polygon: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) outward unit edge normals and (K,) offsets of a convex polygon, float32."""
    poly = np.asarray(polygon, dtype=np.float64)
    edges = np.roll(poly, -1, axis=0) - poly
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    if np.sum(normals * (poly.mean(axis=0) - poly)) > 0:
        normals = -normals  # outward: away from the centroid
    offsets = np.einsum("kj,kj->k", normals, poly).astype(np.float32)
    return normals.astype(np.float32), offsets


def revolved(points: np.ndarray, ys: np.ndarray, radii: np.ndarray, wall: float = 0.0,
             bottom: float | None = None, top: float | None = None) -> np.ndarray:
    """Solid of revolution of the profile radius(y), piecewise linear through (ys, radii), around y.

    Numpy float32 only. With `wall > 0` it is hollow: the cavity is `wall` inside the profile,
    closed by a floor of thickness `bottom` and a ceiling of thickness `top` (None: open there).
    """
    y0, y1 = ys[0], ys[-1]
    rho, y = np.hypot(points[..., 0], points[..., 2]), points[..., 1]
    r = np.interp(y, ys, radii).astype(np.float32)
    d = np.maximum(np.maximum(rho - r, y0 - y), y - y1)
    if wall <= 0:
        return d
    cavity = rho - (r - np.float32(wall))
    if bottom is not None:
        cavity = np.maximum(cavity, y0 + np.float32(bottom) - y)
    if top is not None:
        cavity = np.maximum(cavity, y - (y1 - np.float32(top)))
    return np.maximum(d, -cavity)
