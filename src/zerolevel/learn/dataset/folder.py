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
VERSION = 2  # what `write_dataset` writes: 2 added the normal maps (normals.npy)
READS = (1, 2)  # the versions `load_split` reads; version 1 has no normal maps
# How normals.npy stores the normal maps (dataset.json "normals"): decode with `decode_normals`.
NORMALS = {"space": "world", "encoding": "int8, round(127 * n)", "facing": "camera"}
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
        normals: (N, V, H, W, 3) int8 world-space normal maps, round(127 * n) facing the camera and 0 on
            the background, memory-mapped (`decode_normals`); None for a version-1 folder.
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
    normals: np.ndarray | None = None
    info: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def mesh_path(self, index: int) -> Path:
        """The normalised mesh of object `index` (for evaluation)."""
        return mesh_path(self.root, self.ids[index])


def read_info(root: str | Path, fmt: str = FORMAT, versions: tuple[int, ...] = READS,
              required: tuple[str, ...] = ("views", "resolution", "elevation", "distance", "fov", "voxels", "splits"),
              kind: str = "dataset") -> dict:
    """dataset.json of a finished dataset folder of format `fmt` (the ring datasets' by default; the head
    dataset passes its own) in one of `versions`, holding the `required` keys; InputError (one line,
    naming the folder as a `kind`) for anything else."""
    root = Path(root)
    path = root / "dataset.json"
    if not root.is_dir():
        raise InputError(f"no such {kind} folder", root)
    if not path.is_file():
        if (root / PARTS).is_dir():
            raise InputError(f"unfinished {kind} (no dataset.json): rerun the command that wrote it", root)
        raise InputError(f"not a {kind} folder (no dataset.json)", root)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise InputError(f"not a {fmt} file", path)
    if info.get("version") not in versions:
        raise InputError(f"{kind} version {info.get('version')} (this zerolevel reads versions "
                         f"{' and '.join(map(str, versions))})", path)
    missing = [k for k in required if k not in info]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", path)
    return info


def load_split(root: str | Path, split: str, normals: bool = False) -> DatasetSplit:
    """One split of a dataset folder, its arrays memory-mapped.

    A version-2 folder's normal maps are always read (memory-mapped: nothing is loaded until used);
    `normals=True` says the caller needs them, so a version-1 folder, which has none, is refused.

    Raises:
        InputError: (one line) a missing, unfinished or corrupt dataset, an unknown split, or
            `normals=True` on a version-1 folder.
    """
    root = Path(root)
    info = read_info(root)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})", root)
    has_normals = info["version"] >= 2
    if normals and not has_normals:
        raise InputError(f"dataset version {info['version']} has no normal maps: write it again with "
                         f"`zerolevel dataset` (version {VERSION})", root / "dataset.json")
    V, R, n = int(info["views"]), int(info["resolution"]), int(info["voxels"])
    images = load_array(root / split / "images.npy", np.uint8, (V, R, R, 4))
    normal_maps = load_array(root / split / "normals.npy", np.int8, (V, R, R, 3)) if has_normals else None
    voxels = load_array(root / split / "voxels.npy", np.bool_, (n, n, n))
    objects = load_objects(root / split / "objects.json")
    counts = {len(images), len(voxels), len(objects)} | ({len(normal_maps)} if has_normals else set())
    if len(counts) != 1 or len(objects) != info["splits"].get(split, -1):
        normal_count = f"{len(normal_maps)} normal maps, " if has_normals else ""
        raise InputError(f"split {split}: {len(images)} images, {normal_count}{len(voxels)} voxel grids, "
                         f"{len(objects)} objects, dataset.json says {info['splits'].get(split)}", root)
    cameras = Cameras.ring(n_views=V, elevation_deg=float(info["elevation"]), distance=float(info["distance"]),
                           fov_deg=float(info["fov"]), width=R, height=R)
    return DatasetSplit(root, split, images, voxels, [o["id"] for o in objects],
                        [o["category"] for o in objects], cameras, normals=normal_maps, info=info)


def decode_normals(normals: np.ndarray) -> np.ndarray:
    """Stored int8 normal maps (..., 3) as float32 normals n / 127 (unit to within 1/127; 0 on the background)."""
    return np.asarray(normals, dtype=np.float32) / 127.0


def load_array(path: Path, dtype: type, item_shape: tuple[int, ...]) -> np.ndarray:
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


def load_objects(path: Path) -> list[dict]:
    try:
        objects = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and "id" in o and "category" in o for o in objects):
        raise InputError('expected a list of {"id", "category"} objects', path)
    return objects
