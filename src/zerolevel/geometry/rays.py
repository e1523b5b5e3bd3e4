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
