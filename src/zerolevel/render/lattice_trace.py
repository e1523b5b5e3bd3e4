"""Sphere tracing of a batch of dense SDF lattices at once: SDFDiff's renderer, for a network that
predicts one lattice per image.

One job: render B lattices of signed distances (`Lattices`: values at the nodes of a regular lattice
over [-bound, bound]^3, read by trilinear interpolation), each seen by its own cameras, into
per-pixel hit masks, depths, normals, Lambertian shading and a soft silhouette, differentiable w.r.t.
the lattice values.

`render.spheretrace` traces one field; a network's batch holds B of them, and tracing them one by one
would pay the march's per-step overhead B times. Here every ray carries the index of its lattice,
and all rays of all lattices march together:
1. Rays are clipped to the lattice's box (the slab test); a ray that misses it is a miss.
2. The march (no autograd) steps t <- t + f(o + t d) until |f| < epsilon (hit), t leaves the box
   (miss) or `max_steps` run out (then a hit if its last sample is inside); the active set is
   compacted every step. A point is read by index arithmetic on the flattened batch of lattices:
   one gather of its cell's 8 corners.
3. A hit is made differentiable by one evaluation (`spheretrace.implicit_hit`: dt = -df / (grad f .
   d)); its normal is the central difference one node apart (SDFDiff's) at the differentiable hit.
4. Soft silhouette sigmoid(-k f_min): f_min is the least sample of the march for a miss (refined by
   golden-section search where the silhouette is not saturated), and the least of a few probes
   behind the hit for a hit, evaluated again with gradients at its place (by
   the envelope theorem the derivative of a minimum is the derivative at the argmin). Pixels the
   surface misses so pull it out, pixels it covers but should not push it in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cameras import Cameras
from ..geometry.rays import ray_box_interval
from .spheretrace import DEFAULT_SOFT_K, golden_section, implicit_hit

__all__ = ["Lattices", "trace_lattices", "render_lattices", "lattice_shading"]

PROBES = (0.5, 1.0, 2.0, 4.0)  # hits: probes this many nodes behind the hit bracket the interior minimum
SOFT_BAND = 6.0  # misses whose soft silhouette is not saturated (|k f_min| < 6) refine their minimum ...
GOLDEN_STEPS = 6  # ... by this many golden-section steps


class Lattices:
    """B lattices of SDF values read by trilinear interpolation.

    `values` (B, n, n, n) are the values at the nodes of a regular lattice over [-bound, bound]^3,
    indexed [x, y, z]: node (i, j, k) lies at -bound + (i, j, k) * cell, cell = 2 bound / (n - 1).
    Outside the box a point is clamped to it and its distance to the box added (as
    `fields.grid.DenseGridSDF`), so a step from outside still points at the box. Differentiable in
    the values and in the points.
    """

    def __init__(self, values: Tensor, bound: float):
        if values.dim() != 4 or len(set(values.shape[1:])) != 1 or values.shape[-1] < 2:
            raise ValueError(f"values must be (B, n, n, n) with n >= 2, got {tuple(values.shape)}")
        if bound <= 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.values, self.bound = values, float(bound)
        self.n = n = values.shape[-1]
        self.cell = 2.0 * self.bound / (n - 1)
        self._flat = values.reshape(-1)
        self._corners = torch.tensor([a * n * n + b * n + c for a in (0, 1) for b in (0, 1) for c in (0, 1)],
                                     device=values.device)

    def __len__(self) -> int:
        return len(self.values)

    def __call__(self, points: Tensor, ids: Tensor, outside: bool = True) -> Tensor:
        """(..., 3) points, each read in lattice ids[...] ((...) long, broadcastable) -> (...) values.
        `outside=False` skips the distance to the box: for points known to lie in it (the march's)."""
        shape = points.shape[:-1]
        p = points.reshape(-1, 3)
        ids = ids.expand(shape).reshape(-1)
        n = self.n
        u = (p + self.bound) * (1.0 / self.cell)  # lattice coordinates
        q = u.clamp(0.0, n - 1.0)
        lower = q.detach().long().clamp_(max=n - 2)  # truncation: the floor of q >= 0
        w = (q - lower).to(self.values.dtype)
        base = ((ids * n + lower[:, 0]) * n + lower[:, 1]) * n + lower[:, 2]
        c = self._flat.index_select(0, (base[:, None] + self._corners).reshape(-1)).reshape(-1, 2, 2, 2)
        c = torch.lerp(c[..., 0], c[..., 1], w[:, 2, None, None])
        c = torch.lerp(c[..., 0], c[..., 1], w[:, 1, None])
        f = torch.lerp(c[:, 0], c[:, 1], w[:, 0])
        if outside:  # + the distance to the box (0 inside; the square root's gradient kept finite)
            away = ((u - q) * self.cell).square().sum(dim=-1)
            f = f + torch.where(away > 0, away.clamp_min(1e-30).sqrt(), 0.0).to(f.dtype)
        return f.reshape(shape)

    def gradient(self, points: Tensor, ids: Tensor) -> Tensor:
        """(M, 3) central differences one node apart (SDFDiff's normals) at (M, 3) points of lattices
        ids (M,); differentiable in the values and the points."""
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * self.cell
        probes = torch.stack([points[:, None] + offsets, points[:, None] - offsets])  # (2, M, 3, 3)
        f = self(probes, ids[:, None])
        return (f[0] - f[1]) / (2.0 * self.cell)

    def bound_to(self, ids: Tensor):
        """The field of M rays of lattices `ids` ((M,) long): (M, 3) points -> (M,) values."""
        return lambda points: self(points, ids)


@torch.no_grad()
def march_lattices(lattices: Lattices, origins: Tensor, directions: Tensor, ids: Tensor, near: Tensor,
                   far: Tensor, max_steps: int, epsilon: float) -> dict[str, Tensor]:
    """Sphere tracing without gradients to the first crossing of f = 0 in [near, far], every ray in
    its own lattice. (N, 3) rays, (N,) ids, near, far -> dict of (N,) tensors: hit bool; t of the
    hit, else of the last sample (`near` for rays not evaluated); f_min, t_min: the least sample
    (f_min +inf, t_min `near` for rays not evaluated); t_before, the sample before it (`near` if
    none); steps int64."""
    n, device = len(origins), origins.device
    hit = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    out = torch.stack([near, torch.full_like(near, math.inf), near, near])  # t, f_min, t_min, t_before
    idx = torch.nonzero(near < far).squeeze(1)
    o, d, ray_ids, t_far = origins[idx], directions[idx], ids[idx], far[idx]
    # the active rays' state, one row per quantity: t, f_min, t_min, t_before (the sample before t_min)
    state = torch.stack([near[idx], torch.full_like(t_far, math.inf), near[idx], near[idx]])
    t_last = near[idx].clone()  # the previous sample
    frozen = torch.zeros(len(idx), dtype=torch.bool, device=device)  # finished, written, not yet dropped
    f = t_last
    for step in range(max_steps):
        if len(idx) == 0:
            break
        t = state[0]
        f = lattices(torch.addcmul(o, d, t[:, None]), ray_ids, outside=False)
        better = (f < state[1]) & ~frozen
        state[1:] = torch.where(better, torch.stack([f, t, t_last]), state[1:])
        converged = f.abs() < epsilon
        t_last = t.clone()
        state[0] = torch.where(converged | frozen, t, t + f)
        done = (converged | (state[0] > t_far)) & ~frozen
        finished = torch.nonzero(done).squeeze(1)
        if len(finished):
            at = idx[finished]
            out[:, at] = state.index_select(1, finished)
            hit[at], steps[at] = converged[finished], step + 1
            frozen |= done
        if 2 * int(frozen.sum()) > len(idx):  # drop the finished rays once they are half the set
            keep = torch.nonzero(~frozen).squeeze(1)
            idx, o, d, ray_ids, t_far = idx[keep], o[keep], d[keep], ray_ids[keep], t_far[keep]
            state, t_last, f, frozen = state[:, keep], t_last[keep], f[keep], frozen[keep]
    left = torch.nonzero(~frozen).squeeze(1)
    if len(left):  # out of steps: a hit when the last sample is inside (a crossing stepped over)
        at = idx[left]
        out[:, at] = state.index_select(1, left)
        hit[at], steps[at] = f[left] < 0, max_steps
    return {"hit": hit, "t": out[0], "f_min": out[1], "t_min": out[2], "t_before": out[3], "steps": steps}


def trace_lattices(lattices: Lattices, origins: Tensor, directions: Tensor, ids: Tensor, *,
                   max_steps: int = 64, epsilon: float | None = None, soft_k: float = DEFAULT_SOFT_K,
                   guard: float = 0.05) -> dict[str, Tensor]:
    """Sphere-trace rays, each into its own lattice; outputs differentiable w.r.t. the lattices' values.

    Args:
        lattices: the B lattices.
        origins, directions: (N, 3) rays (unit directions), in the lattices' frame.
        ids: (N,) long, the lattice of each ray.
        max_steps: most evaluations per ray in the march.
        epsilon: convergence threshold |f| < epsilon, world units (default 1% of a cell).
        soft_k: sharpness of the soft silhouette sigmoid(-k f_min), 1 / world units.
        guard: lower bound on |grad f . d| in the implicit derivative (grazing hits).
    Returns:
        dict of (N,) or (N, 3) tensors: mask bool (the ray hits), distance (t of the hit, 0 on
        misses), position, normal (unit, outward; 0 on misses), min_sdf, soft_mask, steps int64.
    """
    dtype = lattices.values.dtype
    origins, directions = origins.to(dtype), directions.to(dtype)
    ids = ids.to(device=origins.device, dtype=torch.long)
    epsilon = 0.01 * lattices.cell if epsilon is None else epsilon
    near, far, _ = ray_box_interval(origins.detach(), directions.detach(), lattices.bound)
    front = march_lattices(lattices, origins.detach(), directions.detach(), ids, near, far, max_steps, epsilon)
    N, device = len(origins), origins.device
    hits = torch.nonzero(front["hit"]).squeeze(1)
    o, d, hit_ids = origins[hits], directions[hits], ids[hits]
    t, x = implicit_hit(lattices.bound_to(hit_ids), o, d, front["t"][hits], guard)
    g = lattices.gradient(x, hit_ids)
    normal = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(1e-12)
    min_sdf = _least_along_rays(lattices, origins, directions, ids, front, far, hits, soft_k)
    return {"mask": front["hit"],
            "distance": torch.zeros(N, dtype=dtype, device=device).index_put((hits,), t),
            "position": torch.zeros(N, 3, dtype=dtype, device=device).index_put((hits,), x),
            "normal": torch.zeros(N, 3, dtype=dtype, device=device).index_put((hits,), normal),
            "min_sdf": min_sdf, "soft_mask": torch.sigmoid(-soft_k * min_sdf), "steps": front["steps"]}


def _least_along_rays(lattices: Lattices, o: Tensor, d: Tensor, ids: Tensor, front: dict[str, Tensor],
                      far: Tensor, hits: Tensor, soft_k: float) -> Tensor:
    """(N,) the least value along each ray, with gradients at its place: for a miss, the march's least
    sample, refined by golden-section search between its neighbours where the soft silhouette is not
    saturated (|soft_k f_min| < `SOFT_BAND`); for a hit, the least of the hit and `PROBES` behind it
    (within the box)."""
    t_min = front["t_min"].clone()
    with torch.no_grad():
        if len(hits):
            t_hit = front["t"][hits]
            behind = t_hit[:, None] + lattices.cell * t_hit.new_tensor(PROBES)
            behind = torch.minimum(behind, far[hits, None].clamp_min(t_hit[:, None]))
            candidates = torch.cat([t_hit[:, None], behind], dim=1)  # (H, 1 + probes)
            points = o[hits, None] + candidates[..., None] * d[hits, None]
            values = lattices(points, ids[hits, None])
            t_min[hits] = torch.gather(candidates, 1, values.argmin(dim=1, keepdim=True))[:, 0]
        f_min = front["f_min"]
        rows = torch.nonzero(~front["hit"] & ((soft_k * f_min).abs() < SOFT_BAND)).squeeze(1)
        if len(rows):
            low = front["t_before"][rows]
            high = torch.minimum(t_min[rows] + f_min[rows].clamp_min(0.0), far[rows])
            t_min[rows], _ = golden_section(lattices.bound_to(ids[rows]), o[rows], d[rows], low, high,
                                            t_min[rows], f_min[rows], GOLDEN_STEPS)
    return lattices(o + t_min[:, None] * d, ids)


def lattice_shading(normal: Tensor, mask: Tensor, light_dirs: Tensor, intensities: Tensor, ambient: Tensor,
                    albedo: Tensor) -> Tensor:
    """The datasets' shading of a hit: albedo * clip(ambient + I max(0, n . l), 0, 1), 0 on misses.

    normal (C, ..., 3), mask (C, ...); per view: light_dirs (C, 3) unit towards the light,
    intensities (C,), ambient (C,), albedo (C, 3) -> (C, ..., 3)."""
    extra = (1,) * (normal.dim() - 2)
    cos = (normal * light_dirs.reshape(len(light_dirs), *extra, 3)).sum(-1)
    grey = (ambient.reshape(-1, *extra) + intensities.reshape(-1, *extra) * cos.clamp_min(0.0)).clamp(0.0, 1.0)
    rgb = grey[..., None] * albedo.reshape(len(albedo), *extra, 3)
    return torch.where(mask[..., None], rgb, torch.zeros_like(rgb))


def render_lattices(lattices: Lattices, cameras: Cameras, lattice_of_view: Tensor,
                    **trace_options) -> dict[str, Tensor]:
    """Sphere-trace C whole views, view c of lattice `lattice_of_view[c]`, in one march.

    Args:
        lattices: the B lattices.
        cameras: C cameras of one image size H x W, in the lattices' frame.
        lattice_of_view: (C,) long.
        **trace_options: keyword arguments of `trace_lattices`.
    Returns:
        every output of `trace_lattices`, shaped (C, H, W) or (C, H, W, 3).
    """
    if len(lattice_of_view) != len(cameras):
        raise ValueError(f"{len(cameras)} cameras but {len(lattice_of_view)} lattice indices")
    origins, directions = cameras.image_rays()  # (C, H, W, 3)
    shape = origins.shape[:-1]
    ids = lattice_of_view.to(origins.device).reshape(-1, 1, 1).expand(shape)
    out = trace_lattices(lattices, origins.reshape(-1, 3), directions.reshape(-1, 3), ids.reshape(-1),
                         **trace_options)
    return {key: value.reshape(shape + value.shape[1:]) for key, value in out.items()}
