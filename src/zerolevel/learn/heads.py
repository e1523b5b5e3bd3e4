"""Generated heads: random people of the ICT-FaceKit morphable model, as closed meshes with a skin.

Its one job: `generate_head(seed)` gives one head — a random identity (the model's own N(0, 1)
weights), a sparse random expression and a procedural albedo per vertex — identical for the same seed.
The model is the compact one the project ships (`data/head_model.npz`, MIT, derived from ICT-FaceKit by
`tools/derive_head_model.py`): the skin (face, head and neck, its neck, mouth and eye holes closed by
caps) and two eyeballs, each a closed surface; 32 identity modes and 47 expression blend shapes.

The head's surface is the union of the three closed pieces (skin, left and right eyeball): an eyeball
pokes through its eye cap, and the mouth is shown closed by its cap (coloured as a mouth's inside), so
the jaw opens at most `EXPRESSION_LIMITS["jawOpen"]`. `Head.contains` answers inside / outside of that
union; `Head.mesh()` is the three pieces in one `trimesh.Trimesh` with the albedo as vertex colours.

Units and frame (the project's): y up, the face towards -z; centred on the model's neutral head's
bounding-box centre and scaled by `SCALE` (the neutral head's bounding-box diagonal is 1), the same for
every head, so that heads differ in size as people do.

Albedo (RGB in [0, 1], stored as the project's images store colour: no gamma) from the model's region weights: a skin tone drawn between a light and a
dark tone with a per-channel jitter, low-frequency noise, redder cheeks, darker and redder lips,
scalp hair (unless bald) in one of `HAIR` colours, eyebrows of that colour but darker than the skin, the mouth cap and the eye sockets dark,
white sclera, an iris from `IRIS` and a dark pupil.

    head = generate_head(7)                       # Head: vertices, faces, albedo, identity, expression
    mesh = head.mesh()                            # trimesh with vertex colours
    inside = head.contains(points)                # (M,) bool
    base = mean_head_sdf()                        # the mean head's signed distances on a lattice (a prior)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..errors import InputError
from ..geometry.tetgrid import lattice_trilinear

MODEL_PATH = Path(__file__).resolve().parents[1] / "data" / "head_model.npz"
HEAD_GENERATOR_VERSION = 1  # bump whenever what a seed makes changes (dataset caches key on it)
SKIN, EYE_LEFT, EYE_RIGHT = 0, 1, 2  # `HeadModel.part` values

# Expression weights are drawn in [0.2, 1] times these limits (1 for the others): the mouth's cap
# must stay behind the lips, and strong cheek puffs leave the model's range of plausible shapes.
EXPRESSION_LIMITS = {"jawOpen": 0.25, "cheekPuff": 0.6, "mouthFunnel": 0.6, "mouthPucker": 0.7}
SKIN_LIGHT, SKIN_DARK = np.array([0.92, 0.74, 0.62]), np.array([0.30, 0.19, 0.13])
HAIR = np.array([[0.05, 0.04, 0.035], [0.16, 0.10, 0.06], [0.32, 0.21, 0.12], [0.62, 0.48, 0.30],
                 [0.45, 0.18, 0.08], [0.55, 0.54, 0.52]])  # black, dark brown, brown, blonde, red, grey
IRIS = np.array([[0.25, 0.14, 0.07], [0.20, 0.35, 0.55], [0.25, 0.38, 0.22], [0.40, 0.42, 0.45]])
MOUTH, EYE_SOCKET, SCLERA = np.array([0.28, 0.07, 0.07]), np.array([0.22, 0.13, 0.11]), np.array([0.88, 0.86, 0.82])
PUPIL = np.array([0.03, 0.03, 0.03])
BALD = 0.2  # the share of bald heads


@dataclass(frozen=True)
class HeadModel:
    """The linear head model: vertices = neutral + identity @ identity_modes + expression @ expression_modes.

    Attributes (N vertices, F faces; centimetres, y up, face towards +z as the source has it):
        neutral: (N, 3) float32; faces: (F, 3) int32, each piece closed and wound outwards.
        part: (N,) uint8, `SKIN`, `EYE_LEFT` or `EYE_RIGHT`.
        identity_modes: (K, N, 3) float32; expression_modes: (E, N, 3) float32, `expression_names` (E,).
        regions: (N, R) float32 weights in [0, 1] named by `region_names` (lips, brows, cheeks, scalp,
            mouth, eye_socket, iris, pupil, sclera).
    """

    neutral: np.ndarray
    faces: np.ndarray
    part: np.ndarray
    identity_modes: np.ndarray
    expression_modes: np.ndarray
    expression_names: tuple[str, ...]
    regions: np.ndarray
    region_names: tuple[str, ...]

    @classmethod
    def load(cls, path: str | Path) -> HeadModel:
        """Read and check a head model file; InputError (one line naming it) if missing or corrupt."""
        path = Path(path)
        if not path.is_file():
            raise InputError("head model file missing (the package ships it: reinstall zerolevel, or rerun "
                             "tools/derive_head_model.py)", path)
        keys = ("neutral", "faces", "part", "identity_modes", "expression_modes", "expression_names",
                "regions", "region_names")
        try:
            with np.load(path) as data:
                missing = [k for k in keys if k not in data.files]
                if missing:
                    raise InputError(f"not a head model file (no {', '.join(missing)})", path)
                arrays = {k: data[k] for k in keys}
        except InputError:
            raise
        except Exception as exc:  # truncated, not an npz, bit-flipped
            raise InputError(f"corrupt head model file ({type(exc).__name__}: {exc})", path) from None
        model = cls(neutral=arrays["neutral"].astype(np.float32), faces=arrays["faces"].astype(np.int64),
                    part=arrays["part"].astype(np.uint8),
                    identity_modes=arrays["identity_modes"].astype(np.float32),
                    expression_modes=arrays["expression_modes"].astype(np.float32),
                    expression_names=tuple(str(n) for n in arrays["expression_names"]),
                    regions=arrays["regions"].astype(np.float32),
                    region_names=tuple(str(n) for n in arrays["region_names"]))
        problem = model._problem()
        if problem:
            raise InputError(f"corrupt head model file ({problem})", path)
        return model

    def _problem(self) -> str | None:
        N = len(self.neutral)
        shapes = {"neutral": (self.neutral.shape, (N, 3)), "part": (self.part.shape, (N,)),
                  "identity_modes": (self.identity_modes.shape[1:], (N, 3)),
                  "expression_modes": (self.expression_modes.shape[1:], (N, 3)),
                  "regions": (self.regions.shape, (N, len(self.region_names)))}
        for name, (got, want) in shapes.items():
            if tuple(got) != want:
                return f"{name} has shape {tuple(got)}, expected {want}"
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.min() < 0 or self.faces.max() >= N:
            return "faces must be (F, 3) indices of the vertices"
        if len(self.expression_names) != len(self.expression_modes):
            return "expression_names and expression_modes differ in length"
        if set(np.unique(self.part)) != {SKIN, EYE_LEFT, EYE_RIGHT}:
            return "part must label skin and both eyeballs"
        for name, array in (("neutral", self.neutral), ("identity_modes", self.identity_modes),
                            ("expression_modes", self.expression_modes), ("regions", self.regions)):
            if not np.isfinite(array).all():
                return f"{name} holds NaN or infinity"
        return None

    def vertices(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """(N, 3) float64 centimetres of the head with these identity (K,) and expression (E,) weights."""
        identity, expression = np.asarray(identity, np.float64), np.asarray(expression, np.float64)
        if identity.shape != (len(self.identity_modes),) or expression.shape != (len(self.expression_modes),):
            raise ValueError(f"need identity ({len(self.identity_modes)},) and expression "
                             f"({len(self.expression_modes)},), got {identity.shape} and {expression.shape}")
        out = self.neutral.astype(np.float64)
        out = out + np.tensordot(identity, self.identity_modes, axes=1)
        return out + np.tensordot(expression, self.expression_modes, axes=1)

    def head_frame(self, cm: np.ndarray) -> np.ndarray:
        """(N, 3) model centimetres -> head units: centred, scaled, turned to face -z."""
        return (cm - self.centre) * self.scale * np.array([-1.0, 1.0, -1.0])

    def region(self, name: str) -> np.ndarray:
        """(N,) weights of one region."""
        return self.regions[:, self.region_names.index(name)]

    @property
    def centre(self) -> np.ndarray:
        """The neutral head's bounding-box centre (cm): the head frame's origin."""
        return (self.neutral.min(0) + self.neutral.max(0)) / 2.0

    @property
    def scale(self) -> float:
        """Centimetres to head units: 1 / the neutral head's bounding-box diagonal."""
        return float(1.0 / np.linalg.norm(self.neutral.max(0) - self.neutral.min(0)))


def load_model(path: str | Path | None = None) -> HeadModel:
    """`HeadModel.load` of `path` (default `MODEL_PATH`), cached: a dataset writer makes many heads."""
    return _cached_model(str(MODEL_PATH if path is None else path))


@lru_cache(maxsize=2)
def _cached_model(path: str) -> HeadModel:
    return HeadModel.load(path)


@dataclass
class Head:
    """One generated head in head units (y up, face towards -z, the neutral head's diagonal 1).

    Attributes:
        vertices: (N, 3) float64; faces: (F, 3) int64 (the model's); part: (N,) the model's piece labels.
        albedo: (N, 3) float32 RGB in [0, 1].
        identity: (K,) and expression: (E,) the model weights it was made from; seed: its seed (-1: the
            mean head, `mean_head`).
    """

    vertices: np.ndarray
    faces: np.ndarray
    part: np.ndarray
    albedo: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    seed: int

    def mesh(self) -> trimesh.Trimesh:
        """The three closed pieces as one mesh, the albedo as vertex colours (bytes)."""
        colours = np.clip(np.rint(255 * self.albedo), 0, 255).astype(np.uint8)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=colours, process=False)

    def pieces(self) -> list[trimesh.Trimesh]:
        """Skin, left eyeball, right eyeball: each a closed mesh (made once: their ray structures are
        reused by every `contains`)."""
        return self._pieces

    @cached_property
    def _pieces(self) -> list[trimesh.Trimesh]:
        out = []
        for label in (SKIN, EYE_LEFT, EYE_RIGHT):
            faces = self.faces[self.part[self.faces[:, 0]] == label]
            used = np.unique(faces)
            remap = np.full(len(self.vertices), -1)
            remap[used] = np.arange(len(used))
            out.append(trimesh.Trimesh(self.vertices[used], remap[faces], process=False))
        return out

    def outer_mesh(self) -> trimesh.Trimesh:
        """The union's surface: every piece's faces but those (by centroid) inside another piece (the
        eyeballs' backs, the eye caps in front of the eyeballs), with the albedo as vertex colours."""
        hidden = self.inside_other_piece(self.vertices[self.faces].mean(axis=1), self.part[self.faces[:, 0]])
        mesh = self.mesh()
        mesh.update_faces(~hidden)
        mesh.remove_unreferenced_vertices()
        return mesh

    def contains(self, points: np.ndarray) -> np.ndarray:
        """(M,) bool: inside the union of the skin and the eyeballs."""
        return self.inside_other_piece(points, np.full(len(points), -1))

    def inside_other_piece(self, points: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """(M,) bool: the point lies inside one of the pieces other than its `owner` (M,) (a `part`
        label; -1: any piece)."""
        points = np.asarray(points, dtype=np.float64)
        inside = np.zeros(len(points), dtype=bool)
        for label, piece in enumerate(self.pieces()):
            lo, hi = piece.bounds
            near = ~inside & (owner != label) & np.all((points >= lo) & (points <= hi), axis=1)
            if near.any():
                inside[near] = piece.contains(points[near])
        return inside


def generate_head(seed: int, model: HeadModel | None = None) -> Head:
    """One random head, deterministic in `seed`: identity N(0, 1), a sparse expression, an albedo."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    model = load_model() if model is None else model
    rng = np.random.default_rng([zlib.crc32(b"head"), int(seed)])
    identity = rng.standard_normal(len(model.identity_modes))
    expression = sample_expression(rng, model.expression_names)
    albedo = sample_albedo(rng, model)
    vertices = model.head_frame(model.vertices(identity, expression))
    return Head(vertices, model.faces, model.part, albedo, identity, expression, int(seed))


def mean_head(model: HeadModel | None = None) -> Head:
    """The model's mean head (identity and expression 0), placed as `generate_head` places a head, grey."""
    model = load_model() if model is None else model
    identity, expression = np.zeros(len(model.identity_modes)), np.zeros(len(model.expression_modes))
    vertices = model.head_frame(model.vertices(identity, expression))
    albedo = np.full((len(vertices), 3), 0.5, dtype=np.float32)
    return Head(vertices, model.faces, model.part, albedo, identity, expression, -1)


@dataclass(frozen=True)
class SDFLattice:
    """Signed distances (negative inside) at the vertices of a regular lattice: `values` (n, n, n)
    float32 indexed [x, y, z], the vertex (i, j, k) at lo + (i, j, k) (hi - lo) / (n - 1)."""

    values: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def lattice_distance(values: torch.Tensor, box: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A signed-distance lattice's value at points (..., 3): trilinear inside its box ((2, 3) lo, hi;
    values (n, n, n) as `SDFLattice`'s), the box's value plus the distance to the box outside it (so
    a point far off still reads a distance that grows towards it). Differentiable in the points and
    values (a zero gradient, not a NaN, inside the box)."""
    lo, hi = box.to(points.dtype)
    margin = 1e-5 * (hi - lo)  # clamped points stay inside the box when rounded (outside: +inf)
    inner = torch.minimum(torch.maximum(points, lo + margin), hi - margin)
    outside = (points - inner).square().sum(dim=-1)
    beyond = torch.where(outside > 0, outside.clamp_min(1e-20).sqrt(), torch.zeros_like(outside))
    within = lattice_trilinear(values.to(points.dtype).reshape(1, -1), inner.reshape(1, -1, 3), len(values) - 1,
                               (lo, hi))
    return within.reshape(points.shape[:-1]) + beyond


@lru_cache(maxsize=2)
def mean_head_sdf(resolution: int = 48, padding: float = 0.1, surface_points: int = 200_000) -> SDFLattice:
    """The mean head's signed distance on a `resolution`^3 lattice over its bounding box grown by
    `padding` (head units) on every side: the distance to the nearest of `surface_points` samples of
    its outer surface (their spacing, ~0.003, is a fifth of a cell), signed by `Head.contains`.
    Deterministic and cached: the head network's prior (`PhorhumNetConfig.base`), made in ~1 s."""
    from pykdtree.kdtree import KDTree

    head = mean_head()
    lo, hi = head.vertices.min(0) - padding, head.vertices.max(0) + padding
    axes = [np.linspace(a, b, resolution) for a, b in zip(lo, hi)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    samples, _ = trimesh.sample.sample_surface(head.outer_mesh(), surface_points, seed=0)
    distance, _ = KDTree(np.asarray(samples)).query(points)
    signed = np.where(head.contains(points), -distance, distance)
    return SDFLattice(signed.reshape((resolution,) * 3).astype(np.float32), lo, hi)


def sample_expression(rng: np.random.Generator, names: tuple[str, ...]) -> np.ndarray:
    """Sparse weights: 0-3 expressions, each on both sides (70%) or one, in [0.2, 1] x its limit."""
    weights = np.zeros(len(names))
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.removesuffix("_L").removesuffix("_R"), []).append(i)
    chosen = rng.choice(sorted(groups), size=int(rng.integers(0, 4)), replace=False)
    for group in chosen:
        members = groups[group]
        value = rng.uniform(0.2, 1.0) * EXPRESSION_LIMITS.get(group, 1.0)
        both = len(members) == 1 or rng.random() < 0.7
        sides = members if both else [members[int(rng.integers(len(members)))]]
        for i in sides:
            weights[i] = value * (rng.uniform(0.8, 1.0) if len(sides) > 1 else 1.0)
    return weights


def sample_albedo(rng: np.random.Generator, model: HeadModel) -> np.ndarray:
    """(N, 3) float32 procedural albedo of the model's vertices (see the module docstring)."""
    t = rng.uniform(0.0, 1.0) ** 1.3  # more light than dark tones, as skin reflectance spreads
    skin = (1 - t) * SKIN_LIGHT + t * SKIN_DARK
    skin = skin * rng.uniform(0.93, 1.07, size=3)
    albedo = np.broadcast_to(skin, (len(model.neutral), 3)).copy()
    albedo *= 1.0 + smooth_noise(rng, model.neutral, amplitude=0.04)[:, None]
    redness = rng.uniform(0.2, 0.8)
    albedo *= 1.0 + model.region("cheeks")[:, None] * redness * np.array([0.04, -0.14, -0.12])
    lips = model.region("lips")[:, None] * rng.uniform(0.6, 1.0)
    albedo = (1 - lips) * albedo + lips * albedo * np.array([0.82, 0.55, 0.55])
    hair = HAIR[int(rng.integers(len(HAIR)))] * rng.uniform(0.85, 1.15)
    brows = model.region("brows")[:, None] * rng.uniform(0.55, 0.95)
    albedo = (1 - brows) * albedo + brows * np.minimum(hair, 0.6 * skin)  # brows darker than the skin
    if rng.random() >= BALD:
        scalp = model.region("scalp")[:, None]
        albedo = (1 - scalp) * albedo + scalp * hair
    for name, colour in (("mouth", MOUTH), ("eye_socket", EYE_SOCKET), ("sclera", SCLERA), ("pupil", PUPIL)):
        w = model.region(name)[:, None]
        albedo = (1 - w) * albedo + w * colour
    iris = model.region("iris")[:, None]
    albedo = (1 - iris) * albedo + iris * IRIS[int(rng.integers(len(IRIS)))]
    return np.clip(albedo, 0.02, 1.0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, points: np.ndarray, amplitude: float, waves: int = 8) -> np.ndarray:
    """(M,) low-frequency noise at points (cm): a sum of random plane waves of 2-8 cm wavelength."""
    directions = rng.standard_normal((waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(2.0, 8.0, size=waves)
    phases = rng.uniform(0.0, 2 * np.pi, size=waves)
    waves_at = np.sin(points @ (directions.T * (2 * np.pi / wavelengths)) + phases)
    return amplitude * waves_at.sum(axis=1) / np.sqrt(waves / 2.0)

