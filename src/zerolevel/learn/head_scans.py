"""Real scanned heads in the head evaluation: a scan nobody generated, placed in the head frame,
photographed as the head dataset photographs its heads, and scored by the same protocol.

One job: `scan_case` turns a scan (any mesh of a head, any units and axes) into what
`phorhum_eval.score_head` needs — a photograph with its camera and mask, and the truth's samples with
their face weights — so a head network and the baselines can be read on it as on generated heads.

- Placing (`place_scan`): the scan is turned so that its `up` axis is +y and its `front` axis (where
  the face looks) is -z (the head frame's), then registered to the model's mean head by a similarity
  fit (rigid ICP at each of `SCALE_FACTORS` times a first guess, then of `FINE_FACTORS` times the
  best, the best by the distance both ways)
  of the scan's points around its nose (the frontal-most point of its upper part) to the mean head's
  around its own: a scan's own extent (shoulders, a crown) says nothing of its head's size, its face does. (An
  ICP that also fits the scale shrinks the scan onto part of the face.)
- Truth: the placed scan's surface within the mean head's box grown by `BOX_MARGIN` (shoulders, the
  crown's top and a bust's base are not a head, and no head network predicts them); the prediction's
  samples are cut by the same box (`score_scan`; its silhouette is scored whole). Face samples: those whose nearest mean-head
  vertex is in the model's face region and within `FACE_REACH`.
- Photograph: one camera drawn as the dataset draws them (`dataset.heads.head_cameras`: near-frontal,
  field of view and framing jittered), its lights and background; the scans carry no albedo, so
  they are painted one skin tone and the albedo figure is not read on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from ..cameras import Cameras
from ..errors import InputError
from .dataset.heads import HeadDatasetSettings, backgrounds, head_cameras, head_lighting, photograph
from .heads import load_model, mean_head
from .phorhum_eval import HeadPrediction, score_head

BOX_MARGIN = 0.05  # head units: the truth's crop around the mean head's box
FACE_REACH = 0.05  # head units: a scan point is face when its nearest mean-head vertex is this close
SKIN = (0.78, 0.6, 0.5)  # the scans' paint (they have no albedo)
ICP_REACH = 0.3  # head units (scaled as the mean head): scan points this close to its nose register
SCALE_FACTORS = np.geomspace(0.3, 1.6, 15)  # the scales tried around the first guess (steps of 13%) ...
FINE_FACTORS = np.geomspace(0.93, 1.07, 9)  # ... then around the best (steps of 2%)


@dataclass
class ScanCase:
    """One scan, ready to score: `image` (S, S, 4) uint8 RGB + mask, its `camera`, `mask` (S, S) bool,
    `normals` (S, S, 3) its world-space normal map (0 off the scan), `truth` (M, 10) samples (point,
    unit normal, albedo, face weight), `mesh` the placed and cropped scan, `box` (2, 3) the crop,
    `scale` the head units per scan unit of the placement."""

    image: np.ndarray
    camera: Cameras
    mask: np.ndarray
    normals: np.ndarray
    truth: np.ndarray
    mesh: trimesh.Trimesh
    box: np.ndarray
    scale: float


def orientation(up: tuple[float, float, float], front: tuple[float, float, float]) -> np.ndarray:
    """(3, 3) rotation taking the unit `up` axis to +y and the `front` axis to -z (they must be
    perpendicular)."""
    up, front = np.asarray(up, np.float64), np.asarray(front, np.float64)
    up, front = up / np.linalg.norm(up), front / np.linalg.norm(front)
    if abs(np.dot(up, front)) > 1e-6:
        raise ValueError(f"up {tuple(up)} and front {tuple(front)} must be perpendicular")
    back = -front
    return np.stack([np.cross(up, back), up, back])  # rows: the scan's axes that become x, y, z


def _nose(points: np.ndarray) -> np.ndarray:
    """The frontal-most (least z) point of the upper 60% of a head turned to the head frame."""
    low, high = points[:, 1].min(), points[:, 1].max()
    upper = points[points[:, 1] > low + 0.4 * (high - low)]
    return upper[np.argmin(upper[:, 2])]


def place_scan(mesh: trimesh.Trimesh, up=(0.0, 1.0, 0.0), front=(0.0, 0.0, -1.0), samples: int = 20_000,
               seed: int = 0) -> tuple[trimesh.Trimesh, float]:
    """The scan in the head frame, registered to the mean head (module docstring), and its scale."""
    turned = mesh.copy()
    turned.apply_transform(_homogeneous(orientation(up, front)))
    reference = mean_head()
    points = np.asarray(trimesh.sample.sample_surface(turned, samples, seed=seed)[0])
    ours = np.asarray(trimesh.sample.sample_surface(reference.outer_mesh(), samples, seed=seed)[0])
    # a first guess: noses together, the scan's height from nose to crown taken as the mean head's
    nose, target_nose = _nose(points), _nose(reference.vertices)
    scale = (reference.vertices[:, 1].max() - target_nose[1]) / max(points[:, 1].max() - nose[1], 1e-12)
    target = ours[np.linalg.norm(ours - target_nose, axis=1) < ICP_REACH]  # the mean head around its nose
    target_tree = cKDTree(target)

    def rigid_fit(s: float) -> tuple[np.ndarray, float]:  # a rigid ICP at scale s, its cost both ways
        initial = _homogeneous(s * np.eye(3), target_nose - s * nose)
        near = points[np.linalg.norm(points - nose, axis=1) < ICP_REACH / s]
        matrix, moved, _ = trimesh.registration.icp(near, target, initial=initial, max_iterations=40,
                                                    reflection=False, translation=True, scale=False)
        # the same region of both, each way (one way alone prefers a scan too large or too small)
        return matrix, target_tree.query(moved)[0].mean() + cKDTree(moved).query(target)[0].mean()

    # the crown of a bust misleads the first guess: a coarse search over scales, then a fine one
    best = min(((scale * f, *rigid_fit(scale * f)) for f in SCALE_FACTORS), key=lambda r: r[2])
    best = min(((best[0] * f, *rigid_fit(best[0] * f)) for f in FINE_FACTORS), key=lambda r: r[2])
    matrix = best[1]
    turned.apply_transform(matrix)
    return turned, float(np.cbrt(np.linalg.det(matrix[:3, :3])))


def _homogeneous(linear: np.ndarray, translation: np.ndarray | None = None) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = linear
    if translation is not None:
        out[:3, 3] = translation
    return out


def head_box() -> np.ndarray:
    """(2, 3) the mean head's box grown by `BOX_MARGIN`: the region scans are scored in."""
    vertices = mean_head().vertices
    return np.stack([vertices.min(0) - BOX_MARGIN, vertices.max(0) + BOX_MARGIN])


def crop_to_box(mesh: trimesh.Trimesh, box: np.ndarray) -> trimesh.Trimesh:
    """The faces of `mesh` whose centroid lies in the (2, 3) box."""
    centroids = mesh.triangles_center
    keep = ((centroids >= box[0]) & (centroids <= box[1])).all(axis=1)
    out = mesh.copy()
    out.update_faces(keep)
    out.remove_unreferenced_vertices()
    return out


def scan_truth(placed: trimesh.Trimesh, count: int, seed: int = 0, colour=SKIN) -> np.ndarray:
    """(count, 10) samples of a placed (and cropped) scan: point, unit normal, albedo (`colour`),
    face weight (1 where the nearest mean-head vertex is in the face region and within `FACE_REACH`)."""
    points, faces = trimesh.sample.sample_surface(placed, count, seed=seed)
    points = np.asarray(points)
    normals = np.asarray(placed.face_normals)[faces]
    reference = mean_head()
    face = load_model().region("face")
    distance, nearest = cKDTree(reference.vertices).query(points)
    weight = ((face[nearest] > 0.5) & (distance < FACE_REACH)).astype(np.float64)
    albedo = np.broadcast_to(np.asarray(colour, np.float64), (count, 3))
    return np.concatenate([points, normals, albedo, weight[:, None]], axis=1)


def scan_case(mesh: trimesh.Trimesh, up=(0.0, 1.0, 0.0), front=(0.0, 0.0, -1.0), resolution: int = 128,
              samples: int = 40_000, seed: int = 0, colour=SKIN) -> ScanCase:
    """A scan made ready to score (module docstring): placed, cropped, photographed from one camera
    drawn by the head dataset's rules with `seed`, and sampled.

    Raises:
        InputError: the scan has no faces, or nothing of it lies where a head is.
    """
    if len(mesh.faces) == 0:
        raise InputError("the scan has no faces")
    placed, scale = place_scan(mesh, up, front, seed=seed)
    box = head_box()
    cropped = crop_to_box(placed, box)
    if len(cropped.faces) == 0:
        raise InputError("no part of the scan lies where the mean head is: check its up and front axes")
    rng = np.random.default_rng([seed, 18])
    settings = replace(HeadDatasetSettings(), views=1, resolution=resolution)
    camera = head_cameras(rng, settings)
    lighting = head_lighting(rng, camera, settings.lights)
    background = backgrounds(rng, 1, resolution)
    painted = SimpleNamespace(vertices=np.asarray(placed.vertices), faces=np.asarray(placed.faces),
                              albedo=np.broadcast_to(np.asarray(colour, np.float32), (len(placed.vertices), 3)))
    views = photograph(painted, camera, lighting, background, supersample=settings.supersample)
    image = np.concatenate([views["images"][0], views["masks"][0][..., None]], axis=-1)
    truth = scan_truth(cropped, samples, seed, colour)
    normals = views["normals"][0].astype(np.float32) / 127.0
    return ScanCase(image, camera, views["masks"][0] >= 128, normals, truth, cropped, box, scale)


def score_scan(prediction: HeadPrediction, case: ScanCase, samples: int = 40_000, seed: int = 0) -> dict[str, float]:
    """The head protocol's figures of a prediction on a scan (`phorhum_eval.score_head` within the
    case's box); the albedo figure is NaN (the scans have none)."""
    figures = score_head(prediction, case.truth, case.mask, case.camera, samples, seed, box=case.box)
    figures["albedo PSNR face"] = float("nan")
    return figures
