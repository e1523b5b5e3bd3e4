"""Directional lights and how a renderer call names them: one light, a list, or lights per view.

Shared by the ground-truth ray caster (numpy) and the differentiable renderers (torch, through
`shading.light_tensors`), so that observed and rendered images are lit the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..cameras import Cameras


@dataclass
class DirectionalLight:
    """A light at infinity.

    Attributes:
        direction: (3,) world-space vector pointing FROM the surface TOWARDS the light (any length;
            normalised when used).
        intensity: radiance scale; the shading term is `intensity * max(0, n . l)`.
    """

    direction: Sequence[float]
    intensity: float = 1.0

    def unit_direction(self) -> np.ndarray:
        """(3,) float64 unit vector towards the light."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3)
        norm = np.linalg.norm(d)
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"light direction must be a finite non-zero 3-vector, got {self.direction}")
        return d / norm


# A light specification: None (headlight), one light, a list of lights for every view, or one entry
# per view (each None for a headlight, a light, or a list of lights).
LightSpec = Union[None, DirectionalLight, Sequence[DirectionalLight],
                  Sequence[Union[None, DirectionalLight, Sequence[DirectionalLight]]]]


def light_arrays(lights: LightSpec, cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """Per-view padded light arrays: directions (B, L, 3) unit, intensities (B, L) (0 = padding).

    `lights`: None for a headlight per view (towards the camera, intensity 1), a `DirectionalLight`
    or a list of them shared by every view, or B per-view entries (each None, a light or a list).
    """
    B = len(cameras)
    headlight = -cameras.forward.numpy()  # (B, 3): from the surface towards the camera

    def as_list(entry) -> list[DirectionalLight] | None:
        if entry is None:
            return None
        if isinstance(entry, DirectionalLight):
            return [entry]
        entry = list(entry)
        if not all(isinstance(x, DirectionalLight) for x in entry):
            raise TypeError("lights must be DirectionalLight objects (or per-view lists of them)")
        return entry

    if lights is None or isinstance(lights, DirectionalLight):
        per_view = [as_list(lights)] * B
    else:
        lights = list(lights)
        if all(isinstance(x, DirectionalLight) for x in lights):  # one list shared by every view
            per_view = [lights] * B
        else:
            if len(lights) != B:
                raise ValueError(f"per-view lights: got {len(lights)} entries for {B} cameras")
            per_view = [as_list(x) for x in lights]

    L = max([1] + [len(x) for x in per_view if x is not None])
    dirs = np.zeros((B, L, 3))
    inten = np.zeros((B, L))
    for b, entry in enumerate(per_view):
        if entry is None:
            dirs[b, 0] = headlight[b] / np.linalg.norm(headlight[b])
            inten[b, 0] = 1.0
            continue
        for k, light in enumerate(entry):
            dirs[b, k] = light.unit_direction()
            inten[b, k] = float(light.intensity)
    return dirs, inten
