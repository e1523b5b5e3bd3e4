"""Differentiable shading shared by the torch renderers: Lambertian grey shading under directional lights.

One job: turn normals (and lights) into pixel values, `albedo * (ambient + sum_i I_i * max(0,
n . l_i))` clipped to [0, 1]; the ground-truth ray caster shades its float64 hits with the same
function, so rendered and observed images are comparable by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from .lights import LightSpec, light_arrays


def lambertian(normals: Tensor, light_dirs: Tensor, intensities: Tensor, ambient: float | Tensor = 0.1,
               albedo: float | Tensor = 1.0, clip: bool = True) -> Tensor:
    """Lambertian grey shading `albedo * (ambient + sum_l I_l * max(0, n . l_l))`.

    Differentiable w.r.t. every tensor argument. With `clip` the value is clamped to [0, 1] as the
    ground-truth renderer does, so saturated pixels (value > 1, e.g. facing a headlight of
    intensity 1 with ambient 0.1) pass no gradient.

    Args:
        normals: (..., 3) unit normals.
        light_dirs: (..., L, 3) unit directions from the surface towards each light; any shape
            that broadcasts against `normals[..., None, :]`, e.g. (L, 3) shared by all points or
            (B, 1, L, 3) per view for (B, N, 3) normals.
        intensities: (..., L) light intensities (0 for padding), broadcasting like `light_dirs`.
        ambient: ambient term, added before the albedo is applied: a scalar, or a tensor broadcasting
            against the output (e.g. one value per point).
        albedo: scalar or tensor broadcasting against the output.
        clip: clamp the result to [0, 1].
    Returns:
        (...) shading, same dtype as `normals`.
    """
    cos = (normals[..., None, :] * light_dirs).sum(-1)  # (..., L)
    value = albedo * (ambient + (intensities * cos.clamp_min(0.0)).sum(-1))
    return value.clamp(0.0, 1.0) if clip else value


def light_tensors(lights: LightSpec, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Per-view padded light tensors from a light specification, on the cameras' device and dtype.

    Args:
        lights: as `zerolevel.render.raycast.MeshRayCaster.render` takes them: None for a
            headlight per view (direction -camera forward, intensity 1), a `DirectionalLight` or
            a list of them shared by all views, or a list of B per-view entries.
        cameras: B cameras.
    Returns:
        directions: (B, L, 3) unit vectors towards the lights; intensities: (B, L) (0 = padding).
    """
    dirs, inten = light_arrays(lights, cameras.to(device="cpu", dtype=torch.float64))
    return (torch.as_tensor(dirs, dtype=cameras.dtype, device=cameras.device),
            torch.as_tensor(inten, dtype=cameras.dtype, device=cameras.device))
