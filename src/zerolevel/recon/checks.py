"""Sanity checks of a scene before a fit starts: catch wrong camera and normal conventions early.

Camera conventions are the commonest failure when running published code on one's own data, and a
fit that starts from a wrong convention runs for minutes and then produces garbage. `check_scene`
looks for three symptoms, in working space (the object inside the unit sphere):

- normals that face away from their cameras (dot(n, ray) > 0), with a diagnosis of the likely
  cause: camera-space normals declared as world-space, or an OpenGL (y up, z back) camera frame;
- masks whose foreground lies outside the projection of the unit sphere (scene not normalised, or
  a wrong camera);
- views whose mask disagrees with the visual hull carved by the other views.

Hard problems raise `InputError` with one line naming the views; soft ones are returned as warnings.
Everything is vectorised numpy: well under a second for 32 views at 256^2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..geometry.rays import ray_sphere_interval
from ..scene import Scene, View

# A view is wrong when more than this fraction of its foreground normals face away from the camera;
# above WARN_AWAY it is reported as a warning (silhouette pixels of a smooth surface graze the ray).
AWAY_FRACTION = 0.30
WARN_AWAY = 0.10
# A conversion "fixes" a view when afterwards few normals face away and the boundary normals point
# out of the silhouette (this rules out plain negation, which an OpenGL flip half undoes).
FIXED_AWAY = 0.10
FIXED_OUTWARD = 0.75
# More than this fraction of a mask outside the projected unit sphere is an error.
OUTSIDE_SPHERE = 0.05
# Visual-hull agreement: a 48^3 grid in [-1, 1]^3; a view whose mask is covered less than
# MIN_COVERAGE by the hull of the other views disagrees; below WARN_COVERAGE it is a warning.
HULL_GRID = 48
MIN_COVERAGE = 0.70
WARN_COVERAGE = 0.85
_MIN_PIXELS = 20  # views with fewer foreground pixels are not judged
_OPENGL = np.array([1.0, -1.0, -1.0])


def check_scene(scene: Scene, source: str) -> list[str]:
    """Check a scene's cameras, normals and masks for convention errors before fitting.

    Args:
        scene: the scene in working space (object inside the unit sphere).
        source: what to name in messages (the scene folder).
    Returns:
        Warnings (one line each) for soft issues.
    Raises:
        InputError: one line naming the wrong views and the likely cause, when normals face away
            from their cameras, masks lie outside the unit sphere's projection, or (with >= 3
            masked views) a view's mask disagrees with the visual hull of the others.
    """
    warnings: list[str] = []
    problems = _check_normals(scene.views, warnings)
    problems += _check_unit_sphere(scene.views)
    problems += _check_hull(scene.views, warnings)
    if problems:
        raise InputError("; ".join(problems), source)
    return warnings


# ====================================================================== rays
def _apply(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(..., 3) vectors x -> M x per vector. einsum, not `@`: BLAS threads make these
    thin products many times slower on few cores (see docs/design-notes.md)."""
    return np.einsum("ij,...j->...i", M, x)


def _pixel_rays(view: View) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre (3,) and (H, W, 3) world-space unit ray directions through pixel centres."""
    R = np.asarray(view.world_to_camera, np.float64)[:3, :3]
    t = np.asarray(view.world_to_camera, np.float64)[:3, 3]
    v, u = np.mgrid[0:view.height, 0:view.width].astype(np.float64) + 0.5
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    d_cam = _apply(np.linalg.inv(np.asarray(view.K, np.float64)), pix)
    d = _apply(R.T, d_cam)
    return -R.T @ t, d / np.linalg.norm(d, axis=-1, keepdims=True)


def _names(views: list[View]) -> str:
    return ("view " if len(views) == 1 else "views ") + ", ".join(v.name for v in views)


def _percent(values: list[float]) -> str:
    lo, hi = round(100 * min(values)), round(100 * max(values))
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


# ====================================================================== normals facing the camera
_CAUSES = {
    "camera": ("looks like camera-space normals declared as world-space "
               '(set "normal_space": "camera" in scene.json)'),
    "opengl": ("looks like an OpenGL (y up, z back) convention "
               "(negate the y and z components of the normals in camera space)"),
    "opengl-camera": ("looks like OpenGL (y up, z back) camera-space normals declared as world-space "
                      '(negate their y and z, and set "normal_space": "camera" in scene.json)'),
    None: "normals face away from the camera (check the normal maps and the camera convention)",
}


def _conversions(normal: np.ndarray, R: np.ndarray) -> dict[str, np.ndarray]:
    """The (N, 3) normals re-read under each suspected mistake, in world space."""
    return {"camera": _apply(R.T, normal),                         # R^T n
            "opengl": _apply(R.T, _apply(R, normal) * _OPENGL),    # R^T F R n
            "opengl-camera": _apply(R.T, normal * _OPENGL)}        # R^T F n


def _outward_fraction(normal_cam: np.ndarray, boundary: np.ndarray, outward: np.ndarray) -> float:
    """Fraction of boundary pixels whose (H, W, 3) camera-space normal (x right, y down) points outward."""
    if not boundary.any():
        return 1.0
    dots = (normal_cam[boundary][:, :2] * outward[boundary]).sum(-1)
    return float((dots > 0).mean())


def _silhouette_outward(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary pixels of a mask (H, W) and (H, W, 2) directions (du, dv) pointing out of it."""
    boundary = mask & ~ndimage.binary_erosion(mask, border_value=0)
    soft = ndimage.uniform_filter(mask.astype(np.float64), size=5, mode="constant")
    gv, gu = np.gradient(soft)
    return boundary, -np.stack([gu, gv], axis=-1)


def _check_normals(views: list[View], warnings: list[str]) -> list[str]:
    """Errors (grouped by diagnosed cause) for views whose normals face away from their cameras."""
    wrong: dict[str | None, list[tuple[View, float]]] = {}
    for view in views:
        if view.normal is None or view.mask is None:
            continue
        fg = view.mask & (np.linalg.norm(view.normal, axis=-1) > 0.5)
        if fg.sum() < _MIN_PIXELS:
            continue
        _, rays = _pixel_rays(view)
        normal = view.normal[fg].astype(np.float64)
        away = float(((normal * rays[fg]).sum(-1) > 0).mean())
        if away <= WARN_AWAY:
            continue
        if away <= AWAY_FRACTION:
            warnings.append(f"view {view.name}: {away:.0%} of the foreground normals face away from the camera")
            continue
        wrong.setdefault(_diagnose(view, fg, normal, rays[fg]), []).append((view, away))
    return [f"{_names([v for v, _ in items])}: {_percent([a for _, a in items])} of the foreground normals "
            f"face away from the camera; {_CAUSES[cause]}" for cause, items in wrong.items()]


def _diagnose(view: View, fg: np.ndarray, normal: np.ndarray, rays: np.ndarray) -> str | None:
    """The suspected mistake that best explains a view's back-facing normals, or None."""
    R = np.asarray(view.world_to_camera, np.float64)[:3, :3]
    boundary, outward = _silhouette_outward(fg)
    best, best_away = None, FIXED_AWAY
    for cause, fixed in _conversions(normal, R).items():
        away = float(((fixed * rays).sum(-1) > 0).mean())
        if away > best_away:
            continue
        image = np.zeros(fg.shape + (3,))
        image[fg] = _apply(R, fixed)  # camera space
        if _outward_fraction(image, boundary, outward) >= FIXED_OUTWARD:
            best, best_away = cause, away
    return best


# ====================================================================== masks inside the unit sphere
def _check_unit_sphere(views: list[View]) -> list[str]:
    """Errors for views whose mask lies largely outside the projected unit sphere."""
    bad = []
    for view in views:
        if view.mask is None or view.mask.sum() < _MIN_PIXELS:
            continue
        origin, rays = _pixel_rays(view)
        hits = ray_sphere_interval(origin, rays)[2]
        outside = float((view.mask & ~hits).sum() / view.mask.sum())
        if outside > OUTSIDE_SPHERE:
            bad.append((view, outside))
    if not bad:
        return []
    return [f"{_names([v for v, _ in bad])}: {_percent([f for _, f in bad])} of the mask lies outside the "
            "projection of the unit sphere; the scene is not normalised (object inside the unit sphere) "
            "or the camera is wrong"]


# ====================================================================== views agreeing on a visual hull
def _check_hull(views: list[View], warnings: list[str]) -> list[str]:
    """Errors for views whose mask is poorly covered by the visual hull of the other views.

    Views are judged leave-one-out, and the worst disagreeing view is dropped from the carving
    before the others are judged again, so one bad mask does not make the good ones look bad.
    """
    masked = [v for v in views if v.mask is not None and v.mask.sum() >= _MIN_PIXELS]
    if len(masked) < 3:
        return []
    axis = np.linspace(-1.0, 1.0, HULL_GRID)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    spacing = axis[1] - axis[0]
    pixels, dissent, radii = [], [], []  # per view: (N,) flat pixel or -1; (N,) outside the mask; splat px
    for view in masked:
        W2C = np.asarray(view.world_to_camera, np.float64)
        cam = _apply(W2C[:3, :3], points) + W2C[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = _apply(np.asarray(view.K, np.float64), cam)[:, :2] / z[:, None]
        col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        inside = (z > 1e-6) & (col >= 0) & (col < view.width) & (row >= 0) & (row < view.height)
        flat = np.where(inside, row.clip(0, view.height - 1) * view.width + col.clip(0, view.width - 1),
                        -1).astype(np.int64)
        pixels.append(flat)
        dissent.append(inside & ~view.mask.reshape(-1)[flat.clip(0)])
        depth = float(np.median(z[inside])) if inside.any() else 1.0
        # half a grid cell's projected size, plus a one-pixel dilation
        radii.append(int(np.ceil(0.5 * float(view.K[0, 0]) * spacing / max(depth, 1e-6))) + 1)
    dissent = np.stack(dissent)  # (V, N)
    active = list(range(len(masked)))
    disagree: list[tuple[View, float]] = []
    while len(active) >= 3:
        votes = dissent[active].sum(0)
        coverage = {}
        for i in active:
            kept = (votes - dissent[i]) == 0
            coverage[i] = _coverage(masked[i].mask, pixels[i][kept], radii[i])
        worst = min(active, key=coverage.get)
        if coverage[worst] >= MIN_COVERAGE:
            warnings += [f"view {masked[i].name}: its mask is only {coverage[i]:.0%} covered by the visual "
                         "hull of the other views" for i in active if coverage[i] < WARN_COVERAGE]
            break
        disagree.append((masked[worst], coverage[worst]))
        active.remove(worst)
    if not disagree:
        return []
    return [f"{_names([v for v, _ in disagree])}: only {_percent([c for _, c in disagree])} of the mask is "
            "covered by the visual hull of the other views; the views disagree (wrong camera, or a "
            "mask that does not belong to this view)"]


def _coverage(mask: np.ndarray, flat: np.ndarray, radius: int) -> float:
    """Fraction of an (H, W) mask covered by hull points at flat pixel indices, splatted `radius` px."""
    hull = np.zeros(mask.size, bool)
    hull[flat[flat >= 0]] = True
    hull = ndimage.maximum_filter(hull.reshape(mask.shape), size=2 * radius + 1)
    return float((hull & mask).sum() / mask.sum())
