"""Building a dataset folder: each object rendered into its cached part (images, normal maps,
voxels; skipped when the cached key matches, so a rerun resumes), in worker processes when there are
many, then the split arrays assembled and dataset.json written last."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import trimesh
from tqdm import tqdm

from ...atomic import atomic_path, write_json
from ...cameras import Cameras
from ...errors import InputError
from .folder import FORMAT, NORMALS, PARTS, VERSION, mesh_path, part_path
from .settings import LIGHTINGS, VOXEL_BOUNDS, VOXEL_RULE, DatasetSettings
from .sources import ObjectSource, check_sources
from .splits import DEFAULT_FRACTIONS, check_fractions, split_objects
from .views import object_lighting, render_object


@dataclass
class WriteSummary:
    """What `write_dataset` did: the dataset.json it wrote, objects rendered now and reused from the cache."""

    info: dict
    rendered: int
    reused: int
    seconds: float


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
    check_sources(sources)
    created = not root.exists()
    if not created and any(root.iterdir()) and not ((root / "dataset.json").exists() or (root / PARTS).exists()):
        raise InputError("exists and is not a dataset folder: choose a new or empty folder", root)
    start = time.perf_counter()
    try:
        (root / "dataset.json").unlink(missing_ok=True)  # unfinished from here until the end
        todo = [s for s in sources if not _part_done(root, s, settings)]
        build_parts(build_part, root, todo, settings, workers, progress, len(sources))
        splits = split_objects(sources, fractions, seed)
        info = _assemble(root, splits, settings, seed, source_info)
    except InputError:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return WriteSummary(info, len(todo), len(sources) - len(todo), time.perf_counter() - start)


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
    lighting = object_lighting(settings.lighting, source.id, cameras)
    images, normals, occupancy = render_object(mesh, cameras, settings.supersample, settings.voxels,
                                               source.crease_deg, lighting)
    with atomic_path(mesh_path(root, source.id)) as tmp:
        mesh.export(tmp, file_type="ply", vertex_normal=False)
    with atomic_path(part_path(root, source.id)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, normals=normals, voxels=occupancy,
                                key=np.array(_part_key(source, settings)))
    return time.perf_counter() - start


def _part_key(source: ObjectSource, settings: DatasetSettings) -> str:
    """What a part's content depends on; the folder version too, so older parts (no normals) are redone."""
    return json.dumps({"source": source.key(), "settings": asdict(settings), "light": LIGHTINGS[settings.lighting],
                       "voxels": VOXEL_RULE, "version": VERSION}, sort_keys=True)


def _part_done(root: Path, source: ObjectSource, settings: DatasetSettings) -> bool:
    """True when the object's cached part and mesh exist and were made from the same key."""
    return mesh_path(root, source.id).is_file() and part_matches(part_path(root, source.id),
                                                                 _part_key(source, settings))


def part_matches(path: Path, key: str) -> bool:
    """True when the cached part `path` exists, reads, and was made from `key`."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as part:
            return str(part["key"]) == key
    except Exception:  # a damaged cache file is simply redone
        return False


def build_parts(build: Callable[[Path, ObjectSource, object], float], root: Path, todo: Sequence[ObjectSource],
                settings: object, workers: int, progress: bool, total: int) -> None:
    """`build(root, source, settings)` for each missing part, in this process or (many objects,
    workers > 1) in a process pool; `build` must be a module-level function (it is pickled)."""
    bar = tqdm(total=total, initial=total - len(todo), desc="dataset", unit="obj", disable=not progress)
    try:
        if workers <= 1 or len(todo) < 4 * workers:
            for source in todo:
                build(root, source, settings)
                bar.update(1)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(build, root, source, settings) for source in todo]
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


def assemble_splits(root: Path, splits: dict[str, list[ObjectSource]], arrays: dict[str, tuple]) -> None:
    """Each split's arrays (name -> (dtype, shape after N)) and objects.json from the objects' cached
    parts, then the meshes of objects in no split removed."""
    for name, members in splits.items():
        folder = root / name
        for array, (dtype, item_shape) in arrays.items():  # one output open at a time; np.load reads one member
            with atomic_path(folder / f"{array}.npy") as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(members), *item_shape))
                for i, source in enumerate(members):
                    with np.load(part_path(root, source.id)) as part:
                        out[i] = part[array]
                out.flush()
                del out
        write_json(folder / "objects.json", [{"id": s.id, "category": s.category} for s in members])
    keep = {f"{s.id}.ply" for members in splits.values() for s in members}
    for path in (root / "meshes").glob("*.ply"):
        if path.name not in keep:
            path.unlink()


def _assemble(root: Path, splits: dict[str, list[ObjectSource]], settings: DatasetSettings, seed: int,
              source_info: dict | None) -> dict:
    """Write each split's arrays and object list from the parts, drop stale meshes, then dataset.json."""
    V, R, n = settings.views, settings.resolution, settings.voxels
    assemble_splits(root, splits, {"images": (np.uint8, (V, R, R, 4)), "normals": (np.int8, (V, R, R, 3)),
                                   "voxels": (bool, (n, n, n))})
    categories = list(dict.fromkeys(s.category for members in splits.values() for s in members))
    info = {"format": FORMAT, "version": VERSION, "views": V, "resolution": R,
            "elevation": settings.elevation, "distance": settings.distance, "fov": settings.fov,
            "voxels": n, "voxelization": VOXEL_RULE, "supersample": settings.supersample,
            "lighting": settings.lighting, "light": LIGHTINGS[settings.lighting], "normals": NORMALS,
            "voxel_bounds": VOXEL_BOUNDS.tolist(), "categories": sorted(categories),
            "splits": {name: len(members) for name, members in splits.items()}, "seed": int(seed),
            "source": source_info or {}}
    write_json(root / "dataset.json", info)
    return info
