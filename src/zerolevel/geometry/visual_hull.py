"""Visual hulls: the shape carved by silhouettes, in the two forms the project needs.

- After normalisation (working space, `Cameras`, torch): `VisualHullField`, a continuous field
  that is < 0 where a point projects onto the foreground of every view (masks sampled bilinearly,
  so its zero set sits between pixels; only its sign is meaningful: the tet fit's start), and
  `visual_hull_cells`, the conservative cells of a grid over [-1, 1]^3 the object may touch (masks
  dilated by a cell's footprint: SuperNormal's empty-space skipping keeps them sampled).
- Before normalisation (raw 3x4 projections of an imported sequence, numpy): `visual_hull_points`
  carves a grid around the cameras' common focus (a point counts only where at least half of the
  views see it: a real sequence's object may leave some images), keeps the largest voxel piece and
  gives the points and voxel size that place the object in the unit sphere; `hull_silhouettes`
  trims masks to the hull's footprint.
One rule joins them: a point is carved by a view when it projects inside that view's image onto
background. The scene checks' leave-one-out hull (`recon.checks`) votes with the same rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..cameras import Cameras
from .components import largest_voxel_component


def cube_cell_centres(resolution: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """(R^3, 3) centres of the cells of an R^3 grid over [-1, 1]^3, flattened from [ix, iy, iz]."""
    axis = -1.0 + (torch.arange(resolution, device=device, dtype=dtype) + 0.5) * (2.0 / resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


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
        return 0.5 - self.coverage(points).min(dim=0).values

    def coverage(self, points: Tensor) -> Tensor:
        """(N, 3) world points -> (B, N): each view's bilinear mask value at their projections."""
        return mask_coverage(self.cameras, self.masks, points)[:, 0]


def mask_coverage(cameras: Cameras, masks: Tensor, points: Tensor) -> Tensor:
    """(B, C, H, W) C masks per view (e.g. of C objects seen by the same B cameras) and (N, 3) world
    points -> (B, C, N): each mask's bilinear value at the points' projections in its view; 0 behind
    the camera or outside the image."""
    uv, depth = cameras.project(points.to(masks.dtype))
    size = torch.tensor([cameras.width, cameras.height], dtype=uv.dtype, device=uv.device)
    grid = (2 * uv / size - 1)[:, :, None, :]  # grid_sample's [-1, 1] with align_corners=False
    coverage = torch.nn.functional.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)
    return coverage[..., 0].masked_fill((depth <= 0)[:, None], 0.0)


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
    centres = cube_cell_centres(resolution, cameras.dtype, cameras.device)
    half_diagonal = math.sqrt(3.0) / resolution
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


def _axes_center(P: np.ndarray) -> np.ndarray:
    """(3,) least-squares point nearest to all optical axes of (B, 3, 4) projections."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for Pi in P:
        M = Pi[:, :3]
        C = -np.linalg.solve(M, Pi[:, 3])
        d = M[2] / np.linalg.norm(M[2])
        Q = np.eye(3) - np.outer(d, d)
        A, b = A + Q, b + Q @ C
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _carve(P: np.ndarray, masks: np.ndarray, points: np.ndarray, min_seen: float = 0.5) -> np.ndarray:
    """(N,) bool: points in front of at least `min_seen` of the cameras' images and on the
    foreground of every image they fall in (points outside an image are not carved by it)."""
    B, H, W = masks.shape
    alive = np.arange(len(points))  # only points not yet carved are projected again
    seen = np.zeros(len(points), dtype=np.int32)
    homogeneous = np.c_[points, np.ones(len(points))].astype(np.float32)
    for Pi, mask in zip(P.astype(np.float32), masks):
        x = homogeneous[alive] @ Pi.T
        z = np.where(x[:, 2] > 0, x[:, 2], np.float32(np.nan))
        u, v = x[:, 0] / z, x[:, 1] / z
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)  # False for NaN (behind the camera)
        fg = np.ones(len(alive), dtype=bool)
        fg[inside] = mask[v[inside].astype(np.int64), u[inside].astype(np.int64)]
        seen[alive] += inside
        alive = alive[fg]
    keep = np.zeros(len(points), dtype=bool)
    keep[alive] = True
    return keep & (seen >= np.ceil(min_seen * B))


def _grid_points(center: np.ndarray, half: float, res: int) -> np.ndarray:
    g = (np.arange(res) + 0.5) / res * 2 * half - half
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + center


def visual_hull_points(P: np.ndarray, masks: np.ndarray, res: int = 64) -> tuple[np.ndarray, float]:
    """Centres of the visual hull's voxels (largest connected component), and the voxel size.

    A generous cube around the point nearest to all optical axes is carved at 32^3, then a cube
    around that hull's bounding box (plus two coarse voxels) at `res`^3.

    Args:
        P: (B, 3, 4) projections onto pixel coordinates (pixel centres at integer + 0.5).
        masks: (B, H, W) bool silhouettes.
    Returns:
        points (N, 3), voxel edge length.
    """
    B, H, W = masks.shape
    center = _axes_center(P)
    distance = max(np.linalg.norm(-np.linalg.solve(Pi[:, :3], Pi[:, 3]) - center) for Pi in P)
    focal = min(_focal(Pi) for Pi in P)
    half = distance * np.hypot(W, H) / focal  # twice the widest image footprint at the centre
    for level, n in enumerate((32, res)):
        points = _grid_points(center, half, n)
        occupied = largest_voxel_component(_carve(P, masks, points).reshape(n, n, n)).reshape(-1)
        voxel = 2 * half / n
        if not occupied.any() or level == 1:
            return points[occupied], voxel
        lo, hi = points[occupied].min(0), points[occupied].max(0)
        center, half = (lo + hi) / 2, (hi - lo).max() / 2 + 2 * voxel
    raise AssertionError("unreachable")


def _focal(Pi: np.ndarray) -> float:
    """Smaller focal length (pixels) of a projection matrix, via its RQ-free row norms."""
    M = Pi[:, :3] / np.linalg.norm(Pi[2, :3])
    r3 = M[2]
    fx = np.linalg.norm(np.cross(M[0], r3))
    fy = np.linalg.norm(np.cross(M[1], r3))
    return float(min(fx, fy))


def hull_silhouettes(P: np.ndarray, points: np.ndarray, voxel: float, masks: np.ndarray) -> np.ndarray:
    """(B, H, W) masks restricted to the visual hull's footprint in each view.

    Each hull voxel centre is splatted and dilated by the voxel's projected half-diagonal, so the
    footprint contains the hull; mask pixels outside it cannot be the object."""
    B, H, W = masks.shape
    out = np.zeros_like(masks)
    homogeneous = np.c_[points, np.ones(len(points))]
    for i, (Pi, mask) in enumerate(zip(P, masks)):
        x = homogeneous @ Pi.T
        z = x[:, 2]
        u, v = x[:, 0] / z, x[:, 1] / z
        inside = (z > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        splat = np.zeros((H, W), dtype=bool)
        splat[v[inside].astype(int), u[inside].astype(int)] = True
        radius = int(np.ceil(np.sqrt(3) / 2 * voxel * _focal(Pi) / z[z > 0].min())) + 1
        out[i] = mask & _dilate(splat, radius)
    return out


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a Euclidean disk (via the distance transform: cost independent of the radius)."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


@torch.no_grad()
def hull_distance_bound(cameras: Cameras, masks: Tensor, points: Tensor) -> Tensor:
    """A lower bound of points' distances to visual hulls: (B, C, H, W) masks of C objects seen by the
    same B cameras and (N, 3) world points -> (C, N), 0 where a point may lie in a hull.

    A view's silhouette cone (the rays through its foreground pixels) holds the hull, so a point's
    distance to the hull is at least its distance to every view's cone, and that at least
    |p - centre| sin(angle to the nearest foreground ray). The angle is bounded below from the pixel
    distance of p's projection to the nearest foreground pixel (a 2D distance transform of each mask,
    less sqrt 2 for the two pixels' extents, plus the distance past the image's edge), times the
    smallest angle a pixel spans on that path (cos^2 of the ray's angle off the axis, over the focal
    length). The largest bound over the views is kept. Masks are foreground where >= 0.5; a view with
    no foreground, or a point behind it, says nothing (0). Exact to a pixel's angle for thin parts,
    unlike a distance transform on a lattice of inside nodes (a thin part may hold none).
    """
    B, C, H, W = masks.shape
    background = (masks < 0.5).cpu().numpy()
    pixels = np.zeros((B, C, H, W), dtype=np.float32)
    informative = torch.zeros(B, C, dtype=torch.bool)
    for b in range(B):
        for c in range(C):
            if not background[b, c].all():
                pixels[b, c] = ndimage.distance_transform_edt(background[b, c])
                informative[b, c] = True
    pixels_t = torch.from_numpy(pixels).to(points.device, points.dtype)
    uv, depth = cameras.project(points.to(cameras.dtype))
    uv, depth = uv.to(points.dtype), depth.to(points.dtype)
    size = torch.tensor([W, H], dtype=points.dtype, device=points.device)
    inside = uv.clamp(min=torch.zeros_like(size), max=size - 1e-4)  # the nearest point of the image
    past_edge = (uv - inside).norm(dim=-1)  # (B, N) pixels beyond the image
    column, row = inside[..., 0].long(), inside[..., 1].long()
    flat = (row * W + column)[:, None, :].expand(B, C, -1)
    distance = pixels_t.reshape(B, C, H * W).gather(2, flat) + past_edge[:, None]  # (B, C, N) pixels
    K = cameras.K.to(points.device, points.dtype)
    focal = torch.minimum(K[:, 0, 0], K[:, 1, 1])
    centre = K[:, :2, 2]
    offset = (uv - centre[:, None]) / focal[:, None, None]  # tan of the angle off the axis, per axis
    corner = torch.maximum(centre, size - centre) / focal[:, None]  # (B, 2) the image corner's
    tan2 = torch.maximum(offset.square().sum(dim=-1), corner.square().sum(dim=-1)[:, None])
    angle = (distance - math.sqrt(2.0)).clamp_min(0.0) / (focal[:, None] * (1.0 + tan2))[:, None]  # cos^2 = 1/(1+tan^2)
    centres = cameras.centers.to(points.device, points.dtype)
    reach = (points[None] - centres[:, None]).norm(dim=-1)  # (B, N)
    bound = reach[:, None] * torch.sin(angle.clamp_max(math.pi / 2))
    bound = torch.where(informative.to(points.device)[..., None] & (depth > 0)[:, None], bound, 0.0)
    return bound.max(dim=0).values


@torch.no_grad()
def hull_signed_distance(cameras: Cameras, masks: Tensor, points: Tensor, views_per_chunk: int = 8) -> Tensor:
    """Signed distance to the masks' visual hull, approximately: (N, 3) world points -> (N,),
    negative inside, in world units (a fit's starting field, and the bound it must stay within).
    `HullDistance(cameras, masks)` does the same for many calls, transforming the masks once.

    Each view's silhouette cone has, near its surface, the signed distance (pixel distance of the
    point's projection to the mask's boundary) * depth / focal length; the hull is the intersection
    of the cones, so its signed distance is about the largest of theirs (exact near a face where one
    cone decides, a bound elsewhere, as a CSG intersection). Pixel distances come from 2D distance
    transforms of each mask (foreground >= 0.5) with the boundary between pixel centres, sampled
    bilinearly: sub-pixel, so a lattice started from it places the hull's faces between nodes. A
    view says nothing where the point projects outside its image or lies behind it, so a view that
    crops the object does not cut it.
    """
    return HullDistance(cameras, masks, views_per_chunk)(points)


class HullDistance:
    """`hull_signed_distance` as a field: the masks' signed distance transforms made once."""

    def __init__(self, cameras: Cameras, masks: Tensor, views_per_chunk: int = 8):
        fg = (torch.as_tensor(masks) >= 0.5).cpu().numpy()
        signed = np.stack([ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)
                           for m in fg]).astype(np.float32)  # (B, H, W) pixels, < 0 inside
        signed += np.where(fg, 0.5, -0.5).astype(np.float32)  # the boundary midway between pixel centres
        self.cameras = cameras
        self.pixels = torch.from_numpy(signed).to(cameras.device, cameras.dtype)[:, None]
        self.focal = cameras.K[:, :2, :2].diagonal(dim1=1, dim2=2).mean(dim=1)  # (B,)
        self.views_per_chunk = views_per_chunk

    @torch.no_grad()
    def __call__(self, points: Tensor) -> Tensor:
        cameras = self.cameras
        points = points.to(cameras.dtype)
        best = torch.full((len(points),), -math.inf, dtype=points.dtype, device=points.device)
        size = torch.tensor([cameras.width, cameras.height], dtype=points.dtype, device=points.device)
        for start in range(0, len(cameras), self.views_per_chunk):
            chunk = slice(start, min(start + self.views_per_chunk, len(cameras)))
            uv, depth = cameras[chunk].project(points)
            grid = (2 * uv / size - 1)[:, :, None, :]
            pixels = torch.nn.functional.grid_sample(self.pixels[chunk], grid, mode="bilinear",
                                                     padding_mode="border", align_corners=False)[:, 0, :, 0]
            seen = (depth > 0) & (uv >= 0).all(dim=-1) & (uv <= size).all(dim=-1)
            metric = pixels * depth.clamp_min(1e-6) / self.focal[chunk, None]
            best = torch.maximum(best, torch.where(seen, metric, -math.inf).max(dim=0).values)
        return torch.where(torch.isfinite(best), best, torch.zeros_like(best))
