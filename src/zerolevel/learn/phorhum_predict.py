"""A head from one photograph with a trained `PhorhumNet`: its surface by marching cubes in a narrow
band, coloured by the predicted albedo.

One job: `predict_head` (the registry's predictor for "phorhum") and the camera a photograph is
assumed to be taken with when none is given (`frontal_camera`: the head dataset's middle settings,
looking straight at the face). One view cannot fix the head's distance, so the network predicts the
head where that camera puts it; the dataset's own cameras give the evaluation's protocol.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..errors import InputError
from ..geometry.narrowband import marching_cubes_narrow_band
from .phorhum import PhorhumNet

HEAD_BOUNDS = ((-0.55, -0.55, -0.55), (0.55, 0.55, 0.55))  # head units: the neutral head's diagonal is 1
MIN_FOREGROUND = 0.05  # a head photograph's mask covers at least this share of it


def frontal_camera(image_size: int, fov_deg: float = 25.0, fill: float = 0.925) -> Cameras:
    """The camera of a frontal photograph: yaw and pitch 0, the head dataset's middle field of view and
    framing (`dataset.heads.head_cameras` without the jitter)."""
    from .dataset.heads import NEUTRAL_HEIGHT

    target = np.array([0.0, 0.03, 0.0])
    distance = (0.5 * NEUTRAL_HEIGHT / fill) / math.tan(math.radians(fov_deg) / 2)
    return Cameras.look_at(target + np.array([0.0, 0.0, -distance]), target, fov_deg=fov_deg,
                           width=image_size, height=image_size)


def head_field(net: PhorhumNet, image: torch.Tensor, camera: Cameras):
    """points (N, 3) -> signed distance (N,) of the head in `image` (1, 4, S, S) seen by `camera`."""
    with torch.no_grad():
        features, _ = net.encode(image)

    def field(points: torch.Tensor) -> torch.Tensor:
        d, _ = net.query(features, camera, points[None].to(features.dtype))
        return d[0]

    field.features = features  # type: ignore[attr-defined]
    return field


def predict_head(model: PhorhumNet, image: np.ndarray | list[np.ndarray], source: str | list[str] = "image",
                 fusion: str | None = None, camera: Cameras | None = None, resolution: int = 128) -> trimesh.Trimesh:
    """The head a trained network sees in one (S, S, 4) uint8 photograph (RGB and the head's mask as
    alpha), as a mesh with the predicted albedo as vertex colours, in head units.

    `camera`: the photograph's (default `frontal_camera`). InputError for several photographs (one
    network call sees one), a wrong size, an empty mask, or a network that sees no surface.
    """
    from .predict import check_image

    if not (isinstance(image, np.ndarray) and image.ndim == 3):
        images = list(image)
        if len(images) != 1:
            raise InputError("phorhum predicts a head from one photograph; give one image")
        image = images[0]
    source = source if isinstance(source, str) else source[0]
    net = model
    size = net.config.image_size
    check_image(image, size, source)
    share = float((np.asarray(image)[..., 3] > 127).mean())
    if share < MIN_FOREGROUND:
        raise InputError(f"the mask covers {share:.1%} of the image: a head photograph needs a face-sized "
                         f"foreground (at least {MIN_FOREGROUND:.0%}; crop it around the head)", source)
    parameter = next(net.parameters())
    camera = (camera or frontal_camera(size)).to(device=parameter.device, dtype=parameter.dtype)
    batch = torch.from_numpy(np.ascontiguousarray(image)).to(parameter.device).permute(2, 0, 1)[None]
    was_training = net.training
    net.eval()
    try:
        field = head_field(net, batch.to(parameter.dtype) / 255, camera)
        mesh = marching_cubes_narrow_band(field, resolution, HEAD_BOUNDS, keep_largest_component=True,
                                          device=parameter.device)
        if len(mesh.faces) == 0:
            raise InputError("the network sees no head in this image (its surface is empty)", source)
        with torch.no_grad():
            vertices = torch.from_numpy(np.asarray(mesh.vertices)).to(parameter.device, parameter.dtype)
            _, albedo = net.query(field.features, camera, vertices[None])
    finally:
        net.train(was_training)
    colours = np.clip(np.rint(albedo[0].cpu().double().numpy() * 255), 0, 255).astype(np.uint8)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colours, process=False)
