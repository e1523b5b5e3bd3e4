"""Rasterisation's output and its differentiable part: `Fragments` (which triangle covers each
pixel centre, with barycentrics and depth), the perspective-correct barycentric solve that makes
them from the visible faces, and `interpolate` of vertex attributes with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras

__all__ = ["Fragments", "ViewMeshes", "check_mesh", "gather_vertices", "make_fragments", "interpolate"]

# A ray's barycentric solve is degenerate when twice the triangle's area seen along the ray is below
# this fraction of |d| max|a|^2: float64 rounds the terms at ~1e-16 of that.
_DEGENERATE = 1e-13


@dataclass
class Fragments:
    """Rasterisation output: which triangle covers each pixel centre, and where.

    Covered pixels are stored packed (N of them, in ascending flat-index order); the dense images
    are properties. `pixel_barycentric` and `pixel_depth` are differentiable w.r.t. the vertex
    positions given to `rasterize` (and its cameras); `face` and `pixel` are not.

    Attributes:
        face: (B, H, W) int64 triangle index per pixel, -1 on the background.
        pixel: (N,) int64 flat indices into B * H * W of the covered pixels.
        pixel_face: (N,) int64 triangle covering each of them.
        pixel_barycentric: (N, 3) perspective-correct barycentrics of the pixel-centre ray's hit
            (the hit point is sum_k b_k * vertices[faces[pixel_face, k]]); differentiable.
        pixel_depth: (N,) camera z of the hit; differentiable.
        faces: (F, 3) int64 triangles the indices refer to.
    """

    face: Tensor
    pixel: Tensor
    pixel_face: Tensor
    pixel_barycentric: Tensor
    pixel_depth: Tensor
    faces: Tensor

    @property
    def batch(self) -> int:
        return self.face.shape[0]

    @property
    def height(self) -> int:
        return self.face.shape[1]

    @property
    def width(self) -> int:
        return self.face.shape[2]

    @property
    def pixel_view(self) -> Tensor:
        """(N,) int64 view (batch index) of each covered pixel."""
        return torch.div(self.pixel, self.height * self.width, rounding_mode="floor")

    @property
    def mask(self) -> Tensor:
        """(B, H, W) hard coverage, 1 where a triangle covers the pixel centre (no gradient)."""
        return (self.face >= 0).to(self.pixel_barycentric.dtype)

    @property
    def barycentric(self) -> Tensor:
        """(B, H, W, 3) dense barycentrics, zero on the background; differentiable."""
        return self.scatter(self.pixel_barycentric)

    @property
    def depth(self) -> Tensor:
        """(B, H, W) camera-z depth, zero on the background; differentiable."""
        return self.scatter(self.pixel_depth[:, None])[..., 0]

    def scatter(self, values: Tensor) -> Tensor:
        """Dense image from per-covered-pixel values.

        Args:
            values: (N, C) one row per covered pixel (in `pixel` order); differentiable.
        Returns:
            (B, H, W, C) image, zero on the background.
        """
        B, H, W = self.face.shape
        out = values.new_zeros((B * H * W, values.shape[-1]))
        return out.index_copy(0, self.pixel, values).reshape(B, H, W, values.shape[-1])


@dataclass
class ViewMeshes:
    """Several meshes packed into one vertex and one face array, and the one each view shows: mesh m
    is faces[face_first[m]:face_first[m + 1]], whose indices point into vertices[vert_first[m]:
    vert_first[m + 1]]; view b shows mesh `mesh[b]` alone (e.g. `geometry.marching.PackedMeshes` of a
    training batch, each sample's surface in its own views). One rasterisation call then serves
    them all, with one set of tensor operations rather than one per mesh.

    Attributes: mesh (B,), vert_first (M + 1,), face_first (M + 1,): int64 tensors.
    """

    mesh: Tensor
    vert_first: Tensor
    face_first: Tensor

    def table(self) -> Tensor:
        """(B, 4) int64 on the CPU: each view's first vertex, end vertex, first face, end face."""
        m, first_v, first_f = self.mesh.cpu(), self.vert_first.cpu(), self.face_first.cpu()
        return torch.stack([first_v[m], first_v[m + 1], first_f[m], first_f[m + 1]], dim=1)

    def ranges(self, view: int) -> tuple[int, int, int, int]:
        """(first vertex, end vertex, first face, end face) of the mesh `view` shows."""
        m = int(self.mesh[view])
        return (int(self.vert_first[m]), int(self.vert_first[m + 1]),
                int(self.face_first[m]), int(self.face_first[m + 1]))


def check_mesh(vertices: Tensor, faces, cameras: Cameras) -> tuple[Tensor, Tensor, bool]:
    """Validate shapes; return (vertices, faces as int64 on the vertices' device, batched?)."""
    if not isinstance(vertices, Tensor) or not vertices.is_floating_point():
        raise TypeError("vertices must be a floating-point torch tensor, (V, 3) or (B, V, 3)")
    if vertices.dim() == 3 and vertices.shape[0] == 1:
        vertices = vertices[0]
    if vertices.dim() not in (2, 3) or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (V, 3) or (B, V, 3), got {tuple(vertices.shape)}")
    batched = vertices.dim() == 3
    if batched and vertices.shape[0] != len(cameras):
        raise ValueError(f"{vertices.shape[0]} vertex sets for {len(cameras)} cameras")
    faces = torch.as_tensor(faces, device=vertices.device)
    if faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(f"faces must be an integer (F, 3) array, got {tuple(faces.shape)}")
    faces = faces.long()
    if len(faces) == 0:
        raise ValueError("faces is empty: nothing to rasterise")
    if int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[-2]:
        raise ValueError(f"face indices must lie in [0, {vertices.shape[-2]})")
    return vertices, faces, batched


def gather_vertices(vertices: Tensor, index: Tensor, view: Tensor) -> Tensor:
    """vertices[index] for shared (V, C) or vertices[view, index] for batched (B, V, C) vertices.

    Args:
        index: (N, k) vertex indices; view: (N,) batch index of each row.
    Returns:
        (N, k, C).
    """
    C = vertices.shape[-1]
    if vertices.dim() == 3:  # flatten (B, V) so that one index_select does (faster than [] on CPU)
        index = index + (view * vertices.shape[1])[:, None]
        vertices = vertices.reshape(-1, C)
    return vertices.index_select(0, index.reshape(-1)).reshape(*index.shape, C)


def make_fragments(vertices: Tensor, faces: Tensor, cameras: Cameras, pixel: Tensor,
                   pixel_face: Tensor) -> Fragments:
    """Fragments of the visible faces, with barycentrics and depths recomputed differentiably.

    The barycentrics of each covered pixel are the exact, perspective-correct intersection of its
    pixel-centre ray with the triangle's plane (`b_i ~ d . (a_j x a_k)`, `a = x - camera centre`,
    `d` the ray direction), so they and the depths carry gradients w.r.t. `vertices` (and the
    cameras' K and world_to_camera).

    Args:
        vertices: (V, 3) or (B, V, 3) world positions, as checked by `check_mesh`; differentiable.
        faces: (F, 3) int64 triangles on the vertices' device.
        cameras: B cameras.
        pixel: (N,) int64 flat indices into B * H * W of the covered pixels, ascending.
        pixel_face: (N,) int64 triangle each of them sees.
    Returns:
        `Fragments` on the vertices' device.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    device = vertices.device
    pixel, pixel_face = pixel.to(device), pixel_face.to(device)
    face_img = torch.full((B * H * W,), -1, dtype=torch.int64, device=device)
    face_img[pixel] = pixel_face
    # float64 throughout (cast back at the end; gradients flow through the casts): the tiny and
    # sliver triangles of a fine marching-tetrahedra mesh cancel the solve's terms in float32
    cams = cameras.to(device=device, dtype=torch.float64)
    view = torch.div(pixel, H * W, rounding_mode="floor")
    rem = pixel - view * (H * W)
    u = (rem % W).to(torch.float64) + 0.5
    v = torch.div(rem, W, rounding_mode="floor").to(torch.float64) + 0.5
    ray_matrix = torch.linalg.inv(cams.K).transpose(1, 2) @ cams.R  # (B, 3, 3): d = (u, v, 1) @ M
    m = ray_matrix.index_select(0, view)
    d = u[:, None] * m[:, 0] + v[:, None] * m[:, 1] + m[:, 2]  # (N, 3) world-space ray directions
    tri = faces.index_select(0, pixel_face)
    a = gather_vertices(vertices, tri, view).to(torch.float64) \
        - cams.centers.index_select(0, view)[:, None, :]
    bary = _ray_barycentrics(a, d)
    depth = ((bary[..., None] * a).sum(1) * cams.forward.index_select(0, view)).sum(-1)
    return Fragments(face=face_img.reshape(B, H, W), pixel=pixel, pixel_face=pixel_face,
                     pixel_barycentric=bary.to(vertices.dtype), pixel_depth=depth.to(vertices.dtype),
                     faces=faces)


def _ray_barycentrics(a: Tensor, d: Tensor) -> Tensor:
    """Barycentrics of the rays' hits in the triangles' planes, guarded against degenerate ones.

    b_i ~ det[d, a_j, a_k] = a_j . (a_k x d) for (i, j, k) cyclic: exact and perspective-correct,
    and rotation-invariant, so world space will do. Their sum is d . (a_1 - a_0) x (a_2 - a_0),
    twice the triangle's area seen along the ray; where it is within ~1000x rounding of the terms
    (`_DEGENERATE`, relative to |d| max|a|^2) the triangle has no plane to speak of for this ray
    (a sub-pixel or collinear triangle, or one seen edge-on) and gets (1/3, 1/3, 1/3) with no
    gradient, instead of 0 / 0.

    Args:
        a: (N, 3, 3) triangle corners minus the camera centre (float64); differentiable.
        d: (N, 3) ray directions.
    Returns:
        (N, 3) barycentrics summing to 1; differentiable.
    """
    cr = torch.linalg.cross(a, d[:, None, :].expand_as(a), dim=-1)  # a_k x d
    w = (a.roll(-1, 1) * cr.roll(1, 1)).sum(-1)  # a[:, [1, 2, 0]] . cr[:, [2, 0, 1]]
    total = w.sum(-1, keepdim=True)
    scale = d.detach().norm(dim=-1, keepdim=True) * a.detach().square().sum(-1).amax(-1, keepdim=True)
    solid = total.detach().abs() > _DEGENERATE * scale
    return torch.where(solid, w / torch.where(solid, total, 1.0), 1.0 / 3.0)


def interpolate(attributes: Tensor, fragments: Fragments) -> Tensor:
    """Interpolate vertex attributes at the pixel centres with the differentiable barycentrics.

    Args:
        attributes: (V, C) per-vertex attributes shared by all views, or (B, V, C) per view
            (e.g. positions, normals); differentiable.
        fragments: from `rasterize` (its barycentrics are differentiable w.r.t. the vertices).
    Returns:
        (B, H, W, C) interpolated attributes, zero on the background; differentiable w.r.t. both
        `attributes` and the vertex positions given to `rasterize`.
    """
    if attributes.dim() == 3 and attributes.shape[0] == 1:
        attributes = attributes[0]
    if attributes.dim() not in (2, 3):
        raise ValueError(f"attributes must be (V, C) or (B, V, C), got {tuple(attributes.shape)}")
    if attributes.dim() == 3 and attributes.shape[0] != fragments.batch:
        raise ValueError(f"{attributes.shape[0]} attribute sets for {fragments.batch} views")
    tri = fragments.faces.index_select(0, fragments.pixel_face)
    values = gather_vertices(attributes, tri, fragments.pixel_view)  # (N, 3, C)
    bary = fragments.pixel_barycentric.to(values.dtype)
    return fragments.scatter((bary[..., None] * values).sum(1))
