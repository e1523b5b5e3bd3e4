"""The dataset folder's format: its layout, name and version, and reading one split of a finished
folder back as memory-mapped arrays (`load_split`), with one-line errors for anything else.

The layout and conventions are described in `zerolevel.learn.dataset`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...cameras import Cameras
from ...errors import InputError

FORMAT = "zerolevel-dataset"
VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")  # one sub-folder each
PARTS = ".parts"  # the per-object cache folder; a folder holding it but no dataset.json is unfinished


def part_path(root: Path, object_id: str) -> Path:
    """Where an object's cached images, voxels and key are kept."""
    return root / PARTS / f"{object_id}.npz"


def mesh_path(root: Path, object_id: str) -> Path:
    """Where an object's normalised mesh is kept (for evaluation)."""
    return root / "meshes" / f"{object_id}.ply"


@dataclass
class DatasetSplit:
    """One split of a dataset folder, as `load_split` reads it.

    Attributes:
        root: the dataset folder; name: "train", "val" or "test".
        images: (N, V, H, W, 4) uint8 RGBA, memory-mapped (RGB premultiplied by A).
        voxels: (N, n, n, n) bool occupancy indexed [x, y, z] over [-0.5, 0.5]^3, memory-mapped.
        ids, categories: per object, in array order.
        cameras: the V ring cameras shared by every object (view v of every object is camera v).
        info: the dataset.json contents.
    """

    root: Path
    name: str
    images: np.ndarray
    voxels: np.ndarray
    ids: list[str]
    categories: list[str]
    cameras: Cameras
    info: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def mesh_path(self, index: int) -> Path:
        """The normalised mesh of object `index` (for evaluation)."""
        return mesh_path(self.root, self.ids[index])


def read_info(root: str | Path) -> dict:
    """dataset.json of a finished dataset folder; InputError (one line) for anything else."""
    root = Path(root)
    path = root / "dataset.json"
    if not root.is_dir():
        raise InputError("no such dataset folder", root)
    if not path.is_file():
        if (root / PARTS).is_dir():
            raise InputError("unfinished dataset (no dataset.json): rerun the command that wrote it", root)
        raise InputError("not a dataset folder (no dataset.json)", root)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} file", path)
    if info.get("version") != VERSION:
        raise InputError(f"dataset version {info.get('version')} (this zerolevel reads {VERSION})", path)
    missing = [k for k in ("views", "resolution", "elevation", "distance", "fov", "voxels", "splits") if k not in info]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", path)
    return info


def load_split(root: str | Path, split: str) -> DatasetSplit:
    """One split of a dataset folder, its arrays memory-mapped.

    Raises:
        InputError: (one line) a missing, unfinished or corrupt dataset, or an unknown split.
    """
    root = Path(root)
    info = read_info(root)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})", root)
    V, R, n = int(info["views"]), int(info["resolution"]), int(info["voxels"])
    images = _load_array(root / split / "images.npy", np.uint8, (V, R, R, 4))
    voxels = _load_array(root / split / "voxels.npy", np.bool_, (n, n, n))
    objects = _load_objects(root / split / "objects.json")
    counts = {len(images), len(voxels), len(objects)}
    if len(counts) != 1 or len(objects) != info["splits"].get(split, -1):
        raise InputError(f"split {split}: {len(images)} images, {len(voxels)} voxel grids, {len(objects)} objects, "
                         f"dataset.json says {info['splits'].get(split)}", root)
    cameras = Cameras.ring(n_views=V, elevation_deg=float(info["elevation"]), distance=float(info["distance"]),
                           fov_deg=float(info["fov"]), width=R, height=R)
    return DatasetSplit(root, split, images, voxels, [o["id"] for o in objects],
                        [o["category"] for o in objects], cameras, info)


def _load_array(path: Path, dtype: type, item_shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise InputError("missing", path)
    try:
        array = np.load(path, mmap_mode="r")
    except Exception as exc:  # truncated or not an .npy file
        raise InputError(f"corrupt array ({type(exc).__name__}: {exc})", path) from None
    if array.dtype != dtype or array.shape[1:] != item_shape:
        raise InputError(f"expected (N, {', '.join(map(str, item_shape))}) {np.dtype(dtype).name}, "
                         f"got {array.shape} {array.dtype}", path)
    return array


def _load_objects(path: Path) -> list[dict]:
    try:
        objects = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and "id" in o and "category" in o for o in objects):
        raise InputError('expected a list of {"id", "category"} objects', path)
    return objects
