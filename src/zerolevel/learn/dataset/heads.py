"""The head dataset (`zerolevel dataset --generate heads`): photographs of generated heads, each from a
few random near-frontal cameras under random coloured lights over a random background, with what a
pixel-aligned implicit network (PHORHUM) is trained on: per view the albedo, the albedo of the back
surface, world-space normals, depth, the camera and the lights; per head the 3D sample sets of the
thesis, O (surface points with normals and albedo) and F (points near and far from the surface with
inside / outside labels and the albedo of the closest of 40k surface samples). Split by identity (one head,
one identity, in one split).

    write_head_dataset("heads", count=500)          # resumable; progress bar
    train = load_head_split("heads", "train")       # HeadSplit: memory-mapped arrays, cameras per view

The folder:

    HEADS/
      dataset.json        {"format": "zerolevel-heads", "version": 1, "views", "resolution", "settings",
                           "shading", "normals", "splits": {"train": N, ...}, "seed", "model", ...}
      train/images.npy    (N, V, R, R, 3) uint8 RGB: the shaded head over its background
      train/masks.npy     (N, V, R, R) uint8 coverage * 255
      train/albedo.npy    (N, V, R, R, 3) uint8 albedo of the first surface (mean over a pixel's hit rays)
      train/back_albedo.npy (N, V, R, R, 3) uint8 albedo of the last surface along the pixel-centre ray
      train/normals.npy   (N, V, R, R, 3) int8 world-space normals facing the camera, round(127 n), 0 off
      train/depth.npy     (N, V, R, R) float32 camera-space z, 0 off the head
      train/K.npy, world_to_camera.npy   (N, V, 3, 3), (N, V, 3, 4) float32
      train/light_dirs.npy, light_colours.npy, ambient.npy   (N, V, L, 3), (N, V, L, 3), (N, V, 3) float32
      train/surface.npy   (N, S, 9) float32: point, unit normal, albedo           (the set O)
      train/points.npy    (N, P, 3) float32; labels.npy (N, P) bool inside; point_albedo.npy (N, P, 3)
                          uint8: near points first, then far ones                (the set F)
      train/identity.npy, expression.npy   (N, K), (N, E) float32 model weights (for analysis only)
      train/objects.json  [{"id": "head_00012", "category": "head"}, ...]
      meshes/<id>.ply     the head with its albedo as vertex colours (evaluation)
      .parts/<id>.npz     per-head cache (resumable)

Conventions: head units (`learn.heads`: y up, face towards -z, the neutral head's diagonal 1, centred
on it). Shading: rgb = albedo * (ambient + sum_l colour_l * max(0, n . l)), clipped to [0, 1], per
pixel from the pixel's mean albedo and normal; the image is coverage * rgb + (1 - coverage) * background.
Colours are stored as the project's images store them, without gamma. Cameras look at the head's
centre (jittered) from yaw and pitch drawn within the settings' spread, at the distance where the
neutral head's height fills `fill` of the image at the drawn field of view.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from ...atomic import atomic_path, write_json
from ...cameras import Cameras
from ...errors import InputError
from ...render.raycast import MeshRayCaster
from ..heads import HEAD_GENERATOR_VERSION, MODEL_PATH, Head, generate_head, load_model
from .folder import SPLITS, mesh_path, part_path
from .sources import ObjectSource
from .splits import DEFAULT_FRACTIONS, check_fractions, split_objects
from .views import normals_to_int8
from .write import WriteSummary, assemble_splits, build_parts, part_matches

HEADS_FORMAT = "zerolevel-heads"
HEADS_VERSION = 1
SHADING = "rgb = albedo * (ambient + sum_l colour_l * max(0, n . l)), clipped to [0, 1]; " \
          "image = coverage * rgb + (1 - coverage) * background"
ALBEDO_LOOKUP_SAMPLES = 40000  # surface samples the albedo of a point of F is looked up in
NEUTRAL_HEIGHT = 0.74  # the neutral head's height in head units (y extent), for the camera distance
# Per-view arrays: name -> (dtype, shape after (N, V)), R the resolution, L the lights.
VIEW_ARRAYS = {"images": (np.uint8, ("R", "R", 3)), "masks": (np.uint8, ("R", "R")),
               "albedo": (np.uint8, ("R", "R", 3)), "back_albedo": (np.uint8, ("R", "R", 3)),
               "normals": (np.int8, ("R", "R", 3)), "depth": (np.float32, ("R", "R")),
               "K": (np.float32, (3, 3)), "world_to_camera": (np.float32, (3, 4)),
               "light_dirs": (np.float32, ("L", 3)), "light_colours": (np.float32, ("L", 3)),
               "ambient": (np.float32, (3,))}


@dataclass(frozen=True)
class HeadDatasetSettings:
    """How every head is photographed and sampled.

    Attributes:
        views: photographs per head; resolution: their width and height; supersample: s x s rays per pixel.
        yaw_deg, pitch_deg: the camera's yaw and pitch about the head are uniform in +- these.
        fov_deg: the field of view is uniform in this range (focal length jitter).
        fill: the neutral head's height fills a uniform share in this range of the image height.
        lights: directional lights per view (a key, a fill, the rest anywhere) besides a coloured ambient.
        surface_samples, near_samples, far_samples: sizes of the sets O and F (near + far).
        near_sigma: the near points are surface points moved by N(0, sigma^2) per axis, half with each sigma.
        far_box: far points are uniform in [-far_box, far_box]^3.
    """

    views: int = 4
    resolution: int = 128
    supersample: int = 2
    yaw_deg: float = 35.0
    pitch_deg: float = 15.0
    fov_deg: tuple[float, float] = (18.0, 32.0)
    fill: tuple[float, float] = (0.85, 1.0)
    lights: int = 3
    surface_samples: int = 4096
    near_samples: int = 4096
    far_samples: int = 1024
    near_sigma: tuple[float, float] = (0.01, 0.04)
    far_box: float = 0.6

    def __post_init__(self) -> None:
        for name in ("views", "resolution", "supersample", "lights", "surface_samples", "near_samples"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if not 0 < self.fov_deg[0] <= self.fov_deg[1] < 120 or not 0 < self.fill[0] <= self.fill[1] <= 1:
            raise InputError(f"need 0 < fov_deg[0] <= fov_deg[1] < 120 and 0 < fill[0] <= fill[1] <= 1, "
                             f"got {self.fov_deg}, {self.fill}")


@dataclass
class HeadLighting:
    """The lights of V views: directions (V, L, 3) unit, towards the light; colours (V, L, 3); ambient (V, 3)."""

    directions: np.ndarray
    colours: np.ndarray
    ambient: np.ndarray


def head_sources(count: int, seed: int = 0) -> list[ObjectSource]:
    """`count` heads, ids head_00000...; the first n are the same whatever `count` is."""
    if count < 0:
        raise InputError(f"count must be non-negative, got {count}")
    sources = []
    for index in range(count):
        state = np.random.SeedSequence([int(seed), zlib.crc32(b"head"), index])
        sources.append(ObjectSource(f"head_{index:05d}", "head", seed=int(state.generate_state(1)[0])))
    return sources


def head_cameras(rng: np.random.Generator, settings: HeadDatasetSettings) -> Cameras:
    """`settings.views` near-frontal cameras looking at the head (see the module docstring)."""
    V = settings.views
    yaw = np.radians(rng.uniform(-settings.yaw_deg, settings.yaw_deg, V))
    pitch = np.radians(rng.uniform(-settings.pitch_deg, settings.pitch_deg, V))
    fov = rng.uniform(*settings.fov_deg, V)
    fill = rng.uniform(*settings.fill, V)
    target = rng.normal(0.0, 0.015, (V, 3)) + np.array([0.0, 0.03, 0.0])
    distance = (0.5 * NEUTRAL_HEIGHT / fill) / np.tan(np.radians(fov) / 2)
    direction = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), -np.cos(yaw) * np.cos(pitch)], axis=1)
    eyes = target + distance[:, None] * direction
    R = settings.resolution
    return Cameras.cat([Cameras.look_at(eyes[v], target[v], fov_deg=float(fov[v]), width=R, height=R)
                        for v in range(V)])


def head_lighting(rng: np.random.Generator, cameras: Cameras, n_lights: int) -> HeadLighting:
    """Per view: a key light within 60 degrees of the camera, a weaker fill on the other side, the
    rest anywhere on the sphere (rim, sky); each tinted warm or cool; a tinted ambient."""
    V = len(cameras)
    backward = -cameras.forward.double().numpy()
    directions = np.zeros((V, n_lights, 3))
    intensity = np.zeros((V, n_lights))
    for v in range(V):
        key = _turned(backward[v], rng.uniform(15, 60), rng)
        directions[v, 0], intensity[v, 0] = key, rng.uniform(0.5, 0.9)
        if n_lights > 1:
            mirrored = 2 * np.dot(key, backward[v]) * backward[v] - key  # the key mirrored about the view axis
            directions[v, 1], intensity[v, 1] = mirrored / np.linalg.norm(mirrored), rng.uniform(0.1, 0.3)
        for k in range(2, n_lights):
            d = rng.standard_normal(3)
            directions[v, k], intensity[v, k] = d / np.linalg.norm(d), rng.uniform(0.0, 0.4)
    temperature = rng.uniform(-1, 1, (V, n_lights, 1))
    colours = intensity[..., None] * (1 + temperature * np.array([0.12, 0.0, -0.12]))
    ambient = rng.uniform(0.1, 0.3, (V, 1)) * (1 + rng.uniform(-1, 1, (V, 1)) * np.array([0.1, 0.0, -0.1]))
    return HeadLighting(directions.astype(np.float32), colours.astype(np.float32), ambient.astype(np.float32))


def _turned(axis: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """`axis` turned by `degrees` about a random perpendicular axis."""
    helper = rng.standard_normal(3)
    perpendicular = np.cross(axis, helper)
    perpendicular /= np.linalg.norm(perpendicular)
    angle = np.radians(degrees)
    return np.cos(angle) * axis + np.sin(angle) * perpendicular


def shade(albedo: np.ndarray, normals: np.ndarray, lighting: HeadLighting) -> np.ndarray:
    """(V, H, W, 3) `SHADING`'s rgb from per-pixel albedo (V, H, W, 3) and unit normals (V, H, W, 3)."""
    cosines = np.clip(np.einsum("vhwc,vlc->vhwl", normals, lighting.directions), 0.0, None)
    light = lighting.ambient[:, None, None, :] + np.einsum("vhwl,vlc->vhwc", cosines, lighting.colours)
    return np.clip(albedo * light, 0.0, 1.0)


def backgrounds(rng: np.random.Generator, V: int, R: int) -> np.ndarray:
    """(V, R, R, 3) random backgrounds: a vertical gradient between two colours, a little noise."""
    top, bottom = rng.uniform(0.0, 1.0, (2, V, 1, 1, 3))
    t = np.linspace(0.0, 1.0, R)[None, :, None, None]
    return np.clip((1 - t) * top + t * bottom + rng.normal(0.0, 0.02, (V, R, R, 3)), 0.0, 1.0)


def photograph(head: Head, cameras: Cameras, lighting: HeadLighting, background: np.ndarray,
               supersample: int = 2) -> dict[str, np.ndarray]:
    """The per-view arrays of `VIEW_ARRAYS` but the camera and lights, as the folder stores them."""
    caster = MeshRayCaster(trimesh.Trimesh(head.vertices, head.faces, process=False), crease_deg=None)
    out = caster.render(cameras, supersample=supersample, attributes=head.albedo, ambient=0.0)
    coverage = out["mask"][..., None]
    rgb = shade(out["attributes"], out["normal"], lighting)
    image = coverage * rgb + (1 - coverage) * background
    return {"images": _to_byte(image), "masks": _to_byte(out["mask"]), "albedo": _to_byte(out["attributes"]),
            "back_albedo": _to_byte(back_albedo(caster, head.albedo, cameras)),
            "normals": normals_to_int8(out["normal"]), "depth": out["depth"].astype(np.float32)}


def back_albedo(caster: MeshRayCaster, albedo: np.ndarray, cameras: Cameras) -> np.ndarray:
    """(V, H, W, 3) albedo of the last surface each pixel-centre ray crosses (0 where it misses)."""
    origins, directions = cameras.to(dtype=torch.float64).image_rays()
    origins, directions = origins.reshape(-1, 3).numpy(), directions.reshape(-1, 3).numpy()
    far = np.linalg.norm(origins, axis=1, keepdims=True) + 2.0  # beyond the head (inside a unit box)
    hits = caster.intersect(origins + far * directions, -directions)  # first hit backwards = last forwards
    values = np.zeros((len(origins), 3))
    hit = hits.hit
    values[hit] = np.einsum("mk,mkc->mc", hits.barycentric[hit], albedo[caster.faces[hits.face[hit]]])
    return values.reshape(len(cameras), cameras.height, cameras.width, 3)


def sample_sets(head: Head, rng: np.random.Generator, settings: HeadDatasetSettings) -> dict[str, np.ndarray]:
    """The thesis's sample sets: O (surface points with normals and albedo) and F (near and far points
    with inside labels and the albedo of their closest surface point); see `HeadDatasetSettings`."""
    mesh = trimesh.Trimesh(head.vertices, head.faces, process=False)
    surface = surface_samples(head, mesh, rng, settings.surface_samples)
    near_from = surface[rng.integers(0, len(surface), settings.near_samples), :3]
    sigma = np.where(np.arange(settings.near_samples) % 2 == 0, *settings.near_sigma)[:, None]
    near = near_from + rng.standard_normal(near_from.shape) * sigma
    far = rng.uniform(-settings.far_box, settings.far_box, (settings.far_samples, 3))
    points = np.concatenate([near, far])
    # the albedo of the closest surface point, approximated by the closest of a dense set of surface
    # samples (trimesh's exact closest point, an R-tree query per point, was far slower)
    dense = surface_samples(head, mesh, rng, ALBEDO_LOOKUP_SAMPLES)
    _, nearest = cKDTree(dense[:, :3]).query(points)
    return {"surface": surface.astype(np.float32), "points": points.astype(np.float32),
            "labels": head.contains(points), "point_albedo": _to_byte(dense[nearest, 6:9])}


def surface_samples(head: Head, mesh: trimesh.Trimesh, rng: np.random.Generator, count: int,
                    attributes: np.ndarray | None = None) -> np.ndarray:
    """(count, 6 + C) points on the union's surface (parts of a piece inside another left out) with the
    interpolated unit normal and per-vertex `attributes` (N, C) (default: the albedo); area-weighted."""
    attributes = head.albedo if attributes is None else attributes
    kept = np.zeros((0, 6 + attributes.shape[1]))
    normals = mesh.vertex_normals  # per piece: the pieces share no vertices
    while len(kept) < count:
        n = int(1.3 * (count - len(kept))) + 16
        faces = rng.choice(len(mesh.faces), n, p=mesh.area_faces / mesh.area_faces.sum())
        r = rng.uniform(size=(n, 2))
        flip = r.sum(1) > 1
        r[flip] = 1 - r[flip]
        bary = np.stack([1 - r.sum(1), r[:, 0], r[:, 1]], axis=1)
        corners = mesh.faces[faces]
        points = np.einsum("mk,mkc->mc", bary, mesh.vertices[corners])
        normal = np.einsum("mk,mkc->mc", bary, normals[corners])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        albedo = np.einsum("mk,mkc->mc", bary, attributes[corners])
        hidden = head.inside_other_piece(points, head.part[corners[:, 0]])
        kept = np.concatenate([kept, np.concatenate([points, normal, albedo], axis=1)[~hidden]])
    return kept[:count]


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values) * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ folder


def write_head_dataset(root: str | Path, count: int, settings: HeadDatasetSettings = HeadDatasetSettings(),
                       fractions=DEFAULT_FRACTIONS, seed: int = 0, workers: int = 1,
                       progress: bool = True) -> WriteSummary:
    """Generate `count` heads and write the head dataset folder `root` (resumable, see the module docstring).

    Heads whose cached part was made with the same seed, settings and generator are skipped. On bad input
    a folder this call created is removed again. Returns a `WriteSummary` (dataset.json in `info`).
    """
    root = Path(root)
    fractions = check_fractions(fractions)
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    load_model()  # a missing or corrupt model file: one line before anything is written
    created = not root.exists()
    if not created and any(root.iterdir()) and not ((root / "dataset.json").exists() or (root / ".parts").exists()):
        raise InputError("exists and is not a dataset folder: choose a new or empty folder", root)
    sources = head_sources(count, seed)
    start = time.perf_counter()
    try:
        (root / "dataset.json").unlink(missing_ok=True)
        todo = [s for s in sources if not (mesh_path(root, s.id).is_file()
                                            and part_matches(part_path(root, s.id), _key(s, settings)))]
        build_parts(build_head_part, root, todo, settings, workers, progress, len(sources))
        info = _assemble(root, split_objects(sources, fractions, seed), settings, seed)
    except InputError:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return WriteSummary(info, len(todo), len(sources) - len(todo), time.perf_counter() - start)


def _key(source: ObjectSource, settings: HeadDatasetSettings) -> str:
    return json.dumps({"seed": source.seed, "generator": HEAD_GENERATOR_VERSION, "settings": asdict(settings),
                       "version": HEADS_VERSION, "shading": SHADING}, sort_keys=True)


def build_head_part(root: Path, source: ObjectSource, settings: HeadDatasetSettings) -> float:
    """Make one head, photograph and sample it, and write its part and mesh atomically; seconds taken."""
    start = time.perf_counter()
    head = generate_head(source.seed)
    rng = np.random.default_rng([int(source.seed), zlib.crc32(b"head photographs")])
    cameras = head_cameras(rng, settings)
    lighting = head_lighting(rng, cameras, settings.lights)
    views = photograph(head, cameras, lighting, backgrounds(rng, settings.views, settings.resolution),
                       settings.supersample)
    arrays = {**views, "K": cameras.K.numpy(), "world_to_camera": cameras.world_to_camera[:, :3].numpy(),
              "light_dirs": lighting.directions, "light_colours": lighting.colours, "ambient": lighting.ambient,
              **sample_sets(head, rng, settings),
              "identity": head.identity.astype(np.float32), "expression": head.expression.astype(np.float32)}
    with atomic_path(mesh_path(root, source.id)) as tmp:
        head.mesh().export(tmp, file_type="ply", vertex_normal=False)
    with atomic_path(part_path(root, source.id)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays, key=np.array(_key(source, settings)))
    return time.perf_counter() - start


def _assemble(root: Path, splits: dict, settings: HeadDatasetSettings, seed: int) -> dict:
    """Each split's arrays from the parts, stale meshes dropped, then dataset.json (last)."""
    assemble_splits(root, splits, array_shapes(settings.views, settings.resolution, settings.lights,
                                               settings.surface_samples, settings.near_samples + settings.far_samples,
                                               *_mode_counts()))
    info = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "views": settings.views,
            "resolution": settings.resolution, "lights": settings.lights, "settings": asdict(settings),
            "shading": SHADING, "normals": {"space": "world", "encoding": "int8, round(127 * n)", "facing": "camera"},
            "units": "head units: y up, face towards -z, the neutral head's bounding-box diagonal 1",
            "model": {"file": MODEL_PATH.name, "generator_version": HEAD_GENERATOR_VERSION},
            "categories": ["head"], "splits": {name: len(members) for name, members in splits.items()},
            "seed": int(seed)}
    write_json(root / "dataset.json", info)
    return info


def _mode_counts() -> tuple[int, int]:
    model = load_model()
    return len(model.identity_modes), len(model.expression_modes)


def array_shapes(V: int, R: int, L: int, S: int, P: int, K: int, E: int) -> dict[str, tuple]:
    """name -> (dtype, shape after N) of every array of a split."""
    sizes = {"R": R, "L": L}
    shapes = {name: (dtype, (V, *(sizes.get(d, d) for d in dims))) for name, (dtype, dims) in VIEW_ARRAYS.items()}
    shapes.update({"surface": (np.float32, (S, 9)), "points": (np.float32, (P, 3)), "labels": (np.bool_, (P,)),
                   "point_albedo": (np.uint8, (P, 3)), "identity": (np.float32, (K,)),
                   "expression": (np.float32, (E,))})
    return shapes


@dataclass
class HeadSplit:
    """One split of a head dataset, its arrays memory-mapped (names and shapes: the module docstring)."""

    root: Path
    name: str
    arrays: dict[str, np.ndarray]
    ids: list[str]
    info: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def cameras(self, index: int) -> Cameras:
        """The V cameras of head `index`."""
        views = np.arange(self.arrays["K"].shape[1])
        return self.view_cameras(np.full(len(views), index), views)

    def view_cameras(self, objects: np.ndarray, views: np.ndarray) -> Cameras:
        """The cameras of the given (head, photograph) pairs."""
        K = torch.from_numpy(np.ascontiguousarray(self.arrays["K"][objects, views]))
        w2c = torch.eye(4).repeat(len(K), 1, 1)
        w2c[:, :3] = torch.from_numpy(np.ascontiguousarray(self.arrays["world_to_camera"][objects, views]))
        R = int(self.info["resolution"])
        return Cameras(K, w2c, R, R)

    def rgba(self, objects: np.ndarray, views: np.ndarray) -> np.ndarray:
        """(B, S, S, 4) uint8 photographs (RGB over their background) with the mask as alpha."""
        rgb = np.asarray(self.arrays["images"][objects, views])
        mask = np.asarray(self.arrays["masks"][objects, views])[..., None]
        return np.ascontiguousarray(np.concatenate([rgb, mask], axis=-1))

    def mesh_path(self, index: int) -> Path:
        return mesh_path(self.root, self.ids[index])


def load_head_split(root: str | Path, split: str) -> HeadSplit:
    """One split of a head dataset folder; InputError (one line) for a missing, unfinished or corrupt one."""
    from .folder import load_array, load_objects, read_info  # the ring folder's readers, same rules

    root = Path(root)
    info = read_info(root, HEADS_FORMAT, (HEADS_VERSION,), ("views", "resolution", "lights", "settings", "splits"),
                     kind="head dataset")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})", root)
    s = info["settings"]
    shapes = array_shapes(int(info["views"]), int(info["resolution"]), int(info["lights"]),
                          int(s["surface_samples"]), int(s["near_samples"]) + int(s["far_samples"]), *_mode_counts())
    arrays = {name: load_array(root / split / f"{name}.npy", dtype, item_shape)
              for name, (dtype, item_shape) in shapes.items()}
    objects = load_objects(root / split / "objects.json")
    counts = {len(a) for a in arrays.values()} | {len(objects), info["splits"].get(split, -1)}
    if len(counts) != 1:
        raise InputError(f"split {split}: arrays, objects.json and dataset.json disagree on the count", root)
    return HeadSplit(root, split, arrays, [o["id"] for o in objects], info)
