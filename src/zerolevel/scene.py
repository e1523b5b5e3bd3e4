"""Scene folders: one object seen from several cameras — read, write, normalise.

A scene holds per-view cameras and observations (world-space normal maps, masks, images, depths)
in *working space*, where the object lies inside the unit sphere; `Scene.to_world` maps working
space back to the input's own units. The folder format is fixed in DESIGN.md:

    scene.json        {"format": "zerolevel-scene", "version": 1, "normal_space": "world"|"camera",
                       "to_world": 4x4, "views": [{"name", "width", "height", "K", "world_to_camera",
                       "light"?}]}
    normal/<name>.png 16-bit RGB, rgb = (n + 1) / 2 (also read: 8-bit PNG, .npy float32, float .exr)
    mask/<name>.png   8-bit, foreground > 127
    image/<name>.png  8-bit grey or RGB
    depth/<name>.npy  float32 camera-z depth, 0 = no surface

A modality is present when its folder is; then every view must have its file. Background pixels
of a normal map are the zero vector in memory and are written as (0, 0, 0) in PNGs (no unit normal
encodes to that); on reading, pixels outside the mask, and pixels whose decoded vector is shorter
than 0.05 (all-zero or mid-grey), are background. Every problem with the input raises
`InputError` naming the file.

Reading the image files is `images.py`'s job; importing other layouts is `importers.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_dir
from .cameras import Cameras
from .errors import InputError
from .images import (BACKGROUND_LENGTH, read_depth, read_image, read_mask, read_normal_map, write_image,
                     write_mask, write_normal_png)

FORMAT = "zerolevel-scene"
VERSION = 1
MODALITIES = ("normal", "mask", "image", "depth")
# Normal maps must be unit length inside the mask: |(|n| - 1)| <= UNIT_TOLERANCE at all but
# BAD_FRACTION of the foreground (8-bit PNG quantisation alone gives errors up to ~0.01).
UNIT_TOLERANCE = 0.1
BAD_FRACTION = 0.01
_EXTENSIONS = {"normal": (".png", ".npy", ".exr"), "mask": (".png",),
               "image": (".png", ".jpg", ".jpeg"), "depth": (".npy",)}

# ====================================================================== data structures
@dataclass
class View:
    """One camera and what it observed, in working space.

    Attributes:
        name: file stem of the view ("000").
        K: (3, 3) float64 intrinsics, OpenCV, pixel centres at integer + 0.5.
        world_to_camera: (4, 4) float64 rigid [R|t] from working space to camera space.
        width, height: image size in pixels.
        light: {"direction": [x, y, z] towards the light in world space, "intensity": float} or None.
        normal: (H, W, 3) float32 world (working) space unit normals, 0 outside the mask, or None.
        mask: (H, W) bool foreground, or None.
        image: (H, W) or (H, W, 3) float32 in [0, 1], or None.
        depth: (H, W) float32 camera-z in working-space units, 0 = no surface, or None.
    """

    name: str
    K: np.ndarray
    world_to_camera: np.ndarray
    width: int
    height: int
    light: dict | None = None
    normal: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    depth: np.ndarray | None = None

    @property
    def R(self) -> np.ndarray:
        """(3, 3) world-to-camera rotation."""
        return self.world_to_camera[:3, :3]

    def camera(self, device=None, dtype: torch.dtype = torch.float32) -> Cameras:
        """This view's camera as a batch of one."""
        return Cameras(torch.as_tensor(self.K, dtype=dtype, device=device),
                       torch.as_tensor(self.world_to_camera, dtype=dtype, device=device),
                       self.width, self.height)


@dataclass
class Scene:
    """Views of one object in working space (object inside the unit sphere).

    Attributes:
        views: the views, in order.
        to_world: (4, 4) similarity from working space to the input's own units.
        normal_space: "world" or "camera": how normals are stored on disk (`write` honours it); in
            memory normals are always world (working) space.
    """

    views: list[View]
    to_world: np.ndarray
    normal_space: str = "world"

    @property
    def from_world(self) -> np.ndarray:
        """(4, 4) inverse of `to_world`: the input's units -> working space."""
        return np.linalg.inv(self.to_world)

    def cameras(self, indices=None, device=None, dtype: torch.dtype = torch.float32) -> Cameras:
        """A batch of the chosen views' cameras (all views by default).

        Raises:
            InputError: the chosen views differ in image size.
        """
        views = self.views if indices is None else [self.views[i] for i in indices]
        if not views:
            raise InputError("scene has no views")
        sizes = sorted({(v.width, v.height) for v in views})
        if len(sizes) != 1:
            raise InputError(f"views have different image sizes {sizes}; zerolevel needs one size")
        K = torch.as_tensor(np.stack([v.K for v in views]), dtype=dtype, device=device)
        W2C = torch.as_tensor(np.stack([v.world_to_camera for v in views]), dtype=dtype, device=device)
        return Cameras(K, W2C, sizes[0][0], sizes[0][1])

    def modalities(self) -> set[str]:
        """The observations present in every view: a subset of {"normal", "mask", "image", "depth"}."""
        if not self.views:
            return set()
        return {m for m in MODALITIES if all(getattr(v, m) is not None for v in self.views)}

    def stack(self, modality: str, indices=None) -> np.ndarray:
        """(B, H, W, ...) array of one modality over the chosen views (all by default)."""
        views = self.views if indices is None else [self.views[i] for i in indices]
        return np.stack([getattr(v, modality) for v in views])

    def write(self, path: str | Path, normal_format: str = "png", overwrite: bool = True) -> None:
        """Write the scene folder atomically (it appears whole or not at all).

        Args:
            path: the scene folder; an existing one is replaced when `overwrite`.
            normal_format: "png" (16-bit RGB, rgb = (n + 1) / 2, background (0, 0, 0)) or "npy"
                (float32 (H, W, 3)).
        """
        if normal_format not in ("png", "npy"):
            raise ValueError(f"normal_format must be 'png' or 'npy', got {normal_format!r}")
        partial = {m for m in MODALITIES if any(getattr(v, m) is not None for v in self.views)}
        partial -= self.modalities()
        if partial:
            raise ValueError(f"modalities {sorted(partial)} are present in some views only")
        with atomic_dir(path, overwrite=overwrite) as tmp:
            (tmp / "scene.json").write_text(_dump_json(self._json()))
            for modality in sorted(self.modalities()):
                (tmp / modality).mkdir()
                for view in self.views:
                    _write_modality(tmp / modality, view, modality, normal_format, self.normal_space)

    def _json(self) -> dict:
        views = []
        for v in self.views:
            entry = {"name": v.name, "width": int(v.width), "height": int(v.height),
                     "K": np.asarray(v.K, float).tolist(),
                     "world_to_camera": np.asarray(v.world_to_camera, float).tolist()}
            if v.light is not None:
                entry["light"] = {"direction": [float(x) for x in v.light["direction"]],
                                  "intensity": float(v.light.get("intensity", 1.0))}
            views.append(entry)
        return {"format": FORMAT, "version": VERSION, "normal_space": self.normal_space,
                "to_world": np.asarray(self.to_world, float).tolist(), "views": views}

    @staticmethod
    def from_render(cameras: Cameras, outputs: dict[str, Any], to_world: np.ndarray,
                    names: list[str] | None = None, light: dict | list | None = None) -> "Scene":
        """A scene from rendered arrays (numpy or tensors) in working space.

        Args:
            cameras: B cameras.
            outputs: any of "normal" (B, H, W, 3) world-space normals, "mask" (B, H, W) coverage
                in [0, 1] (stored thresholded at 0.5), "depth" (B, H, W) camera z, "image"
                (B, H, W) or (B, H, W, 3) in [0, 1]. Normals and depths are zeroed outside the
                thresholded mask.
            to_world: (4, 4) similarity from working space to the mesh's units.
            names: view names; "000", "001", ... by default.
            light: one light dict shared by all views, or a list of B dicts (or None).
        """
        arrays = {k: _numpy(v) for k, v in outputs.items() if k in MODALITIES and v is not None}
        K = _numpy(cameras.K).astype(np.float64)
        W2C = _numpy(cameras.world_to_camera).astype(np.float64)
        B = len(cameras)
        names = names or [f"{i:03d}" for i in range(B)]
        lights = light if isinstance(light, list) else [light] * B
        views = []
        for i in range(B):
            view = View(names[i], K[i], W2C[i], cameras.width, cameras.height, light=lights[i])
            if "mask" in arrays:
                view.mask = arrays["mask"][i] > 0.5
            inside = view.mask if view.mask is not None else True
            if "normal" in arrays:
                view.normal = (arrays["normal"][i] * np.asarray(inside)[..., None]).astype(np.float32)
            if "depth" in arrays:
                view.depth = (arrays["depth"][i] * inside).astype(np.float32)
            if "image" in arrays:
                view.image = np.clip(arrays["image"][i], 0.0, 1.0).astype(np.float32)
            views.append(view)
        return Scene(views, np.asarray(to_world, dtype=np.float64))


def _dump_json(data: dict) -> str:
    """Indented JSON with each innermost list of numbers (a matrix row) on one line."""
    text = json.dumps(data, indent=2)
    row = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")
    return row.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ====================================================================== normalisation
def similarity(center, radius: float) -> np.ndarray:
    """(4, 4) map x -> center + radius * x: the unit sphere onto the sphere (center, radius)."""
    S = np.eye(4)
    S[:3, :3] *= float(radius)
    S[:3, 3] = np.asarray(center, dtype=np.float64)
    return S


def normalize_scene(scene: Scene, center, radius: float) -> Scene:
    """Re-express a scene so that the sphere (center, radius) of its working space is the unit sphere.

    New working coordinates are x' = (x - center) / radius. Cameras stay rigid: camera space is
    scaled by 1 / radius as well, so K is unchanged, t becomes (R center + t) / radius, and depths
    scale by 1 / radius; normals are unchanged. `to_world` is updated so it still maps to the
    input's units. Returns a new Scene (arrays other than depth are shared).
    """
    radius = float(radius)
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    center = np.asarray(center, dtype=np.float64).reshape(3)
    views = []
    for v in scene.views:
        W2C = np.array(v.world_to_camera, dtype=np.float64)
        W2C[:3, 3] = (W2C[:3, :3] @ center + W2C[:3, 3]) / radius
        depth = None if v.depth is None else (v.depth / radius).astype(np.float32)
        views.append(dataclasses.replace(v, world_to_camera=W2C, depth=depth))
    to_world = np.asarray(scene.to_world, dtype=np.float64) @ similarity(center, radius)
    return Scene(views, to_world, scene.normal_space)


def check_similarity(M: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    """Validate a (4, 4) similarity (uniform scale, rotation, translation); return it as float64."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)):
        raise InputError(f"{what} must be a finite 4x4 matrix", path)
    A = M[:3, :3]
    scale2 = np.trace(A.T @ A) / 3
    if (not np.allclose(M[3], [0, 0, 0, 1], atol=1e-9) or scale2 <= 0 or np.linalg.det(A) <= 0
            or np.abs(A.T @ A / scale2 - np.eye(3)).max() > 1e-5):
        raise InputError(f"{what} is not a similarity (uniform scale, rotation, translation)", path)
    return M


# ====================================================================== reading a scene folder
def read_scene(path: str | Path, load_images: bool = True) -> Scene:
    """Read a zerolevel scene folder (`importers.load_scene` also reads the layouts it imports).

    Args:
        path: the scene folder (or its scene.json).
        load_images: False reads only scene.json (cameras, lights): every array is None.
    Raises:
        InputError: naming the file, for anything missing, malformed, corrupt or inconsistent.
    """
    path = Path(path)
    if path.is_file() and path.name == "scene.json":
        path = path.parent
    if not path.is_dir():
        raise InputError("no such scene folder", path)
    if not (path / "scene.json").is_file():
        raise InputError("no such file: not a scene folder (nor a NeuS folder with cameras_sphere.npz)",
                         path / "scene.json")
    scene = _read_scene_json(path / "scene.json")
    if load_images:
        present = [m for m in MODALITIES if (path / m).is_dir()]
        if not any(m in present for m in ("normal", "mask", "image")):
            raise InputError("scene has no normal/, mask/ or image/ folder", path)
        for view in scene.views:
            _load_view(path, view, present, scene.normal_space)
    return scene


def _read_scene_json(path: Path) -> Scene:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot parse JSON ({exc})", path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f'not a zerolevel scene (expected "format": "{FORMAT}")', path)
    if data.get("version") != VERSION:
        raise InputError(f"unsupported version {data.get('version')!r} (this reader knows {VERSION})", path)
    space = data.get("normal_space", "world")
    if space not in ("world", "camera"):
        raise InputError(f'normal_space must be "world" or "camera", got {space!r}', path)
    to_world = check_similarity(_matrix(data, "to_world", (4, 4), path), path, "to_world")
    views = data.get("views")
    if not isinstance(views, list) or not views:
        raise InputError('"views" must be a non-empty list', path)
    parsed = [_parse_view(entry, i, path) for i, entry in enumerate(views)]
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise InputError("view names are not unique", path)
    return Scene(parsed, to_world, space)


def _matrix(data: dict, key: str, shape: tuple, path, where: str = "") -> np.ndarray:
    if key not in data:
        raise InputError(f"{where}missing key {key!r}", path)
    try:
        M = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}{key} is not a numeric matrix", path) from None
    if M.shape != shape:
        raise InputError(f"{where}{key} must be {shape[0]}x{shape[1]}, got shape {M.shape}", path)
    if not np.all(np.isfinite(M)):
        raise InputError(f"{where}{key} has non-finite entries", path)
    return M


def _parse_view(entry: Any, i: int, path: Path) -> View:
    where = f"view {i}: "
    if not isinstance(entry, dict):
        raise InputError(f"{where}must be an object", path)
    name = entry.get("name")
    if not isinstance(name, str) or not name or not re.fullmatch(r"[\w.\-]+", name):
        raise InputError(f"{where}name must be a non-empty file stem, got {name!r}", path)
    where = f"view {name!r}: "
    size = [entry.get("width"), entry.get("height")]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise InputError(f"{where}width and height must be positive integers, got {size}", path)
    K = _matrix(entry, "K", (3, 3), path, where)
    W2C = _matrix(entry, "world_to_camera", (4, 4), path, where)
    check_camera(K, W2C, path, where)
    light = entry.get("light")
    if light is not None and not _valid_light(light):
        raise InputError(f'{where}light must be {{"direction": [x, y, z], "intensity": number}}', path)
    return View(name, K, W2C, size[0], size[1], light=light)


def check_camera(K: np.ndarray, world_to_camera: np.ndarray, path=None, where: str = "") -> None:
    """Raise `InputError` unless K is a finite pinhole matrix and world_to_camera a rigid [R|t]."""
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(world_to_camera))):
        raise InputError(f"{where}camera has non-finite entries", path)
    tiny = 1e-9 * max(abs(K[0, 0]), abs(K[1, 1]), 1.0)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]) or abs(K[1, 0]) > tiny:
        raise InputError(f"{where}K must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0", path)
    R = world_to_camera[:3, :3]
    if (np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0
            or not np.allclose(world_to_camera[3], [0, 0, 0, 1])):
        raise InputError(f"{where}world_to_camera is not a rigid [R|t] (R must be a rotation)", path)


def _valid_light(light: Any) -> bool:
    if not isinstance(light, dict) or "direction" not in light:
        return False
    try:
        d = np.asarray(light["direction"], dtype=np.float64)
        intensity = float(light.get("intensity", 1.0))
    except (TypeError, ValueError):
        return False
    return d.shape == (3,) and np.all(np.isfinite(d)) and np.linalg.norm(d) > 0 and np.isfinite(intensity)


def _find_file(folder: Path, name: str, modality: str) -> Path:
    for ext in _EXTENSIONS[modality]:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    raise InputError(f"missing {modality} file for view {name!r} (the {modality}/ folder is present)",
                     folder / f"{name}{_EXTENSIONS[modality][0]}")


def _load_view(root: Path, view: View, present: list[str], normal_space: str) -> None:
    """Fill a view's arrays from the scene folder, validating each against the declared size."""
    files = {m: _find_file(root / m, view.name, m) for m in present}
    size = (view.height, view.width)
    if "mask" in files:
        view.mask = check_sees_object(_check_size(read_mask(files["mask"]), size, files["mask"], view),
                                      files["mask"])
    if "image" in files:
        view.image = _check_size(read_image(files["image"]), size, files["image"], view)
    if "depth" in files:
        view.depth = _check_size(read_depth(files["depth"]), size, files["depth"], view)
    if "normal" in files:
        raw = _check_size(read_normal_map(files["normal"]), size, files["normal"], view)
        normal = validate_normals(raw, view.mask, files["normal"])
        check_sees_object(np.any(normal != 0, axis=-1), files["normal"])
        if normal_space == "camera":
            normal = (normal @ view.R.astype(np.float32)).astype(np.float32)  # R^T n per pixel
        view.normal = normal


def check_sees_object(foreground: np.ndarray, path: Path) -> np.ndarray:
    """Raise `InputError` when a view's (H, W) foreground is empty: its camera sees none of the object."""
    if not foreground.any():
        raise InputError("no foreground pixel: this camera sees none of the object", path)
    return foreground


def _check_size(array: np.ndarray, size: tuple[int, int], path: Path, view: View) -> np.ndarray:
    if array.shape[:2] != size:
        what = path.parent.name.replace("normal", "normal map")
        raise InputError(f"{what} is {array.shape[1]}x{array.shape[0]} but scene.json declares view "
                         f"{view.name!r} as {size[1]}x{size[0]}", path)
    return array


def validate_normals(normal: np.ndarray, mask: np.ndarray | None, path=None) -> np.ndarray:
    """Check and clean a decoded normal map.

    Args:
        normal: (H, W, 3) float decoded vectors.
        mask: (H, W) bool foreground, or None (then the foreground is every non-background pixel).
    Returns:
        (H, W, 3) float32 unit vectors on the foreground, 0 elsewhere (and at foreground pixels
        with a background vector).
    Raises:
        InputError: NaN/inf, or more than 1% of foreground pixels off unit length by over 0.1.
    """
    if not np.all(np.isfinite(normal)):
        raise InputError("normal map has NaN or infinite values", path)
    length = np.linalg.norm(normal, axis=-1)
    background = length < BACKGROUND_LENGTH
    foreground = ~background if mask is None else mask
    count = int(foreground.sum())
    bad = foreground & (np.abs(length - 1) > UNIT_TOLERANCE)
    if count and bad.sum() > BAD_FRACTION * count:
        raise InputError(f"normal map is not unit length at {bad.sum() / count:.1%} of the "
                         f"{'mask' if mask is not None else 'foreground'} pixels (median |n| = "
                         f"{np.median(length[bad]):.3f}); expected rgb = (n + 1) / 2 of unit normals", path)
    keep = foreground & ~background
    out = np.zeros(normal.shape, dtype=np.float32)
    out[keep] = normal[keep] / length[keep][:, None]
    return out


def transform_normals(normal: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 3) normals as rows times a 3x3 `matrix` (n -> M^T n), renormalised to unit length, zero
    vectors (background) kept zero; float32. A linear map L of points moves normals by L^-T, i.e.
    matrix = L^-1: into working space (L = A^-1, A the linear part of `to_world`) the importers pass
    A, back to the input's units (L = A) the exporters pass A^-1."""
    out = np.asarray(normal, dtype=np.float64) @ np.asarray(matrix, dtype=np.float64)
    length = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.where(length > 0, out / np.maximum(length, 1e-300), 0.0).astype(np.float32)


# ====================================================================== writing modalities
def _write_modality(folder: Path, view: View, modality: str, normal_format: str,
                    normal_space: str) -> None:
    array = getattr(view, modality)
    if modality == "normal":
        normal = np.asarray(array, dtype=np.float64)
        if normal_space == "camera":
            normal = normal @ view.R.T  # n_cam = R n_world per pixel
        if normal_format == "npy":
            np.save(folder / f"{view.name}.npy", normal.astype(np.float32))
        else:
            write_normal_png(folder / f"{view.name}.png", normal)
    elif modality == "mask":
        write_mask(folder / f"{view.name}.png", array)
    elif modality == "image":
        write_image(folder / f"{view.name}.png", array)
    else:
        np.save(folder / f"{view.name}.npy", np.asarray(array, dtype=np.float32))
