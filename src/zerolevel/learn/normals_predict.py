"""Normal maps from a trained normals network (`pix2pix.NormalsNet`): of one image, and of a whole split.

One job: inference with a normals run. `predict_normal_map` and `write_normal_map` are
`zerolevel predict-normals` (16-bit PNG in the scenes' encoding, rgb = (n + 1) / 2 and (0, 0, 0) on
the background, `images.write_normal_png`; or float32 .npy); `with_predicted_normals` gives TetNet's
training (`TetNetTrainConfig.normals_from`) the network's normal maps of its training split in place
of the ground truth's, as Wu et al. train on pix2pix's predictions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_path
from ..errors import InputError
from ..images import write_normal_png
from .dataset.views import normals_to_int8
from .pix2pix import NormalsNet
from .predict import check_image, load_model
from .sampling import split_images

NORMAL_FORMATS = ("png", "npy")  # what predict-normals writes, by the output's extension


@torch.no_grad()
def predict_normals(net: NormalsNet, images: Tensor) -> Tensor:
    """(B, S, S, 3) unit normals (0 where alpha = 0, in the network's `config.space`) of (B, 4, S, S)
    RGBA images in [0, 1], in eval mode (no dropout; the network's mode is restored)."""
    was_training = net.training
    net.eval()
    try:
        return net(images).permute(0, 2, 3, 1)
    finally:
        net.train(was_training)


def predict_normal_map(net: NormalsNet, image: np.ndarray, source: str = "image") -> np.ndarray:
    """(S, S, 3) float32 unit normals (0 on the background) of one (S, S, 4) uint8 RGBA image (RGB
    premultiplied by alpha, as the dataset's), in the network's `config.space` (world, or the image's
    camera frame); InputError for a wrong size or an empty alpha."""
    check_image(image, net.config.image_size, source)
    parameter = next(net.parameters())
    batch = torch.from_numpy(np.ascontiguousarray(image)).to(parameter.device).permute(2, 0, 1)[None]
    return predict_normals(net, batch.to(parameter.dtype) / 255)[0].float().cpu().numpy()


def write_normal_map(path: str | Path, normals: np.ndarray) -> None:
    """Write (H, W, 3) normals atomically: .png as the scenes' 16-bit normal maps, .npy as float32."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in NORMAL_FORMATS:
        raise InputError(f"unknown normal map format {suffix!r}: use .png (16-bit, rgb = (n + 1) / 2) or .npy",
                         path)
    with atomic_path(path) as tmp:
        if suffix == "npy":
            np.save(tmp, np.asarray(normals, dtype=np.float32))
        else:
            write_normal_png(tmp, normals)


def predict_split_normals(net: NormalsNet, split: Any, batch_size: int = 32) -> np.ndarray:
    """(N, V, S, S, 3) int8 world-space normal maps of every image of a split, in the dataset's
    encoding (round(127 n), 0 on the background), in eval mode (the network's mode is restored)."""
    parameter = next(net.parameters())
    N, V = split.images.shape[:2]
    objects, views = np.repeat(np.arange(N), V), np.tile(np.arange(V), N)
    out = np.zeros((*split.images.shape[:-1], 3), dtype=np.int8)
    was_training = net.training
    net.eval()
    try:
        for start in range(0, len(objects), batch_size):
            o, v = objects[start:start + batch_size], views[start:start + batch_size]
            rotations = split.cameras.R[torch.as_tensor(v)].to(parameter.device)
            with torch.no_grad():
                normals = net.world_normals(split_images(split, o, v, parameter.device, parameter.dtype), rotations)
            out[o, v] = normals_to_int8(normals.double().cpu().numpy())
    finally:
        net.train(was_training)
    return out


def predict_no_mesh(net: NormalsNet, images: Any, source: str | list[str] = "image", fusion: str | None = None) -> None:
    """The registry's mesh predictor (`learn.predict.predict`'s arguments) for the normals network,
    which has none: InputError."""
    source = source[0] if isinstance(source, list) else source
    raise InputError("a normals network predicts normal maps, not meshes: use zerolevel predict-normals", source)


def with_predicted_normals(split: Any, run: str | Path, device: torch.device | str = "cpu",
                           batch_size: int = 32) -> Any:
    """A shallow copy of `split` whose normal maps are the normals run's predictions from its images
    (computed once, batched, without gradients); InputError for a run that is not a normals network's
    or takes another image size."""
    net = load_model(run, device, network=NormalsNet)
    size = split.images.shape[2]
    if net.config.image_size != size:
        raise InputError(f"the normals network takes {net.config.image_size}x{net.config.image_size} images, "
                         f"the training split's are {size}x{size}", run)
    predicted = copy.copy(split)
    predicted.normals = predict_split_normals(net, split, batch_size)
    return predicted
