"""Procedural shape families: a category data set (chairs, tables, lamps, ...) the project makes itself.

Its one job: `generate(category, seed)` gives one watertight, single-component triangle mesh of that
category, different for every seed and identical for the same seed. ShapeNet cannot be shipped, so
single-view learning trains on these.

How an object is made: a category builder draws random proportions and styles (a chair is a seat, a
back, legs of one of three kinds and sometimes arms; a vase is a random profile curve revolved, solid
or hollow) and places overlapping primitive solids — rounded boxes, capsules, cylinders, ellipsoids,
tori, extruded convex polygons (wings, cabins), solids of revolution (shades, vases, fuselages):
`zerolevel.geometry.solids`. The object is their union, sampled on a grid whose longest axis has
`resolution` samples and meshed by marching cubes (`geometry.solids.mesh_union`), largest component
kept. This module holds the categories: what to place, with which random proportions.

Conventions (like ShapeNet): y up, the front faces -z (a chair's seat is entered from -z, its back is
at +z; an airplane's nose and a car's bonnet point to -z); the mesh is centred at its bounding-box
centre and scaled to a bounding-box diagonal of 1, so it lies inside [-0.5, 0.5]^3. Parts are built
in a frame where the object's largest dimension is about 1; no part is thinner than `THIN` (2.3 grid
cells at the default resolution) and no gap between parts narrower than `GAP` (3 cells), so that no
part breaks up and no gap closes into a sliver (checked on 500 seeds of every category).

    mesh = generate("chair", seed=12)                 # trimesh.Trimesh, watertight
    specs = object_specs(["chair", "vase"], count=100, seed=0)   # [(object_id, category, seed), ...]
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import trimesh
from scipy.interpolate import PchipInterpolator

from ..errors import InputError
from ..geometry.solids import Part, box, capsule, cylinder, ellipsoid, mesh_union, revolve, rotation, slab, torus

CATEGORIES: tuple[str, ...] = ("airplane", "car", "chair", "lamp", "table", "vase")
# Families made elsewhere, taken by name but not in "all": "head" is `learn.heads`'s generated head
# (three closed pieces: skin and eyeballs; its albedo is not used by the ring datasets).
EXTRA_CATEGORIES: tuple[str, ...] = ("head",)
GENERATOR_VERSION = 1  # bump whenever a builder changes what a seed makes (dataset caches key on it)
DEFAULT_RESOLUTION = 72  # grid samples along the object's longest axis: ~5-35k faces per object


class ShapeSpec(NamedTuple):
    """One object of a generated collection: `generate(category, seed)` makes it."""

    object_id: str  # e.g. "chair_00012"
    category: str
    seed: int


# --------------------------------------------------------------------------------------------
# Public API


def generate(category: str, seed: int, resolution: int = DEFAULT_RESOLUTION) -> trimesh.Trimesh:
    """One random object of `category`, deterministic in `seed`.

    Args:
        category: one of `CATEGORIES` or `EXTRA_CATEGORIES`.
        seed: non-negative integer; the same (category, seed) always gives the same mesh.
        resolution: grid samples along the longest axis of the object (>= 32; heads are not sampled).
    Returns:
        Watertight single-component `trimesh.Trimesh` (a head: three closed, overlapping pieces), faces
        wound outward (volume > 0), y up, front towards -z, bounding box centred at the origin with
        diagonal 1 (unitless).
    Raises:
        InputError: unknown category.
    """
    builder = _BUILDERS.get(category)
    if builder is None and category not in EXTRA_CATEGORIES:
        raise InputError(f"unknown category {category!r} (known: {', '.join(CATEGORIES + EXTRA_CATEGORIES)})")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if category == "head":
        from .heads import generate_head

        head = generate_head(seed)
        return normalize_unit_diagonal(trimesh.Trimesh(head.vertices, head.faces, process=False))
    if resolution < 32:
        raise ValueError(f"resolution must be at least 32, got {resolution}")
    rng = np.random.default_rng([zlib.crc32(category.encode()), int(seed)])
    mesh = mesh_union(builder(rng), resolution)
    return normalize_unit_diagonal(mesh)


def object_specs(categories: Sequence[str], count: int, seed: int = 0) -> list[ShapeSpec]:
    """`count` objects of each category, ids `<category>_<index:05d>`, seeds derived from `seed`.

    The first n specs of a category are the same whatever `count` is, so a larger collection extends
    a smaller one. Raises `InputError` for an unknown category or a negative count.
    """
    unknown = [c for c in categories if c not in _BUILDERS and c not in EXTRA_CATEGORIES]
    if unknown:
        raise InputError(f"unknown category {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(CATEGORIES + EXTRA_CATEGORIES)})")
    if count < 0:
        raise InputError(f"count must be non-negative, got {count}")
    specs = []
    for category in categories:
        for index in range(count):
            state = np.random.SeedSequence([int(seed), zlib.crc32(category.encode()), index])
            specs.append(ShapeSpec(f"{category}_{index:05d}", category, int(state.generate_state(1)[0])))
    return specs


def normalize_unit_diagonal(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of `mesh` centred at its bounding-box centre and scaled to bounding-box diagonal 1.

    The ShapeNet normalisation: the result lies inside [-0.5, 0.5]^3. Orientation is left as it is.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    diagonal = float(np.linalg.norm(hi - lo))
    scale = 1.0 / diagonal if diagonal > 0 else 1.0
    return trimesh.Trimesh(vertices=(vertices - 0.5 * (lo + hi)) * scale, faces=np.asarray(mesh.faces),
                           process=False)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _smooth_profile(ys: Sequence[float], radii: Sequence[float], n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(n,) heights and radii of a monotone cubic (PCHIP) curve through the control points."""
    fine = np.linspace(ys[0], ys[-1], n)
    return fine, PchipInterpolator(ys, radii)(fine)


# --------------------------------------------------------------------------------------------
# Categories. Lengths in a frame where the object's largest dimension is about 1.

THIN = 0.036  # the thinnest part: 2.3 grid cells at the default resolution
GAP = 0.045  # the narrowest opening between parts: a thinner one may close up into a sliver


def build_chair(rng: np.random.Generator) -> list[Part]:
    """Seat + back (panel, slats or frame) + legs (four, pedestal with a star base, or side panels) + arms."""
    W, D, H = _u(rng, 0.40, 0.62), _u(rng, 0.38, 0.56), _u(rng, 0.36, 0.50)
    t = _u(rng, THIN + 0.01, 0.09)
    parts = [box((0, H - t / 2, 0), (W / 2, t / 2, D / 2), rounding=_u(rng, 0.0, 0.02))]
    parts += _chair_legs(rng, W, D, H, t)
    parts += _chair_back(rng, W, D, H, t)
    if rng.random() < 0.3:
        parts += _chair_arms(rng, W, D, H)
    return parts


def _chair_legs(rng: np.random.Generator, W: float, D: float, H: float, t: float) -> list[Part]:
    style = rng.choice(["four", "four", "four", "pedestal", "panels"])
    top = H - t / 2
    if style == "pedestal":
        r = _u(rng, 0.025, 0.045)
        spokes, reach = int(rng.choice([4, 5])), _u(rng, 0.22, 0.32)
        parts = [capsule((0, 0.06, 0), (0, top, 0), r), cylinder((0, 0.06, 0), r * 1.6, 0.03)]
        for k in range(spokes):
            a = 2 * np.pi * k / spokes + np.pi / spokes
            parts.append(capsule((0, 0.05, 0), (reach * np.sin(a), 0.02, -reach * np.cos(a)), 0.022))
        return parts
    if style == "panels":
        pt = _u(rng, THIN, 0.06)
        depth = D / 2 - _u(rng, 0.0, 0.06)
        return [box((s * (W / 2 - pt / 2), top / 2, 0), (pt / 2, top / 2, depth)) for s in (-1, 1)]
    r = _u(rng, 0.018, 0.032)
    inset, splay = _u(rng, 0.01, 0.05), _u(rng, 0.0, 0.05)
    square = rng.random() < 0.5
    parts, feet = [], {}
    for sx in (-1, 1):
        for sz in (-1, 1):
            head = np.array([sx * (W / 2 - inset - r), top, sz * (D / 2 - inset - r)])
            if square:
                parts.append(box((head[0], top / 2, head[2]), (r, top / 2, r)))
                feet[sx, sz] = head * (1, 0, 1)
            else:
                foot = head + (sx * splay, 0, sz * splay)
                foot[1] = r
                parts.append(capsule(head, foot, r))
                feet[sx, sz] = foot
    if rng.random() < 0.4:  # stretchers between front and back legs
        h = _u(rng, 0.15, 0.4)
        for sx in (-1, 1):
            a = feet[sx, -1] + h * (np.array([sx * (W / 2 - inset - r), top, -(D / 2 - inset - r)]) - feet[sx, -1])
            b = feet[sx, 1] + h * (np.array([sx * (W / 2 - inset - r), top, D / 2 - inset - r]) - feet[sx, 1])
            parts.append(capsule(a, b, max(0.7 * r, THIN / 2)))
    return parts


def _chair_back(rng: np.random.Generator, W: float, D: float, H: float, t: float) -> list[Part]:
    """The back, built upright in a frame pivoting at the seat's rear edge, then tilted backwards."""
    Hb, tb = _u(rng, 0.25, 0.55), _u(rng, THIN, 0.06)
    rot = rotation("x", _u(rng, 0.0, 15.0))  # the top leans towards +z
    pivot = np.array([0.0, H - t, D / 2 - tb / 2])
    width = W / 2 - _u(rng, 0.0, 0.03)

    def back_box(x: float, y0: float, y1: float, half_x: float) -> Part:
        return box(pivot + rot @ np.array([x, 0.5 * (y0 + y1), 0.0]), (half_x, 0.5 * (y1 - y0), tb / 2), rot)

    style = rng.choice(["panel", "panel", "slats", "rails"])
    if style == "panel":
        return [back_box(0.0, 0.0, Hb + t, width)]
    post = _u(rng, THIN / 2, 0.03)
    parts = [back_box(s * (width - post), 0.0, Hb + t, post) for s in (-1, 1)]
    n = int(rng.integers(2, 5))
    if style == "rails":  # horizontal rails between the posts, from the top down
        rail, gap = _u(rng, THIN / 2, 0.04), _u(rng, GAP, 0.12)
        y = Hb + t - rail
        for _ in range(n):
            if y - rail < t + 0.3 * Hb:
                break
            parts.append(back_box(0.0, y - rail, y + rail, width))
            y -= 2 * rail + gap
    else:  # vertical slats under a top rail
        rail, half = _u(rng, 0.03, 0.06), max(THIN / 2, 0.5 * post)
        parts.append(back_box(0.0, Hb + t - 2 * rail, Hb + t, width))
        opening = 2 * (width - 2 * post)
        while n > 0 and opening / (n + 1) - 2 * half < GAP:
            n -= 1
        for k in range(n):
            parts.append(back_box(-0.5 * opening + opening * (k + 1) / (n + 1), 0.0, Hb + t - rail, half))
    return parts


def _chair_arms(rng: np.random.Generator, W: float, D: float, H: float) -> list[Part]:
    height, r = _u(rng, 0.16, 0.25), _u(rng, THIN / 2, 0.03)
    parts = []
    for s in (-1, 1):
        x = s * (W / 2 - r)
        parts.append(capsule((x, H + height, -D / 2 + 0.04), (x, H + height, D / 2 - 0.02), r))
        parts.append(capsule((x, H - 0.02, -D / 2 + 0.06), (x, H + height, -D / 2 + 0.06), r))
    return parts


def build_table(rng: np.random.Generator) -> list[Part]:
    """Top (rectangular or round) + four legs (with an apron or a shelf), a pedestal, or trestles."""
    H, t = _u(rng, 0.40, 0.78), _u(rng, THIN, 0.06)
    round_top = rng.random() < 0.35
    if round_top:
        R = _u(rng, 0.3, 0.55)
        W = D = 2 * R
        parts = [cylinder((0, H - t / 2, 0), R, t / 2)]
        style = rng.choice(["four", "pedestal"])
    else:
        W = _u(rng, 0.8, 1.4)
        D = W * _u(rng, 0.4, 0.9)
        parts = [box((0, H - t / 2, 0), (W / 2, t / 2, D / 2), rounding=_u(rng, 0.0, 0.015))]
        style = rng.choice(["four", "four", "pedestal", "trestle"])
    under = H - t
    if style == "pedestal":
        r = _u(rng, 0.04, 0.09)
        parts.append(cylinder((0, under / 2 + 0.01, 0), r, under / 2 + 0.01))
        if rng.random() < 0.5:
            parts.append(cylinder((0, 0.02, 0), _u(rng, 0.18, 0.3) * min(W, D) / 0.7, 0.02))
        else:
            reach = _u(rng, 0.3, 0.45) * min(W, D)
            parts += [box((0, 0.025, 0), (reach, 0.025, 0.03)), box((0, 0.025, 0), (0.03, 0.025, reach))]
        return parts
    if style == "trestle":
        inset, pt = _u(rng, 0.05, 0.15), _u(rng, THIN, 0.06)
        for s in (-1, 1):
            x = s * (W / 2 - inset)
            parts.append(box((x, under / 2 + 0.01, 0), (pt / 2, under / 2 + 0.01, 0.3 * D)))
            parts.append(box((x, 0.02, 0), (pt / 2 + 0.01, 0.02, 0.42 * D)))
        parts.append(box((0, _u(rng, 0.25, 0.5) * under, 0), (W / 2 - inset, 0.025, 0.025)))
        return parts
    w = _u(rng, 0.02, 0.045)
    if round_top:
        spots = [(0.6 * W / 2 * np.cos(a), 0.6 * D / 2 * np.sin(a)) for a in np.pi / 4 + np.pi / 2 * np.arange(4)]
    else:
        inset = _u(rng, 0.0, 0.08)
        spots = [(sx * (W / 2 - inset - w), sz * (D / 2 - inset - w)) for sx in (-1, 1) for sz in (-1, 1)]
    parts += [box((x, under / 2 + 0.01, z), (w, under / 2 + 0.01, w)) for x, z in spots]
    if not round_top and rng.random() < 0.5:  # apron under the top
        x, z = abs(spots[0][0]), abs(spots[0][1])
        a = _u(rng, 0.03, 0.05)
        for s in (-1, 1):
            parts.append(box((s * x, under - a + 0.01, 0), (0.012 + THIN / 2, a, z)))
            parts.append(box((0, under - a + 0.01, s * z), (x, a, 0.012 + THIN / 2)))
    elif not round_top and rng.random() < 0.4:  # a shelf between the legs
        x, z = abs(spots[0][0]), abs(spots[0][1])
        parts.append(box((0, _u(rng, 0.12, 0.3) * under, 0), (x, THIN / 2 + 0.005, z)))
    return parts


def build_lamp(rng: np.random.Generator) -> list[Part]:
    """Base + stem + shade (open cone, closed frustum, drum or globe), or a desk lamp with a jointed arm."""
    Rb, hb = _u(rng, 0.08, 0.18), _u(rng, THIN, 0.07)
    base_style = rng.choice(["disc", "dome", "square"])
    if base_style == "disc":
        parts = [cylinder((0, hb / 2, 0), Rb, hb / 2)]
    elif base_style == "dome":
        parts = [ellipsoid((0, 0, 0), (Rb, 1.5 * hb, Rb), above=0.0)]
    else:
        parts = [box((0, hb / 2, 0), (Rb, hb / 2, Rb), rounding=0.01)]
    stem_r = _u(rng, THIN / 2, 0.025)
    if rng.random() < 0.3:
        return parts + _desk_arm(rng, hb, stem_r)
    Hs = _u(rng, 0.35, 1.0)
    shade = rng.choice(["cone", "cone", "frustum", "drum", "globe"])
    if shade == "globe":
        g = _u(rng, 0.08, 0.18)
        return parts + [capsule((0, hb / 2, 0), (0, Hs, 0), stem_r), ellipsoid((0, Hs + 0.7 * g, 0), (g, g, g))]
    h = _u(rng, 0.15, 0.35)
    rb = _u(rng, 0.12, 0.3)
    rt = rb if shade == "drum" else rb * _u(rng, 0.4, 0.85)
    wall = _u(rng, THIN, 0.045)
    y0, y1 = Hs - 0.6 * h, Hs + 0.4 * h
    hollow = shade != "frustum"
    parts.append(revolve((y0, y1), (rb, rt), wall=wall if hollow else 0.0, top=wall if hollow else None))
    parts.append(capsule((0, hb / 2, 0), (0, y1 - 0.5 * wall, 0), stem_r))  # ends in the shade's ceiling
    return parts


def _desk_arm(rng: np.random.Generator, hb: float, r: float) -> list[Part]:
    """Two arm segments in the yz-plane and a cone shade hanging from the elbow's far end, facing -z."""
    r = max(r, 0.02)
    a1, l1 = np.radians(_u(rng, -25, 15)), _u(rng, 0.3, 0.5)
    a2, l2 = np.radians(_u(rng, 30, 80)), _u(rng, 0.25, 0.45)
    p0 = np.array([0.0, hb / 2, 0.0])
    p1 = p0 + l1 * np.array([0.0, np.cos(a1), np.sin(a1)])
    p2 = p1 + l2 * np.array([0.0, np.cos(a2), -np.sin(a2)])
    h, rb = _u(rng, 0.1, 0.2), _u(rng, 0.07, 0.14)
    wall = _u(rng, THIN, 0.04)
    # shade axis: local +y points from the opening to the closed end; the opening faces down and forward
    rot = rotation("x", _u(rng, 20, 60))
    centre = p2 - rot @ np.array([0.0, h - 0.5 * wall, 0.0])
    shade = revolve((0.0, h), (rb, rb * _u(rng, 0.3, 0.6)), centre=centre, rot=rot, wall=wall, top=wall)
    return [capsule(p0, p1, r), capsule(p1, p2, r), ellipsoid(p1, (1.5 * r,) * 3), shade]


def build_vase(rng: np.random.Generator) -> list[Part]:
    """A random profile (foot, belly, neck, lip) revolved; hollow with an open mouth, or solid with handles."""
    H = 1.0
    r_foot, r_belly = _u(rng, 0.12, 0.3), _u(rng, 0.2, 0.45)
    r_neck = _u(rng, 0.08, 0.3)
    r_lip = r_neck * _u(rng, 1.0, 1.6)
    y_belly, y_neck = _u(rng, 0.2, 0.5), _u(rng, 0.62, 0.88)
    ys, rs = _smooth_profile([0.0, y_belly, y_neck, H], [r_foot, r_belly, r_neck, r_lip])
    hollow = rng.random() < 0.6
    wall = _u(rng, THIN, 0.05)
    rs = np.maximum(rs, wall + GAP if hollow else 0.06)  # a hollow neck keeps an opening of 2 GAP
    parts = [revolve(ys, rs, wall=wall if hollow else 0.0, bottom=1.5 * wall if hollow else None)]
    if hollow and rng.random() < 0.4:  # a rolled lip
        parts.append(torus((0, H - 0.3 * wall, 0), rs[-1] - 0.5 * wall, 0.6 * wall + THIN / 4))
    if rng.random() < 0.3:  # two handles in the xy-plane, kept outside the body
        yc, major = _u(rng, 0.45, 0.75) * H, _u(rng, 0.08, 0.16)
        minor = _u(rng, THIN / 2, 0.03)
        ys32, rs32 = ys.astype(np.float32), rs.astype(np.float32)

        def outside(p: np.ndarray) -> np.ndarray:
            return np.interp(p[:, 1], ys32, rs32) - np.float32(0.5 * wall) - np.hypot(p[:, 0], p[:, 2])

        rc = float(np.interp(yc, ys, rs))
        for s in (-1, 1):
            parts.append(torus((s * (rc + 0.5 * major), yc, 0), major, minor, rotation("x", 90), keep=outside))
    return parts


def build_airplane(rng: np.random.Generator) -> list[Part]:
    """Fuselage (revolved, nose at -z) + swept, tapered wings with dihedral + tailplane + fin + engines."""
    L, R = 1.0, _u(rng, 0.035, 0.07)
    nose, tail = _u(rng, 0.08, 0.2), _u(rng, 0.2, 0.35)
    s = np.linspace(0, 1, 48)  # 0 = tail end, 1 = nose tip
    end = _u(rng, 0.25, 0.5)  # tail radius / R
    radius = R * np.where(s > 1 - nose, np.sqrt(np.clip(1 - ((s - 1 + nose) / nose) ** 2, 0.0, 1.0)),
                          np.where(s < tail, end + (1 - end) * s / tail, 1.0))
    radius = np.maximum(radius, THIN / 2)
    # local y runs along the fuselage towards the nose: rotating by -90 degrees about x sends it to -z
    parts = [revolve(L * s, radius, centre=(0, 0, L / 2), rot=rotation("x", -90))]
    span = _u(rng, 0.75, 1.25) * L
    root = _u(rng, 0.14, 0.3)
    sweep, dihedral = _u(rng, 0.0, 35.0), _u(rng, 0.0, 7.0)
    z_le, y_w = _u(rng, -0.2, 0.05), _u(rng, -0.6, 0.6) * R
    thick = _u(rng, THIN, 0.05)
    taper = _u(rng, 0.3, 0.8)
    parts += _wing_pair(span / 2, root, taper, sweep, dihedral, (0.0, y_w, z_le), thick)
    t_span, t_root = _u(rng, 0.25, 0.45) * L, _u(rng, 0.08, 0.15)
    fin_h, fin_root = _u(rng, 0.12, 0.24), _u(rng, 0.12, 0.22)
    fin_z = L / 2 - fin_root - 0.02
    fin_le = fin_z + fin_h * np.tan(np.radians(_u(rng, 25, 50)))  # leading edge at the top
    fin = [(0.0, fin_z), (0.0, fin_z + fin_root), (fin_h, fin_le + fin_root * _u(rng, 0.4, 0.7)), (fin_h, fin_le)]
    parts.append(slab(fin, thick / 2, rot=rotation("z", 90)))  # local x (span) -> world y
    t_top = rng.random() < 0.2
    t_y = fin_h * 0.95 if t_top else 0.0
    t_z = (fin[3][1] + 0.02) if t_top else L / 2 - t_root - 0.03
    parts += _wing_pair(t_span / 2, t_root, 0.6, _u(rng, 10, 35), 0.0, (0.0, t_y, t_z), thick)
    if rng.random() < 0.7:
        parts += _engines(rng, span / 2, root, taper, sweep, dihedral, (0.0, y_w, z_le), thick)
    return parts


def _wing_pair(half_span: float, root: float, taper: float, sweep: float, dihedral: float,
               root_le: Sequence[float], thick: float) -> list[Part]:
    """Left and right trapezoidal wings from the fuselage's centre line (leading edge of the root at `root_le`)."""
    shift = half_span * np.tan(np.radians(sweep))
    parts = []
    for side in (-1, 1):
        poly = [(0.0, 0.0), (0.0, root), (side * half_span, shift + root * taper), (side * half_span, shift)]
        parts.append(slab(poly, thick / 2, centre=root_le, rot=rotation("z", side * dihedral)))
    return parts


def _engines(rng: np.random.Generator, half_span: float, root: float, taper: float, sweep: float,
             dihedral: float, root_le: Sequence[float], thick: float) -> list[Part]:
    """Nacelles under each wing (one or two per side), hung on pylons."""
    r, length = _u(rng, 0.03, 0.05), _u(rng, 0.12, 0.2)
    stations = [0.35] if rng.random() < 0.7 or half_span < 0.45 else [0.3, 0.6]
    parts = []
    for f in stations:
        x = f * half_span
        wing_y = root_le[1] + x * np.tan(np.radians(dihedral))
        le = root_le[2] + x * np.tan(np.radians(sweep))
        chord = root * (1 - f * (1 - taper))
        y = wing_y - thick / 2 - r - _u(rng, GAP, 0.06)
        z0 = le - 0.4 * length
        for side in (-1, 1):
            parts.append(capsule((side * x, y, z0), (side * x, y, z0 + length), r))
            pylon_half = (THIN / 2, 0.5 * (wing_y - y), 0.3 * chord)
            parts.append(box((side * x, 0.5 * (y + wing_y), le + 0.3 * chord), pylon_half))
    return parts


def build_car(rng: np.random.Generator) -> list[Part]:
    """Body (rounded box) + cabin (side-profile trapezoid, bonnet towards -z) + four wheels."""
    L, W = 1.0, _u(rng, 0.36, 0.48)
    rw, ww = _u(rng, 0.08, 0.12), _u(rng, 0.06, 0.09)
    hb = _u(rng, 0.13, 0.24)
    yb = rw * _u(rng, 0.5, 0.9)  # body bottom, below the axles so the wheels overlap the body
    parts = [box((0, yb + hb / 2, 0), (W / 2, hb / 2, L / 2), rounding=_u(rng, 0.02, 0.05))]
    wheel_z = L / 2 - _u(rng, 0.14, 0.22)
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(cylinder((sx * (W / 2 - 0.3 * ww), rw, sz * wheel_z), rw, ww / 2, rotation("z", 90)))
    style = rng.choice(["sedan", "sedan", "hatch", "van", "coupe"])
    roof = yb + hb + {"van": _u(rng, 0.2, 0.3), "coupe": _u(rng, 0.09, 0.13)}.get(style, _u(rng, 0.12, 0.18))
    z_front = {"van": -L / 2 + _u(rng, 0.08, 0.18)}.get(style, _u(rng, -0.25, -0.1))
    z_back = L / 2 - {"sedan": _u(rng, 0.15, 0.25), "coupe": _u(rng, 0.15, 0.25)}.get(style, _u(rng, 0.0, 0.04))
    slope_f, slope_b = (z_back - z_front) * _u(rng, 0.15, 0.3), (z_back - z_front) * _u(rng, 0.05, 0.25)
    base = yb + hb - 0.03
    # side profile as (local x, local z) = (world y, world z); rotating by 90 degrees about z sends local y to -x
    profile = [(base, z_front), (base, z_back), (roof, z_back - slope_b), (roof, z_front + slope_f)]
    parts.append(slab(profile, W / 2 * _u(rng, 0.8, 0.95), rot=rotation("z", 90)))
    if rng.random() < 0.15:  # a rear spoiler on two posts, clear of the body's rounded edge
        top, z = yb + hb, L / 2 - 0.07
        parts.append(box((0, top + 0.05, z), (W / 2 * 0.9, THIN / 2, 0.04)))
        parts += [box((s * W / 4, top + 0.02, z), (THIN / 2, 0.04, THIN / 2)) for s in (-1, 1)]
    return parts


_BUILDERS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "airplane": build_airplane, "car": build_car, "chair": build_chair, "lamp": build_lamp,
    "table": build_table, "vase": build_vase,
}
