"""The images and voxels of one dataset object: its ring views lit by the dataset's headlight, and
its occupancy grid."""

from __future__ import annotations

import numpy as np
import trimesh

from ...cameras import Cameras
from ...geometry.occupancy import solid_voxels
from ...render.lights import DirectionalLight
from ...render.raycast import MeshRayCaster
from .settings import LIGHT, VOXEL_BOUNDS


def render_object(mesh: trimesh.Trimesh | MeshRayCaster, cameras: Cameras, supersample: int = 2,
                  voxels: int = 32, crease_deg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's images and voxels of one normalised object.

    Args:
        mesh: the object in dataset units (inside [-0.5, 0.5]^3), or a `MeshRayCaster` of it.
        cameras: V cameras of one size H x W.
        supersample: s x s rays per pixel.
        voxels: n, cells per axis of the occupancy grid over [-0.5, 0.5]^3.
        crease_deg: smooth-shading crease angle when a mesh is given (see `MeshRayCaster`).
    Returns:
        images (V, H, W, 4) uint8: RGB = round(255 * shading * coverage), A = round(255 * coverage),
        lit as `LIGHT` says; voxels (n, n, n) bool indexed [x, y, z].
    """
    caster = mesh if isinstance(mesh, MeshRayCaster) else MeshRayCaster(mesh, crease_deg=crease_deg)
    return render_rgba(caster, cameras, supersample), solid_voxels(caster.mesh, VOXEL_BOUNDS, voxels)


def render_rgba(caster: MeshRayCaster, cameras: Cameras, supersample: int = 2) -> np.ndarray:
    """(V, H, W, 4) uint8 images of a mesh lit as the dataset's objects are (`LIGHT`, `render_object`)."""
    headlights = [DirectionalLight(d, LIGHT["intensity"]) for d in (-cameras.forward).double().numpy()]
    out = caster.render(cameras, supersample=supersample, lights=[[light] for light in headlights],
                        ambient=LIGHT["ambient"], albedo=1.0)
    rgba = np.empty(out["mask"].shape + (4,), dtype=np.uint8)
    rgba[..., :3] = _to_byte(out["image"][..., None] * np.asarray(LIGHT["albedo"], dtype=np.float32))
    rgba[..., 3] = _to_byte(out["mask"])
    return rgba


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
