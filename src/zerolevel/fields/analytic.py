"""Analytic signed distance fields: exact shapes with known area and volume, for tests and benchmarks.

Every field is a `torch.nn.Module` mapping points `(..., 3)` to signed distances `(...)`, negative
inside, in the points' units. Shape parameters (centres, radii, sizes) are `nn.Parameter`s so that
gradient tests can differentiate through them; they live on whatever device the module is moved to.
The formulas are `zerolevel.geometry.primitives`' (the shape generator's too); a module holds the
parameters and moves points into the primitive's frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..geometry import primitives


def _vector(values: Sequence[float] | torch.Tensor, name: str) -> nn.Parameter:
    tensor = torch.as_tensor(values, dtype=torch.float32).detach().clone().reshape(-1)
    if tensor.numel() != 3:
        raise ValueError(f"{name} must have 3 components, got {tensor.numel()}")
    return nn.Parameter(tensor)


def _scalar(value: float | torch.Tensor, name: str) -> nn.Parameter:
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone().reshape(())
    if not float(tensor) > 0:
        raise ValueError(f"{name} must be positive, got {float(tensor)}")
    return nn.Parameter(tensor)


class SphereSDF(nn.Module):
    """Exact SDF of a sphere: `|p - center| - radius`.

    Area 4 pi r^2, volume 4/3 pi r^3.
    """

    def __init__(self, center: Sequence[float] = (0.0, 0.0, 0.0), radius: float = 0.5):
        super().__init__()
        self.center = _vector(center, "center")
        self.radius = _scalar(radius, "radius")

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) points -> (...) signed distances."""
        return primitives.sphere(points - self.center, self.radius)


class BoxSDF(nn.Module):
    """Exact SDF of an axis-aligned box with the given centre and half side lengths.

    Outside: distance to the box; inside: minus the distance to the nearest face.
    Area 8 (hx hy + hy hz + hz hx), volume 8 hx hy hz.
    """

    def __init__(self, center: Sequence[float] = (0.0, 0.0, 0.0),
                 half_size: Sequence[float] = (0.5, 0.5, 0.5)):
        super().__init__()
        self.center = _vector(center, "center")
        self.half_size = _vector(half_size, "half_size")
        if not bool((self.half_size > 0).all()):
            raise ValueError(f"half_size must be positive, got {self.half_size.tolist()}")

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) points -> (...) signed distances."""
        return primitives.box(points - self.center, self.half_size)


class TorusSDF(nn.Module):
    """Exact SDF of a torus around the z axis through `center`.

    `major_radius` R: centre to tube centre; `minor_radius` r: tube radius (r < R).
    Area 4 pi^2 R r, volume 2 pi^2 R r^2.
    """

    def __init__(self, center: Sequence[float] = (0.0, 0.0, 0.0), major_radius: float = 0.5,
                 minor_radius: float = 0.2):
        super().__init__()
        if not minor_radius < major_radius:
            raise ValueError(f"minor_radius ({minor_radius}) must be below major_radius ({major_radius})")
        self.center = _vector(center, "center")
        self.major_radius = _scalar(major_radius, "major_radius")
        self.minor_radius = _scalar(minor_radius, "minor_radius")

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) points -> (...) signed distances."""
        local = (points - self.center)[..., [0, 2, 1]]  # the primitive's axis is y, this torus's z
        return primitives.torus(local, self.major_radius, self.minor_radius)


class UnionSDF(nn.Module):
    """Union of fields: the pointwise minimum.

    Exact outside the shapes and inside disjoint ones; a lower bound of the distance inside
    overlapping ones. Still 1-Lipschitz when every part is.
    """

    def __init__(self, *fields: nn.Module):
        super().__init__()
        if not fields:
            raise ValueError("UnionSDF needs at least one field")
        self.parts = nn.ModuleList(fields)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) points -> (...) signed distances."""
        return torch.stack([part(points) for part in self.parts], dim=0).amin(dim=0)
