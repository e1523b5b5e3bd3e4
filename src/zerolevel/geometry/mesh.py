"""Mesh loading and the similarity that puts an object inside the unit sphere.

`load_mesh` accepts anything trimesh reads (a scene of several parts becomes one mesh) and raises
`InputError` with one line for a missing, unreadable or empty file. `unit_sphere_transform` gives the
similarity that maps the unit sphere back to the mesh's own units (the scene's `to_world`).
`close_holes` caps the boundary loops of an open scan so that it bounds a solid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh

from ..errors import InputError


def load_mesh(path: str | Path, process: bool = True, groups: Sequence[str] | None = None) -> trimesh.Trimesh:
    """Read a triangle mesh; quads are triangulated, multi-part scenes concatenated.

    `groups` keeps only the named OBJ groups (`g` lines): character assets such as MakeHuman's base
    mesh carry hidden helper geometry (joint cubes, proxy tights) beside the skin.

    Raises:
        InputError: the file is missing, unreadable, has none of `groups`, or holds no triangles /
            non-finite vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        if groups:
            loaded = _load_groups(path, groups, process)
        else:
            loaded = trimesh.load(path, force="mesh", process=process)
    except InputError:
        raise
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise InputError(f"cannot read mesh ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise InputError("mesh has no faces", path)
    if not np.all(np.isfinite(loaded.vertices)):
        raise InputError("mesh has non-finite vertex coordinates", path)
    if process:
        # UV and normal seams split vertices; merge them so a closed surface reads as watertight.
        loaded.merge_vertices(merge_tex=True, merge_norm=True)
    return loaded


def _load_groups(path: Path, groups: Sequence[str], process: bool) -> trimesh.Trimesh:
    """The union of the named groups of an OBJ file (one group may appear in several `g` runs)."""
    if path.suffix.lower() != ".obj":
        raise InputError("groups can only be selected from an OBJ file", path)
    scene = trimesh.load(path, split_groups=True, group_material=False, process=process)
    parts = scene.geometry if isinstance(scene, trimesh.Scene) else {"": scene}
    missing = sorted(set(groups) - set(parts))
    if missing:
        raise InputError(f"no group {', '.join(missing)} (groups: {', '.join(sorted(parts))})", path)
    return trimesh.util.concatenate([parts[name] for name in groups])


def unit_sphere_transform(mesh: trimesh.Trimesh, radius: float = 0.9) -> np.ndarray:
    """(4, 4) similarity `to_world` mapping working space to the mesh's units.

    Working space puts the bounding-box centre at the origin and the farthest vertex at `radius`
    (below 1 so that the object sits strictly inside the unit sphere with margin).
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    center = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    extent = np.linalg.norm(vertices - center, axis=1).max()
    scale = extent / radius if extent > 0 else 1.0
    to_world = np.eye(4)
    to_world[:3, :3] *= scale
    to_world[:3, 3] = center
    return to_world


def transform_mesh(mesh: trimesh.Trimesh, matrix: np.ndarray) -> trimesh.Trimesh:
    """A copy of `mesh` with a 4x4 similarity applied (normals stay outward for positive scale)."""
    out = mesh.copy()
    out.apply_transform(np.asarray(matrix, dtype=np.float64))
    return out


def close_holes(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of `mesh` with every boundary loop capped by a fan around the loop's centroid.

    Scans are often open (the unseen base of the Stanford bunny); every method here reconstructs a
    solid, and cameras that look through a hole see the surface's back faces, so a benchmark renders
    and scores the capped solid. A fan keeps the scan's own triangles untouched and is right for the
    small, roughly planar, star-shaped holes of scans; a vertex is added per loop. Each boundary edge
    (a, b) of a face becomes the cap triangle (b, a, centroid), so the caps take the orientation of
    the faces they close. Loops are the connected components of the boundary edges. A closed
    result that encloses negative volume (scans wound inside out, as the Stanford bunny's PLY is) is
    turned outward.
    """
    out = mesh.copy()
    out.merge_vertices(merge_tex=True, merge_norm=True)
    faces = np.asarray(out.faces)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(undirected, axis=0, return_inverse=True, return_counts=True)
    boundary = directed[counts[inverse.ravel()] == 1]
    if len(boundary) == 0:
        return _outward(out)
    loop_of = _edge_components(boundary, len(out.vertices))
    vertices = [np.asarray(out.vertices)]
    caps = []
    for loop in np.unique(loop_of):
        edges = boundary[loop_of == loop]
        centre = len(out.vertices) + len(vertices) - 1
        vertices.append(out.vertices[np.unique(edges)].mean(axis=0, keepdims=True))
        caps.append(np.column_stack([edges[:, 1], edges[:, 0], np.full(len(edges), centre)]))
    return _outward(trimesh.Trimesh(np.concatenate(vertices), np.concatenate([faces, *caps]), process=False))


def _outward(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    if mesh.is_watertight and mesh.is_winding_consistent and mesh.volume < 0:
        mesh.invert()
    return mesh


def _edge_components(edges: np.ndarray, n_vertices: int) -> np.ndarray:
    """Label per edge: the connected component of the graph the edges form."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    _, labels = connected_components(graph, directed=False)
    return labels[edges[:, 0]]
