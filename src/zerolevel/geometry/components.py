"""Connected pieces of a triangle mesh or a voxel grid, and the largest of them: what every
extraction keeps when a fit leaves floaters, and what a carved visual hull keeps.

The mesh rule, the same everywhere: two faces belong to one piece when they share a vertex,
vertices at the same position counting as one (marching output that repeats a vertex per face stays
one piece); the largest piece is the one of largest area (a refined prediction keeps the pieces of
at least a share of its area: `large_components`). The voxel rule: occupied voxels sharing a
face are one piece; the largest piece is the one of most voxels.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def face_components(mesh: trimesh.Trimesh) -> tuple[int, np.ndarray]:
    """(number of pieces, (F,) piece label of each face) by shared vertex positions."""
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    _, same = np.unique(np.asarray(mesh.vertices), axis=0, return_inverse=True)
    corners = same.reshape(-1)[faces]  # (F, 3) merged vertex ids
    edges = np.concatenate([corners[:, :2], corners[:, 1:]])
    n = int(corners.max()) + 1
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    return int(count), labels[corners[:, 0]]


def _piece_areas(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray] | None:
    """((F,) piece label of each face, area of each piece), or None for a mesh in one piece (or none)."""
    count, labels = face_components(mesh)
    if count <= 1:
        return None
    return labels, np.bincount(labels, weights=np.asarray(mesh.area_faces), minlength=count)


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The piece of largest area (module docstring); a mesh in one piece is returned as it is."""
    pieces = _piece_areas(mesh)
    if pieces is None:
        return mesh
    labels, areas = pieces
    return mesh.submesh([np.flatnonzero(labels == int(np.argmax(areas)))], append=True, repair=False)


def large_components(mesh: trimesh.Trimesh, share: float) -> trimesh.Trimesh:
    """The pieces of at least `share` of the largest piece's area (share 1: the largest alone); a mesh
    in one piece is returned as it is."""
    pieces = _piece_areas(mesh)
    if pieces is None:
        return mesh
    labels, areas = pieces
    return mesh.submesh([np.flatnonzero(areas[labels] >= share * areas.max())], append=True, repair=False)


def largest_voxel_component(occupied: np.ndarray) -> np.ndarray:
    """The face-connected piece of most voxels of a boolean grid (the grid itself when in one piece)."""
    labels, n = ndimage.label(occupied)
    if n <= 1:
        return occupied
    sizes = ndimage.sum(occupied, labels, np.arange(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))
