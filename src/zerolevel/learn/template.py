"""The sphere template the single-view network deforms, and the topology its regularisers need.

One job: build Soft Rasterizer's 642-vertex / 1280-face sphere with its faces as a LongTensor, its
unique edges (the uniform Laplacian's neighbourhoods) and its edge "wings" (the two faces on each
edge, for the flatten loss). SoftRas's `sphere_642.obj` is Blender's subdivided icosahedron; ours is
`trimesh.creation.icosphere(subdivisions=3)`, the same mesh up to a rotation and the vertex order (on
the y axis Blender's has 5-valent vertices, trimesh's 6-valent ones).

Scale. Like `sphere_642.obj` the template is the unit sphere (radius 1, "template units"). The
decoder (`softras_net.py`) multiplies it by SoftRas's `obj_scale` 0.5 before the logit and halves
the result, so with zero offsets the network outputs a sphere of radius 0.25 in the world frame of
the ring cameras; every output vertex stays inside the box [-0.5, 0.5]^3, the box the dataset's
objects are normalised into (bounding-box diagonal 1, centred). At the ring's distance 2.732 and
30 degree field of view that sphere covers about a third of the 64x64 image's width: a start that
overlaps every object's silhouette.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

SUBDIVISIONS = 3  # 10 * 4^3 + 2 = 642 vertices, 1280 faces: SoftRas's data/obj/sphere/sphere_642.obj


@dataclass(frozen=True)
class Template:
    """A closed triangle mesh and its precomputed topology (all tensors on one device).

    vertices: (V, 3) float32 template-unit positions (the unit sphere for `sphere_template`).
    faces: (F, 3) int64 vertex indices, counter-clockwise around the outward normal.
    edges: (E, 2) int64 unique undirected edges (i < j): vertex i's neighbours are the j it shares
        an edge with (the uniform Laplacian).
    wings: (W, 4) int64 [v0, v1, v2, v3] for every edge v0-v1 shared by exactly two faces, (v0, v1,
        v2) and (v0, v1, v3) up to orientation: v2 and v3 are the vertices opposite the edge.
    """

    vertices: Tensor
    faces: Tensor
    edges: Tensor
    wings: Tensor

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    def to(self, device: torch.device | str) -> "Template":
        return Template(*(t.to(device) for t in (self.vertices, self.faces, self.edges, self.wings)))


def mesh_topology(faces: np.ndarray | Tensor, num_vertices: int | None = None) -> tuple[Tensor, Tensor]:
    """Unique edges (E, 2) and edge wings (W, 4), both int64, of any triangle mesh's (F, 3) faces.

    Edges on the border or shared by more than two faces have no wing.
    """
    faces = np.asarray(faces.cpu() if isinstance(faces, Tensor) else faces, dtype=np.int64)
    n = int(faces.max()) + 1 if num_vertices is None else num_vertices
    # positions are irrelevant to the topology; trimesh needs some to build its caches
    mesh = trimesh.Trimesh(np.zeros((n, 3)), faces, process=False, validate=False)
    edges = np.sort(mesh.edges_unique, axis=1)
    wings = np.concatenate([mesh.face_adjacency_edges, mesh.face_adjacency_unshared], axis=1)
    return torch.as_tensor(edges, dtype=torch.long), torch.as_tensor(wings, dtype=torch.long)


@functools.lru_cache(maxsize=4)
def _icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def sphere_template(subdivisions: int = SUBDIVISIONS) -> Template:
    """The unit icosphere template: 642 vertices and 1280 faces at the default 3 subdivisions."""
    vertices, faces = _icosphere(int(subdivisions))
    edges, wings = mesh_topology(faces, len(vertices))
    return Template(torch.as_tensor(vertices, dtype=torch.float32),
                    torch.as_tensor(faces, dtype=torch.long), edges, wings)
