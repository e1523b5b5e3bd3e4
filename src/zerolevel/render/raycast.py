"""Ground-truth rendering of a triangle mesh by exact ray casting (Embree); not differentiable.

Its one job: turn a world-space `trimesh.Trimesh` and a batch of `Cameras` into the observations a
scene folder holds — coverage masks, world-space normal maps, camera-z depth maps and Lambertian
shaded images — as numpy arrays. Every other renderer in `zerolevel.render` is compared against it.

    out = render_mesh(mesh, cameras, supersample=2)          # dict of numpy arrays
    caster = MeshRayCaster(mesh)                              # build the BVH once ...
    for chunk in camera_chunks:                               # ... and render many views with it
        out = caster.render(chunk)

Conventions (DESIGN.md): OpenCV pinhole cameras, pixel centres at integer + 0.5, normals in world
space. Rays are cast with Embree (through `embreex`, the backend of trimesh's fast ray intersector)
in its watertight ("robust") mode so that no ray slips through a shared edge; without `embreex` the
pure-Python intersector of trimesh is used (same results, far slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..errors import InputError
from .lights import DirectionalLight, LightSpec, light_arrays
from .shading import lambertian

try:  # Embree through embreex; trimesh's pure-Python ray caster is the fallback
    from embreex import rtcore_scene as _rtcore_scene
    from embreex.mesh_construction import TriangleMesh as _EmbreeTriangleMesh
except ImportError:
    _rtcore_scene = None
    _EmbreeTriangleMesh = None

__all__ = ["DirectionalLight", "RayHits", "MeshRayCaster", "render_mesh"]


@dataclass
class RayHits:
    """First hits of N rays.

    Attributes:
        face: (N,) int64 index of the triangle hit, -1 where the ray misses.
        barycentric: (N, 3) float64 weights of the face's three vertices at the hit (zeros on a miss);
            hit point = sum_k barycentric[:, k] * vertices[faces[face, k]].
        distance: (N,) float64 distance along the (unit) ray in world units, inf on a miss.
    """

    face: np.ndarray
    barycentric: np.ndarray
    distance: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        """(N,) bool: the ray hit the mesh."""
        return self.face >= 0


class MeshRayCaster:
    """A mesh with its ray-casting acceleration structure, built once and reused across calls.

    Args:
        mesh: world-space triangle mesh; may be open, non-manifold or in several parts. Faces are
            two-sided (no back-face culling).
        backend: "embree" (fast, needs embreex), "trimesh" (trimesh's pure-Python ray-triangle
            tests: far slower, the reference the tests compare Embree against) or "auto" (Embree
            when embreex is installed).
        crease_deg: smooth shading does not average normals across edges sharper than this (the
            "auto smooth" of modelling tools: the rim of a bust's flat base stays a crease instead
            of bending the whole base into a dome); None smooths across every edge.

    Attributes:
        vertices: (V, 3) float64; faces: (F, 3) int64; face_normals: (F, 3) float64 unit normals by
        the faces' winding; corner_normals: (F, 3, 3) float64 per-corner normals for smooth shading.
    """

    def __init__(self, mesh: trimesh.Trimesh, backend: str = "auto", crease_deg: float | None = 60.0):
        if not isinstance(mesh, trimesh.Trimesh):
            raise TypeError(f"expected a trimesh.Trimesh, got {type(mesh).__name__}")
        if len(mesh.faces) == 0:
            raise InputError("mesh has no faces to render")
        self.mesh = mesh
        self.crease_deg = crease_deg
        self.vertices = np.asarray(mesh.vertices, dtype=np.float64)
        self.faces = np.asarray(mesh.faces, dtype=np.int64)
        if not np.all(np.isfinite(self.vertices)):
            raise InputError("mesh has non-finite vertex coordinates")
        # Embree works in float32: centre and scale the mesh to O(1) coordinates for precision.
        lo, hi = self.vertices.min(axis=0), self.vertices.max(axis=0)
        self._offset = 0.5 * (lo + hi)
        extent = float(np.max(hi - lo))
        self._scale = 1.0 / extent if extent > 0 else 1.0
        if backend not in ("auto", "embree", "trimesh"):
            raise ValueError(f"backend must be 'auto', 'embree' or 'trimesh', got {backend!r}")
        if backend == "embree" and _rtcore_scene is None:
            raise ImportError("the 'embree' backend needs the embreex package (pip install embreex)")
        self._scene = None
        self._fallback = None
        if _rtcore_scene is not None and backend != "trimesh":
            try:
                self._scene = _rtcore_scene.EmbreeScene(robust=True)  # watertight: no edge cracks
            except TypeError:  # old embreex without the flag
                self._scene = _rtcore_scene.EmbreeScene()
            scaled = ((self.vertices - self._offset) * self._scale).astype(np.float32)
            _EmbreeTriangleMesh(scene=self._scene, vertices=scaled, indices=self.faces.astype(np.int32))
        else:
            self._fallback = trimesh.ray.ray_triangle.RayMeshIntersector(mesh)

    # Normals are computed on first use: casting rays for visibility alone (the differentiable
    # rasteriser rebuilds a caster every call) does not need them, and trimesh's vertex normals
    # cost more than the BVH build itself.
    @cached_property
    def face_normals(self) -> np.ndarray:
        """(F, 3) float64 unit normals by the faces' winding (trimesh's; zero for degenerate faces)."""
        return np.asarray(self.mesh.face_normals, dtype=np.float64)

    @cached_property
    def corner_normals(self) -> np.ndarray:
        """(F, 3, 3) float64 unit normals at each face's corners, for smooth shading.

        The area-weighted mean of the normals of the faces around the corner's vertex, counting
        only faces within `crease_deg` of this face's own normal (all of them when it is None).
        """
        if self.crease_deg is None:
            return np.asarray(self.mesh.vertex_normals, dtype=np.float64)[self.faces]
        return crease_normals(self.faces, self.face_normals, np.asarray(self.mesh.area_faces, dtype=np.float64),
                              self.crease_deg)

    @property
    def uses_embree(self) -> bool:
        """True when rays are cast with Embree (else trimesh's slow pure-Python caster)."""
        return self._scene is not None

    # ------------------------------------------------------------------ rays
    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> RayHits:
        """First hit of each ray.

        Args:
            origins: (N, 3) world-space ray origins.
            directions: (N, 3) world-space ray directions (normalised here).
        Returns:
            `RayHits` with (N,) arrays.
        """
        origins = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
        if origins.shape != directions.shape:
            raise ValueError(f"origins {origins.shape} and directions {directions.shape} differ")
        directions = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-300)
        n = len(origins)
        face = np.full(n, -1, dtype=np.int64)
        bary = np.zeros((n, 3), dtype=np.float64)
        distance = np.full(n, np.inf, dtype=np.float64)
        if n == 0:
            return RayHits(face, bary, distance)
        idx, tri, b, dist = self._cast(origins, directions)
        face[idx], bary[idx], distance[idx] = tri, b, dist
        return RayHits(face, bary, distance)

    def first_hit_faces(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Index of the first face each ray hits, -1 on a miss: visibility only.

        The cheapest query (no hit points, barycentrics or distances: much faster than `intersect`
        on 65k rays), for callers that recompute the hits themselves (`raster.rasterize`).

        Args:
            origins, directions: (N, 3) world space, any float dtype; directions of any length.
        Returns:
            (N,) int64 face indices, -1 where the ray misses.
        """
        origins = np.asarray(origins).reshape(-1, 3)
        directions = np.asarray(directions).reshape(-1, 3)
        if origins.shape != directions.shape:
            raise ValueError(f"origins {origins.shape} and directions {directions.shape} differ")
        if len(origins) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._scene is not None:
            scaled = ((origins - self._offset) * self._scale).astype(np.float32)
            prim = self._scene.run(scaled, np.ascontiguousarray(directions, dtype=np.float32))
            return np.asarray(prim, dtype=np.int64)
        face = np.full(len(origins), -1, dtype=np.int64)
        ray, tri, _, _ = self._cast(origins, directions)
        face[ray] = tri
        return face

    def seen_from(self, points: np.ndarray, centres: np.ndarray, offset: float | None = None) -> np.ndarray:
        """Which points on or near the surface an eye at any of `centres` sees, unoccluded.

        A point is seen from a centre when the segment from the point (moved `offset` towards the
        eye, so that its own surface does not occlude it) to the centre hits no face. Occlusion
        only: image borders are not checked, and points seen exactly edge-on may go either way.

        Args:
            points: (N, 3) world space.
            centres: (C, 3) eye positions (e.g. `Cameras.centers`), world space.
            offset: start offset along the segment; default 1e-4 of the mesh's bounding-box diagonal.
        Returns:
            (N,) bool: seen from at least one centre.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if offset is None:
            offset = 1e-4 * float(np.linalg.norm(self.mesh.extents))
        seen = np.zeros(len(points), dtype=bool)
        for centre in np.asarray(centres, dtype=np.float64).reshape(-1, 3):
            todo = np.flatnonzero(~seen)
            if len(todo) == 0:
                break
            towards = centre - points[todo]
            length = np.linalg.norm(towards, axis=1)
            towards /= np.maximum(length, 1e-300)[:, None]
            hits = self.intersect(points[todo] + offset * towards, towards)
            seen[todo] = hits.distance >= length - offset
        return seen

    def _cast(self, origins: np.ndarray, directions: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First hits of rays, compactly: only the rays that hit.

        Args:
            origins, directions: (N, 3) world space, float32 or float64; directions of any length.
        Returns:
            ray: (M,) int64 indices of the rays that hit; face: (M,) int64; barycentric: (M, 3)
            float64; distance: (M,) float64 ray parameter t of the hit o + t d (world units for unit d).
        """
        if self._scene is not None:
            scaled = ((origins - self._offset) * self._scale).astype(np.float32)
            out = self._scene.run(scaled, np.ascontiguousarray(directions, dtype=np.float32), output=1)
            ray = np.flatnonzero(out["primID"] >= 0)
            u = out["u"][ray].astype(np.float64)
            v = out["v"][ray].astype(np.float64)
            # Embree: point = (1 - u - v) p0 + u p1 + v p2
            bary = np.stack([1.0 - u - v, u, v], axis=1)
            return (ray, out["primID"][ray].astype(np.int64), bary,
                    out["tfar"][ray].astype(np.float64) / self._scale)
        # the slow reference: trimesh's pure-Python ray-triangle tests
        tri, ray, loc = self._fallback.intersects_id(origins, directions, multiple_hits=False,
                                                     return_locations=True)
        order = np.argsort(ray)
        tri, ray, loc = tri[order], ray[order], loc[order]
        bary = trimesh.triangles.points_to_barycentric(self.vertices[self.faces[tri]], loc)
        d = directions[ray]
        dist = np.einsum("ij,ij->i", loc - origins[ray], d) / np.einsum("ij,ij->i", d, d)
        return ray, tri, bary, dist

    def hit_normals(self, face: np.ndarray, barycentric: np.ndarray, directions: np.ndarray,
                    smooth: bool = True) -> np.ndarray:
        """World-space unit normals at hits, turned to face the viewer.

        The face normal is flipped where it points along the ray (back faces, open meshes, mixed
        winding). A smooth normal (corner normals interpolated with the barycentrics) is first put on
        the same side as that flipped face normal; where it still points away from the viewer (grazing
        hits near a silhouette of a coarse mesh) its component along the ray is removed, so it becomes
        perpendicular to the ray rather than flipped; a degenerate smooth normal falls back to the
        face normal.

        Args:
            face: (M,) int64 indices of hit faces (all >= 0).
            barycentric: (M, 3) float64 weights.
            directions: (M, 3) unit ray directions.
            smooth: interpolate corner normals (True) or use face normals (False).
        Returns:
            (M, 3) float64 unit normals n with n . direction <= 0 (up to rounding).
        """
        fn = self.face_normals[face]
        zero = np.linalg.norm(fn, axis=1) < 0.5  # degenerate face: trimesh gives a zero normal
        fn[zero] = -directions[zero]
        side = np.where(np.einsum("ij,ij->i", fn, directions) > 0, -1.0, 1.0)
        fn *= side[:, None]
        if not smooth:
            return fn
        vn = self.corner_normals[face]  # (M, 3, 3)
        n = np.einsum("mk,mkj->mj", barycentric, vn)
        n *= np.where(np.einsum("ij,ij->i", n, fn) < 0, -1.0, 1.0)[:, None]
        along = np.einsum("ij,ij->i", n, directions)
        away = along > 0
        n[away] -= along[away, None] * directions[away]
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        bad = norm[:, 0] < 1e-8
        n = n / np.maximum(norm, 1e-300)
        n[bad] = fn[bad]
        return n

    # ------------------------------------------------------------------ images
    def render(self, cameras: Cameras, *, smooth: bool = True, supersample: int = 1,
               lights: LightSpec = None, ambient: float | np.ndarray = 0.1, albedo: float = 1.0,
               attributes: np.ndarray | None = None, max_rays: int = 1 << 19) -> dict[str, np.ndarray]:
        """Render masks, normals, depth and Lambertian shading for a batch of cameras.

        With `supersample = s > 1` each pixel casts s x s rays on a regular sub-grid (offsets
        (k + 0.5) / s - 0.5 pixels, k = 0..s-1, in each axis) and:
          - `mask` is the fraction of sub-rays that hit (anti-aliased coverage);
          - `normal` is the mean of the hit sub-rays' normals, renormalised;
          - `image` is the mean over all sub-rays with background 0 (an anti-aliased picture on black,
            i.e. shading premultiplied by coverage);
          - `depth` is taken from the ray through the pixel centre (so interior depths are exactly
            those of `supersample=1`; for even s that ray is cast in addition); where the centre ray
            misses but some sub-rays hit (silhouette pixels) it is the mean depth of the hit sub-rays.
        So `depth > 0` and `normal != 0` exactly where `mask > 0`.

        Args:
            cameras: B cameras (any device; rays are cast on the CPU).
            smooth: interpolated corner normals (True; see `crease_deg`) or flat face normals (False).
            supersample: sub-rays per pixel along each axis (1 = one ray through the pixel centre).
            lights: None for a headlight in every view (one light of intensity 1 with direction
                `-cameras.forward`, i.e. from the surface towards the camera along its axis); a
                `DirectionalLight` or a list of them shared by all views; or a list of B entries, one
                per view, each None (headlight), a light, or a list of lights.
            ambient: ambient term added before clipping: one number, or (B,) one per view.
            albedo: grey-level albedo.
            attributes: optional (V, C) per-vertex values (colours, labels...), interpolated at each hit
                by its barycentric coordinates and averaged over a pixel's hit sub-rays.
            max_rays: rays per Embree call; views (or, for huge images, rows of a view) are
                processed in chunks of at most this many rays to bound memory (~150 bytes per ray).
        Returns:
            dict of numpy float32 arrays:
              mask (B, H, W) coverage in [0, 1];
              normal (B, H, W, 3) world-space unit normals facing the camera, 0 where mask == 0;
              depth (B, H, W) camera-space z of the surface (not ray length), 0 where mask == 0;
              image (B, H, W) albedo * (ambient + sum_i intensity_i * max(0, n . l_i)) clipped to
                [0, 1], 0 on the background;
              attributes (B, H, W, C), only when `attributes` is given: the mean over the hit sub-rays
                (not premultiplied by coverage), 0 on the background.
        """
        s = int(supersample)
        if s < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        if attributes is not None:
            attributes = np.asarray(attributes, dtype=np.float64)
            if attributes.ndim != 2 or len(attributes) != len(self.vertices):
                raise ValueError(f"attributes must be (V, C) with V = {len(self.vertices)}, got {attributes.shape}")
        cams = cameras.to(device="cpu", dtype=torch.float64)
        B, H, W = len(cams), cams.height, cams.width
        light_dirs, light_int = light_arrays(lights, cams)
        per_view_ambient = np.ndim(ambient) > 0  # a scalar goes to `lambertian` as it is given
        if per_view_ambient:
            ambient = np.asarray(ambient, dtype=np.float64).reshape(B)

        # Sample offsets within a pixel: the s x s grid, plus the centre for even s.
        grid = (np.arange(s) + 0.5) / s - 0.5
        offsets = np.stack(np.meshgrid(grid, grid, indexing="xy"), axis=-1).reshape(-1, 2)  # (du, dv)
        if s % 2 == 1:
            centre = (s // 2) * s + s // 2
        else:
            offsets = np.concatenate([offsets, np.zeros((1, 2))])
            centre = len(offsets) - 1
        S, G = len(offsets), s * s  # samples per pixel, of which the first G form the grid
        uv = cams.pixel_centers().numpy()[:, :, None, :] + offsets  # (H, W, S, 2)
        pix_u = uv[..., 0].reshape(-1, 1).astype(np.float32)
        pix_v = uv[..., 1].reshape(-1, 1).astype(np.float32)

        # The rays of `Cameras.rays` without the per-ray normalisation (Embree takes any length):
        # d = R^T K^-1 (u, v, 1), i.e. for row vectors (u, v, 1) @ (K^-T R).
        R, t = cams.R.numpy(), cams.t.numpy()
        ray_matrix = (np.linalg.inv(cams.K.numpy()).transpose(0, 2, 1) @ R).astype(np.float32)
        centres = cams.centers.numpy()

        out = {"mask": np.zeros(B * H * W, np.float32), "normal": np.zeros((B * H * W, 3), np.float32),
               "depth": np.zeros(B * H * W, np.float32), "image": np.zeros(B * H * W, np.float32)}
        if attributes is not None:
            out["attributes"] = np.zeros((B * H * W, attributes.shape[1]), np.float32)
        # Chunks of whole views, or of rows of one view when a view alone has more than `max_rays`
        # rays; either way a chunk's pixels are one contiguous range of the flattened (B, H, W) output.
        per_view = H * W * S
        views_per_chunk = max(1, int(max_rays) // per_view)
        rows_per_chunk = H if views_per_chunk > 1 else min(H, max(1, int(max_rays) // (W * S)))
        for b0 in range(0, B, views_per_chunk):
            b1 = min(B, b0 + views_per_chunk)
            for r0 in range(0, H, rows_per_chunk):
                r1 = min(H, r0 + rows_per_chunk)
                n_rays = (r1 - r0) * W * S  # per view in this chunk
                samples = slice(r0 * W * S, r1 * W * S)
                directions = np.empty(((b1 - b0) * n_rays, 3), np.float32)
                for k, b in enumerate(range(b0, b1)):
                    # (u, v, 1) @ M written out: numpy's `@` (multi-threaded OpenBLAS beside torch's
                    # OpenMP threads) and a 2-thread torch.matmul were many times slower on a busy
                    # 2-core machine
                    m, view_dirs = ray_matrix[b], directions[k * n_rays:(k + 1) * n_rays]
                    np.multiply(pix_u[samples], m[0], out=view_dirs)
                    view_dirs += pix_v[samples] * m[1]
                    view_dirs += m[2]
                origins = np.repeat(centres[b0:b1], n_rays, axis=0)
                ray, face, bary, _ = self._cast(origins, directions)
                view = b0 + ray // n_rays  # absolute view index of each hit
                dirs = directions[ray].astype(np.float64)
                dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)

                points = np.einsum("mk,mkj->mj", bary, self.vertices[self.faces[face]])
                z = np.einsum("mj,mj->m", points, R[view, 2]) + t[view, 2]
                n = self.hit_normals(face, bary, dirs, smooth=smooth)
                hit_ambient = torch.from_numpy(ambient[view]) if per_view_ambient else ambient
                shade = lambertian(torch.from_numpy(n), torch.from_numpy(light_dirs[view]),
                                   torch.from_numpy(light_int[view]), hit_ambient, albedo).numpy()
                first = b0 * H * W + r0 * W  # flattened index of the chunk's first pixel
                attr = None if attributes is None else np.einsum("mk,mkc->mc", bary, attributes[self.faces[face]])
                _accumulate(out, first, (b1 - b0) * (r1 - r0) * W, ray, S, G, centre, z, n, shade, attr)
        out["normal"] = out["normal"].reshape(B, H, W, 3)
        if attributes is not None:
            out["attributes"] = out["attributes"].reshape(B, H, W, -1)
        for key in ("mask", "depth", "image"):
            out[key] = out[key].reshape(B, H, W)
        return out


def _accumulate(out: dict[str, np.ndarray], first: int, n_pix: int, ray: np.ndarray, S: int, G: int,
                centre: int, z: np.ndarray, n: np.ndarray, shade: np.ndarray, attr: np.ndarray | None = None
                ) -> None:
    """Reduce hit sub-rays to pixels and write them into the flattened outputs.

    Args:
        out: flattened outputs mask (P,), depth (P,), image (P,), normal (P, 3).
        first, n_pix: the chunk covers output pixels [first, first + n_pix).
        ray: (M,) indices of the hit rays within the chunk, S consecutive rays per pixel, of which
            the first G form the sub-pixel grid and `centre` is the one through the pixel centre.
        z, n, shade: (M,), (M, 3), (M,) camera z, normal and shading of each hit.
        attr: (M, C) interpolated vertex attributes of each hit, or None (out has no "attributes").
    """
    pixel = ray // S
    view = slice(first, first + n_pix)
    if S == 1:
        out["mask"][view][pixel] = 1.0
        out["depth"][view][pixel] = z
        out["image"][view][pixel] = shade
        out["normal"][view][pixel] = n
        if attr is not None:
            out["attributes"][view][pixel] = attr
        return
    sample = ray % S
    on_grid = sample < G
    pg = pixel[on_grid]

    def pixel_sum(values: np.ndarray) -> np.ndarray:  # sum over a pixel's hit grid sub-rays
        return np.bincount(pg, weights=values[on_grid], minlength=n_pix)

    covered = np.bincount(pg, minlength=n_pix)
    out["mask"][view] = covered / G
    out["image"][view] = pixel_sum(shade) / G  # background 0: mean over all sub-rays
    nsum = np.stack([pixel_sum(n[:, k]) for k in range(3)], axis=-1)
    out["normal"][view] = nsum / np.maximum(np.linalg.norm(nsum, axis=-1, keepdims=True), 1e-12)
    depth = pixel_sum(z) / np.maximum(covered, 1)
    at_centre = sample == centre
    depth[pixel[at_centre]] = z[at_centre]  # the centre ray's depth wherever it hits
    out["depth"][view] = depth
    if attr is not None:
        asum = np.stack([pixel_sum(attr[:, k]) for k in range(attr.shape[1])], axis=-1)
        out["attributes"][view] = asum / np.maximum(covered, 1)[:, None]


def crease_normals(faces: np.ndarray, face_normals: np.ndarray, face_areas: np.ndarray,
                   crease_deg: float) -> np.ndarray:
    """(F, 3, 3) corner normals that stay smooth across edges flatter than `crease_deg` only.

    Corner (f, v) averages, weighted by area, the normals of the faces g around vertex v whose
    normal is within `crease_deg` of f's (f itself always counts). Vectorised over the pairs of
    corners that share a vertex: about (mean valence) x 3F pairs.
    """
    F = len(faces)
    vertex = faces.ravel()
    order = np.argsort(vertex, kind="stable")
    sorted_vertex = vertex[order]
    starts = np.flatnonzero(np.r_[True, sorted_vertex[1:] != sorted_vertex[:-1]])
    sizes = np.diff(np.r_[starts, len(vertex)])
    group = np.repeat(np.arange(len(starts)), sizes)  # group of each sorted corner
    # every ordered pair (corner a, corner b) of the same vertex, a and b in sorted order
    a = np.repeat(np.arange(len(vertex)), sizes[group])
    offset = np.arange(len(a)) - np.repeat(np.cumsum(sizes[group]) - sizes[group], sizes[group])
    b = starts[group[a]] + offset
    face_a, face_b = order[a] // 3, order[b] // 3
    cos = np.einsum("ij,ij->i", face_normals[face_a], face_normals[face_b])
    keep = (cos >= np.cos(np.radians(crease_deg))) | (face_a == face_b)
    weighted = face_normals[face_b[keep]] * face_areas[face_b[keep], None]
    out = np.zeros((3 * F, 3))
    corner = order[a[keep]]
    for k in range(3):
        out[:, k] = np.bincount(corner, weights=weighted[:, k], minlength=3 * F)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(norm > 1e-300, out / np.maximum(norm, 1e-300), face_normals[np.arange(3 * F) // 3])
    return out.reshape(F, 3, 3)


def render_mesh(mesh: trimesh.Trimesh | MeshRayCaster, cameras: Cameras, *, smooth: bool = True,
                supersample: int = 1, lights: LightSpec = None, ambient: float | np.ndarray = 0.1,
                albedo: float = 1.0, crease_deg: float | None = 60.0) -> dict[str, np.ndarray]:
    """Ray-cast a world-space mesh into masks, normals, depth and shaded images.

    Builds the Embree BVH for `mesh` (pass a `MeshRayCaster` instead to reuse one across calls) and
    calls `MeshRayCaster.render`; see there for the outputs (numpy float32: mask (B, H, W), normal
    (B, H, W, 3) world space, depth (B, H, W) camera z, image (B, H, W)) and the supersampling rules.
    """
    caster = mesh if isinstance(mesh, MeshRayCaster) else MeshRayCaster(mesh, crease_deg=crease_deg)
    return caster.render(cameras, smooth=smooth, supersample=supersample, lights=lights,
                         ambient=ambient, albedo=albedo)
