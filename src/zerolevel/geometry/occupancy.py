"""Inside and outside of triangle meshes: generalised winding numbers, occupancy of points and of
grid cells, and the published voxelisation of single-view benchmarks. Geometry, not evaluation: the
metrics, the dense grid's initialisation from a mesh and the datasets' voxels all use it.

Occupancy has two implementations of one quantity, the winding number w(p):
- `winding_number`: exact, the van Oosterom-Strackee solid-angle sum over all triangles, vectorised
  numpy (`benchmarks/results/metrics.md` times it): the reference, used for small problems.
- ray crossings (Embree through trimesh): w(p) is the signed number of surface crossings along any ray
  from p (+1 leaving through a front face, -1 entering), exact for a closed mesh; averaged over 6
  directions it is a 6-point quadrature of the generalised winding number, so it degrades gracefully
  (a vote) where a mesh has holes. On a grid, one ray per grid line serves all its cells
  (`grid_occupancy`), which makes 128^3 cost about as much as 32^3 does with one ray per cell.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import trimesh

# Six ray directions for the crossing-count quadrature of the winding number at arbitrary points:
# +-(an orthonormal frame) tilted off the axes so that rays do not run along axis-aligned faces or edges.
_FRAME = np.linalg.qr(np.array([[0.9, 0.3, 0.2], [-0.25, 0.85, 0.35], [0.15, -0.4, 0.9]]).T)[0].T
_DIRECTIONS = np.concatenate([_FRAME, -_FRAME])
# Grid lines are shifted by these fractions of a cell, far below any resolution of interest, so that a
# line through the centre of a symmetric grid does not pass exactly through a vertex or an edge.
_LINE_JITTER = (3.14159e-5, 2.71828e-5)
_EXACT_PAIRS = 20_000_000  # occupancy(method="auto") is exact below this many point-triangle pairs


def is_watertight(mesh: trimesh.Trimesh) -> bool:
    """True if every edge is shared by exactly two faces once vertices are merged by position.

    Merging by position first means a closed mesh split along texture seams (e.g. an OBJ with UVs)
    counts as watertight, as it should for inside / outside tests.
    """
    merged = trimesh.Trimesh(vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces),
                             process=True, validate=False)
    return bool(len(merged.faces) > 0 and merged.is_watertight)


def winding_number(mesh: trimesh.Trimesh, points: np.ndarray, chunk_pairs: int = 4_000_000) -> np.ndarray:
    """Exact generalised winding number of a triangle mesh at query points.

    w(p) = sum over triangles of the solid angle they subtend at p, over 4 pi, with the van
    Oosterom-Strackee formula tan(omega / 2) = a.(b x c) / (|a||b||c| + (a.b)|c| + (b.c)|a| + (c.a)|b|),
    where a, b, c are the corners relative to p. The dot products and the triple product are expanded
    into matrix products of the points with per-triangle constants, so the work is a few
    (points x triangles) arrays per chunk of `chunk_pairs` pairs.

    Args:
        mesh: triangle mesh, outward-oriented (closed or not).
        points: (M, 3) query points in the mesh's units.
        chunk_pairs: points x triangles evaluated at once (memory: ~10 float64 arrays of this size).

    Returns:
        (M,) float64: 1 inside and 0 outside a closed outward-oriented mesh, fractional near holes.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(points))
    if len(faces) == 0 or len(points) == 0:
        return out
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))  # centre to limit cancellation
    vertices = vertices - centre
    points = points - centre
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    det0 = np.einsum("fi,fi->f", a, np.cross(b, c))  # a.(b x c) at p = 0
    area2 = np.cross(b - a, c - a)  # (a-p).((b-p) x (c-p)) = det0 - p.area2
    aa, bb, cc = (a * a).sum(1), (b * b).sum(1), (c * c).sum(1)
    ab, bc, ca = (a * b).sum(1), (b * c).sum(1), (c * a).sum(1)
    step = max(1, chunk_pairs // len(faces))
    for start in range(0, len(points), step):
        p = points[start:start + step]
        pp = (p * p).sum(1)[:, None]
        pa, pb, pc = p @ a.T, p @ b.T, p @ c.T
        la = np.sqrt(np.maximum(aa - 2.0 * pa + pp, 0.0))
        lb = np.sqrt(np.maximum(bb - 2.0 * pb + pp, 0.0))
        lc = np.sqrt(np.maximum(cc - 2.0 * pc + pp, 0.0))
        det = det0 - p @ area2.T
        den = (la * lb * lc + (ab - pa - pb + pp) * lc + (bc - pb - pc + pp) * la
               + (ca - pc - pa + pp) * lb)
        out[start:start + step] = np.arctan2(det, den).sum(axis=1)
    return out / (2.0 * math.pi)  # sum of omega/2 over 2 pi = sum of omega over 4 pi


def _signed_crossings(mesh: trimesh.Trimesh, origins: np.ndarray, directions: np.ndarray) -> tuple:
    """All hits of rays with the mesh: (ray index, hit location (K, 3), sign of direction . normal)."""
    tri, ray, locations = mesh.ray.intersects_id(origins, directions, multiple_hits=True,
                                                 return_locations=True)
    normals = np.asarray(mesh.face_normals)[tri]
    sign = np.sign(np.einsum("ij,ij->i", normals, np.asarray(directions)[ray]))
    return ray, np.asarray(locations).reshape(-1, 3), sign


def ray_winding_number(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Winding number at points from signed ray crossings averaged over 6 directions (Embree).

    Exact for a closed outward-oriented mesh (up to rays grazing an edge: one bad direction out of six
    still leaves the right side of 1/2); a 6-direction quadrature of the generalised winding number
    where the mesh has holes. Points outside the mesh's bounding box get 0 without casting.

    Args:
        mesh: triangle mesh; points: (M, 3) in the mesh's units.

    Returns:
        (M,) float64 in multiples of 1/6.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    out = np.zeros(len(points))
    lo, hi = np.asarray(mesh.bounds)
    near = np.all((points >= lo) & (points <= hi), axis=1)
    if not near.any() or len(mesh.faces) == 0:
        return out
    query = points[near]
    origins = np.repeat(query, len(_DIRECTIONS), axis=0)
    directions = np.tile(_DIRECTIONS, (len(query), 1))
    ray, _, sign = _signed_crossings(mesh, origins, directions)
    per_ray = np.bincount(ray, weights=sign, minlength=len(origins))
    out[near] = per_ray.reshape(len(query), len(_DIRECTIONS)).mean(axis=1)
    return out


def warn_if_open(mesh: trimesh.Trimesh, name: str, stacklevel: int = 3) -> bool:
    """Warn, naming the mesh (e.g. "prediction mesh"), if it is not watertight; return is_watertight."""
    closed = is_watertight(mesh)
    if not closed:
        warnings.warn(f"the {name} is not watertight: its inside is estimated with the generalised "
                      "winding number (inside where |w| >= 1/2), which is approximate near holes",
                      stacklevel=stacklevel)
    return closed


def occupancy(mesh: trimesh.Trimesh, points: np.ndarray, method: str = "auto",
              name: str = "mesh") -> np.ndarray:
    """Inside test: |generalised winding number| >= 1/2. Warns if the mesh is not watertight.

    Args:
        mesh: triangle mesh, outward-oriented.
        points: (M, 3) query points in the mesh's units.
        method: "winding" (exact solid-angle sum, O(M x faces)), "rays" (6-direction signed ray
            crossings with Embree, fast) or "auto" (exact below 2e7 point-triangle pairs, rays above).
        name: how the warning names the mesh.

    Returns:
        (M,) bool, True inside.
    """
    if method not in ("auto", "winding", "rays"):
        raise ValueError(f"method must be 'auto', 'winding' or 'rays', not {method!r}")
    warn_if_open(mesh, name)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if method == "winding" or (method == "auto" and len(points) * len(mesh.faces) <= _EXACT_PAIRS):
        return np.abs(winding_number(mesh, points)) >= 0.5
    return np.abs(ray_winding_number(mesh, points)) >= 0.5


def grid_centres(bounds: np.ndarray, resolution: int) -> list[np.ndarray]:
    """Cell-centre coordinates of an n^3 grid over an axis-aligned box.

    Args:
        bounds: (2, 3) [min corner, max corner]; resolution: n cells per axis.

    Returns:
        three (n,) arrays, the x, y and z of the cell centres (cell i spans [lo + i h, lo + (i+1) h]).
    """
    lo, hi = np.asarray(bounds, dtype=np.float64)
    n = int(resolution)
    return [lo[k] + (np.arange(n) + 0.5) * (hi[k] - lo[k]) / n for k in range(3)]


def grid_winding(mesh: trimesh.Trimesh, bounds: np.ndarray, resolution: int) -> np.ndarray:
    """(n, n, n) winding number at grid cell centres from one ray per grid line and axis.

    Along each axis, a ray per grid line starts below the mesh and records every crossing; the winding
    number seen from a cell looking down the line is the signed count of crossings below it, looking up
    the line the count above it. The six estimates (3 axes x 2 senses) are averaged.
    """
    n = int(resolution)
    if len(mesh.faces) == 0:
        return np.zeros((n, n, n))
    centres = grid_centres(bounds, n)
    mesh_lo, mesh_hi = np.asarray(mesh.bounds)
    lo, hi = np.asarray(bounds, dtype=np.float64)
    total = np.zeros((n, n, n))
    for axis in range(3):
        u, v = [k for k in range(3) if k != axis]
        cu = centres[u] + _LINE_JITTER[0] * (hi[u] - lo[u]) / n
        cv = centres[v] + _LINE_JITTER[1] * (hi[v] - lo[v]) / n
        gu, gv = np.meshgrid(cu, cv, indexing="ij")
        origins = np.zeros((n * n, 3))
        origins[:, u], origins[:, v] = gu.ravel(), gv.ravel()
        span = max(mesh_hi[axis], hi[axis]) - min(mesh_lo[axis], lo[axis])
        origins[:, axis] = min(mesh_lo[axis], lo[axis]) - 0.01 * span - 1e-9
        direction = np.zeros(3)
        direction[axis] = 1.0
        ray, locations, sign = _signed_crossings(mesh, origins, np.tile(direction, (n * n, 1)))
        # crossings below cell j: those with coordinate < centre j, i.e. searchsorted index <= j
        slot = np.searchsorted(centres[axis], locations[:, axis])
        below = np.bincount(ray * (n + 1) + slot, weights=-sign, minlength=n * n * (n + 1))
        below = np.cumsum(below.reshape(n * n, n + 1), axis=1)[:, :n]  # looking down: sum of -sign
        above = below + np.bincount(ray, weights=sign, minlength=n * n)[:, None]  # looking up
        total += np.moveaxis((0.5 * (below + above)).reshape(n, n, n), -1, axis)
    return total / 3.0


def grid_occupancy(mesh: trimesh.Trimesh, bounds: np.ndarray, resolution: int = 32,
                   name: str = "mesh") -> np.ndarray:
    """Occupancy (|winding number| >= 1/2) of the cell centres of an n^3 grid. Warns if the mesh is open.

    Casts 3 n^2 rays (one per grid line and axis) instead of one per cell: 128^3 costs about as much as
    `occupancy` on 32^3 points.

    Args:
        mesh: triangle mesh, outward-oriented.
        bounds: (2, 3) [min corner, max corner] of the grid, in the mesh's units.
        resolution: n cells per axis.
        name: how the warning names the mesh.

    Returns:
        (n, n, n) bool indexed [x, y, z] as `grid_centres` orders the cells.
    """
    warn_if_open(mesh, name)
    return np.abs(grid_winding(mesh, bounds, resolution)) >= 0.5


def solid_voxels(mesh: trimesh.Trimesh, bounds: np.ndarray, resolution: int = 32) -> np.ndarray:
    """The single-view protocol's voxels of a mesh: the cells its surface touches, and the cells they enclose.

    This is the voxelisation of Kato et al.'s Neural 3D Mesh Renderer, with which SoftRas and its
    successors score voxel IoU: a cell is occupied if a grid edge crosses the surface at one of its
    four edges along that axis, or a vertex lies in it; then every cell that empty cells do not
    connect (6-neighbours) to the outside of the grid is filled. Unlike `grid_occupancy` (cell
    centres), a part thinner than a cell (a chair leg, a wing) still occupies the cells it runs
    through, which is what makes 32^3 IoU meaningful for thin shapes. Conservative: it contains the
    centre occupancy of a closed mesh up to cells the surface grazes between edges.

    Args:
        mesh: triangle mesh (need not be closed: only its surface cells and their enclosure count).
        bounds: (2, 3) [min corner, max corner] of the grid, in the mesh's units.
        resolution: n cells per axis.

    Returns:
        (n, n, n) bool indexed [x, y, z] as `grid_centres` orders the cells.
    """
    from scipy import ndimage

    n = int(resolution)
    lo, hi = np.asarray(bounds, dtype=np.float64)
    surface = np.zeros((n, n, n), dtype=bool)
    if len(mesh.faces) == 0:
        return surface
    vertices = (np.asarray(mesh.vertices, dtype=np.float64) - lo) * (n / (hi - lo))  # lattice units
    corner = np.floor(vertices).astype(np.int64)
    _mark(surface, corner)
    triangles = vertices[np.asarray(mesh.faces)]
    for axis in range(3):
        _mark_edge_crossings(surface, triangles, axis)
    return ndimage.binary_fill_holes(surface)


def _mark(cells: np.ndarray, index: np.ndarray) -> None:
    """Set the cells at the (K, 3) integer indices that lie inside the grid."""
    inside = ((index >= 0) & (index < cells.shape[0])).all(axis=1)
    cells[tuple(index[inside].T)] = True


def _mark_edge_crossings(cells: np.ndarray, triangles: np.ndarray, axis: int) -> None:
    """Mark the 4 cells around each point where a grid edge along `axis` (integer coordinates on the
    other two axes, in lattice units) crosses a triangle."""
    u, v = [k for k in range(3) if k != axis]
    p0, e1, e2 = triangles[:, 0], triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    det = e1[:, u] * e2[:, v] - e2[:, u] * e1[:, v]
    lo_u, hi_u = np.ceil(triangles[..., u].min(1)), np.floor(triangles[..., u].max(1))
    lo_v, hi_v = np.ceil(triangles[..., v].min(1)), np.floor(triangles[..., v].max(1))
    size_u = np.clip(hi_u - lo_u + 1, 0, None).astype(np.int64)
    size_v = np.clip(hi_v - lo_v + 1, 0, None).astype(np.int64)
    counts = np.where(det != 0, size_u * size_v, 0)
    if counts.sum() == 0:
        return
    face = np.repeat(np.arange(len(triangles)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # index within the face
    a = lo_u[face] + k % size_u[face]  # the edge's lattice coordinates on axes u, v
    b = lo_v[face] + k // size_u[face]
    du, dv = a - p0[face, u], b - p0[face, v]
    t1 = (e2[face, v] * du - e2[face, u] * dv) / det[face]
    t2 = (-e1[face, v] * du + e1[face, u] * dv) / det[face]
    hit = (t1 >= 0) & (t2 >= 0) & (t1 + t2 <= 1)
    depth = p0[face, axis] + t1 * e1[face, axis] + t2 * e2[face, axis]
    a, b, w = a[hit].astype(np.int64), b[hit].astype(np.int64), np.floor(depth[hit]).astype(np.int64)
    for da in (0, -1):
        for db in (0, -1):
            index = np.empty((len(w), 3), dtype=np.int64)
            index[:, u], index[:, v], index[:, axis] = a + da, b + db, w
            _mark(cells, index)
