"""How every object of a dataset is rendered and voxelised: the settings a user chooses
(`DatasetSettings`) and the fixed ones (the lightings, the voxel bounds and rule)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...cameras import Cameras
from ...errors import InputError

# The lightings a dataset may be rendered with, as dataset.json's "light" records them.
# "headlight": every object grey, lit by a light along each camera's axis (SoftRas's rendered ShapeNet).
LIGHT = {"type": "headlight", "intensity": 0.7, "ambient": 0.3, "albedo": [1.0, 1.0, 1.0],
         "rgb": "premultiplied by alpha (black background)"}
# "varied": a colour per object and a light per view, drawn from these ranges (uniformly), so that a
# network cannot read the shape off one fixed shading; drawn from the object id, so a rerun repeats them.
VARIED_LIGHT = {"type": "varied", "albedo": [0.35, 1.0], "tilt_deg": [0.0, 45.0], "intensity": [0.5, 0.9],
                "ambient": [0.15, 0.35],
                "albedo_per": "object (each channel)", "light_per": "view (tilt, axis, intensity, ambient)",
                "direction": "the camera's backward direction (-forward) turned by tilt_deg about a random "
                             "axis perpendicular to it",
                "random": "numpy.random.default_rng([zlib.crc32(object id), 1]): albedo (3), then tilts (V), "
                          "axis angles (V), intensities (V), ambients (V)",
                "rgb": "premultiplied by alpha (black background)"}
LIGHTINGS: dict[str, dict] = {"headlight": LIGHT, "varied": VARIED_LIGHT}
VOXEL_BOUNDS = np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])
VOXEL_RULE = "surface cells + enclosed (Kato et al.)"  # in the cache key: parts voxelised otherwise are redone


@dataclass(frozen=True)
class DatasetSettings:
    """How every object is rendered and voxelised (DESIGN.md defaults: SoftRas's rendered ShapeNet).

    Attributes:
        views: cameras on the ring (azimuths 360 / views degrees apart, the first at the front, -z).
        resolution: image width and height in pixels.
        elevation, fov: degrees; distance: camera distance to the origin (object diagonal = 1).
        voxels: occupancy grid cells per axis over [-0.5, 0.5]^3.
        supersample: s x s rays per pixel for the anti-aliased alpha (and shading).
        lighting: "headlight" (grey, a light along each camera's axis) or "varied" (a colour per
            object, a tilted light per view); see `LIGHTINGS`.
    """

    views: int = 24
    resolution: int = 64
    elevation: float = 30.0
    distance: float = 2.732
    fov: float = 30.0
    voxels: int = 32
    supersample: int = 2
    lighting: str = "headlight"

    def __post_init__(self) -> None:
        for name in ("views", "resolution", "voxels", "supersample"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if not 0 < self.fov < 180 or self.distance <= 0:
            raise InputError(f"need 0 < fov < 180 and distance > 0, got fov {self.fov}, distance {self.distance}")
        if self.lighting not in LIGHTINGS:
            raise InputError(f"lighting must be {' or '.join(LIGHTINGS)}, got {self.lighting!r}")

    def cameras(self) -> Cameras:
        """The `views` ring cameras every object is seen from."""
        return Cameras.ring(n_views=self.views, elevation_deg=self.elevation, distance=self.distance,
                            fov_deg=self.fov, width=self.resolution, height=self.resolution)
