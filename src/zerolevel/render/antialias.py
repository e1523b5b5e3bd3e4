"""Analytic silhouette antialiasing (nvdiffrast's `antialias`, Laine et al. 2020): the mesh's edge
topology, the search for silhouette edges crossing pixel-pair segments, and the differentiable
blend that gives masks and images gradients w.r.t. the vertices at silhouettes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from .fragments import Fragments, ViewMeshes, check_mesh, gather_vertices
from .visibility import NEAR

__all__ = ["EdgeTopology", "edge_topology", "antialias"]


@dataclass
class EdgeTopology:
    """The edges of a triangle mesh and the triangles on each side, for finding silhouettes.

    Attributes:
        edges: (E, 2) int64 vertex indices of each edge, smaller index first.
        faces: (E, 2) int64 the (at most two) triangles on the edge; faces[:, 1] is -1 for a
            boundary edge. An edge shared by three or more triangles (non-manifold) is listed once
            per triangle, as a boundary edge of each.
        sign: (E, 2) int8 +1 where the triangle runs along the edge from edges[:, 0] to edges[:, 1]
            (by its winding), -1 where it runs the other way, 0 for a missing second triangle.
    """

    edges: Tensor
    faces: Tensor
    sign: Tensor

    def to(self, device) -> "EdgeTopology":
        return EdgeTopology(self.edges.to(device), self.faces.to(device), self.sign.to(device))


def edge_topology(faces) -> EdgeTopology:
    """Edge adjacency of a triangle mesh (vectorised).

    Depends only on the topology: build it once per `faces` and pass it on (`antialias` and
    `render_normals` otherwise build it on every call).

    Args:
        faces: (F, 3) integer triangle indices (tensor or array).
    Returns:
        `EdgeTopology` on the device of `faces` (CPU for arrays).
    """
    f_t = torch.as_tensor(faces)
    f = f_t.detach().cpu().numpy().astype(np.int64).reshape(-1, 3)
    a = f[:, [1, 2, 0]].ravel()  # half-edge h = 3 * face + k runs from a[h] to b[h]
    b = f[:, [2, 0, 1]].ravel()
    face = np.repeat(np.arange(len(f)), 3)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    sign = np.where(a < b, 1, -1).astype(np.int8)
    key = lo * (int(f.max(initial=0)) + 1) + hi
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    count = np.diff(np.r_[start, len(ks)])
    manifold = start[count == 2]
    h0, h1 = order[manifold], order[manifold + 1]
    single = order[np.repeat(count != 2, count)]  # boundary and non-manifold half-edges
    edges = np.concatenate([np.stack([lo[h0], hi[h0]], 1), np.stack([lo[single], hi[single]], 1)])
    faces_e = np.concatenate([np.stack([face[h0], face[h1]], 1),
                              np.stack([face[single], np.full(len(single), -1)], 1)])
    sign_e = np.concatenate([np.stack([sign[h0], sign[h1]], 1),
                             np.stack([sign[single], np.zeros(len(single), np.int8)], 1)])
    keep = edges[:, 0] != edges[:, 1]  # degenerate triangles have zero-length edges
    return EdgeTopology(*(torch.from_numpy(np.ascontiguousarray(x[keep])).to(f_t.device)
                          for x in (edges, faces_e, sign_e)))


def _project_items(points: Tensor, view: Tensor, P: Tensor) -> tuple[Tensor, Tensor]:
    """Project (M, k, 3) world points, row m with camera view[m] of the (B, 3, 4) matrices P.

    Returns:
        uv (M, k, 2) pixel coordinates and z (M, k) camera depths; differentiable.
    """
    Pm = P.index_select(0, view)
    hom = torch.einsum("mkj,mij->mki", points, Pm[:, :, :3]) + Pm[:, None, :, 3]
    return hom[..., :2] / hom[..., 2:3], hom[..., 2]


@dataclass
class _Crossings:
    """Silhouette-edge crossings of pixel-pair segments found by `_find_crossings` (no grad;
    coordinates in float64)."""

    view: Tensor  # (K,) view index
    edge: Tensor  # (K, 2) vertex indices of the silhouette edge
    down: Tensor  # (K,) bool: vertical pair (pixel below), else horizontal (pixel to the right)
    line: Tensor  # (K,) centre coordinate of the pair's row (horizontal) or column (vertical)
    first: Tensor  # (K,) centre coordinate of the first pixel along the pair's axis
    front: Tensor  # (K,) flat index of the pixel on the occluding side of the edge
    back: Tensor  # (K,) flat index of the other pixel
    towards: Tensor  # (K,) +1 if `back` lies after `front` along the pair's axis, else -1


def _find_crossings(fragments: Fragments, vertices: Tensor, cameras: Cameras,
                    topology: EdgeTopology, meshes: ViewMeshes | None = None) -> _Crossings:
    """Pixel pairs straddled by a visible silhouette edge, each with the frontmost such edge
    (`meshes`: of the mesh the view shows)."""
    B, H, W = fragments.face.shape
    HW = H * W
    device = vertices.device
    verts = vertices.detach().to(torch.float64)
    cameras = cameras.to(dtype=torch.float64)
    e, ef, es = topology.edges, topology.faces, topology.sign.to(verts.dtype)
    boundary = ef[:, 1] < 0
    f1 = torch.where(boundary, ef[:, 0], ef[:, 1])
    es1 = torch.where(boundary, es[:, 0], es[:, 1])
    # Orientation of every face seen from every camera: sign of det[x0 - c, x1 - c, x2 - c] =
    # (x0 - c) . n; it is also the sign of the face's signed area in the image (points in front)
    faces = fragments.faces
    tri = verts.index_select(-2, faces.reshape(-1)).reshape(*verts.shape[:-2], -1, 3, 3)
    n = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :], dim=-1)
    if meshes is not None:
        facing = None  # per view, over its own mesh's faces below
        edge_order, edge_first = _edges_by_mesh(e, meshes)
    elif verts.dim() == 2:
        facing = (n * tri[..., 0, :]).sum(-1)[:, None] - n @ cameras.centers.T  # (F, B), float64
    else:
        facing = ((n * (tri[..., 0, :] - cameras.centers[:, None, :])).sum(-1)).T  # (F, B)
    views, a_all, b_all, side_all = [], [], [], []
    for bv in range(B):
        if meshes is None:
            sigma, offset = torch.sign(facing[:, bv]), 0
            edge = torch.arange(len(e), device=device)
        else:  # the view's mesh: its faces [offset, end) and its edges
            _, _, offset, end = meshes.ranges(bv)
            m = int(meshes.mesh[bv])
            edge = edge_order[edge_first[m]:edge_first[m + 1]]
            nv, corner = (n, tri[..., 0, :]) if verts.dim() == 2 else (n[bv], tri[bv, :, 0])
            sigma = torch.sign((nv[offset:end] * (corner[offset:end] - cameras.centers[bv])).sum(-1))
        # the sign of det[lo - c, hi - c, o - c] for each triangle's third vertex o: the side of
        # the edge (in the image) on which the triangle lies
        s0 = sigma.index_select(0, ef[edge, 0] - offset) * es[edge, 0]
        s1 = sigma.index_select(0, f1[edge] - offset) * es1[edge]
        # silhouette: both triangles on the same side of the edge in the image (one faces the
        # camera, one faces away), or a boundary edge; the edge in front of the camera
        sil = (s0 == s1) & (s0 != 0)
        idx = sil.nonzero()[:, 0]
        s0, idx = s0[idx], edge[idx]
        views.append(torch.full_like(idx, bv))
        a_all.append(e[idx, 0])
        b_all.append(e[idx, 1])
        side_all.append(s0 > 0)
    view, ea, eb, side = (torch.cat(x) for x in (views, a_all, b_all, side_all))
    uv, z = _project_items(gather_vertices(verts, torch.stack([ea, eb], 1), view), view,
                           cameras.projection_matrix())
    front_of_camera = (z > NEAR).all(1)
    view, ea, eb, side, uv, z = (t[front_of_camera] for t in (view, ea, eb, side, uv, z))
    pa, pb, za, zb = uv[:, 0], uv[:, 1], z[:, 0], z[:, 1]
    d = pb - pa
    down = d[:, 0].abs() > d[:, 1].abs()  # shallow edges: vertical pairs; steep: horizontal
    # work in (s, t): t along the lines the edge crosses (rows y for horizontal pairs), s across
    s_a = torch.where(down, pa[:, 1], pa[:, 0])
    t_a = torch.where(down, pa[:, 0], pa[:, 1])
    s_b = torch.where(down, pb[:, 1], pb[:, 0])
    t_b = torch.where(down, pb[:, 0], pb[:, 1])
    n_lines = torch.where(down, W, H)
    n_pairs = torch.where(down, H, W) - 1
    t_lo, t_hi = torch.minimum(t_a, t_b), torch.maximum(t_a, t_b)
    first_line = torch.ceil(t_lo - 0.5).clamp_min(0).long()
    last_line = torch.minimum(torch.floor(t_hi - 0.5).long(), n_lines - 1)
    count = torch.where(t_a == t_b, 0, last_line - first_line + 1).clamp_min(0)
    item = torch.repeat_interleave(torch.arange(len(count), device=device), count)
    offset = torch.arange(len(item), device=device) - torch.repeat_interleave(
        torch.cumsum(count, 0) - count, count)
    line = (first_line[item] + offset).to(verts.dtype) + 0.5  # centre coordinate of the line
    frac = (line - t_a[item]) / (t_b[item] - t_a[item])
    s = s_a[item] + frac * (s_b[item] - s_a[item])  # where the edge crosses the line
    j = torch.floor(s - 0.5).long()  # the pair's first pixel: centre j + 0.5 <= s < j + 1.5
    ok = (j >= 0) & (j < n_pairs[item])
    item, line, frac, j = item[ok], line[ok], frac[ok], j[ok]
    v_i, down_i = view[item], down[item]
    # the occluding side: the triangles' side of the edge; the pair's second pixel lies at +1 along
    # s, which is on the left of a -> b in (x, y) iff cross2(b - a, e_s) > 0, e_s = (1,0) or (0,1)
    e_s_cross = torch.where(down_i, d[item, 0], -d[item, 1])  # cross2(d, e_s)
    second_occluded = side[item] == (e_s_cross > 0)
    li = line.long()  # line index (row for horizontal pairs, column for vertical)
    pix0 = torch.where(down_i, v_i * HW + j * W + li, v_i * HW + li * W + j)
    pix1 = pix0 + torch.where(down_i, W, 1)
    front = torch.where(second_occluded, pix1, pix0)
    back = torch.where(second_occluded, pix0, pix1)
    # edge depth at the crossing (1/z is affine in the image along the edge)
    z_e = 1.0 / ((1 - frac) / za[item] + frac / zb[item])
    zbuf = torch.full((B * HW,), float("inf"), dtype=verts.dtype, device=device)
    zbuf[fragments.pixel] = fragments.pixel_depth.detach().to(verts.dtype)
    face = fragments.face.reshape(-1)
    visible = (face[front] >= 0) & (zbuf[back] > z_e)
    item, pix0, down_i, front, back, z_e, line, j = (
        t[visible] for t in (item, pix0, down_i, front, back, z_e, line, j))
    # one crossing per pixel pair: the frontmost silhouette edge
    key = pix0 * 2 + down_i.long()
    order = torch.from_numpy(np.lexsort((z_e.cpu().numpy(), key.cpu().numpy()))).to(device)
    ks = key[order]
    first = torch.ones_like(ks, dtype=torch.bool)
    first[1:] = ks[1:] != ks[:-1]
    pick = order[first]
    item = item[pick]
    return _Crossings(view=view[item], edge=torch.stack([ea[item], eb[item]], 1), down=down[item],
                      line=line[pick], first=j[pick].to(verts.dtype) + 0.5, front=front[pick],
                      back=back[pick],
                      towards=torch.where(back[pick] > front[pick], 1.0, -1.0).to(verts.dtype))


def _edges_by_mesh(edges: Tensor, meshes: ViewMeshes) -> tuple[Tensor, Tensor]:
    """The edges' indices grouped by the packed mesh they belong to, and (M + 1,) where each group
    starts: mesh m's edges are order[first[m]:first[m + 1]]."""
    owner = torch.searchsorted(meshes.vert_first.to(edges.device), edges[:, 0].contiguous(), right=True) - 1
    order = torch.sort(owner, stable=True).indices
    first = torch.searchsorted(owner.index_select(0, order),
                               torch.arange(len(meshes.vert_first), device=edges.device))
    return order, first


def antialias(image: Tensor, fragments: Fragments, vertices: Tensor, faces, cameras: Cameras, *,
              topology: EdgeTopology | None = None, meshes: ViewMeshes | None = None) -> Tensor:
    """Analytic silhouette antialiasing, after nvdiffrast's `antialias` (Laine et al. 2020).

    Each horizontal (vertical) pair of neighbouring pixels whose centre-to-centre segment is
    crossed by a visible silhouette edge is blended by where the edge crosses: with `c` the
    fraction of the segment from the pixel on the edge's occluding side ("front") to the
    crossing, the pixel on whose half the crossing lies takes `|0.5 - c|` of the other's colour
    (front += (0.5 - c)(back - front) if c < 0.5, else back += (c - 0.5)(front - back)). So a
    silhouette's pixels integrate the exact covered length along each row (column), and the
    blend weight is a differentiable function of the edge's projected end points: `image` gets
    gradients w.r.t. the vertex positions at silhouettes, e.g. d(mask area) = perimeter x normal
    motion. Visibility and the choice of pairs carry no gradient.

    Silhouette edges are edges whose two triangles fold to the same side in the image (one faces
    the camera, one away) and boundary edges. As in nvdiffrast, an edge steeper than 45 degrees in
    the image is used by horizontal pairs only, a shallower one by vertical pairs only, and the
    edge's triangles lie on the front side. Unlike nvdiffrast, which looks only at the edges of
    the triangle covering one pixel of the pair (so it misses silhouettes behind sub-pixel
    triangles, the norm for 100k+ face meshes), every projected silhouette edge is walked along
    the pixel rows (columns) it crosses; a crossing counts when the front pixel is covered and the
    back pixel is background or deeper than the edge there, and of several on one pair the
    nearest edge wins.

    Args:
        image: (B, H, W, C) colours to antialias (e.g. `fragments.mask[..., None]`, or normals
            from `interpolate`); differentiable.
        fragments: from `rasterize(vertices, faces, cameras)`.
        vertices: (V, 3) or (B, V, 3) world positions, as given to `rasterize`; differentiable.
        faces: (F, 3) triangle indices, as given to `rasterize`.
        cameras: the B cameras given to `rasterize`.
        topology: `edge_topology(faces)`; by default built on every call (pass one when the
            faces stay the same over many calls).
        meshes: packed meshes, one per view, as given to `rasterize` (`ViewMeshes`).
    Returns:
        (B, H, W, C) antialiased image; differentiable w.r.t. `image` and `vertices`.
    """
    vertices, faces, _ = check_mesh(vertices, faces, cameras)
    B, H, W = fragments.face.shape
    if image.dim() != 4 or tuple(image.shape[:3]) != (B, H, W):
        raise ValueError(f"image must be ({B}, {H}, {W}, C), got {tuple(image.shape)}")
    if (cameras.height, cameras.width, len(cameras)) != (H, W, B):
        raise ValueError("cameras do not match the fragments' image size or batch")
    topology = (edge_topology(faces) if topology is None else topology).to(vertices.device)
    # float64, as the search: an edge of a sub-pixel triangle can project to one float32 point
    cams = cameras.to(device=vertices.device, dtype=torch.float64)
    with torch.no_grad():
        cr = _find_crossings(fragments, vertices, cams, topology, meshes)
    if len(cr.front) == 0:
        return image
    # differentiable crossing: the edge's projected end points with gradients (cast back at the end)
    uv, _ = _project_items(gather_vertices(vertices.to(torch.float64), cr.edge, cr.view), cr.view,
                           cams.projection_matrix())
    s = torch.where(cr.down[:, None], uv[..., 1], uv[..., 0])  # along the pair's axis
    t = torch.where(cr.down[:, None], uv[..., 0], uv[..., 1])  # across it: the pair's row/column
    # the edge crosses the line (t = cr.line) at s_c; the pair's centres are at s = first, first + 1.
    # The search found t_0 != t_1 on these very numbers; the guard keeps 0 / 0 out all the same
    span = t[:, 1] - t[:, 0]
    crossing = span.detach() != 0
    frac = torch.where(crossing, (cr.line - t[:, 0]) / torch.where(crossing, span, 1.0), 0.5)
    s_c = s[:, 0] + frac * (s[:, 1] - s[:, 0])
    front_s = torch.where(cr.towards > 0, cr.first, cr.first + 1)
    c = ((s_c - front_s) * cr.towards).clamp(0.0, 1.0)  # from the front centre to the back one
    alpha = (0.5 - c).to(image.dtype)
    flat = image.reshape(B * H * W, -1)
    c_front, c_back = flat[cr.front], flat[cr.back]
    into_front = alpha.detach() > 0
    target = torch.where(into_front, cr.front, cr.back)
    # c < 0.5: front += (0.5 - c)(back - front); c > 0.5: back += (c - 0.5)(front - back): the same
    delta = alpha[:, None] * (c_back - c_front)
    return flat.index_add(0, target, delta).reshape(image.shape)
