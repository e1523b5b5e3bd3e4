"""A trained single-view network from its run folder, and the mesh it predicts from one image or
from several images of one object.

Every network (`SoftRasNet`, `TetNet`, `NormalsNet`) has a `config_class` with `from_dict`,
`from_config` and an `image_size` in its config; the mesh networks have `forward(images)` to their raw
outputs and `predict_meshes(images, cameras=None)` (the normals network's predictions:
`normals_predict.py`); a network that reads its input images' cameras (TetNet with pixel-aligned
features) says so by `needs_cameras` and takes them as `forward(images, cameras)`. A
checkpoint names its network's class (checkpoints written before that are SoftRas's).

Several images: both networks predict in the dataset's world frame whatever the view, so the raw
outputs of K images of one object are fused without moving them (`fuse`): TetNet's SDF values on its
fixed grid, by their max (the intersection of the predicted solids) or their mean; SoftRas's vertex
positions, averaged (every mesh has the template's topology). `default_fusion` says which by network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..errors import InputError
from ..optim.loop import load_checkpoint
from .phorhum import PhorhumNet
from .pix2pix import NormalsNet
from .sampling import needs_cameras
from .sdfnet import SDFNet
from .softras_net import SoftRasNet
from .tetnet import TetNet

NETWORKS: dict[str, type] = {cls.__name__: cls for cls in (SoftRasNet, TetNet, SDFNet, NormalsNet, PhorhumNet)}
SDF_NETWORKS = (TetNet, SDFNet)  # raw outputs: (N,) SDF values per image, meshed by the network's `mesh`


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


FUSIONS = ("mean", "max")


def default_fusion(net: torch.nn.Module) -> str:
    """How a network's predictions from several views are fused unless asked otherwise: TetNet's SDFs
    by their max (on 4 val/test objects x 8 ring offsets of a weakly trained network, 3 views: voxel IoU
    0.177 vs the mean's 0.173, F@2% 0.160 vs 0.115, Chamfer 0.074 vs 0.080; benchmarks/results/
    predict_fusion.md; one object of four lost parts to it, more with 6 views: to measure again with
    a well-trained network), SoftRas's vertices by their mean (the only fusion of vertex positions)."""
    return "max" if isinstance(net, SDF_NETWORKS) else "mean"


def fuse(outputs: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """One output from the raw outputs of K images of one object, all in the same world frame.

    Args:
        outputs: (K, N) TetNet SDF values at its grid's vertices, or (K, V, 3) SoftRas vertex
            positions (one topology).
        how: "mean": the average, of SDF values or of vertex positions. For SDFs, each prediction is
            the object's distance plus an error that depends on what its view hides; the mean keeps
            the Lipschitz bound (a mean of 1-Lipschitz functions is 1-Lipschitz), so it is a
            distance-like field whose zero level is where the predictions agree on average, and
            independent errors shrink. "max" (SDFs only): the intersection of the predicted solids,
            a point is inside only if every view's prediction says so (carving, as a visual hull
            does): right when each prediction overestimates, but one view that misses a part
            removes it.
    Returns:
        (N,) or (V, 3), on the outputs' device.
    """
    if outputs.dim() < 2 or len(outputs) == 0:
        raise ValueError(f"expected (K, ...) outputs with K >= 1, got shape {tuple(outputs.shape)}")
    if how == "mean":
        return outputs.mean(dim=0)
    if how == "max":
        if outputs.dim() != 2:
            raise ValueError("max fuses SDF values (K, N); vertex positions are averaged")
        return outputs.max(dim=0).values
    raise ValueError(f"unknown fusion {how!r}; choose one of {', '.join(FUSIONS)}")


def output_mesh(net: torch.nn.Module, output: torch.Tensor) -> trimesh.Trimesh:
    """The mesh of one raw output of `net` (or a fused one): TetNet's (N,) SDF values by marching
    tetrahedra on its grid, SDFNet's by marching cubes of its lattice, SoftRas's (V, 3) vertices on
    its template's faces."""
    with torch.no_grad():
        if isinstance(net, SDF_NETWORKS):
            verts, faces = net.mesh(output)
        else:
            verts, faces = output, net.faces
    return trimesh.Trimesh(verts.double().cpu().numpy(), faces.cpu().numpy(), process=False)


def network_outputs(net: torch.nn.Module, images: list[np.ndarray] | np.ndarray,
                    sources: list[str] | None = None, cameras: Cameras | None = None) -> torch.Tensor:
    """The raw outputs (eval mode; the mode is restored) of K (S, S, 4) uint8 RGBA images: (K, N)
    SDF values (TetNet) or (K, V, 3) vertices (SoftRas). `cameras`: the K images' (S x S pixels),
    which a network with pixel-aligned features (`needs_cameras`) reads. InputError naming the image
    for a wrong size, type or channels, or an empty alpha channel; or for missing cameras."""
    images = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
    sources = sources or [f"image {k}" for k in range(len(images))]
    for image, source in zip(images, sources):
        check_image(image, net.config.image_size, source)
    needs = needs_cameras(net)
    if needs and (cameras is None or len(cameras) != len(images)):
        raise InputError("this network reads each image at its grid vertices' projections: it needs each "
                         "image's camera (zerolevel predict: --dataset DATA --views K)", sources[0])
    parameter = next(net.parameters())
    was_training = net.training
    net.eval()
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(parameter.device).permute(0, 3, 1, 2)
    with torch.no_grad():
        outputs = net(batch.to(parameter.dtype) / 255, *([cameras] if needs else []))
    net.train(was_training)
    return outputs


def check_image(image: np.ndarray, size: int, source: str) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (size, size, 4):
        raise InputError(f"the network takes {size}x{size} RGBA uint8 images, got {image.dtype} "
                         f"{tuple(image.shape)}", source)
    if not image[..., 3].any():
        raise InputError("the image has no foreground (its alpha channel is 0 everywhere)", source)


def predict(model: str | Path | torch.nn.Module, image: np.ndarray | list[np.ndarray],
            source: str | list[str] = "image", fusion: str | None = None,
            cameras: Cameras | None = None) -> trimesh.Trimesh:
    """The mesh a trained network predicts from one (S, S, 4) uint8 RGBA image, or from a list of
    images of one object (their outputs fused, `fuse`).

    Args:
        model: a run folder, a checkpoint file or a network.
        image: (S, S, 4) uint8, S the network's image size; alpha is the object's coverage; or a
            list of such images of one object (any views of the dataset's ring).
        source: how errors name the image (a list: one name per image).
        fusion: how several images' outputs are fused ("mean" or "max", `fuse`; None: the
            network's `default_fusion`).
        cameras: the images' cameras (S x S pixels, the dataset's world frame), needed by a network
            with pixel-aligned features (`needs_cameras`), else unused.
    Returns:
        trimesh.Trimesh in the ring cameras' world (the dataset's normalised frame): SoftRas's, of the
        template's topology (642 vertices, 1280 faces); the tet network's, its zero level set.
    Raises:
        InputError: wrong size, type or channels, an empty alpha channel, or cameras missing.
    """
    net = model if isinstance(model, torch.nn.Module) else load_model(model)
    images = [image] if isinstance(image, np.ndarray) and image.ndim == 3 else list(image)
    sources = [source] if isinstance(source, str) else list(source)
    if len(sources) == 1 and len(images) > 1:
        sources = [f"{sources[0]} {k}" for k in range(len(images))]
    mesh = output_mesh(net, fuse(network_outputs(net, images, sources, cameras), fusion or default_fusion(net)))
    if len(mesh.faces) == 0:
        what = "this image" if len(images) == 1 else "these images"
        raise InputError(f"the network sees no object in {what} (its surface is empty)", ", ".join(sources))
    return mesh
