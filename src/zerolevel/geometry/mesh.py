"""Mesh loading and the similarity that puts an object inside the unit sphere.

`load_mesh` accepts anything trimesh reads (a scene of several parts becomes one mesh) and raises
`InputError` with one line for a missing, unreadable or empty file. `unit_sphere_transform` gives the
similarity that maps the unit sphere back to the mesh's own units (the scene's `to_world`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from ..errors import InputError


def load_mesh(path: str | Path, process: bool = True) -> trimesh.Trimesh:
    """Read a triangle mesh; quads are triangulated, multi-part scenes concatenated.

    Raises:
        InputError: the file is missing, unreadable, or holds no triangles / non-finite vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        loaded = trimesh.load(path, force="mesh", process=process)
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
