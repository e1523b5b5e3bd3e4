"""The images, normal maps and voxels of one dataset object: its ring views lit as the dataset's
lighting says (`object_lighting`), and its occupancy grid."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import trimesh

from ...cameras import Cameras
from ...geometry.occupancy import solid_voxels
from ...render.lights import DirectionalLight
from ...render.raycast import MeshRayCaster
from .settings import LIGHT, VARIED_LIGHT, VOXEL_BOUNDS


@dataclass(frozen=True)
class ObjectLighting:
    """How one object's V views are lit.

    Attributes:
        lights: V directional lights, light v for view v.
        ambient: the ambient term, one number for every view or (V,) one per view.
        albedo: (3,) float32 RGB colour the grey shading is multiplied by.
    """

    lights: list[DirectionalLight]
    ambient: float | np.ndarray
    albedo: np.ndarray


def object_lighting(lighting: str, object_id: str, cameras: Cameras) -> ObjectLighting:
    """The lights of one object under the dataset lighting `lighting` ("headlight" or "varied")."""
    if lighting == "headlight":
        return headlight(cameras)
    if lighting == "varied":
        return varied_lighting(object_id, cameras)
    raise ValueError(f"unknown lighting {lighting!r}")


def headlight(cameras: Cameras) -> ObjectLighting:
    """`LIGHT`: grey, a light along each camera's axis towards it, the same ambient in every view."""
    lights = [DirectionalLight(d, LIGHT["intensity"]) for d in (-cameras.forward).double().numpy()]
    return ObjectLighting(lights, LIGHT["ambient"], np.asarray(LIGHT["albedo"], dtype=np.float32))


def varied_lighting(object_id: str, cameras: Cameras) -> ObjectLighting:
    """`VARIED_LIGHT`: a random colour for the object, a random tilted light and ambient per view.

    Drawn from a generator seeded by the object id alone, so a rerun (or another worker process)
    renders the same pixels; the draw order is the one `VARIED_LIGHT["random"]` records.
    """
    rng = np.random.default_rng([zlib.crc32(object_id.encode()), 1])
    V = len(cameras)
    albedo = rng.uniform(*VARIED_LIGHT["albedo"], size=3)
    tilt = np.radians(rng.uniform(*VARIED_LIGHT["tilt_deg"], size=V))
    axis_angle = rng.uniform(0.0, 2.0 * np.pi, size=V)
    intensity = rng.uniform(*VARIED_LIGHT["intensity"], size=V)
    ambient = rng.uniform(*VARIED_LIGHT["ambient"], size=V)
    lights = [DirectionalLight(_tilted(b, t, a), float(i))
              for b, t, a, i in zip((-cameras.forward).double().numpy(), tilt, axis_angle, intensity)]
    return ObjectLighting(lights, ambient, albedo.astype(np.float32))


def _tilted(backward: np.ndarray, tilt: float, axis_angle: float) -> np.ndarray:
    """`backward` turned by `tilt` radians about the perpendicular axis at `axis_angle` around it."""
    b = backward / np.linalg.norm(backward)
    helper = np.array([0.0, 1.0, 0.0]) if abs(b[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(b, helper)
    u /= np.linalg.norm(u)
    v = np.cross(b, u)  # (u, v): an orthonormal basis of the plane perpendicular to b
    return np.cos(tilt) * b + np.sin(tilt) * (np.cos(axis_angle) * u + np.sin(axis_angle) * v)


def render_object(mesh: trimesh.Trimesh | MeshRayCaster, cameras: Cameras, supersample: int = 2,
                  voxels: int = 32, crease_deg: float | None = None, lighting: ObjectLighting | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dataset's images, normal maps and voxels of one normalised object.

    Args:
        mesh: the object in dataset units (inside [-0.5, 0.5]^3), or a `MeshRayCaster` of it.
        cameras: V cameras of one size H x W.
        supersample: s x s rays per pixel.
        voxels: n, cells per axis of the occupancy grid over [-0.5, 0.5]^3.
        crease_deg: smooth-shading crease angle when a mesh is given (see `MeshRayCaster`).
        lighting: the object's lights (`object_lighting`); None: the headlight (`LIGHT`).
    Returns:
        images (V, H, W, 4) uint8: RGB = round(255 * albedo * shading * coverage), A = round(255 *
        coverage); normals (V, H, W, 3) int8 (`render_views`); voxels (n, n, n) bool indexed [x, y, z].
    """
    caster = mesh if isinstance(mesh, MeshRayCaster) else MeshRayCaster(mesh, crease_deg=crease_deg)
    images, normals = render_views(caster, cameras, supersample, lighting)
    return images, normals, solid_voxels(caster.mesh, VOXEL_BOUNDS, voxels)


def render_views(caster: MeshRayCaster, cameras: Cameras, supersample: int = 2,
                 lighting: ObjectLighting | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGBA images and normal maps of a mesh, from one render call.

    Returns:
        rgba (V, H, W, 4) uint8, lit by `lighting` (None: the headlight, `LIGHT`);
        normals (V, H, W, 3) int8 = round(127 * n), n the world-space unit normal facing the camera
        (averaged over a pixel's sub-rays), 0 on the background (coverage 0).
    """
    lighting = headlight(cameras) if lighting is None else lighting
    out = caster.render(cameras, supersample=supersample, lights=[[light] for light in lighting.lights],
                        ambient=lighting.ambient, albedo=1.0)
    rgba = np.empty(out["mask"].shape + (4,), dtype=np.uint8)
    rgba[..., :3] = _to_byte(out["image"][..., None] * lighting.albedo)
    rgba[..., 3] = _to_byte(out["mask"])
    return rgba, normals_to_int8(out["normal"])


def render_rgba(caster: MeshRayCaster, cameras: Cameras, supersample: int = 2,
                lighting: ObjectLighting | None = None) -> np.ndarray:
    """(V, H, W, 4) uint8 images of a mesh lit as the dataset's objects are (default: `LIGHT`)."""
    return render_views(caster, cameras, supersample, lighting)[0]


def normals_to_int8(normals: np.ndarray) -> np.ndarray:
    """Unit normals (..., 3) in [-1, 1] as the dataset stores them: int8 round(127 * n)."""
    return np.clip(np.rint(normals * 127.0), -127, 127).astype(np.int8)


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
