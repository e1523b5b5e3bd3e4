"""Rays against the bounding sphere: where a ray enters and leaves the sphere that holds every scene
(the working space's unit sphere), for torch tensors (renderers, fits) and numpy arrays (checks)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def ray_sphere_interval(origins: Array, directions: Array, radius: float = 1.0) -> tuple[Array, Array, Array]:
    """Where rays cross a sphere of `radius` centred at the origin.

    Args:
        origins, directions: (..., 3) ray origins and unit directions (broadcastable), both torch
            tensors or both numpy arrays.
    Returns:
        near (...) entry parameter, clamped to >= 0 (rays starting inside begin at their origin);
        far (...) exit parameter; hit (...) bool: the ray meets the sphere ahead of its origin.
    """
    b = (origins * directions).sum(-1)  # |o + s d|^2 = r^2  ->  s^2 + 2 b s + (|o|^2 - r^2) = 0
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    if isinstance(disc, torch.Tensor):
        root = disc.clamp_min(0.0).sqrt()
        near = (-b - root).clamp_min(0.0)
    else:
        root = np.sqrt(np.maximum(disc, 0.0))
        near = np.maximum(-b - root, 0.0)
    far = -b + root
    return near, far, (disc > 0) & (far > 0)


def ray_box_interval(origins: torch.Tensor, directions: torch.Tensor, bound: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays cross the cube [-bound, bound]^3 (the slab test), as `ray_sphere_interval` returns
    it: near clamped to >= 0, far, and whether the ray meets the cube ahead of its origin."""
    inverse = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    first, second = (-bound - origins) * inverse, (bound - origins) * inverse
    near = torch.minimum(first, second).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(first, second).amin(dim=-1)
    return near, far, far > near
