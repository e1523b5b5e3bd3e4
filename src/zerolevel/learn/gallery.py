"""A picture of a single-view mesh network's predictions (SoftRas's or TetNet's, through their
`predict_meshes`) beside the truth (`zerolevel eval-set --gallery`).

One row per object (the first few objects of each category of a split, so the same run always shows
the same ones), six tiles: the input image, the predicted mesh seen from the input view, then the
prediction and the ground truth a quarter and half a turn around the ring. Predictions are rendered
with the dataset's own camera and light (`dataset.views.render_rgba`), so a perfect prediction's tiles
equal the dataset's images. Tiles are composited on dark grey (the objects are light grey) and laid
out by `report.contact_sheet` (white gaps); the picture is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from ..render.raycast import MeshRayCaster
from ..report import contact_sheet, write_png
from .dataset.views import render_rgba
from .sampling import input_cameras, split_images

COLUMNS = ("input", "prediction (input view)", "prediction +90°", "truth +90°", "prediction +180°", "truth +180°")
GAP = 2  # white pixels around tiles
BACKGROUND = 48.0  # grey level behind the objects


def gallery_objects(categories: Sequence[str], per_category: int) -> list[int]:
    """Indices of the first `per_category` objects of each category, categories in first-seen order."""
    taken: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        members = taken.setdefault(category, [])
        if len(members) < per_category:
            members.append(index)
    return [i for members in taken.values() for i in members]


@torch.no_grad()
def prediction_sheet(net: torch.nn.Module, split: Any, per_category: int = 2, view: int = 0,
                     scale: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: the rows described in the module docstring, each tile upscaled `scale` times.

    Args:
        net: the trained mesh network, with `predict_meshes` (put in eval mode; its mode is restored).
        split: a dataset split (`load_split`): images (N, V, S, S, 4), categories, cameras.
        per_category: objects shown per category.
        view: the input view (ring index).
        scale: nearest-neighbour upscaling of every tile (64^2 images are small on a screen).
    """
    objects = gallery_objects(split.categories, per_category)
    num_views = split.images.shape[1]
    views = [view % num_views, (view + num_views // 4) % num_views, (view + num_views // 2) % num_views]
    cameras = split.cameras[torch.as_tensor(views)]
    parameter = next(net.parameters())
    was_training = net.training
    net.eval()
    try:
        inputs = split_images(split, np.asarray(objects), np.full(len(objects), views[0]), parameter.device,
                              parameter.dtype)
        meshes = net.predict_meshes(inputs, input_cameras(net, split, np.full(len(objects), views[0]), parameter.device,
                                                          parameter.dtype))
    finally:
        net.train(was_training)
    tiles = []
    for index, (verts, faces) in zip(objects, meshes):
        predicted = np.zeros((len(views), *split.images.shape[2:]), dtype=np.uint8)  # an empty surface: blank
        if len(faces):
            mesh = trimesh.Trimesh(verts, faces, process=False)
            predicted = render_rgba(MeshRayCaster(mesh, crease_deg=None), cameras)  # smooth: no intended creases
        truth = split.images[index]
        row = [truth[views[0]], predicted[0], predicted[1], truth[views[1]], predicted[2], truth[views[2]]]
        tiles += [_composite(t, scale) for t in row]
    return contact_sheet(tiles, columns=len(COLUMNS), pad=GAP)


def write_prediction_sheet(path: str | Path, net: torch.nn.Module, split: Any, per_category: int = 2,
                           view: int = 0) -> None:
    """Write `prediction_sheet` as a PNG, atomically."""
    write_png(path, prediction_sheet(net, split, per_category, view))


def _composite(rgba: np.ndarray, scale: int) -> np.ndarray:
    """Premultiplied RGBA uint8 over the BACKGROUND grey, upscaled by pixel repetition."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) + BACKGROUND * (1.0 - alpha)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)

