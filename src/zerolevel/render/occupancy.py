"""Empty-space skipping for volume rendering: an `OccupancyGrid` of the cells over [-1, 1]^3 that may
hold visible surface, and `update_occupancy`, which refreshes it from the field at the cell centres
(SuperNormal's occupancy grid; the volume renderer skips intervals whose ends are both empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..geometry.visual_hull import cube_cell_centres

__all__ = ["OccupancyGrid", "update_occupancy"]

_OCCUPANCY_TAIL = 7.0  # |f| > 7 / inv_s: less than 1e-3 of a ray's opacity lies beyond (sigmoid tails)


@dataclass
class OccupancyGrid:
    """Cells of a regular grid over the cube [-1, 1]^3 that may hold visible surface.

    Attributes:
        occupied: (R, R, R) bool, indexed [ix, iy, iz]; cell i spans [-1 + i c, -1 + (i + 1) c],
            c = 2 / R.
        margin: a cell is occupied when |f(centre)| <= margin * half-diagonal (+ a band for the
            current sharpness, see `update_occupancy`); 1.5 allows for neural SDFs that are not exact
            (the extraction's narrow band uses the same bound).

    An interval is tested at its two ends only, so the sample spacing must stay below the width of
    the occupied shell (about 2 * margin * half-diagonal: 0.08 at 64^3); with fewer samples per
    ray, use a coarser grid.
    """

    occupied: Tensor
    margin: float = 1.5

    @staticmethod
    def full(resolution: int = 64, device: torch.device | str | None = None,
             margin: float = 1.5) -> "OccupancyGrid":
        """A grid with every cell occupied (dense sampling until the first `update_occupancy`)."""
        return OccupancyGrid(torch.ones((resolution,) * 3, dtype=torch.bool, device=device), margin)

    @property
    def resolution(self) -> int:
        return self.occupied.shape[0]

    @property
    def half_diagonal(self) -> float:
        """Half the diagonal of one cell."""
        return math.sqrt(3.0) / self.resolution

    def cell_centres(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """(R^3, 3) cell centres, in the flattened order of `occupied`."""
        return cube_cell_centres(self.resolution, dtype, self.occupied.device)

    def lookup(self, points: Tensor) -> Tensor:
        """(..., 3) points -> (...) bool: inside the cube and in an occupied cell."""
        r = self.resolution
        idx = ((points.detach() + 1.0) * (r / 2.0)).floor().long()
        inside = ((idx >= 0) & (idx < r)).all(dim=-1)
        idx = idx.clamp(0, r - 1)
        flat = (idx[..., 0] * r + idx[..., 1]) * r + idx[..., 2]
        return self.occupied.reshape(-1)[flat] & inside


@torch.no_grad()
def update_occupancy(field: Callable[[Tensor], Tensor], grid: OccupancyGrid, *,
                     variance: nn.Module | Tensor | float | None = None,
                     grow_into: Tensor | None = None, chunk: int = 2**18) -> OccupancyGrid:
    """Refresh `grid` in place from the field at the cell centres, and return it.

    A cell is occupied when `|f(centre)| <= margin * half_diagonal + 7 / inv_s`: the first term
    covers any surface inside the cell (for a field whose gradient norm stays below `margin`), the
    second (only when `variance` is given) the sigmoid tails where NeuS still puts more than 1e-3 of
    a ray's opacity. Called by a method every few iterations (SuperNormal: every 8).

    Args:
        field: points (M, 3) -> SDF (M,) or (M, 1), evaluated without gradients on the grid's
            device, in the dtype of the module's first parameter (else float32).
        grid: the grid to refresh.
        variance: current sharpness (a `volume.NeuSVariance`, or inv_s); None: no sharpness band.
        grow_into: optional (R, R, R) bool cells where the surface may still have to go (e.g. the
            visual hull): those the field puts outside (f > 0) stay occupied too, so that rays
            crossing them keep a gradient that pulls the surface out. Without it, a fit started
            from a small sphere only receives gradients within the band around its current surface.
        chunk: points per field call.
    """
    dtype = next((p.dtype for p in field.parameters()), torch.float32) \
        if isinstance(field, nn.Module) else torch.float32
    values = torch.cat([field(c).reshape(-1) for c in grid.cell_centres(dtype).split(chunk)])
    threshold = grid.margin * grid.half_diagonal
    if variance is not None:
        inv_s = variance() if isinstance(variance, nn.Module) else variance
        inv_s = torch.as_tensor(inv_s, device=values.device).to(values.dtype)
        threshold += _OCCUPANCY_TAIL / float(inv_s)
    occupied = (values.abs() <= threshold).reshape(grid.occupied.shape)
    if grow_into is not None:
        occupied |= grow_into & (values > 0).reshape(grid.occupied.shape)
    grid.occupied = occupied
    return grid
