"""Importers: other multi-view layouts turned into zerolevel scenes, and `load_scene`, which reads
a scene folder or any layout imported here.

`import_neus` reads the NeuS / IDR layout that SuperNormal uses (`cameras_sphere.npz`, world-space
EXR normals, masks); `import_middlebury` reads a Middlebury multi-view sequence (`*_par.txt`
cameras, RGB images on black), with silhouettes by thresholding and a visual hull for the
normalisation into the unit sphere.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .cameras import Cameras
from .errors import InputError
from .images import read_image, read_mask, read_normal_map
from .geometry.visual_hull import hull_silhouettes, visual_hull_points
from .scene import (Scene, View, check_camera, check_sees_object, check_similarity, normalize_scene,
                    read_scene, transform_normals, validate_normals)


def load_scene(path: str | Path, load_images: bool = True) -> Scene:
    """Read a zerolevel scene folder, or import a NeuS folder (detected by its
    `cameras_sphere.npz`; `load_images` does not apply to it). InputError naming the file on
    anything missing or malformed."""
    path = Path(path)
    if path.is_dir() and not (path / "scene.json").is_file() and (path / "cameras_sphere.npz").is_file():
        return import_neus(path)
    return read_scene(path, load_images=load_images)


# ====================================================================== NeuS / IDR / SuperNormal
def import_neus(src: str | Path, normal_dir: str | None = None) -> Scene:
    """Import a NeuS/IDR-layout folder (SuperNormal's DiLiGenT-MV data).

    Layout: `cameras_sphere.npz` with `world_mat_i` (K[R|t], world -> pixels) and `scale_mat_i`
    (unit sphere -> world, the same for all i); `normal_world_space_*/NN.exr` world-space float
    normals (background 0; `normal_dir` picks the folder, `normal_world_space_GT` by default when
    several exist); `mask/NN.png`; optional `image/NN.png`. File stems are camera indices as in
    SuperNormal's loader; views are those with a normal map (or a mask, or every camera).

    Pixel convention: NeuS and SuperNormal cast rays through integer pixel coordinates, so their
    K has the pixel *centre* of column j at u = j; ours has it at j + 0.5, hence cx, cy += 0.5.
    (Checked on the bundled data: rays through our pixel centres reproduce the masks exactly.)
    Normals go to working space as n_work ~ A^T n_world, A the linear part of `to_world`.
    """
    root = Path(src)
    npz_path = root / "cameras_sphere.npz"
    if not npz_path.is_file():
        raise InputError("no cameras_sphere.npz here: not a NeuS folder", root)
    mats = _read_neus_cameras(npz_path)
    folders = {"normal": _neus_normal_dir(root, normal_dir), "mask": root / "mask",
               "image": root / "image"}
    files = {m: _indexed_files(f, m) for m, f in folders.items() if f is not None and f.is_dir()}
    if not files:
        raise InputError("no normal_world_space_*/, mask/ or image/ folder", root)
    order = sorted(next(files[m] for m in ("normal", "mask", "image") if m in files))
    to_world = _neus_to_world(mats, order, npz_path)
    A = to_world[:3, :3]
    views = []
    for index in order:
        if index not in mats:
            raise InputError(f"no world_mat_{index} for view {index}", npz_path)
        views.append(_neus_view(index, mats[index][0] @ to_world, files, A))
    _check_same_size(views, root)
    return Scene(views, to_world)


def _read_neus_cameras(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in data.files}
    except Exception as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    mats = {}
    for key, world in arrays.items():
        match = re.fullmatch(r"world_mat_(\d+)", key)
        if not match:
            continue
        i = int(match.group(1))
        scale = arrays.get(f"scale_mat_{i}", np.eye(4))
        if world.shape not in ((4, 4), (3, 4)) or scale.shape != (4, 4):
            raise InputError(f"world_mat_{i} / scale_mat_{i} must be 4x4", path)
        if not (np.all(np.isfinite(world)) and np.all(np.isfinite(scale))):
            raise InputError(f"world_mat_{i} / scale_mat_{i} have non-finite entries", path)
        W = np.eye(4)
        W[:world.shape[0]] = world
        mats[i] = (W, scale)
    if not mats:
        raise InputError("no world_mat_i arrays", path)
    return mats


def _neus_normal_dir(root: Path, normal_dir: str | None) -> Path | None:
    if normal_dir is not None:
        folder = root / normal_dir
        if not folder.is_dir():
            raise InputError("no such normal folder", folder)
        return folder
    candidates = sorted(p for p in root.glob("normal_world_space*") if p.is_dir())
    camera_space = sorted(p.name for p in root.glob("normal_camera_space*") if p.is_dir())
    if not candidates and camera_space:
        raise InputError(f"only camera-space normals {camera_space}: their axis convention is not "
                         "defined by the layout; provide world-space normals (normal_world_space_*)", root)
    if len(candidates) > 1 and (root / "normal_world_space_GT").is_dir():
        return root / "normal_world_space_GT"
    if len(candidates) > 1:
        raise InputError(f"several normal folders {[p.name for p in candidates]}; choose one "
                         "with normal_dir", root)
    return candidates[0] if candidates else None


def _indexed_files(folder: Path, modality: str) -> dict[int, Path]:
    """{camera index: file} from files named by their index (00.exr, 000.png, ...)."""
    exts = {"normal": (".exr", ".png", ".npy"), "mask": (".png",), "image": (".png", ".jpg")}[modality]
    files = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in exts and p.is_file():
            if not p.stem.isdigit():
                raise InputError(f"{modality} files must be named by camera index (e.g. 00{p.suffix})", p)
            files.setdefault(int(p.stem), p)
    if not files:
        raise InputError(f"no {'/'.join(exts)} files in the {modality} folder", folder)
    return files


def _neus_to_world(mats: dict, order: list[int], path: Path) -> np.ndarray:
    used = [mats[i][1] for i in order if i in mats]
    if not used:
        raise InputError("no camera matches the image files", path)
    for S in used[1:]:
        if not np.allclose(S, used[0], rtol=1e-6, atol=1e-9 * np.abs(used[0]).max()):
            raise InputError("scale_mat_i differ between views; zerolevel needs one normalisation",
                             path)
    return check_similarity(used[0], path, "scale_mat")


def _neus_view(index: int, P: np.ndarray, files: dict, A: np.ndarray) -> View:
    """One view from the working-space projection P = world_mat @ scale_mat and the index's files."""
    paths = {}
    for modality, by_index in files.items():
        if index not in by_index:
            example = next(iter(by_index.values()))
            expected = example.with_name(str(index).zfill(len(example.stem)) + example.suffix)
            raise InputError(f"missing {modality} file for camera {index}", expected)
        paths[modality] = by_index[index]
    mask = check_sees_object(read_mask(paths["mask"]), paths["mask"]) if "mask" in paths else None
    image = read_image(paths["image"]) if "image" in paths else None
    normal = None
    if "normal" in paths:
        normal = read_normal_map(paths["normal"])
        if mask is not None and normal.shape[:2] != mask.shape:
            raise InputError(f"normal map is {normal.shape[1]}x{normal.shape[0]} but the mask is "
                             f"{mask.shape[1]}x{mask.shape[0]}", paths["normal"])
        normal = transform_normals(validate_normals(normal, mask, paths["normal"]), A)
    shape = next(a.shape[:2] for a in (normal, mask, image) if a is not None)
    if image is not None and image.shape[:2] != shape:
        raise InputError(f"image is {image.shape[1]}x{image.shape[0]}, other maps are "
                         f"{shape[1]}x{shape[0]}", paths["image"])
    try:
        cam = Cameras.from_projection(P[:3], shape[1], shape[0], dtype=torch.float64)
    except ValueError as exc:
        raise InputError(f"camera {index}: {exc}", next(iter(paths.values()))) from None
    K = cam.K[0].numpy().copy()
    if abs(K[0, 1]) < 1e-9 * K[0, 0]:
        K[0, 1] = 0.0  # round-off skew from the RQ decomposition
    K[0, 2] += 0.5  # NeuS: pixel centre of column j at u = j; ours at j + 0.5
    K[1, 2] += 0.5
    name = next(iter(paths.values())).stem if paths else f"{index:03d}"
    return View(name, K, cam.world_to_camera[0].numpy().copy(), shape[1], shape[0],
                normal=normal, mask=mask, image=image)


def _check_same_size(views: list[View], root: Path) -> None:
    sizes = sorted({(v.width, v.height) for v in views})
    if len(sizes) != 1:
        raise InputError(f"views have different image sizes {sizes}", root)


# ====================================================================== Middlebury multi-view
def import_middlebury(src: str | Path, threshold: float = 0.1, grid: int = 64) -> Scene:
    """Import a Middlebury multi-view folder (`*_par.txt` + images on a black background).

    Each `_par.txt` line is `name k11..k33 r11..r33 t1 t2 t3` with P = K[R|t]. Middlebury's pixel
    convention is assumed to be the same as NeuS's (integer pixel centres), so cx, cy += 0.5.
    Silhouettes come from thresholding the brightest channel at `threshold` (on [0, 1]) with a small
    morphological clean-up (`silhouette`); a visual hull carved from them on a `grid`^3 grid around
    the point nearest to all optical axes then (1) removes mask pixels whose rays miss the hull
    (background cloth that survives the threshold in single views) and (2) gives the bounding
    sphere that is mapped to radius 0.9 of working space; `to_world` maps back to Middlebury units.

    The default threshold 0.1 (README suggests 0.19) keeps the dark, shadowed parts of the
    dinosaur: at 0.19 its visual hull misses ~6 mm of the object's published bounding box. The
    temple's grey cloth-covered support is a real object seen by every view, so it passes both the
    threshold and the hull and stays in the masks near the temple; a threshold of 0.19-0.22 drops
    it (at the cost of dark parts of objects like the dinosaur).
    """
    par = _find_par_file(Path(src))
    entries = _parse_par(par)
    views = []
    for name, K, W2C in entries:
        image = read_image(par.parent / name)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        K = K.copy()
        K[0, 2] += 0.5  # integer pixel centres in Middlebury -> ours at integer + 0.5
        K[1, 2] += 0.5
        views.append(View(Path(name).stem, K, W2C, image.shape[1], image.shape[0],
                          mask=check_sees_object(silhouette(image, threshold), par.parent / name),
                          image=image))
    _check_same_size(views, par.parent)
    P = np.stack([v.K @ v.world_to_camera[:3] for v in views])
    masks = np.stack([v.mask for v in views])
    points, voxel = visual_hull_points(P, masks, grid)
    if len(points) == 0:
        raise InputError("the silhouettes share no visual hull: check the threshold", par)
    for view, mask in zip(views, hull_silhouettes(P, points, voxel, masks)):
        view.mask = check_sees_object(mask, par.parent / f"{view.name}.png")
    lo, hi = points.min(0) - voxel / 2, points.max(0) + voxel / 2
    center = (lo + hi) / 2
    radius = np.linalg.norm(points - center, axis=1).max() + np.sqrt(3) / 2 * voxel
    return normalize_scene(Scene(views, np.eye(4)), center, radius / 0.9)


def _find_par_file(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise InputError("no such folder", src)
    found = sorted(src.glob("*_par.txt"))
    if len(found) != 1:
        raise InputError(f"expected one *_par.txt camera file, found {len(found)}", src)
    return found[0]


def _parse_par(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(image name, K (3, 3), world_to_camera (4, 4))] from a Middlebury `_par.txt`."""
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        count = int(lines[0][0])
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        raise InputError("not a Middlebury camera file (first line must be the view count)", path) from None
    if count < 1 or len(lines) - 1 < count:
        raise InputError(f"declares {count} views but has {len(lines) - 1} camera lines", path)
    entries = []
    for number, fields in enumerate(lines[1:count + 1], start=2):
        try:
            values = np.array([float(f) for f in fields[1:]])
        except ValueError:
            values = np.empty(0)
        if len(fields) != 22 or values.shape != (21,):
            raise InputError(f"line {number}: expected 'name k11..k33 r11..r33 t1 t2 t3'", path)
        W2C = np.eye(4)
        W2C[:3, :3], W2C[:3, 3] = values[9:18].reshape(3, 3), values[18:21]
        K = values[:9].reshape(3, 3)
        check_camera(K, W2C, path, f"line {number}: ")
        entries.append((fields[0], K, W2C))
    return entries


def _box_close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Closing by a (2r+1)^2 square (separable, so fast); the image border does not erode."""
    size = 2 * radius + 1
    grown = ndimage.maximum_filter(mask, size=size, mode="constant", cval=False)
    return ndimage.minimum_filter(grown, size=size, mode="nearest")


def _box_open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Opening by a (2r+1)^2 square: removes specks thinner than the square."""
    size = 2 * radius + 1
    shrunk = ndimage.minimum_filter(mask, size=size, mode="nearest")
    return ndimage.maximum_filter(shrunk, size=size, mode="constant", cval=False)


def silhouette(image: np.ndarray, threshold: float = 0.1, close: int = 5, open_: int = 2,
               max_hole: float = 0.0035) -> np.ndarray:
    """(H, W) bool foreground of an object on a dark background.

    Brightest channel > threshold, then a closing (square of half-width `close`) to bridge dark
    creases, filling of holes smaller than `max_hole` of the image area (shadows on the object;
    larger holes are kept: they are see-through gaps such as between the temple's columns), and an
    opening (square of half-width `open_`) to drop specks.
    """
    bright = image.max(-1) if image.ndim == 3 else image
    mask = bright > threshold
    mask = _box_close(mask, close)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n:
        sizes = ndimage.sum(holes, labels, np.arange(1, n + 1))
        small = np.concatenate([[False], sizes < max_hole * mask.size])
        mask |= small[labels]
    return _box_open(mask, open_)
