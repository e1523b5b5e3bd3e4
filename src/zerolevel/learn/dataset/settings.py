"""How every object of a dataset is rendered and voxelised: the settings a user chooses
(`DatasetSettings`) and the fixed ones (the light, the voxel bounds and rule)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...cameras import Cameras
from ...errors import InputError

# The lighting of every image (dataset.json "light").
LIGHT = {"type": "headlight", "intensity": 0.7, "ambient": 0.3, "albedo": [1.0, 1.0, 1.0],
         "rgb": "premultiplied by alpha (black background)"}
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
    """

    views: int = 24
    resolution: int = 64
    elevation: float = 30.0
    distance: float = 2.732
    fov: float = 30.0
    voxels: int = 32
    supersample: int = 2

    def __post_init__(self) -> None:
        for name in ("views", "resolution", "voxels", "supersample"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if not 0 < self.fov < 180 or self.distance <= 0:
            raise InputError(f"need 0 < fov < 180 and distance > 0, got fov {self.fov}, distance {self.distance}")

    def cameras(self) -> Cameras:
        """The `views` ring cameras every object is seen from."""
        return Cameras.ring(n_views=self.views, elevation_deg=self.elevation, distance=self.distance,
                            fov_deg=self.fov, width=self.resolution, height=self.resolution)
