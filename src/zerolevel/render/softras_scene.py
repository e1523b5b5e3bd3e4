"""The Soft Rasterizer's projected scene and its pixel-triangle pairs: each face's table row (pixel
units), its candidate pixels (bounding box grown by the cut-off radius), the chunking of faces, and the
per-pair geometry (distance to the boundary, inside flag, barycentrics) both renderers evaluate.

Private to `softras.py` (and its tests); see there for the model and units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..cameras import Cameras

# Columns of the per-face table gathered for every pair (pixel units).
# Components in separate (N, 3) groups: elementwise ops then avoid reductions over a size-2 axis.
VX, VY = slice(0, 3), slice(3, 6)   # the three projected vertices v_k
EX, EY = slice(6, 9), slice(9, 12)  # edges e_k = v_{k+1} - v_k
INV_LEN2 = slice(12, 15)            # 1 / |e_k|^2 (0 for a zero-length edge)
INV_AREA = 15                       # 1 / (2 * signed area); 0 for a degenerate triangle
INV_Z = slice(16, 19)               # 1 / camera z of each vertex
TABLE_COLUMNS = 19


@dataclass
class Scene:
    """Projected triangles of a batch, their per-face table and candidate pixels.

    table: (B * F, 19) per-face geometry in pixels (see the column slices above); differentiable.
    corners: (B * F, 3, 2) projected vertices in pixels (what `table` is made of); differentiable.
    front: (B * F,) bool, the face is wound clockwise on screen (faces the camera when its
        vertices run counter-clockwise around the outward normal).
    x0, y0, wx, counts: (B * F,) int64 candidate box (first column, first row, width) and its
        pixel count (0 for faces off screen or with a vertex at or behind the camera plane).
    starts: (B * F + 1,) int64 exclusive cumulative counts: face k's pairs are
        [starts[k], starts[k + 1]).
    """

    table: Tensor
    corners: Tensor
    front: Tensor
    x0: Tensor
    y0: Tensor
    wx: Tensor
    counts: Tensor
    starts: Tensor
    B: int
    F: int
    H: int
    W: int
    sigma: float      # NDC^2
    ndc_scale: float  # (NDC units per pixel)^2
    r2_px: float      # cut-off radius^2 in pixels^2


def build_scene(vertices: Tensor, faces: Tensor, cameras: Cameras, sigma: float,
                 dist_eps: float) -> Scene:
    """Project the meshes, tabulate their faces and find each face's candidate pixels."""
    if sigma <= 0 or not 0 < dist_eps < 0.5:
        raise ValueError(f"need sigma > 0 and 0 < dist_eps < 0.5, got {sigma}, {dist_eps}")
    vertices, cameras = broadcast(vertices, cameras)
    B, H, W = vertices.shape[0], cameras.height, cameras.width
    faces = faces.to(device=vertices.device, dtype=torch.long)
    uv, z = cameras.project(vertices)
    tri_uv, tri_z = uv[:, faces], z[:, faces]  # (B, F, 3, 2), (B, F, 3)
    table = _face_table(tri_uv, tri_z).reshape(B * faces.shape[0], TABLE_COLUMNS)
    ndc_scale = (2.0 / W) ** 2
    r2_px = sigma * math.log(1.0 / dist_eps - 1.0) / ndc_scale
    with torch.no_grad():
        valid = (tri_z > 0).all(-1) & torch.isfinite(tri_uv).all(-1).all(-1)
        x0, y0, wx, counts = (t.flatten() for t in _candidate_boxes(tri_uv, valid,
                                                                    math.sqrt(r2_px), H, W))
    front = (table[:, INV_AREA] < 0).detach()  # see _face_table
    corners = tri_uv.reshape(B * faces.shape[0], 3, 2)
    return Scene(table, corners, front, x0, y0, wx, counts, exclusive_cumsum(counts), B,
                  faces.shape[0], H, W, sigma, ndc_scale, r2_px)


def exclusive_cumsum(counts: Tensor) -> Tensor:
    """(N + 1,) exclusive cumulative sum of (N,) counts, starting at 0."""
    return F.pad(torch.cumsum(counts, 0), (1, 0))


def broadcast(vertices: Tensor, cameras: Cameras) -> tuple[Tensor, Cameras]:
    """Vertices (B, V, 3) and B cameras on the vertices' device and dtype, broadcasting a batch of 1."""
    if vertices.dim() == 2:
        vertices = vertices[None]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3) or (V, 3), got {tuple(vertices.shape)}")
    Bv, Bc = vertices.shape[0], len(cameras)
    B = max(Bv, Bc)
    if Bv not in (1, B) or Bc not in (1, B):
        raise ValueError(f"{Bv} meshes and {Bc} cameras: batch sizes must match or be 1")
    cameras = cameras.to(device=vertices.device, dtype=vertices.dtype)
    if Bc != B:
        cameras = Cameras(cameras.K.expand(B, 3, 3), cameras.world_to_camera.expand(B, 4, 4),
                          cameras.width, cameras.height)
    return vertices.expand(B, -1, -1), cameras


def _face_table(tri_uv: Tensor, tri_z: Tensor) -> Tensor:
    """(..., 19) per-face columns from (..., 3, 2) projected vertices and (..., 3) camera z.

    The signed area is (v1 - v0) x (v2 - v0) in (u right, v down) pixels: a triangle wound
    counter-clockwise around its outward normal has negative area when it faces the camera.
    """
    edges = tri_uv.roll(-1, dims=-2) - tri_uv  # e_k = v_{k+1} - v_k
    len2 = (edges * edges).sum(-1)
    inv_len2 = torch.where(len2 > 0, 1.0 / len2.clamp_min(1e-30), torch.zeros_like(len2))
    area2 = edges[..., 0, 0] * edges[..., 2, 1] - edges[..., 0, 1] * edges[..., 2, 0]
    area2 = -area2  # e0 x (v2 - v0) = e0 x (-e2)
    tiny = area2.abs() <= 1e-12 * len2.amax(-1).clamp_min(1e-30)
    inv_area = torch.where(tiny, torch.zeros_like(area2), 1.0 / torch.where(tiny, 1.0, area2))
    inv_z = 1.0 / tri_z.clamp_min(1e-12)
    return torch.cat([tri_uv[..., 0], tri_uv[..., 1], edges[..., 0], edges[..., 1], inv_len2,
                      inv_area[..., None], inv_z], -1)


def _candidate_boxes(tri_uv: Tensor, valid: Tensor, radius: float, H: int,
                     W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixels whose centres lie within the face's bounding box grown by `radius` (pixels).

    Returns int64 (B, F) first column x0, first row y0, box width wx and pixel count (0 for faces
    off screen or invalid).
    """
    lo = tri_uv.amin(-2).clamp(-2.0 * (W + H), 2.0 * (W + H))  # keep the int conversion in range
    hi = tri_uv.amax(-2).clamp(-2.0 * (W + H), 2.0 * (W + H))
    # pixel j (centre j + 0.5) is a candidate when lo - r <= j + 0.5 <= hi + r
    first = torch.ceil(lo - radius - 0.5).long().clamp_min(0)
    last_x = torch.floor(hi[..., 0] + radius - 0.5).long().clamp_max(W - 1)
    last_y = torch.floor(hi[..., 1] + radius - 0.5).long().clamp_max(H - 1)
    wx = (last_x - first[..., 0] + 1).clamp_min(0)
    wy = (last_y - first[..., 1] + 1).clamp_min(0)
    counts = torch.where(valid, wx * wy, torch.zeros_like(wx))
    return first[..., 0], first[..., 1], wx, counts


# ---------------------------------------------------------------------------------------- chunks
def chunk_bounds(starts: Tensor, max_pairs: int) -> list[tuple[int, int]]:
    """Split faces [0, N) into ranges of whole faces holding at most `max_pairs` pairs each
    (a single face with more pairs forms its own chunk); empty ranges are skipped."""
    total = int(starts[-1])
    bounds, f0, n = [], 0, starts.numel() - 1
    while f0 < n and int(starts[f0]) < total:
        f1 = int(torch.searchsorted(starts, starts[f0] + max_pairs, right=True)) - 1
        f1 = min(max(f1, f0 + 1), n)
        bounds.append((f0, f1))
        f0 = f1
    return bounds


def run_chunks(scene: Scene, max_pairs: int, chunk: Callable, combine: Callable,
                *extra: Tensor) -> tuple[Tensor, ...]:
    """Evaluate `chunk(scene, f0, f1)` per face range and fold the per-pixel results with `combine`.

    With several chunks and gradients enabled each chunk is checkpointed (recomputed in backward).
    """
    bounds = chunk_bounds(scene.starts, max(1, int(max_pairs)))
    if not bounds:  # nothing on screen: one empty chunk gives correctly shaped zeros
        bounds = [(0, 0)]
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (scene.table, *extra))
    result = None
    for f0, f1 in bounds:
        if grads and len(bounds) > 1:  # non-reentrant: gradients reach captured tensors too
            part = checkpoint(chunk, scene, f0, f1, use_reentrant=False)
        else:
            part = chunk(scene, f0, f1)
        result = part if result is None else combine(result, part)
    return result


def pairs(scene: Scene, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate pairs of the (M,) int64 `faces` (flat indices into B * F): face index (N,), flat
    pixel index (N,) into (B * H * W), and the pixel centres (N, 2) in the table's dtype."""
    device = scene.table.device
    counts = scene.counts[faces]
    starts = exclusive_cumsum(counts)
    n = int(starts[-1])
    local_face = torch.repeat_interleave(torch.arange(faces.numel(), device=device), counts,
                                         output_size=n)
    face = faces[local_face]
    local = torch.arange(n, device=device) - starts[local_face]
    wx = scene.wx[face]
    px = scene.x0[face] + local % wx
    py = scene.y0[face] + torch.div(local, wx, rounding_mode="floor")
    batch = torch.div(face, scene.F, rounding_mode="floor")
    pixel = (batch * scene.H + py) * scene.W + px
    centres = torch.stack([px, py], -1).to(scene.table.dtype) + 0.5
    return face, pixel, centres


def pair_geometry(rows: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Squared distance (pixels^2) from p to the triangle boundary, inside flag, barycentrics.

    Args:
        rows: (N, 19) face-table rows; p: (N, 2) pixel centres.
    Returns:
        d2 (N,), inside (N,) bool (strictly inside), bary (N, 3) unclipped screen barycentrics.
    """
    ex, ey = rows[:, EX], rows[:, EY]
    pvx, pvy = p[:, :1] - rows[:, VX], p[:, 1:] - rows[:, VY]  # (N, 3): p - v_k
    t = ((pvx * ex + pvy * ey) * rows[:, INV_LEN2]).clamp(0.0, 1.0)
    rx, ry = pvx - t * ex, pvy - t * ey  # p minus its closest point on edge k
    d2 = (rx * rx + ry * ry).min(-1).values
    cross = ex * pvy - ey * pvx  # edge function of edge k (v_k v_{k+1})
    bary = cross[:, [1, 2, 0]] * rows[:, INV_AREA, None]  # vertex k is opposite edge k + 1
    inside = (bary > 0).all(-1)
    return d2, inside, bary


def signed_logits(scene: Scene, d2: Tensor, inside: Tensor) -> tuple[Tensor, Tensor]:
    """x = delta d^2 / sigma (NDC) and the keep mask (inside, or closer than the cut-off)."""
    x = torch.where(inside, d2, -d2) * (scene.ndc_scale / scene.sigma)
    keep = inside | (d2 < scene.r2_px)
    return x, keep


def sum_log_free(scene: Scene, pixel: Tensor, x: Tensor, keep: Tensor) -> Tensor:
    """(B * H * W,) sum over kept pairs of log(1 - D_j) = logsigmoid(-x_j)."""
    log_free = torch.where(keep, F.logsigmoid(-x), torch.zeros_like(x))
    out = torch.zeros(scene.B * scene.H * scene.W, dtype=x.dtype, device=x.device)
    return out.index_add(0, pixel, log_free)

