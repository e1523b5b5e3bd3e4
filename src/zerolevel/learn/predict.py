"""A trained single-view network from its run folder, and the mesh it predicts from one image.

Every network (`SoftRasNet`, `TetNet`, `NormalsNet`) has a `config_class` with `from_dict`,
`from_config` and an `image_size` in its config; the mesh networks have `predict_meshes(images)`
(the normals network's predictions: `normals_predict.py`). A checkpoint names its network's class
(checkpoints written before that are SoftRas's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from ..errors import InputError
from ..optim.loop import load_checkpoint
from .pix2pix import NormalsNet
from .softras_net import SoftRasNet
from .tetnet import TetNet

NETWORKS: dict[str, type] = {cls.__name__: cls for cls in (SoftRasNet, TetNet, NormalsNet)}


def load_run(path: str | Path) -> dict[str, Any]:
    """The checkpoint of a training run (a run folder or its checkpoint file); InputError if it is
    missing, unreadable, or not a trained network's."""
    path = Path(path)
    if path.is_dir() and not (path / "checkpoint.pt").is_file():
        raise InputError("no such checkpoint (train a network first)", path)
    payload = load_checkpoint(path)
    if "net" not in payload["state"]:
        raise InputError(f"not a trained network's checkpoint (it holds {payload['name'] or 'a fit'})", path)
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", network: type | None = None) -> torch.nn.Module:
    """The trained network (eval mode) of a run folder or checkpoint file.

    Raises:
        InputError: no checkpoint there, one that does not rebuild into a network, or (with
            `network`) a checkpoint of another network type.
    """
    return network_from_run(load_run(path), path, device, network)


def network_from_run(payload: dict[str, Any], source: str | Path, device: str | torch.device = "cpu",
                     network: type | None = None) -> torch.nn.Module:
    """The trained network (eval mode) of a run's checkpoint dict (`load_run`); errors name `source`."""
    state = payload["state"]
    kind = NETWORKS.get(state.get("network", SoftRasNet.__name__))
    if kind is None or (network is not None and kind is not network):
        found = state.get("network", SoftRasNet.__name__)
        raise InputError(f"a checkpoint of a {found} network, not of a {network.__name__ if network else 'known'} one",
                         source)
    try:
        net = kind.from_config(kind.config_class.from_dict(state["net"]))
        net.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot rebuild the network ({type(error).__name__}: {error})", source) from None
    return net.to(device).eval()


def _check_image(image: np.ndarray, size: int, source: str) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (size, size, 4):
        raise InputError(f"the network takes {size}x{size} RGBA uint8 images, got {image.dtype} "
                         f"{tuple(image.shape)}", source)
    if not image[..., 3].any():
        raise InputError("the image has no foreground (its alpha channel is 0 everywhere)", source)


def predict(model: str | Path | torch.nn.Module, image: np.ndarray, source: str = "image") -> trimesh.Trimesh:
    """The mesh a trained network predicts from one (S, S, 4) uint8 RGBA image.

    Args:
        model: a run folder, a checkpoint file or a network.
        image: (S, S, 4) uint8, S the network's image size; alpha is the object's coverage.
        source: how errors name the image.
    Returns:
        trimesh.Trimesh in the ring cameras' world (the dataset's normalised frame): SoftRas's, of the
        template's topology (642 vertices, 1280 faces); the tet network's, its zero level set.
    Raises:
        InputError: wrong size, type or channels, or an empty alpha channel.
    """
    net = model if isinstance(model, torch.nn.Module) else load_model(model)
    _check_image(image, net.config.image_size, source)
    parameter = next(net.parameters())
    was_training = net.training
    net.eval()
    batch = torch.from_numpy(np.ascontiguousarray(image)).to(parameter.device).permute(2, 0, 1)[None]
    vertices, faces = net.predict_meshes(batch.to(parameter.dtype) / 255)[0]
    net.train(was_training)
    if len(faces) == 0:
        raise InputError("the network sees no object in this image (its surface is empty)", source)
    return trimesh.Trimesh(vertices.astype(np.float64), faces, process=False)
