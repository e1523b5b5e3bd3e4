"""Visual hull: the shape carved by silhouettes, as a field that mesh extraction can contour.

The classic baseline of silhouette-based reconstruction and the initialisation that surface-fitting
methods start from. A point is inside when it projects onto the foreground of every view; sampling the
masks bilinearly makes the field continuous, so its 0 level set sits between pixels rather than on
voxel faces. It is not a signed distance (only its sign is meaningful): contour it densely.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cameras import Cameras
from ..render.occupancy import OccupancyGrid


class VisualHullField(torch.nn.Module):
    """f(x) = 0.5 - min over views of the bilinearly sampled mask at x's projection (< 0 inside).

    Args:
        cameras: B cameras.
        masks: (B, H, W) foreground coverage in [0, 1] (bool accepted).
    Points behind a camera or outside its image count as background: the object is assumed to be
    fully inside every view, as in the scenes `zerolevel render` writes.
    """

    def __init__(self, cameras: Cameras, masks: Tensor):
        super().__init__()
        if masks.shape != (len(cameras), cameras.height, cameras.width):
            raise ValueError(f"masks {tuple(masks.shape)} do not match {cameras}")
        self.cameras = cameras
        self.register_buffer("masks", masks.to(cameras.dtype)[:, None])  # (B, 1, H, W)

    def forward(self, points: Tensor) -> Tensor:
        """(N, 3) world points -> (N,) field values."""
        uv, depth = self.cameras.project(points.to(self.masks.dtype))
        size = torch.tensor([self.cameras.width, self.cameras.height], dtype=uv.dtype, device=uv.device)
        grid = (2 * uv / size - 1)[:, :, None, :]  # grid_sample's [-1, 1] with align_corners=False
        coverage = torch.nn.functional.grid_sample(self.masks, grid, mode="bilinear",
                                                   padding_mode="zeros", align_corners=False)
        coverage = coverage[:, 0, :, 0].masked_fill(depth <= 0, 0.0)
        return 0.5 - coverage.min(dim=0).values


@torch.no_grad()
def visual_hull_cells(cameras: Cameras, masks: Tensor, resolution: int = 64) -> Tensor:
    """Cells of a regular grid over [-1, 1]^3 that may hold part of the object: (R, R, R) bool.

    Conservative: a cell is kept when its centre projects onto the foreground of every view after
    the view's mask is dilated by the largest image radius a cell can cover (its half-diagonal at
    the nearest depth a cell centre has in that view), so no cell the object touches is carved.
    Indexed [ix, iy, iz] as `render.occupancy.OccupancyGrid`.
    """
    masks = torch.as_tensor(masks, device=cameras.device)
    if masks.shape != (len(cameras), cameras.height, cameras.width):
        raise ValueError(f"masks {tuple(masks.shape)} do not match {cameras}")
    grid = OccupancyGrid.full(resolution, device=cameras.device)
    centres, half_diagonal = grid.cell_centres(cameras.dtype), grid.half_diagonal
    inside = torch.ones(len(centres), dtype=torch.bool, device=cameras.device)
    for view in range(len(cameras)):
        camera = cameras[view:view + 1]
        uv, depth = camera.project(centres)
        uv, depth = uv[0], depth[0]
        nearest = depth.clamp_min(1e-6).min().clamp_min(half_diagonal * 2)
        focal = camera.K[0, :2, :2].diagonal().max()
        radius = min(int(math.ceil(float(focal * half_diagonal / (nearest - half_diagonal).clamp_min(1e-3)))),
                     max(cameras.width, cameras.height))
        dilated = torch.nn.functional.max_pool2d(masks[view].to(torch.float32)[None, None], 2 * radius + 1,
                                                 stride=1, padding=radius)[0, 0] > 0.5
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        visible = (depth > 0) & (col >= 0) & (col < cameras.width) & (row >= 0) & (row < cameras.height)
        hit = dilated[row.clamp(0, cameras.height - 1), col.clamp(0, cameras.width - 1)] & visible
        inside &= hit
    return inside.reshape(resolution, resolution, resolution)
