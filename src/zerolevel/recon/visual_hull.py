"""Visual hull: the shape carved by silhouettes, as a field that mesh extraction can contour.

The classic baseline of silhouette-based reconstruction and the initialisation that surface-fitting
methods start from. A point is inside when it projects onto the foreground of every view; sampling the
masks bilinearly makes the field continuous, so its 0 level set sits between pixels rather than on
voxel faces. It is not a signed distance (only its sign is meaningful): contour it densely.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras


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
