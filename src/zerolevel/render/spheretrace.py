"""Sphere tracing of signed distance fields, differentiable w.r.t. the field (and the rays).

One job: turn a field (any callable / `nn.Module` mapping points (..., 3) to signed distances
(...), negative inside, e.g. `DenseGridSDF` or `SphereSDF`) and rays or cameras into per-ray and
per-pixel surface quantities — hit mask, depth, position, normal, Lambertian image, a soft
silhouette, and optionally the back (exit) surface — as tensors on the rays' device.

How (visibility without gradients, gradients from a few local evaluations, as nvdiffrast splits it):
1. Rays are clipped to a bounding sphere (radius 1: the working space); rays that miss it are
   misses without any field evaluation.
2. `march` (no autograd) steps t <- t + relax * f(o + t d) until |f| < epsilon (hit), t leaves the
   sphere (miss) or `max_steps` run out. Steps are signed, so a step that overshoots into the
   surface (a field that is not 1-Lipschitz, relax > 1) walks back. Only active rays are evaluated:
   the active set is compacted every step, so the cost shrinks as rays converge. Rays still
   marching after `max_steps` (grazing a silhouette) look ahead with a few probes and, if one is
   inside, bisect to the crossing.
3. A hit is made differentiable by ONE evaluation there (implicit differentiation, as in IDR and
   DVR): t = t0 - (f(x0) - sg[f(x0)]) / sg[grad f(x0) . d], sg = stop-gradient, x0 = o + t0 d. The
   value is t0; the gradient is dt = -df / (grad f . d), exact for the field's parameters and, when
   `origins` / `directions` carry gradients, for the rays too. |grad f . d| is clamped below by
   `guard` at grazing hits.
4. Normals are the normalised field gradient at the differentiable hit: by autograd with
   `create_graph=True` (analytic and neural fields) or by central differences (grids: one voxel
   apart, as SDFDiff). Both pass gradients to the parameters, including through the hit position.
5. Soft silhouette: PHORHUM's sigma_r = sigmoid(k * min_t d(o + t d)) with our sign (negative
   inside): `soft_mask = sigmoid(-k * f_min)`. The minimum is searched without gradients — among
   the marched samples for misses, among probes behind the hit for hits (so f_min <= f(hit) ~ 0
   there and the soft mask is >= 0.5) — refined by golden-section search for rays where it
   matters, then the field is evaluated once more there with gradients (by the envelope theorem
   the derivative of a minimum is the derivative at the argmin). This gives gradients on pixels
   whose rays miss, so masks can pull the surface out to them.
6. Back hits (PHORHUM renders front and back): the same march from the far side of the bounding
   sphere along -d gives the last crossing of the ray, for rays that hit the front.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..cameras import Cameras
from ..geometry.rays import ray_sphere_interval
from .lights import LightSpec
from .shading import lambertian, light_tensors

__all__ = ["sphere_trace", "render_sdf", "march", "field_gradient", "implicit_hit", "golden_section",
           "DEFAULT_SOFT_K"]

Field = Callable[[Tensor], Tensor]
NormalMode = Literal["auto", "autograd", "fd"]

# PHORHUM (seed 002, eq. 5.10) uses sigma_r = sigmoid(k min_t d) with k learned and gives no value;
# k = 50 per world unit makes the soft mask go from 0.5 at the surface to 0.08 at 0.05 (one
# 64^3 voxel is 0.03 in the unit-sphere working space) and is the starting point for our scenes.
DEFAULT_SOFT_K = 50.0
_PROBES = 8  # hits: probes behind the hit at radius * 2^-j, j = 1..8, bracket the interior minimum
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


# --------------------------------------------------------------------------------------------
# Public API


def sphere_trace(field: Field, origins: Tensor, directions: Tensor, *, radius: float = 1.0,
                 max_steps: int = 64, epsilon: float = 1e-4, relax: float = 1.0,
                 normal_mode: NormalMode = "auto", fd_step: float | Tensor | None = None,
                 back: bool = False, soft: bool = True, soft_k: float = DEFAULT_SOFT_K, soft_steps: int = 6,
                 soft_band: float = 6.0, guard: float = 0.05) -> dict[str, Tensor]:
    """Sphere-trace rays into a signed distance field; outputs differentiable w.r.t. the field.

    Args:
        field: (..., 3) points -> (...) signed distances, negative inside; same dtype and device
            as the rays. Its surface must lie inside the bounding sphere.
        origins, directions: (..., 3) ray origins and unit directions, world units. They may carry
            gradients (camera refinement); the march itself uses detached copies.
        radius: bounding sphere (centred at the origin) that clips every ray.
        max_steps: most field evaluations per ray in the march.
        epsilon: convergence threshold |f| < epsilon, world units.
        relax: step = relax * f. 1 is safe for exact SDFs; use < 1 for fields whose Lipschitz
            constant exceeds 1 (neural fields). Signed steps walk back after an overshoot.
        normal_mode: "autograd" (grad f by autograd, create_graph=True), "fd" (central differences
            with step `fd_step`), or "auto": "fd" for fields with a `voxel_size` (grids, as
            SDFDiff), else "autograd".
        fd_step: central-difference step, scalar or (3,) per axis; default the field's
            `voxel_size` if it has one, else 1e-3.
        back: also trace the last crossing (exit point) of each ray that hits.
        soft: compute the soft silhouette (min_sdf, soft_mask): the mask term of training; renders
            for display can skip it (it costs about a third of a forward pass).
        soft_k: sharpness k of the soft silhouette sigmoid(-k f_min), 1 / world units.
        soft_steps: golden-section steps refining the argmin of f along rays near the surface.
        soft_band: refine only rays with |soft_k * f_min| < soft_band, i.e. where the soft mask
            is not saturated (6: sigmoid(-6) ~ 2.5e-3); elsewhere the argmin is the best sample,
            and its gradient (tiny there) is not exact. `math.inf` refines every ray.
        guard: lower bound on |grad f . d| in the implicit derivative (grazing hits).
    Returns:
        dict of tensors, shapes for rays (...):
          mask (...) bool: the ray hits the surface;
          distance (...) ray parameter t of the hit (world units along the unit ray), 0 on misses;
          position (...,3) world hit point, 0 on misses;
          normal (...,3) unit outward normal grad f / |grad f| at the hit, 0 on misses;
          min_sdf (...) the minimum of f along the ray (see module docs); for rays that miss the
            bounding sphere a constant lower bound, (closest approach to the centre) - radius;
          soft_mask (...) sigmoid(-soft_k * min_sdf) in (0, 1), >= ~0.5 where mask (with soft);
          steps (...) int64 field evaluations of the march (0 for rays missing the sphere);
          with `back`: back_mask, back_distance, back_position, back_normal likewise for the
            exit point (outward normal, so it faces away from the camera).
        Differentiable: distance, position, normal, min_sdf, soft_mask (and back_*).
    """
    o, d = torch.broadcast_tensors(origins, directions)
    shape = o.shape[:-1]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    mode, step = _normal_settings(field, normal_mode, fd_step)
    near, far, meets = ray_sphere_interval(o.detach(), d.detach(), radius)
    far = torch.where(meets, far, near)  # rays missing the sphere: an empty interval
    front = march(field, o.detach(), d.detach(), near, far, max_steps=max_steps, epsilon=epsilon,
                  relax=relax, radius=radius)
    differentiable = torch.is_grad_enabled() and _needs_grad(field, o, d)
    with torch.set_grad_enabled(differentiable):
        out = _surface(field, o, d, front["hit"], front["t"], mode, step, guard)
        out["steps"] = front["steps"]
        if soft:
            out.update(_soft_silhouette(field, o, d, front, far, meets, radius, soft_k, soft_steps,
                                        soft_band))
        if back:
            back_hit, back_t = _trace_back(field, o.detach(), d.detach(), front, far, max_steps,
                                           epsilon, relax, radius)
            surface = _surface(field, o, d, back_hit, back_t, mode, step, guard)
            out.update({f"back_{key}": value for key, value in surface.items()})
    return {key: value.reshape(shape + value.shape[1:]) for key, value in out.items()}


def render_sdf(field: Field, cameras: Cameras, *, lights: LightSpec = None, ambient: float = 0.1,
               albedo: float = 1.0, uv: Tensor | None = None, ray_chunk: int | None = None,
               **trace_options) -> dict[str, Tensor]:
    """Sphere-trace a field from a batch of cameras into images (or pixel subsets).

    All views' rays are traced together (one march), in chunks of `ray_chunk` rays if given (to
    bound the march's memory; with autograd on, every chunk's graph is kept for backward).

    Args:
        field: (..., 3) -> (...) SDF, surface inside the bounding sphere. Rays are cast in the
            cameras' dtype and converted to the field's (first parameter's) dtype.
        cameras: B cameras (OpenCV convention, pixel centres at integer + 0.5).
        lights, ambient, albedo: Lambertian shading as `zerolevel.render.raycast` renders the
            ground truth: lights None = a headlight per view, or `DirectionalLight`(s), shared or
            per view.
        uv: pixel coordinates to render instead of whole images: (N, 2) shared by all views or
            (B, N, 2) per view.
        ray_chunk: most rays per `sphere_trace` call (None: all at once).
        **trace_options: keyword arguments of `sphere_trace` (radius, max_steps, epsilon, relax,
            normal_mode, fd_step, back, soft, soft_k, soft_steps, soft_band, guard).
    Returns:
        dict with leading shape S = (B, H, W) for whole images or (B, N) with `uv`:
          every output of `sphere_trace` (mask, distance, position, normal, min_sdf, soft_mask,
          steps, back_*), shaped S + trailing;
          depth S: camera-space z of the hit (differentiable), 0 on misses;
          image S: Lambertian shading in [0, 1], 0 on the background;
          with back=True also back_depth S.
    """
    if uv is None:
        origins, directions = cameras.image_rays()
        shape = (len(cameras), cameras.height, cameras.width)
    else:
        origins, directions = cameras.rays(uv.to(cameras.dtype))
        shape = tuple(origins.shape[:2])
    dtype = _field_dtype(field, origins.dtype)
    B = len(cameras)
    origins, directions = origins.reshape(-1, 3).to(dtype), directions.reshape(-1, 3).to(dtype)
    out = _trace_chunks(field, origins, directions, ray_chunk, trace_options)
    out = {key: value.reshape((B, -1) + value.shape[1:]) for key, value in out.items()}  # (B, N, ...)

    R, t = cameras.R.to(dtype), cameras.t.to(dtype)
    for prefix in ("", "back_"):
        if prefix + "position" in out:
            z = (out[prefix + "position"] * R[:, None, 2, :]).sum(-1) + t[:, None, 2]
            out[prefix + "depth"] = torch.where(out[prefix + "mask"], z, torch.zeros_like(z))
    light_dirs, intensities = light_tensors(lights, cameras)
    shade = lambertian(out["normal"], light_dirs.to(dtype)[:, None], intensities.to(dtype)[:, None],
                       ambient, albedo)
    out["image"] = torch.where(out["mask"], shade, torch.zeros_like(shade))
    return {key: value.reshape(shape + value.shape[2:]) for key, value in out.items()}


@torch.no_grad()
def march(field: Field, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor, *,
          max_steps: int = 64, epsilon: float = 1e-4, relax: float = 1.0,
          radius: float = 1.0) -> dict[str, Tensor]:
    """Sphere tracing without gradients to the first crossing of f = 0 in [near, far].

    Steps t <- t + relax * f(o + t d) (signed: an overshoot into the surface walks back). A ray
    stops when |f| < epsilon (hit), when t > far (miss), or after `max_steps` evaluations
    ("stalled", typically grazing a silhouette). A stalled ray is a hit if its last sample is
    inside (f < 0), or if one of `_PROBES` probes ahead of it, at radius * 2^-j (j = 8..1), is
    inside: the crossing is then found by bisection to `epsilon` and a final secant step. Rays
    with near >= far are not evaluated. Only the still-active rays are evaluated each step.

    Args:
        field: (M, 3) -> (M,) SDF.
        origins, directions: (N, 3) rays (unit directions).
        near, far: (N,) the interval to search.
        radius: scale of the look-ahead probes (the bounding sphere's radius).
    Returns:
        dict of (N,) tensors: hit bool; t, ray parameter of the hit, else of the last sample
        (`near` for rays not evaluated); stalled bool, out of steps; f_min, t_min, the marched
        sample with the least SDF (f_min +inf for rays not evaluated); t_before, the sample
        before it (`near` if none: the start of a bracket of the minimum); steps int64,
        evaluations made in the march.
    """
    n, device = len(origins), origins.device
    hit = torch.zeros(n, dtype=torch.bool, device=device)
    stalled = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    # per ray: last sample t, f_min, t_min, t_before (one tensor: one scatter per step)
    packed = torch.stack([near, torch.full_like(near, math.inf), near, near])
    idx = torch.nonzero(near < far).squeeze(1)
    rays = torch.cat([origins, directions], dim=1)[idx]  # (M, 6): o, d of the active rays
    # state of the active rays, one contiguous row per quantity (compaction: one index_select):
    # t, far, last sample t, f_min, t_min, t_before, last f
    t0 = near[idx]
    state = torch.stack([t0, far[idx], t0, torch.full_like(t0, math.inf), t0, t0, t0])
    for step in range(max_steps):
        if len(idx) == 0:
            break
        t = state[0]
        f = field(torch.addcmul(rays[:, :3], rays[:, 3:], t[:, None]))
        better = f < state[3]
        state[3:6] = torch.where(better, torch.stack([f, t, state[2]]), state[3:6])
        state[2] = t
        state[6] = f
        state[0].add_(f, alpha=relax)
        converged = f.abs() < epsilon
        finished = torch.nonzero(converged | (state[0] > state[1])).squeeze(1)
        if len(finished):
            ids = idx[finished]
            packed[:, ids] = state[2:6].index_select(1, finished)
            hit[ids] = converged[finished]
            steps[ids] = step + 1
            keep = torch.nonzero(converged.logical_or_(state[0] > state[1]).logical_not_()).squeeze(1)
            idx, rays, state = idx[keep], rays.index_select(0, keep), state.index_select(1, keep)
    if len(idx):  # out of steps
        packed[:, idx] = state[2:6]
        steps[idx] = max_steps
        stalled[idx] = True
        hit[idx] = state[6] < 0  # inside: a crossing was stepped over and not yet walked back
        ahead = state[6] >= 0
        found, t = _cross_ahead(field, rays[ahead, :3], rays[ahead, 3:], state[2, ahead],
                                state[1, ahead], radius, epsilon)
        hit[idx[ahead]] = found
        packed[0, idx[ahead]] = t
    return {"hit": hit, "t": packed[0], "stalled": stalled, "f_min": packed[1], "t_min": packed[2],
            "t_before": packed[3], "steps": steps}


def _cross_ahead(field: Field, o: Tensor, d: Tensor, t: Tensor, far: Tensor, radius: float,
                 epsilon: float) -> tuple[Tensor, Tensor]:
    """First sign change ahead of stalled rays (f(o + t d) >= 0), among probes at radius * 2^-j.

    Returns hit (M,) bool and t (M,): the crossing (bisection to `epsilon` in the bracket, then
    one secant step) where hit, else the input t.
    """
    ts = torch.cat([t[:, None], torch.minimum(t[:, None] + _probe_offsets(radius, t), far[:, None])], 1)
    fs = field(o[:, None] + ts[:, :, None] * d[:, None])  # (M, P + 1)
    negative = fs < 0
    hit = negative.any(dim=1)
    j = negative.to(torch.int8).argmax(dim=1, keepdim=True).clamp_min(1)  # first probe inside
    rows = torch.nonzero(hit).squeeze(1)
    a, b = ts.gather(1, j - 1)[rows, 0], ts.gather(1, j)[rows, 0]  # j >= 1 where hit
    fa, fb = fs.gather(1, j - 1)[rows, 0], fs.gather(1, j)[rows, 0]
    width = float((b - a).max()) if len(rows) else 0.0
    for _ in range(min(60, max(0, math.ceil(math.log2(max(width, epsilon) / epsilon))))):
        m = 0.5 * (a + b)
        fm = field(o[rows] + m[:, None] * d[rows])
        inside = fm < 0
        a, fa = torch.where(inside, a, m), torch.where(inside, fa, fm)
        b, fb = torch.where(inside, m, b), torch.where(inside, fm, fb)
    root = a + (b - a) * fa / (fa - fb).clamp_min(torch.finfo(fa.dtype).tiny)  # secant: fa >= 0 > fb
    return hit, t.index_put((rows,), root)


def _probe_offsets(radius: float, like: Tensor) -> Tensor:
    """(P,) increasing offsets radius * 2^-j, j = P..1, with `like`'s dtype and device."""
    return radius * 2.0 ** -torch.arange(_PROBES, 0, -1, dtype=like.dtype, device=like.device)


def field_gradient(field: Field, points: Tensor, mode: Literal["autograd", "fd"] = "autograd",
                   step: float | Tensor = 1e-3) -> Tensor:
    """Spatial gradient of a field, differentiable w.r.t. its parameters when grad mode is on.

    Args:
        field: (..., 3) -> (...) SDF.
        points: (M, 3) world points; if they carry gradients, so does the result through them.
        mode: "autograd" (torch.autograd.grad with create_graph=True) or "fd" (central
            differences (f(p + h e_a) - f(p - h e_a)) / 2h: six evaluations, no autograd.grad).
        step: the central-difference step h, scalar or (3,) per axis, world units.
    Returns:
        (M, 3) unnormalised gradient.
    """
    if len(points) == 0:
        return torch.zeros_like(points)
    if mode == "fd":
        h = torch.as_tensor(step, dtype=points.dtype, device=points.device).expand(3)
        offsets = torch.diag(h)
        probes = torch.stack([points[:, None, :] + offsets, points[:, None, :] - offsets])
        f = field(probes)  # (2, M, 3)
        return (f[0] - f[1]) / (2.0 * h)
    if mode != "autograd":
        raise ValueError(f"normal mode must be 'autograd' or 'fd', got {mode!r}")
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        p = points if (create and points.requires_grad) else points.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(field(p).sum(), p, create_graph=create)
    return g


# --------------------------------------------------------------------------------------------
# Pieces


def _surface(field: Field, o: Tensor, d: Tensor, hit: Tensor, t0: Tensor, mode: str,
             step: float | Tensor, guard: float) -> dict[str, Tensor]:
    """Differentiable hit quantities for rays `hit` at ray parameters `t0` (N,); zeros elsewhere.

    Returns mask (N,), distance (N,), position (N, 3), normal (N, 3).
    """
    idx = torch.nonzero(hit).squeeze(1)
    t, x = implicit_hit(field, o[idx], d[idx], t0[idx], guard)
    g = field_gradient(field, x, mode, step)
    n = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(1e-12)
    N, dtype = len(o), o.dtype
    return {"mask": hit,
            "distance": torch.zeros(N, dtype=dtype, device=o.device).index_put((idx,), t),
            "position": torch.zeros(N, 3, dtype=dtype, device=o.device).index_put((idx,), x),
            "normal": torch.zeros(N, 3, dtype=dtype, device=o.device).index_put((idx,), n)}


def implicit_hit(field: Field, o: Tensor, d: Tensor, t0: Tensor, guard: float
                  ) -> tuple[Tensor, Tensor]:
    """t = t0 - (f(x0) - sg f(x0)) / sg(grad f . d) and x = o + t d, for (M,) hits.

    Value t0; derivative dt = -df / (grad f . d) w.r.t. the field's parameters and (through
    x0 = o + t0 d) the rays. Without grad mode: t0 and x0 as they are.
    """
    x0 = o + t0[:, None] * d
    if not torch.is_grad_enabled() or len(x0) == 0:
        return t0, x0
    g = field_gradient(field, x0.detach(), "autograd").detach()
    f = field(x0)
    slope = (g * d.detach()).sum(-1)
    slope = torch.where(slope.abs() < guard, torch.copysign(torch.full_like(slope, guard), slope), slope)
    t = t0 - (f - f.detach()) / slope
    return t, o + t[:, None] * d


def _soft_silhouette(field: Field, o: Tensor, d: Tensor, front: dict[str, Tensor], far: Tensor,
                     meets: Tensor, radius: float, k: float, steps: int, band: float
                     ) -> dict[str, Tensor]:
    """min_sdf (N,) and soft_mask (N,) = sigmoid(-k min_sdf); see the module docs, point 5."""
    t_star, f_star = _argmin_along_rays(field, o.detach(), d.detach(), front, far, radius, k, steps,
                                        band)
    idx = torch.nonzero(meets).squeeze(1)
    if torch.is_grad_enabled():  # evaluate again, with gradients, at the argmin
        f_star = field(o[idx] + t_star[idx, None] * d[idx])
    else:
        f_star = f_star[idx]
    # rays that miss the bounding sphere: (closest approach to the centre) - radius <= f
    closest = torch.linalg.vector_norm(torch.linalg.cross(o.detach(), d.detach()), dim=-1)
    f_min = (closest - radius).index_put((idx,), f_star)
    return {"min_sdf": f_min, "soft_mask": torch.sigmoid(-k * f_min)}


@torch.no_grad()
def _argmin_along_rays(field: Field, o: Tensor, d: Tensor, front: dict[str, Tensor], far: Tensor,
                       radius: float, k: float, steps: int, band: float) -> tuple[Tensor, Tensor]:
    """(N,) ray parameter of the (approximate) minimum of f along each ray, and (N,) f there.

    The least marched sample, bracketed by its neighbours [t_before, t_min + f_min]; for hits and
    stalled rays, the least of that, the hit (or last sample) and `_PROBES` probes behind it at
    radius * 2^-j, bracketed by the neighbouring probes. Rays whose minimum is within `band / k`
    of the zero level (where the soft mask is not saturated) are refined by golden-section search
    in their bracket.
    """
    t_best, f_best = front["t_min"].clone(), front["f_min"].clone()
    lo = front["t_before"].clone()
    hi = torch.minimum(front["t_min"] + front["f_min"].clamp_min(0.0), far)
    probe = torch.nonzero(front["hit"] | front["stalled"]).squeeze(1)
    if len(probe):
        th = front["t"][probe]
        ts = torch.cat([th[:, None], torch.minimum(th[:, None] + _probe_offsets(radius, th),
                                                   far[probe, None]),
                        far[probe, None]], dim=1)  # (M, P + 2), last = sentinel for the bracket
        fs = field(o[probe, None] + ts[:, :-1, None] * d[probe, None])
        j = fs.argmin(dim=1, keepdim=True)
        better = fs.gather(1, j)[:, 0] < f_best[probe]
        rows = probe[better]
        j = j[better]
        t_best[rows], f_best[rows] = ts[better].gather(1, j)[:, 0], fs[better].gather(1, j)[:, 0]
        lo[rows] = ts[better].gather(1, (j - 1).clamp_min(0))[:, 0]
        hi[rows] = ts[better].gather(1, j + 1)[:, 0]
    rows = torch.nonzero((k * f_best).abs() < band).squeeze(1)
    if len(rows) and steps > 0:
        t_best[rows], f_best[rows] = golden_section(field, o[rows], d[rows], lo[rows], hi[rows],
                                                     t_best[rows], f_best[rows], steps)
    return t_best, f_best


def golden_section(field: Field, o: Tensor, d: Tensor, a: Tensor, b: Tensor, t_best: Tensor,
                    f_best: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """(M,) argmin of f(o + t d) on [a, b] by `steps` golden-section steps (one evaluation each),
    and (M,) f there.

    Falls back to `t_best` (value `f_best`) where that is lower than anything the search found.
    """
    def f_at(t: Tensor) -> Tensor:
        return field(o + t[:, None] * d)

    c, e = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fe = f_at(c), f_at(e)
    for _ in range(steps):
        left = fc < fe  # the minimum is in [a, e]
        a, b = torch.where(left, a, c), torch.where(left, e, b)
        new = torch.where(left, b - _INV_PHI * (b - a), a + _INV_PHI * (b - a))
        f_new = f_at(new)
        c, e, fc, fe = (torch.where(left, new, e), torch.where(left, c, new),
                        torch.where(left, f_new, fe), torch.where(left, fc, f_new))
    t = torch.where(fc < fe, c, e)
    f = torch.minimum(fc, fe)
    better = f < f_best
    return torch.where(better, t, t_best), torch.where(better, f, f_best)


def _trace_back(field: Field, o: Tensor, d: Tensor, front: dict[str, Tensor], far: Tensor,
                max_steps: int, epsilon: float, relax: float, radius: float) -> tuple[Tensor, Tensor]:
    """Last crossing of each front-hitting ray: march from its far sphere point along -d.

    Returns back_hit (N,) bool (= the front hit mask) and t (N,) ray parameter along +d from the
    original origin.
    """
    hits = torch.nonzero(front["hit"]).squeeze(1)
    far_h = far[hits]
    start = o[hits] + far_h[:, None] * d[hits]
    length = far_h - front["t"][hits] + epsilon  # back to the front hit, at most
    back = march(field, start, -d[hits], torch.zeros_like(length), length, max_steps=max_steps,
                 epsilon=epsilon, relax=relax, radius=radius)
    # a back march that does not converge (a grazing ray, the slowest case) leaves the ray
    # tangent to the surface: its exit is its entry
    t_back = torch.where(back["hit"], far_h - back["t"], front["t"][hits])
    return front["hit"], torch.zeros_like(far).index_put((hits,), t_back)


def _trace_chunks(field: Field, origins: Tensor, directions: Tensor, chunk: int | None,
                  options: dict) -> dict[str, Tensor]:
    """`sphere_trace` over (N, 3) rays in chunks of `chunk`, outputs concatenated."""
    if chunk is None or chunk >= len(origins):
        return sphere_trace(field, origins, directions, **options)
    parts = [sphere_trace(field, origins[i:i + chunk], directions[i:i + chunk], **options)
             for i in range(0, len(origins), int(chunk))]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _normal_settings(field: Field, mode: str, step: float | Tensor | None
                     ) -> tuple[str, float | Tensor]:
    """Resolve "auto" and the default central-difference step for `field`."""
    if mode not in ("auto", "autograd", "fd"):
        raise ValueError(f"normal_mode must be 'auto', 'autograd' or 'fd', got {mode!r}")
    voxel = getattr(field, "voxel_size", None)
    if mode == "auto":
        mode = "fd" if voxel is not None else "autograd"
    if step is None:
        step = voxel if voxel is not None else 1e-3
    return mode, step


def _needs_grad(field: Field, *tensors: Tensor) -> bool:
    """Whether any ray tensor or any parameter of `field` requires grad."""
    if any(t.requires_grad for t in tensors):
        return True
    params = getattr(field, "parameters", None)
    return params is not None and any(p.requires_grad for p in params())


def _field_dtype(field: Field, default: torch.dtype) -> torch.dtype:
    """dtype of the field's first floating parameter or buffer, else `default`."""
    for getter in ("parameters", "buffers"):
        for tensor in getattr(field, getter, lambda: [])():
            if tensor.is_floating_point():
                return tensor.dtype
    return default
