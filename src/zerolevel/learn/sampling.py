"""Training batches from a dataset split: which (object, view) pairs, and their images and cameras.

A split (`learn.dataset.folder.DatasetSplit`, or any object with the same attributes) holds images
(N, V, S, S, 4) uint8 of N objects from V ring cameras, the V `cameras`, per-object `categories` and
(N, n, n, n) bool `voxels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras
from ..errors import InputError


def open_splits(dataset: Any, train_split: str, val_split: str | None, val: Any = None,
                normals: bool = False) -> tuple[Any, Any]:
    """(train split, validation split or None) from a dataset folder, or from split objects; with
    `normals` the training split must hold normal maps (InputError naming the folder otherwise)."""
    if isinstance(dataset, (str, Path)):
        from .dataset.folder import load_split  # the dataset folder reader
        train = load_split(dataset, train_split, normals=normals) if normals else load_split(dataset, train_split)
        return train, (load_split(dataset, val_split) if val_split else None)
    if normals and getattr(dataset, "normals", None) is None:
        raise InputError("the training split has no normal maps")
    return dataset, (val if val_split else None)


def check_split(split: Any, name: str) -> None:
    """Raise InputError unless images are (N, V >= 2, S, S, 4) with V ring cameras of size S."""
    shape = tuple(split.images.shape)
    cams = split.cameras
    if (len(shape) != 5 or shape[-1] != 4 or shape[1] < 2 or shape[2] != shape[3] or len(cams) != shape[1]
            or (cams.height, cams.width) != shape[2:4] or shape[0] < 1):
        raise InputError(f"the {name} split needs (N, V >= 2, S, S, 4) images and V cameras of S x S, "
                         f"got images {shape} and {len(cams)} cameras of {cams.width}x{cams.height}")


def object_categories(split: Any) -> np.ndarray:
    """(N,) category label of each object (one shared label when the split has none per object)."""
    categories = getattr(split, "categories", None)
    categories = [] if categories is None else list(categories)
    if len(categories) != len(split):
        categories = ["all"] * len(split)
    return np.asarray(categories, dtype=object)


class PairSampler:
    """Global batches of (object, input view a, reference view b != a), class-balanced as SoftRas's
    get_random_batch (a uniform category, then a uniform object of it); identical on every process."""

    def __init__(self, categories: np.ndarray, num_views: int, seed: int):
        self.groups = [np.flatnonzero(categories == c) for c in dict.fromkeys(categories.tolist())]
        self.num_views = int(num_views)
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three (n,) int64 arrays: objects, views a, views b."""
        group = self.rng.integers(0, len(self.groups), n)
        objects = np.array([self.groups[g][self.rng.integers(0, len(self.groups[g]))] for g in group],
                           dtype=np.int64)
        view_a = self.rng.integers(0, self.num_views, n)
        view_b = (view_a + self.rng.integers(1, self.num_views, n)) % self.num_views
        return objects, view_a, view_b

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def split_images(split: Any, objects: np.ndarray, views: np.ndarray, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 4, S, S) RGBA in [0, 1] of the given (object, view) pairs."""
    array = np.ascontiguousarray(split.images[objects, views])  # (B, S, S, 4) uint8
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).to(dtype).div_(255.0)


def split_cameras(split: Any, views: np.ndarray, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> Cameras:
    """The split's cameras of the given (B,) views."""
    return split.cameras[torch.as_tensor(views, dtype=torch.long)].to(device=device, dtype=dtype)


def input_cameras(net: Any, split: Any, views: np.ndarray, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> Cameras | None:
    """The cameras of the input views when the network reads them (pixel-aligned features,
    `needs_cameras`), else None (a network that predicts in the world frame whatever the view)."""
    return split_cameras(split, views, device, dtype) if needs_cameras(net) else None


def needs_cameras(net: Any) -> bool:
    """Whether a network reads its input images' cameras (TetNet's pixel-aligned features); a network
    without the property (SoftRas's, the head network) predicts in its own frame and does not."""
    return bool(getattr(net, "needs_cameras", False))


def split_normals(split: Any, objects: np.ndarray, views: np.ndarray, device: torch.device | str,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, S, S, 3) world-space normal maps of the given (object, view) pairs: the split's int8
    normals decoded and made unit length (0 on the background)."""
    array = np.ascontiguousarray(split.normals[objects, views])  # (B, S, S, 3) int8
    normals = torch.from_numpy(array).to(device).to(dtype)
    length = normals.norm(dim=-1, keepdim=True)
    return torch.where(length > 0, normals / length.clamp_min(1e-12), normals)
