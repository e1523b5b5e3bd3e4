"""Visibility for the mesh rasteriser: which triangle each pixel-centre ray hits first.

Computed without gradients on CPU float64 copies of the positions, one of two ways, exact for the
pixel-centre rays and agreeing up to ties at shared edges (tests/test_raster.py):
  - a vectorised z-buffer in torch (the default): float64 edge functions, every triangle tested
    against the pixel centres of its screen bounding box, nearest depth wins;
  - Embree ray casting (`raycast.MeshRayCaster`, its BVH rebuilt from the current positions on every
    call), for every view with `method="embree"`, and for a view where a triangle crosses the
    camera plane (the z-buffer does not clip).
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import Tensor

from ..cameras import Cameras
from .fragments import ViewMeshes
from .raycast import MeshRayCaster

# Triangles with a vertex this close to the camera plane (camera z, world units) or behind it are
# left to Embree: the z-buffer projects without clipping.
NEAR = 1e-6

__all__ = ["NEAR", "visible_faces"]


def _pixel_boxes(vertices: np.ndarray, K: np.ndarray, W2C: np.ndarray, width: int, height: int
                 ) -> tuple[int, int, int, int]:
    """Pixel rectangle [r0, r1) x [c0, c1) whose centres may see the mesh (the whole image when a
    vertex lies at or behind the camera plane). Elementwise numpy (no BLAS; see raycast.py)."""
    x, y, z = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    R, t = W2C[:3, :3], W2C[:3, 3]
    cz = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
    if cz.min() <= 1e-9:
        return 0, height, 0, width
    cx = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
    cy = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
    u = (K[0, 0] * cx + K[0, 1] * cy) / cz + K[0, 2]
    v = K[1, 1] * cy / cz + K[1, 2]
    # pixel j has its centre at j + 0.5: centres in [lo, hi] are j = ceil(lo - .5) .. floor(hi - .5)
    c0 = max(0, int(np.ceil(u.min() - 0.5 - 1e-6)))
    c1 = min(width, int(np.floor(u.max() - 0.5 + 1e-6)) + 1)
    r0 = max(0, int(np.ceil(v.min() - 0.5 - 1e-6)))
    r1 = min(height, int(np.floor(v.max() - 0.5 + 1e-6)) + 1)
    return r0, max(r0, r1), c0, max(c0, c1)


def _embree_visibility(vertices: Tensor, faces: Tensor, cameras: Cameras, batched: bool,
                       views: list[int], meshes: ViewMeshes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embree-cast pixel-centre rays of `views`: flat indices (into B*H*W) of covered pixels and
    their faces, sorted by pixel (`meshes`: each view sees its own mesh only)."""
    cams = cameras.to(device="cpu", dtype=torch.float64)
    H, W = cams.height, cams.width
    Ks, W2Cs = cams.K.numpy(), cams.world_to_camera.numpy()
    # d = R^T K^-1 (u, v, 1): for row vectors (u, v, 1) @ (K^-T R)
    ray_matrix = np.linalg.inv(Ks).transpose(0, 2, 1) @ cams.R.numpy()
    centres = cams.centers.numpy()
    verts = vertices.detach().to("cpu", torch.float64).numpy()
    faces_np = faces.cpu().numpy()
    if meshes is not None:  # (views, vertices, faces, first face of the group's faces)
        groups = []
        for b in views:
            v0, v1, f0, f1 = meshes.ranges(b)
            if f1 > f0:
                groups.append(([b], (verts[b] if batched else verts)[v0:v1], faces_np[f0:f1] - v0, f0))
    elif batched:
        groups = [([b], verts[b], faces_np, 0) for b in views]
    else:
        groups = [(views, verts, faces_np, 0)]
    pixels, hit_faces = [], []
    for views, v, group_faces, face_offset in groups:
        boxes = {b: _pixel_boxes(v, Ks[b], W2Cs[b], W, H) for b in views}
        boxes = {b: box for b, box in boxes.items() if box[1] > box[0] and box[3] > box[2]}
        if not boxes:
            continue
        # a fresh BVH from the current positions (cheap beside the rays cast through it)
        caster = MeshRayCaster(trimesh.Trimesh(v, group_faces, process=False, validate=False))
        n = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in boxes.values())
        idx = np.empty(n, np.int64)
        dirs = np.empty((n, 3), np.float32)
        origins = np.empty((n, 3), np.float64)
        k = 0
        for b, (r0, r1, c0, c1) in boxes.items():
            rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
            rows, cols = rows.ravel(), cols.ravel()
            sl = slice(k, k + len(rows))
            m = ray_matrix[b]
            # (u, v, 1) @ M written out: no BLAS (see raycast.py)
            dirs[sl] = (cols[:, None] + 0.5) * m[0] + (rows[:, None] + 0.5) * m[1] + m[2]
            idx[sl] = b * H * W + rows * W + cols
            origins[sl] = centres[b]
            k += len(rows)
        face = caster.first_hit_faces(origins, dirs)
        hit = face >= 0
        pixels.append(idx[hit])
        hit_faces.append(face[hit] + face_offset)
    if not pixels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pixel, face = np.concatenate(pixels), np.concatenate(hit_faces)
    if len(pixels) > 1:
        order = np.argsort(pixel, kind="stable")
        pixel, face = pixel[order], face[order]
    return pixel, face


def _zbuffer(best: Tensor, p: Tensor, tz: Tensor, face: Tensor, view: Tensor, height: int, width: int,
             max_cells: int = 1 << 21) -> set[int]:
    """Depth-test triangles of several views into one z-buffer, `best` (B * H * W,) int64 keys (depth
    bits << 32 | face), reduced in place.

    Every triangle is tested against the pixel centres in its screen bounding box with float64
    edge functions (inclusive, so no pixel centre slips through a shared edge), and the smallest
    camera depth wins: depth (float32 bits) and face index packed into one int64 key reduced with
    `scatter_reduce(amin)`. Triangles are grouped by bounding-box size (k x k cells, k = 1, 2, 3,
    4, 6, 8, ...) and each group is evaluated as a dense (k, k, T) grid: plain broadcasting over
    long rows of triangles, no per-pixel gathers, which is what makes it fast for dense meshes
    whose triangles cover a few pixels each; all views' triangles go through the same groups.

    Args:
        p: (T, 3, 2) float64 pixel coordinates of the triangles' corners in their views; tz: (T, 3)
            float64 camera depths; face: (T,) int64 face index; view: (T,) int64 view index.
        max_cells: grid cells evaluated at once (bounds the memory: ~100 bytes per cell).
    Returns:
        The views left out: those with a triangle across the camera plane, which this projection
        cannot handle (no clipping).
    """
    front = tz > NEAR
    straddling = front.any(1) & ~front.all(1)
    left_out = set(view[straddling].unique().tolist()) if bool(straddling.any()) else set()
    lo, hi = p.amin(1), p.amax(1)
    # pixel j has its centre at j + 0.5: centres in [lo, hi] are j = ceil(lo - .5) .. floor(hi - .5)
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp_min(0)
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp_min(0)
    nx = torch.floor(hi[:, 0] - 0.5).clamp_max(width - 1) - x0 + 1
    ny = torch.floor(hi[:, 1] - 0.5).clamp_max(height - 1) - y0 + 1
    keep = front.all(1) & (nx > 0) & (ny > 0)
    if left_out:
        keep &= ~torch.isin(view, torch.tensor(sorted(left_out), dtype=view.dtype))
    tri = keep.nonzero()[:, 0]
    if len(tri) == 0:
        return left_out
    p, tz, x0, y0, nx, ny = (t.index_select(0, tri) for t in (p, tz, x0, y0, nx, ny))
    # edge i runs from vertex i+1 to vertex i+2: E_i(q) = cross2(e_i, q - p_{i+1}), evaluated
    # from the box's first pixel centre c: E_i(c + (a, b)) = E_i(c) + A_i a + B_i b
    start, end = p.roll(-1, 1), p.roll(-2, 1)  # p[:, [1, 2, 0]], p[:, [2, 0, 1]]
    e = end - start  # (T, 3, 2)
    area2 = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]  # twice the signed screen area
    s = torch.sign(area2)[:, None]  # inside: s * E_i >= 0 for all i
    c = torch.stack([x0, y0], dim=1)[:, None, :] + 0.5 - start
    E0 = (e[..., 0] * c[..., 1] - e[..., 1] * c[..., 0]) * s
    A, Bc = -e[..., 1] * s, e[..., 0] * s
    # screen barycentrics are s E_i / |area2|; 1/z is their affine blend of 1/z_i
    wz = 1.0 / (tz * area2.abs().clamp_min(1e-300)[:, None])
    iz0, izA, izB = (E0 * wz).sum(1), (A * wz).sum(1), (Bc * wz).sum(1)
    # one column per triangle: what a k x k grid test needs, gathered once per group (columns,
    # so that the grid loops run over long contiguous rows of triangles)
    base = (view.index_select(0, tri) * (height * width)).to(E0.dtype)  # the view's first pixel
    extra = torch.stack([iz0, izA, izB, x0, y0, face.index_select(0, tri).to(E0.dtype), base])
    table = torch.cat([E0.T, A.T, Bc.T, extra])  # (16, T)
    size = torch.where(area2 != 0, torch.maximum(nx, ny), 0)
    # grid sizes 1, 2, 3, 4, 6, 8, 12, ...: each box is tested on at most ~1.8x its cells
    limit = 2 * max(height, width)
    ks = sorted({int(m * 2**j) for j in range(16) for m in (1, 1.5) if m * 2**j <= limit})
    prev = 0
    for k in ks:
        group = ((size <= k) & (size > prev)).nonzero()[:, 0]
        prev = k
        for chunk in torch.split(group, max(1, max_cells // (k * k))):
            _zbuffer_cells(best, table.index_select(1, chunk), k, height, width)
    return left_out


def _zbuffer_cells(best: Tensor, cols: Tensor, k: int, height: int, width: int) -> None:
    """Depth-test triangles whose pixel bounding boxes fit in k x k against a dense k x k grid.

    Args:
        best: (H * W,) int64 keys (depth bits << 32 | face), reduced in place.
        cols: (16, T) per triangle: edge functions at the box's first pixel centre (3), their x and
            y steps (3 + 3), 1/z there and its x and y steps (3), the box's first column and row,
            the face index, the flat index of its view's first pixel.
    """
    off = torch.arange(k, dtype=cols.dtype)
    a, b = off[None, :, None], off[:, None, None]  # grid (row b, column a, triangle)
    inside = None
    for i in range(3):  # E_i(first + (a, b)) = E_i + A_i a + B_i b >= 0
        E = (cols[i] + cols[3 + i] * a) + cols[6 + i] * b
        inside = E >= 0 if inside is None else inside & (E >= 0)
    # np.flatnonzero: much faster than torch.nonzero on CPU (this path runs on CPU copies anyway)
    flat = torch.from_numpy(np.flatnonzero(inside.numpy()))
    T = cols.shape[1]
    ti = flat % T
    ai = (torch.div(flat, T, rounding_mode="floor") % k).to(cols.dtype)
    bi = torch.div(flat, T * k, rounding_mode="floor").to(cols.dtype)
    col_, row_ = cols[12].index_select(0, ti) + ai, cols[13].index_select(0, ti) + bi
    on_image = (col_ < width) & (row_ < height)  # boxes are clipped to the image, grids are not
    inv_z = cols[9].index_select(0, ti) + cols[10].index_select(0, ti) * ai + \
        cols[11].index_select(0, ti) * bi
    depth_bits = (1.0 / inv_z).to(torch.float32).view(torch.int32).to(torch.int64)
    key = (depth_bits << 32) | cols[14].index_select(0, ti).long()
    pixel = cols[15].index_select(0, ti).long() + row_.long() * width + col_.long()
    best.scatter_reduce_(0, pixel[on_image], key[on_image], reduce="amin")


def visible_faces(vertices: Tensor, faces: Tensor, cameras: Cameras, batched: bool, method: str,
                  meshes: ViewMeshes | None = None, max_triangles: int = 1 << 19) -> tuple[np.ndarray, np.ndarray]:
    """The triangle each pixel-centre ray hits first, without gradients.

    Args:
        vertices: (V, 3) shared or (B, V, 3) per-view (`batched`) world positions, any device.
        faces: (F, 3) int64 triangles.
        cameras: B cameras.
        method: "zbuffer" (views with a triangle across the camera plane fall back to Embree) or
            "embree".
        meshes: packed meshes, one per view (`ViewMeshes`); None: every view shows all the faces.
        max_triangles: (view, triangle) pairs z-buffered at once (views are taken in groups).
    Returns:
        (pixel (N,) int64 flat indices into B * H * W of the covered pixels, ascending; face (N,)
        int64 the triangle each sees), numpy arrays.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    if method == "embree":
        return _embree_visibility(vertices, faces, cameras, batched, list(range(B)), meshes)
    cams = cameras.to(device="cpu", dtype=torch.float64)
    verts = vertices.detach().to("cpu", torch.float64)
    faces_cpu = faces.cpu()
    if meshes is None:  # every view: all the vertices and faces
        ranges = torch.tensor([[0, verts.shape[-2], 0, len(faces_cpu)]]).expand(B, 4)
    else:
        ranges = meshes.table()
    best = torch.full((B * H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    fallback: set[int] = set()
    for views in _view_groups(ranges[:, 3] - ranges[:, 2], max_triangles):
        p, tz, face, view = _view_triangles(verts, faces_cpu, cams, ranges, views)
        fallback |= _zbuffer(best, p, tz, face, view, H, W)
    pixel = (best != torch.iinfo(torch.int64).max).nonzero()[:, 0]
    pixel, face = pixel.numpy(), (best[pixel] & 0xFFFFFFFF).numpy()
    if fallback:  # views with a triangle across the camera plane: exact rays instead
        pix, fac = _embree_visibility(vertices, faces, cameras, batched, sorted(fallback), meshes)
        pixel, face = np.concatenate([pixel, pix]), np.concatenate([face, fac])
        order = np.argsort(pixel, kind="stable")
        pixel, face = pixel[order], face[order]
    return pixel, face


def _view_groups(counts: Tensor, limit: int) -> list[Tensor]:
    """The views with faces (counts (B,) of each), in groups of consecutive views with about `limit`
    faces in all (a view with more alone)."""
    groups, current, total = [], [], 0
    for b, count in enumerate(counts.tolist()):
        if count == 0:
            continue
        if current and total + count > limit:
            groups.append(torch.tensor(current))
            current, total = [], 0
        current.append(b)
        total += count
    return groups + ([torch.tensor(current)] if current else [])


def _view_triangles(verts: Tensor, faces: Tensor, cameras: Cameras, ranges: Tensor, views: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every (view, face) pair of `views`, projected: corners' pixel coordinates (T, 3, 2) and camera
    depths (T, 3), the face (T,) and view (T,) of each; `ranges` (B, 4): the vertex and face range
    [v0, v1) and [f0, f1) each view shows; verts (V, 3) or (B, V, 3) float64."""
    r = ranges.index_select(0, views)
    v_count, f_count = r[:, 1] - r[:, 0], r[:, 3] - r[:, 2]
    v_start = torch.cumsum(v_count, 0) - v_count  # where each view's vertices start among the items
    item_view = torch.repeat_interleave(views, v_count)
    item_vertex = torch.arange(int(v_count.sum())) + torch.repeat_interleave(r[:, 0] - v_start, v_count)
    points = verts.index_select(0, item_vertex) if verts.dim() == 2 else verts[item_view, item_vertex]
    # elementwise rather than a matmul (tiny inner dimension: BLAS is slow there, see raycast.py)
    cam = (cameras.R.index_select(0, item_view) * points[:, None, :]).sum(-1) + cameras.t.index_select(0, item_view)
    pix = (cameras.K.index_select(0, item_view) * cam[:, None, :]).sum(-1)
    uv, z = pix[:, :2] / pix[:, 2:3], cam[:, 2]
    local = torch.repeat_interleave(torch.arange(len(views)), f_count)  # each face item's view in `views`
    f_start = torch.cumsum(f_count, 0) - f_count
    face = torch.arange(int(f_count.sum())) + torch.repeat_interleave(r[:, 2] - f_start, f_count)
    corners = (faces.index_select(0, face) + (v_start - r[:, 0]).index_select(0, local)[:, None]).reshape(-1)
    return (uv.index_select(0, corners).reshape(-1, 3, 2), z.index_select(0, corners).reshape(-1, 3),
            face, views.index_select(0, local))
