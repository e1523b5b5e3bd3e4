"""Differentiable marching tetrahedra: the zero level set of SDF values on a tetrahedral grid as a
triangle mesh whose vertex positions are differentiable functions of those values.

One job: `marching_tetrahedra(vertices, tets, sdf)` -> (mesh vertices, faces), and
`marching_tetrahedra_batch` for a batch of SDFs on one grid at once (`PackedMeshes`). A mesh vertex sits on
each grid edge whose end values change sign (inside: sdf < 0; a value of exactly 0 counts as outside,
so every edge is classified and no division by zero can occur), at the linear crossing

    p = (x_a * s_b - x_b * s_a) / (s_b - s_a),

as in DMTet; the edge is shared by every tetrahedron around it, so neighbouring tetrahedra share the
vertex and the mesh is watertight wherever the surface stays inside the grid. Each tetrahedron with 1
or 3 inside corners gives one triangle, with 2 a quad as two triangles. Triangles wind outward (their
right-hand normal points from inside to outside) on positively oriented tetrahedra (`TetGrid`'s are);
the table is derived below from a reference tetrahedron, not written out by hand. Gradients reach
`sdf` (and `vertices`, e.g. DMTet's per-vertex offsets) through `p`; the topology (which edges cross)
is piecewise constant and has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .tetgrid import TET_EDGES


def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """(16, 6) local edge indices of up to two triangles per inside-corner code, and (16,) counts.

    Code bit k set = corner k inside. Built on the reference tetrahedron (0, e_x, e_y, e_z) with
    crossings at edge midpoints: the crossing points are ordered around their centroid and wound so
    that the normal points from the inside corners' centroid to the outside corners'.
    """
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    midpoints = corners[TET_EDGES].mean(axis=1)
    table = np.full((16, 6), -1, dtype=np.int64)
    counts = np.zeros(16, dtype=np.int64)
    for code in range(1, 15):
        inside = np.array([(code >> k) & 1 for k in range(4)], dtype=bool)
        crossing = [e for e, (a, b) in enumerate(TET_EDGES) if inside[a] != inside[b]]
        outward = corners[~inside].mean(0) - corners[inside].mean(0)
        points = midpoints[crossing]
        centre = points.mean(0)
        # order around the centre in the plane normal to `outward`
        axis_u = np.cross(outward, [1.0, 0.3, 0.1])
        axis_u /= np.linalg.norm(axis_u)
        axis_v = np.cross(outward, axis_u)
        angle = np.arctan2((points - centre) @ axis_v, (points - centre) @ axis_u)
        ring = [crossing[i] for i in np.argsort(angle)]
        triangles = [ring[:3]] if len(ring) == 3 else [[ring[0], ring[1], ring[2]], [ring[0], ring[2], ring[3]]]
        for t, tri in enumerate(triangles):
            p = midpoints[tri]
            if np.cross(p[1] - p[0], p[2] - p[0]) @ outward < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, 3 * t: 3 * t + 3] = tri
        counts[code] = len(triangles)
    return table, counts


TRIANGLE_TABLE, TRIANGLE_COUNT = _triangle_table()


@dataclass
class PackedMeshes:
    """The level sets of a batch of SDFs on one grid, as one mesh: sample b's vertices are
    verts[vert_first[b]:vert_first[b + 1]], its faces faces[face_first[b]:face_first[b + 1]] (indices
    into all of `verts`); edges[m] are the (a < b) indices into the flattened (B * N,) values of the
    grid edge vertex m lies on."""

    verts: Tensor
    faces: Tensor
    edges: Tensor
    vert_first: Tensor
    face_first: Tensor

    def __len__(self) -> int:
        return len(self.vert_first) - 1

    def face_counts(self) -> Tensor:
        """(B,) faces of each sample."""
        return self.face_first[1:] - self.face_first[:-1]


def marching_tetrahedra(vertices: Tensor, tets: Tensor, sdf: Tensor,
                        return_edges: bool = False) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """The zero level set of `sdf` on a tetrahedral mesh.

    Args:
        vertices: (N, 3) grid vertex positions (differentiable, e.g. grid + offsets).
        tets: (T, 4) int64 positively oriented tetrahedra.
        sdf: (N,) values at the vertices, negative inside (differentiable).
        return_edges: also return the grid edge each mesh vertex lies on.
    Returns:
        verts: (M, 3) positions of the crossings, differentiable in `vertices` and `sdf`;
        faces: (K, 3) int64 triangles wound outward. Both empty when no tetrahedron is crossed;
        with `return_edges`, edges: (M, 2) int64 grid vertex indices (a < b) of each crossing.
    """
    packed = marching_tetrahedra_batch(vertices, tets, sdf[None])
    if return_edges:
        return packed.verts, packed.faces, packed.edges
    return packed.verts, packed.faces


def marching_tetrahedra_batch(vertices: Tensor, tets: Tensor, sdf: Tensor) -> PackedMeshes:
    """The zero level sets of a batch of SDFs on one tetrahedral mesh, in one pass (one set of
    tensor operations for the whole batch, rather than one per sample).

    Args:
        vertices: (N, 3) grid vertex positions shared by the batch (differentiable).
        tets: (T, 4) int64 positively oriented tetrahedra.
        sdf: (B, N) values at the vertices, negative inside (differentiable).
    Returns:
        `PackedMeshes`: each sample's mesh as `marching_tetrahedra` makes it (same vertices and
        faces, in the same order), its indices offset into the packed arrays.
    """
    device = sdf.device
    B, n = sdf.shape
    inside = sdf.detach() < 0
    bits = inside.to(torch.uint8)
    codes = bits.index_select(1, tets[:, 0])  # (B, T) corner k inside: bit k (uint8: 8x less memory)
    for k in range(1, 4):
        codes |= bits.index_select(1, tets[:, k]) << k
    sample, tet = ((codes > 0) & (codes < 15)).nonzero(as_tuple=True)  # sample-major
    codes = codes[sample, tet].long()
    # the 6 edges of each crossed tetrahedron, as vertex pairs (a < b) of the flattened (B * N,) values
    local = torch.sort(tets.index_select(0, tet)[:, torch.as_tensor(TET_EDGES, device=device)], dim=2).values
    pairs = local + (sample * n)[:, None, None]  # (T', 6, 2)
    flat_inside, total = inside.reshape(-1), B * n
    keys = pairs[..., 0] * total + pairs[..., 1]
    sign_change = flat_inside[pairs[..., 0]] != flat_inside[pairs[..., 1]]
    unique_keys, slot = torch.unique(keys[sign_change], return_inverse=True)  # sorted: sample-major
    edge_vertex = torch.full(keys.shape, -1, dtype=torch.int64, device=device)
    edge_vertex[sign_change] = slot
    a, b = unique_keys // total, unique_keys % total
    # index_select, not x[i]: its backward (index_add_) sums in a fixed order, where advanced
    # indexing's multi-threaded accumulate makes runs differ in the last bits (breaks exact resume)
    flat = sdf.reshape(-1)
    s_a, s_b = flat.index_select(0, a)[:, None], flat.index_select(0, b)[:, None]
    verts = (vertices.index_select(0, a % n) * s_b - vertices.index_select(0, b % n) * s_a) / (s_b - s_a)
    # triangles by table; the second triangle only where the code has two
    table = torch.as_tensor(TRIANGLE_TABLE, device=device)[codes]  # (T', 6)
    count = torch.as_tensor(TRIANGLE_COUNT, device=device)[codes]
    first = torch.gather(edge_vertex, 1, table[:, :3])
    two = count == 2
    second = torch.gather(edge_vertex[two], 1, table[two, 3:])
    faces, face_sample = torch.cat([first, second]), torch.cat([sample, sample[two]])
    if B > 1:  # group the faces by sample (stable: each sample's in the single-sample order)
        order = torch.sort(face_sample, stable=True).indices
        faces, face_sample = faces.index_select(0, order), face_sample.index_select(0, order)
    bounds = torch.arange(B + 1, device=device)
    return PackedMeshes(verts, faces, torch.stack([a, b], dim=1),
                        vert_first=torch.searchsorted(a, bounds * n),
                        face_first=torch.searchsorted(face_sample, bounds))
