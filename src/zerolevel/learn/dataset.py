"""The dataset folder for single-view learning: write it from many objects, read one split of it.

Its one job: turn a collection of objects (procedural shapes from `zerolevel.learn.shapes`, or mesh
files) into the folder of DESIGN.md — every object rendered from the same ring of cameras, with
32^3 occupancy voxels and the normalised mesh kept for evaluation, split into train / val / test by
object — and give it back to training code as memory-mapped arrays (`load_split`).

    sources = generated_sources(["chair", "table"], count=100, seed=0)
    write_dataset("chairs_tables", sources)                 # resumable; progress bar
    train = load_split("chairs_tables", "train")            # DatasetSplit: images, voxels, cameras

The folder:

    DATASET/
      dataset.json          {"format": "zerolevel-dataset", "version": 1, "views", "resolution",
                             "elevation", "distance", "fov", "voxels", "light", "categories",
                             "splits": {"train": N, "val": N, "test": N}, "seed", "source", ...}
      train/images.npy      (N, V, H, W, 4) uint8 RGBA     (np.save format: np.load(mmap_mode="r"))
      train/voxels.npy      (N, n, n, n) bool, n = 32
      train/objects.json    [{"id": "chair_00012", "category": "chair"}, ...]   (array order)
      val/..., test/...
      meshes/<id>.ply       the normalised mesh (evaluation only)
      .parts/<id>.npz       per-object cache (images, voxels, and the key that made them)

Conventions:
- Objects are normalised like ShapeNet: bounding-box centre at the origin, bounding-box diagonal 1
  (inside [-0.5, 0.5]^3), y up, front towards -z; mesh files are taken to be oriented that way.
- Cameras: `Cameras.ring(views, elevation, distance, fov, resolution, resolution)`, by default
  SoftRas's 24 azimuths 15 degrees apart from the front (-z), elevation 30 degrees, distance 2.732,
  field of view 30 degrees, 64x64 (`DatasetSplit.cameras`).
- Image: A = anti-aliased coverage * 255 (`supersample` x `supersample` rays per pixel); RGB = grey
  Lambertian shading under a headlight (a directional light from each camera along its axis,
  intensity 0.7) plus ambient 0.3, premultiplied by coverage, i.e. composited on black. Smooth
  normals (creases kept above 60 degrees for mesh files; generated marching-cubes meshes have none).
- Voxels: the published single-view protocol's voxelisation (Kato et al.'s, which SoftRas scores
  with; `zerolevel.geometry.occupancy.solid_voxels`) on an n^3 grid over [-0.5, 0.5]^3, indexed [x, y, z]: the
  cells the surface passes through and the cells they enclose, so thin parts keep their cells.
- Splits are drawn per category, deterministically from the seed (every category is in every split
  once it has at least three objects); within a split, objects keep the order they were given in.

Resumable and atomic: each object is rendered into `.parts/<id>.npz` and `meshes/<id>.ply`, written
atomically; a rerun skips objects whose part holds the same key (the object's source and the render
settings). The split arrays are assembled at the end, and `dataset.json` is written last: a folder
without it is an unfinished dataset, which `load_split` refuses.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from tqdm import tqdm

from ..atomic import atomic_path, write_json
from ..cameras import Cameras
from ..errors import InputError
from ..geometry.mesh import load_mesh
from ..geometry.occupancy import solid_voxels
from ..render.lights import DirectionalLight
from ..render.raycast import MeshRayCaster
from . import shapes

FORMAT = "zerolevel-dataset"
VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
# The lighting of every image (dataset.json "light").
LIGHT = {"type": "headlight", "intensity": 0.7, "ambient": 0.3, "albedo": [1.0, 1.0, 1.0],
         "rgb": "premultiplied by alpha (black background)"}
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")  # what a MESHES folder is searched for
VOXEL_BOUNDS = np.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])
VOXEL_RULE = "surface cells + enclosed (Kato et al.)"  # in the cache key: parts voxelised otherwise are redone
PARTS = ".parts"


@dataclass(frozen=True)
class DatasetSettings:
    """How every object is rendered and voxelised (DESIGN.md defaults: SoftRas's rendered ShapeNet).

    Attributes:
        views: cameras on the ring (azimuths 360 / views degrees apart, the first at the front, -z).
        resolution: image width and height in pixels.
        elevation, fov: degrees; distance: camera distance to the origin (object diagonal = 1).
        voxels: occupancy grid cells per axis over [-0.5, 0.5]^3.
        supersample: s x s rays per pixel for the anti-aliased alpha (and shading).
    """

    views: int = 24
    resolution: int = 64
    elevation: float = 30.0
    distance: float = 2.732
    fov: float = 30.0
    voxels: int = 32
    supersample: int = 2

    def __post_init__(self) -> None:
        for name in ("views", "resolution", "voxels", "supersample"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if not 0 < self.fov < 180 or self.distance <= 0:
            raise InputError(f"need 0 < fov < 180 and distance > 0, got fov {self.fov}, distance {self.distance}")

    def cameras(self) -> Cameras:
        """The `views` ring cameras every object is seen from."""
        return Cameras.ring(n_views=self.views, elevation_deg=self.elevation, distance=self.distance,
                            fov_deg=self.fov, width=self.resolution, height=self.resolution)


@dataclass(frozen=True)
class ObjectSource:
    """One object of a dataset: a generated shape (`seed` set) or a mesh file (`path` set)."""

    id: str
    category: str
    seed: int | None = None
    path: str | None = None

    def mesh(self) -> trimesh.Trimesh:
        """The object normalised to unit bounding-box diagonal, centred (InputError for a bad file)."""
        if self.path is None:
            return shapes.generate(self.category, self.seed)
        return shapes.normalize_unit_diagonal(load_mesh(self.path))

    def key(self) -> dict:
        """What the object's content depends on: the generator's version and seed, or the file's identity."""
        if self.path is None:
            return {"category": self.category, "seed": self.seed, "generator": shapes.GENERATOR_VERSION}
        stat = Path(self.path).stat()
        return {"path": str(Path(self.path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    @property
    def crease_deg(self) -> float | None:
        """Smooth-shading crease angle: none for marching-cubes meshes, 60 degrees for mesh files."""
        return None if self.path is None else 60.0


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
        return self.root / "meshes" / f"{self.ids[index]}.ply"


@dataclass
class WriteSummary:
    """What `write_dataset` did: the dataset.json it wrote, objects rendered now and reused from the cache."""

    info: dict
    rendered: int
    reused: int
    seconds: float


# --------------------------------------------------------------------------------------------
# Sources


def generated_sources(categories: Sequence[str], count: int, seed: int = 0) -> list[ObjectSource]:
    """`count` procedural objects per category (`shapes.object_specs`); InputError for an unknown category."""
    return [ObjectSource(spec.object_id, spec.category, seed=spec.seed)
            for spec in shapes.object_specs(categories, count, seed)]


def mesh_sources(paths: Iterable[str | Path]) -> list[ObjectSource]:
    """One object per mesh file; folders are searched recursively for `MESH_SUFFIXES` files.

    Category: the name of the file's parent folder ("mesh" for a bare file name such as `bunny.ply`).
    Id: `<category>_<file stem>`, made filename-safe, with `_2`, `_3`, ... against repeats.
    Raises InputError for a missing path or a folder without mesh files (nothing is read yet).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"no mesh files ({', '.join(MESH_SUFFIXES)}) in this folder", path)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("no such file or folder", path)
    sources, taken = [], set()
    for path in files:
        category = _safe_name(path.parent.name) or "mesh"
        base = _safe_name(f"{category}_{path.stem}")
        object_id, k = base, 1
        while object_id in taken:
            k += 1
            object_id = f"{base}_{k}"
        taken.add(object_id)
        sources.append(ObjectSource(object_id, category, path=str(path)))
    return sources


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")


# --------------------------------------------------------------------------------------------
# Splits


def split_counts(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """How many of n objects go to train, val and test.

    val and test get round(n * fraction); when n >= 3 every split with a positive fraction gets at
    least one object (taken from the largest); train gets the rest.
    """
    f_train, f_val, f_test = fractions
    counts = [0, int(round(n * f_val)), int(round(n * f_test))]
    counts[0] = n - counts[1] - counts[2]
    if n >= 3:
        for k, f in enumerate(fractions):
            if f > 0 and counts[k] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[k] = 1
    return counts[0], counts[1], counts[2]


def split_objects(sources: Sequence[ObjectSource], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, list[ObjectSource]]:
    """Train / val / test by object, drawn per category from `seed`; each split keeps the input order."""
    fractions = check_fractions(fractions)
    split_of = {}
    categories = list(dict.fromkeys(s.category for s in sources))
    for category in categories:
        members = [i for i, s in enumerate(sources) if s.category == category]
        order = np.random.default_rng([int(seed), zlib.crc32(category.encode())]).permutation(len(members))
        n_train, n_val, _ = split_counts(len(members), fractions)
        for rank, j in enumerate(order):
            split_of[members[j]] = 0 if rank < n_train else 1 if rank < n_train + n_val else 2
    return {name: [s for i, s in enumerate(sources) if split_of[i] == k] for k, name in enumerate(SPLITS)}


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) fractions: three non-negative numbers summing to 1 (InputError otherwise)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise InputError(f"splits must be three fractions train,val,test >= 0 summing to 1 with train > 0, "
                         f"got {','.join(map(str, fractions))}")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# One object


def render_object(mesh: trimesh.Trimesh | MeshRayCaster, cameras: Cameras, supersample: int = 2,
                  voxels: int = 32, crease_deg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's images and voxels of one normalised object.

    Args:
        mesh: the object in dataset units (inside [-0.5, 0.5]^3), or a `MeshRayCaster` of it.
        cameras: V cameras of one size H x W.
        supersample: s x s rays per pixel.
        voxels: n, cells per axis of the occupancy grid over [-0.5, 0.5]^3.
        crease_deg: smooth-shading crease angle when a mesh is given (see `MeshRayCaster`).
    Returns:
        images (V, H, W, 4) uint8: RGB = round(255 * shading * coverage), A = round(255 * coverage),
        lit as `LIGHT` says; voxels (n, n, n) bool indexed [x, y, z].
    """
    caster = mesh if isinstance(mesh, MeshRayCaster) else MeshRayCaster(mesh, crease_deg=crease_deg)
    return render_rgba(caster, cameras, supersample), solid_voxels(caster.mesh, VOXEL_BOUNDS, voxels)


def render_rgba(caster: MeshRayCaster, cameras: Cameras, supersample: int = 2) -> np.ndarray:
    """(V, H, W, 4) uint8 images of a mesh lit as the dataset's objects are (`LIGHT`, `render_object`)."""
    headlights = [DirectionalLight(d, LIGHT["intensity"]) for d in (-cameras.forward).double().numpy()]
    out = caster.render(cameras, supersample=supersample, lights=[[light] for light in headlights],
                        ambient=LIGHT["ambient"], albedo=1.0)
    rgba = np.empty(out["mask"].shape + (4,), dtype=np.uint8)
    rgba[..., :3] = _to_byte(out["image"][..., None] * np.asarray(LIGHT["albedo"], dtype=np.float32))
    rgba[..., 3] = _to_byte(out["mask"])
    return rgba


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _part_key(source: ObjectSource, settings: DatasetSettings) -> str:
    return json.dumps({"source": source.key(), "settings": asdict(settings), "light": LIGHT,
                       "voxels": VOXEL_RULE}, sort_keys=True)


def _part_path(root: Path, object_id: str) -> Path:
    return root / PARTS / f"{object_id}.npz"


def _mesh_path(root: Path, object_id: str) -> Path:
    return root / "meshes" / f"{object_id}.ply"


def _part_done(root: Path, source: ObjectSource, settings: DatasetSettings) -> bool:
    """True when the object's cached part and mesh exist and were made from the same key."""
    path = _part_path(root, source.id)
    if not (path.is_file() and _mesh_path(root, source.id).is_file()):
        return False
    try:
        with np.load(path) as part:
            return str(part["key"]) == _part_key(source, settings)
    except Exception:  # a damaged cache file is simply redone
        return False


_CAMERAS: dict[DatasetSettings, Cameras] = {}  # per process: the ring of each settings


def build_part(root: str | Path, source: ObjectSource, settings: DatasetSettings) -> float:
    """Make one object, render it, and write its part and mesh atomically; returns the seconds taken."""
    start = time.perf_counter()
    root = Path(root)
    if settings not in _CAMERAS:
        _CAMERAS[settings] = settings.cameras()
    cameras = _CAMERAS[settings]
    mesh = source.mesh()
    # PLY stores float32 vertices: render exactly the mesh that meshes/<id>.ply will hold
    mesh = trimesh.Trimesh(np.asarray(mesh.vertices, np.float32).astype(np.float64), mesh.faces, process=False)
    images, occupancy = render_object(mesh, cameras, settings.supersample, settings.voxels, source.crease_deg)
    with atomic_path(_mesh_path(root, source.id)) as tmp:
        mesh.export(tmp, file_type="ply", vertex_normal=False)
    with atomic_path(_part_path(root, source.id)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, voxels=occupancy, key=np.array(_part_key(source, settings)))
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# The whole folder


def write_dataset(root: str | Path, sources: Sequence[ObjectSource], settings: DatasetSettings = DatasetSettings(),
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0, workers: int = 1,
                  progress: bool = True, source_info: dict | None = None) -> WriteSummary:
    """Render `sources` into the dataset folder `root` (resumable), then assemble the splits.

    Objects whose cached part was made with the same source and settings are skipped. With
    `workers > 1` and enough objects left, objects are made in that many processes.
    `source_info` is recorded as dataset.json's "source". On bad input (InputError: a corrupt mesh
    file) a folder that this call created is removed again; an existing one keeps its cache.
    Returns a `WriteSummary`; dataset.json's contents are `summary.info`.
    """
    root = Path(root)
    fractions = check_fractions(fractions)
    _check_sources(sources)
    created = not root.exists()
    if not created and any(root.iterdir()) and not ((root / "dataset.json").exists() or (root / PARTS).exists()):
        raise InputError("exists and is not a dataset folder: choose a new or empty folder", root)
    start = time.perf_counter()
    try:
        (root / "dataset.json").unlink(missing_ok=True)  # unfinished from here until the end
        todo = [s for s in sources if not _part_done(root, s, settings)]
        _build_parts(root, todo, settings, workers, progress, len(sources))
        splits = split_objects(sources, fractions, seed)
        info = _assemble(root, splits, settings, seed, source_info)
    except InputError:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return WriteSummary(info, len(todo), len(sources) - len(todo), time.perf_counter() - start)


def _check_sources(sources: Sequence[ObjectSource]) -> None:
    if not sources:
        raise InputError("no objects to put in the dataset")
    ids = [s.id for s in sources]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise InputError(f"object ids must be unique, repeated: {', '.join(repeated[:5])}")
    bad = [i for i in ids if not i or _safe_name(i) != i]
    if bad:
        raise InputError(f"object ids must be file names ([A-Za-z0-9._-]), got {bad[0]!r}")


def _build_parts(root: Path, todo: Sequence[ObjectSource], settings: DatasetSettings, workers: int,
                 progress: bool, total: int) -> None:
    """Build the missing parts, in this process or (many objects, workers > 1) in a process pool."""
    bar = tqdm(total=total, initial=total - len(todo), desc="dataset", unit="obj", disable=not progress)
    try:
        if workers <= 1 or len(todo) < 4 * workers:
            for source in todo:
                build_part(root, source, settings)
                bar.update(1)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(build_part, root, source, settings) for source in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        bar.close()


def _worker_init() -> None:
    """One torch thread per worker process: the processes are the parallelism."""
    import torch

    torch.set_num_threads(1)


def _assemble(root: Path, splits: dict[str, list[ObjectSource]], settings: DatasetSettings, seed: int,
              source_info: dict | None) -> dict:
    """Write each split's arrays and object list from the parts, drop stale meshes, then dataset.json."""
    V, R, n = settings.views, settings.resolution, settings.voxels
    for name, members in splits.items():
        folder = root / name
        with atomic_path(folder / "images.npy") as images_tmp, atomic_path(folder / "voxels.npy") as voxels_tmp:
            images = np.lib.format.open_memmap(images_tmp, mode="w+", dtype=np.uint8, shape=(len(members), V, R, R, 4))
            voxels = np.lib.format.open_memmap(voxels_tmp, mode="w+", dtype=bool, shape=(len(members), n, n, n))
            for i, source in enumerate(members):
                with np.load(_part_path(root, source.id)) as part:
                    images[i], voxels[i] = part["images"], part["voxels"]
            images.flush()
            voxels.flush()
            del images, voxels
        write_json(folder / "objects.json", [{"id": s.id, "category": s.category} for s in members])
    keep = {f"{s.id}.ply" for members in splits.values() for s in members}
    for path in (root / "meshes").glob("*.ply"):
        if path.name not in keep:
            path.unlink()
    categories = list(dict.fromkeys(s.category for members in splits.values() for s in members))
    info = {"format": FORMAT, "version": VERSION, "views": V, "resolution": R,
            "elevation": settings.elevation, "distance": settings.distance, "fov": settings.fov,
            "voxels": n, "voxelization": VOXEL_RULE, "supersample": settings.supersample, "light": LIGHT,
            "voxel_bounds": VOXEL_BOUNDS.tolist(), "categories": sorted(categories),
            "splits": {name: len(members) for name, members in splits.items()}, "seed": int(seed),
            "source": source_info or {}}
    write_json(root / "dataset.json", info)
    return info


# --------------------------------------------------------------------------------------------
# Reading


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
