"""NeuS volume rendering of a signed distance field, with SuperNormal's speed-ups.

One job: turn a field (any callable or `nn.Module` mapping points `(..., 3)` or `(M, 3)` to signed
distances `(...)` or `(M, 1)`, negative inside) and rays into rendered normals, opacity and depth,
differentiably with respect to the field's parameters and the NeuS sharpness.

    variance = NeuSVariance()                                   # learnable inv_s = exp(10 * 0.3)
    out = volume_render(field, origins, directions, variance=variance)           # plain rays
    out = volume_render_patches(field, cameras, top_left, 3, variance=variance,  # SuperNormal
                                gradient="dfd")
    grid = update_occupancy(field, OccupancyGrid.full(64), variance=variance)    # occupancy.py
    images = render_normals(field, cameras, variance=variance)   # whole (B, H, W) images, chunked

Rendering (NeuS, Wang et al. 2021, as implemented by SuperNormal, Cao & Taketomi 2024):
- Samples lie inside the bounding sphere (radius 1: the working space). A ray that misses it gets
  zero opacity and costs no field evaluation.
- `n_samples` points per ray, evaluated exactly (no cos-annealed estimate): the n - 1 intervals
  between consecutive points are the "sections" of NeuS, with opacity
  `alpha_i = clip((Phi_s(f_i) - Phi_s(f_{i+1}) + 1e-5) / (Phi_s(f_i) + 1e-5), 0, 1)` (the 1e-5 as
  in NeuS and SuperNormal), `Phi_s = sigmoid(inv_s * f)`, and weights
  `w_i = alpha_i prod_{j<i}(1 - alpha_j)`.
- Sample points form a uniform grid between near and far, shifted by one random offset per ray or
  patch when a `torch.Generator` is given (training: nerfacc's stratified marching, as SuperNormal),
  by half a step otherwise (evaluation). No hierarchical / importance resampling.
- The gradient of interval i is taken at its start point (SuperNormal); rendered normal
  `sum_i w_i grad f_i` (world space, not normalised: the eikonal term keeps |grad f| near 1, as in
  NeuS and SuperNormal), opacity `sum_i w_i`, depth `sum_i w_i z_i` at interval midpoints (not divided
  by the opacity), and the eikonal residuals `|grad f_i| - 1` of every rendered interval.

Patch-based ray marching (SuperNormal): the rays of a k x k pixel patch share sample *planes*
parallel to the image plane (camera-z depths z_i, point `o + z_i / (d . forward) d`), so the samples
of neighbouring pixels at one plane index form a grid. The patch's near/far is the union of its
rays' sphere intervals, in camera z; samples outside the sphere are evaluated (the DFD stencil needs
them) but not rendered.

Gradient modes: `analytic` (autograd, `create_graph=True`: double back-propagation), `fd` (central
differences along x, y, z: 6 extra evaluations per sample, SuperNormal's step 1e-3) and `dfd`
(directional finite differences, no extra evaluation): see `dfd_gradient`.

Empty-space skipping: an `OccupancyGrid` (`occupancy.py`, refreshed by `update_occupancy`) marks
cells near the zero level set; intervals whose ends both lie in empty cells are neither evaluated
nor rendered (for patches, a plane is skipped only when every ray of the patch is empty there).
SuperNormal's published code returns a partial output dict when a batch yields no sample (an empty
grid), and its training loop then crashes; here an entirely empty grid falls back to dense sampling
with a `RuntimeWarning` and `out["occupancy_fallback"] = True`, and a batch that only sees empty
space of a non-empty grid returns every output (zeros, `evaluations == 0`, an empty `eikonal`),
still attached to the sharpness so that `backward()` works.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..cameras import Cameras
from ..geometry.rays import ray_sphere_interval
from .occupancy import OccupancyGrid

__all__ = ["NeuSVariance", "volume_render", "volume_render_patches", "render_normals", "dfd_gradient",
           "GRADIENT_MODES"]

Field = Callable[[Tensor], Tensor]
GRADIENT_MODES = ("analytic", "fd", "dfd")
_ALPHA_EPS = 1e-5  # NeuS / SuperNormal: (p + 1e-5) / (c + 1e-5)


# --------------------------------------------------------------------------------------------
# Sharpness


class NeuSVariance(nn.Module):
    """NeuS's learnable sharpness: one parameter `variance`, inverse standard deviation
    `inv_s = exp(10 * variance)` clipped to [1e-6, 1e6] (NeuS `SingleVarianceNetwork`).

    Args:
        init: initial `variance`; NeuS uses 0.3 (inv_s ~ 20), SuperNormal's DiLiGenT config 0.5
            (inv_s ~ 148).
    """

    def __init__(self, init: float = 0.3):  # NeuS: init_val = 0.3
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> Tensor:
        """0-d tensor inv_s."""
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


# --------------------------------------------------------------------------------------------
# Public renderers


def volume_render(field: Field, origins: Tensor, directions: Tensor, *,
                  variance: NeuSVariance | Tensor | float, n_samples: int = 64,
                  gradient: str = "analytic", generator: torch.Generator | None = None,
                  occupancy: OccupancyGrid | None = None, fd_step: float = 1e-3,
                  sphere_radius: float = 1.0) -> dict:
    """Volume-render plain rays (samples spaced along each ray on its own).

    Args:
        field: points (M, 3) -> SDF (M,) or (M, 1).
        origins: (..., 3) world-space ray origins.
        directions: (..., 3) world-space unit ray directions.
        variance: sharpness: a `NeuSVariance`, or inv_s as a float / 0-d tensor.
        n_samples: field evaluations per ray (n - 1 rendered intervals), >= 2.
        gradient: "analytic" or "fd" ("dfd" needs patches: `volume_render_patches`).
        generator: jitter the samples (training); None: deterministic mid-step samples (evaluation).
        occupancy: optional empty-space skipping grid.
        fd_step: step h of the "fd" central differences.
        sphere_radius: the bounding sphere (centred at the origin) the samples lie in.
    Returns:
        dict with normal (..., 3) `sum w grad f`; opacity (...) `sum w`; distance (...) `sum w t` (ray
        length at interval midpoints); eikonal (M,) `|grad f| - 1` at the rendered intervals (M may
        be 0); evaluations (int) points passed to the field; occupancy_fallback (bool).
    """
    if gradient == "dfd":
        raise ValueError("gradient='dfd' needs neighbouring rays on shared planes: use "
                         "volume_render_patches (k >= 2) instead of volume_render")
    origins, directions = torch.broadcast_tensors(origins, directions)
    shape = origins.shape[:-1]
    o = origins.reshape(-1, 1, 1, 3)
    d = directions.reshape(-1, 1, 1, 3)
    out = _render(field, o, d, d[:, 0, 0], variance=variance, n_samples=n_samples, gradient=gradient,
                  generator=generator, occupancy=occupancy, fd_step=fd_step, radius=sphere_radius)
    out.pop("depth")  # the "plane" of a lone ray is perpendicular to it: depth == distance
    return _reshape_outputs(out, shape)


def volume_render_patches(field: Field, cameras: Cameras, top_left: Tensor, k: int, *,
                          variance: NeuSVariance | Tensor | float, n_samples: int = 64,
                          gradient: str = "analytic", generator: torch.Generator | None = None,
                          occupancy: OccupancyGrid | None = None, fd_step: float = 1e-3,
                          sphere_radius: float = 1.0) -> dict:
    """Volume-render k x k pixel patches with SuperNormal's patch-based ray marching.

    Samples of a patch lie on planes parallel to its camera's image plane (module docstring).

    Args:
        field, variance, n_samples, generator, occupancy, fd_step, sphere_radius: as `volume_render`.
        cameras: B cameras.
        top_left: (B, N, 2) or (N, 2) integer (column, row) of each patch's top-left pixel.
        k: patch size (SuperNormal trains with 3); "dfd" needs k >= 2.
        gradient: "analytic", "fd" or "dfd".
    Returns:
        dict with normal (B, N, k, k, 3); opacity (B, N, k, k); depth (B, N, k, k) `sum w z` in
        camera z; distance (B, N, k, k) `sum w t` in ray length; eikonal (M,); evaluations (int);
        occupancy_fallback (bool).
    """
    if gradient == "dfd" and k < 2:
        raise ValueError(f"gradient='dfd' needs patches of at least 2 x 2 pixels, got k={k}")
    origins, directions = cameras.patch_rays(top_left, k)  # (B, N, k, k, 3)
    B, N = origins.shape[:2]
    forward = cameras.forward[:, None, :].expand(B, N, 3).reshape(B * N, 3)
    out = _render(field, origins.reshape(B * N, k, k, 3), directions.reshape(B * N, k, k, 3), forward,
                  variance=variance, n_samples=n_samples, gradient=gradient, generator=generator,
                  occupancy=occupancy, fd_step=fd_step, radius=sphere_radius)
    return _reshape_outputs(out, (B, N, k, k))


def render_normals(field: Field, cameras: Cameras, *, variance: NeuSVariance | Tensor | float,
                   n_samples: int = 64, gradient: str = "analytic", patch_size: int = 3,
                   occupancy: OccupancyGrid | None = None, fd_step: float = 1e-3,
                   sphere_radius: float = 1.0, chunk_rays: int = 16384) -> dict[str, Tensor]:
    """Whole images, without gradients: the image is tiled by `patch_size` patches (the last row and
    column of patches overlap the previous ones when the size is not a multiple), rendered in
    chunks of about `chunk_rays` rays with `volume_render_patches` (evaluation sampling).

    Returns:
        dict with normal (B, H, W, 3), opacity (B, H, W), depth (B, H, W) camera z (`sum w z`:
        divide by the opacity for the surface depth), all detached.
    """
    k = int(patch_size)
    B, H, W = len(cameras), cameras.height, cameras.width
    if k < 1 or k > min(H, W):
        raise ValueError(f"patch_size must be in [1, {min(H, W)}] for {W}x{H} images, got {k}")
    top_left = _tile(W, H, k, cameras.device)
    out = {"normal": cameras.K.new_zeros(B, H, W, 3), "opacity": cameras.K.new_zeros(B, H, W),
           "depth": cameras.K.new_zeros(B, H, W)}
    offsets = torch.arange(k, device=cameras.device)
    per_chunk = max(1, chunk_rays // (B * k * k))
    with torch.no_grad():
        for chunk in top_left.split(per_chunk):
            res = volume_render_patches(field, cameras, chunk, k, variance=variance,
                                        n_samples=n_samples, gradient=gradient, occupancy=occupancy,
                                        fd_step=fd_step, sphere_radius=sphere_radius)
            rows = chunk[:, 1, None, None] + offsets[:, None]  # (n, k, 1)
            cols = chunk[:, 0, None, None] + offsets[None, :]  # (n, 1, k)
            for key in out:
                out[key][:, rows, cols] = res[key].to(out[key].dtype)
    return out


def dfd_gradient(sdf: Tensor, points: Tensor) -> Tensor:
    """SuperNormal's directional finite differences: SDF gradients from the samples of a patch alone.

    The samples of a k x k patch lie on S shared planes, so each sample has neighbours along its ray
    (next plane), to the right and below (same plane, neighbouring pixel). With the three
    displacement vectors between actual sample points as rows of M,
    `grad f ~= M^-1 [df_ray, df_right, df_down]`. As in SuperNormal: a forward difference along the
    ray; central differences across the patch, one-sided at its borders. Rows of M are scaled to unit
    length and the directions taken per pixel (they do not change from plane to plane for rays from
    one centre), so one 3x3 inverse per pixel serves all samples (SuperNormal's `V_inverse`).

    Args:
        sdf: (..., S, k, k) SDF at the samples (plane, row, column); k >= 2.
        points: (..., S, k, k, 3) the samples; the rays of a patch start from one point (pinhole).
    Returns:
        (..., S - 1, k, k, 3) gradients at the samples of planes 0..S-2 (starts of the intervals).
    """
    points = points.detach()
    ray = points[..., 1:, :, :, :] - points[..., :-1, :, :, :]
    right = _neighbour_difference(points[..., :-1, :, :, :], dim=-2)
    down = _neighbour_difference(points[..., :-1, :, :, :], dim=-3)
    # A patch whose rays all miss the bounding sphere has an empty interval: its planes coincide
    # and the ray step is 0. Its weights are 0, but an inf here would turn 0 * inf into NaN, so
    # lengths are floored and the missing ray direction replaced by the image-plane normal.
    tiny = torch.finfo(points.dtype).tiny ** 0.5
    derivatives = torch.stack([
        (sdf[..., 1:, :, :] - sdf[..., :-1, :, :]) / ray.norm(dim=-1).clamp_min(tiny),
        _neighbour_difference(sdf[..., :-1, :, :], dim=-1) / right.norm(dim=-1).clamp_min(tiny),
        _neighbour_difference(sdf[..., :-1, :, :], dim=-2) / down.norm(dim=-1).clamp_min(tiny)], dim=-1)
    rows = [ray[..., -1, :, :, :], right[..., -1, :, :, :], down[..., -1, :, :, :]]
    rows = [r / r.norm(dim=-1, keepdim=True).clamp_min(tiny) for r in rows]
    across = torch.linalg.cross(rows[1], rows[2])
    empty = rows[0].norm(dim=-1, keepdim=True) < 0.5
    rows[0] = torch.where(empty, across / across.norm(dim=-1, keepdim=True).clamp_min(tiny), rows[0])
    inverse = torch.linalg.inv(torch.stack(rows, dim=-2))  # (..., k, k, 3, 3)
    return (inverse.unsqueeze(-5) * derivatives.unsqueeze(-2)).sum(-1)


# --------------------------------------------------------------------------------------------
# The renderer shared by plain rays (1 x 1 patches marching along the ray) and patches


@dataclass
class _Samples:
    """Samples of P patches of k x k rays on S shared planes.

    points (P, S, k, k, 3); t (P, S, k, k) ray length; z (P, S) plane depth along the marching
    normal; rendered (P, S - 1, k, k) bool: interval kept and starting inside the sphere;
    keep (P, S - 1) bool: interval evaluated; needed (P, S) bool: plane evaluated.
    """

    points: Tensor
    t: Tensor
    z: Tensor
    rendered: Tensor
    keep: Tensor
    needed: Tensor


def _render(field: Field, origins: Tensor, directions: Tensor, normal: Tensor, *, variance,
            n_samples: int, gradient: str, generator: torch.Generator | None,
            occupancy: OccupancyGrid | None, fd_step: float, radius: float) -> dict:
    """Render P patches: origins, directions (P, k, k, 3), marching-plane normal (P, 3).

    Returns the outputs with leading shape (P, k, k).
    """
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    occupancy, fallback = _usable_occupancy(occupancy)
    s = _sample(origins, directions, normal, n_samples, generator, radius, occupancy)
    sdf, grad = _evaluate(field, s.points, s.needed, s.keep, gradient, fd_step)
    inv_s = _inv_s(variance, sdf)
    weights = _weights(sdf, inv_s, s.rendered)
    z_mid = 0.5 * (s.z[:, 1:] + s.z[:, :-1])
    t_mid = 0.5 * (s.t[:, 1:] + s.t[:, :-1])
    evaluations = int(s.needed.sum()) * s.points.shape[2] * s.points.shape[3]
    if gradient == "fd":
        evaluations += 6 * int(s.keep.sum()) * s.points.shape[2] * s.points.shape[3]
    return {
        "normal": (weights.unsqueeze(-1) * grad).sum(1),
        "opacity": weights.sum(1),
        "depth": (weights * z_mid[:, :, None, None]).sum(1),
        "distance": (weights * t_mid).sum(1),
        "eikonal": grad[s.rendered].norm(dim=-1) - 1.0,
        "evaluations": evaluations,
        "occupancy_fallback": fallback,
    }


def _usable_occupancy(grid: OccupancyGrid | None) -> tuple[OccupancyGrid | None, bool]:
    """The grid to use (None: dense) and whether an empty grid forced the dense fallback."""
    if grid is None or bool(grid.occupied.any()):
        return grid, False
    warnings.warn("occupancy grid has no occupied cell: sampling densely instead (refresh it with "
                  "update_occupancy, or lower its threshold)", RuntimeWarning, stacklevel=3)
    return None, True


def _sample(origins: Tensor, directions: Tensor, normal: Tensor, n: int,
            generator: torch.Generator | None, radius: float,
            occupancy: OccupancyGrid | None) -> _Samples:
    """Shared planes between each patch's near and far, and which intervals to evaluate/render."""
    with torch.no_grad():
        cos = (directions * normal[:, None, None, :]).sum(-1)  # (P, k, k)
        t0, t1, hit = ray_sphere_interval(origins, directions, radius)
        hit = hit & (cos > 0)
        inf = torch.full_like(t0, math.inf)
        near = torch.where(hit, t0 * cos, inf).amin(dim=(1, 2))
        far = torch.where(hit, t1 * cos, -inf).amax(dim=(1, 2))
        any_hit = hit.any(dim=(1, 2))
        near = torch.where(any_hit, near, torch.zeros_like(near))
        far = torch.where(any_hit, far, torch.ones_like(far))
        index = torch.arange(n, device=near.device, dtype=near.dtype)
        z = near[:, None] + (index + _offsets(len(near), generator, near)[:, None]) \
            * ((far - near) / n)[:, None]  # (P, S)
        t = z[:, :, None, None] / cos.clamp_min(1e-6)[:, None]  # (P, S, k, k)
        points = origins[:, None] + t[..., None] * directions[:, None]
        inside = (points.square().sum(-1) <= radius * radius) & hit[:, None]
        keep = inside[:, :-1].any(dim=(2, 3))
        if occupancy is not None:
            occ = occupancy.lookup(points)
            keep &= (occ[:, :-1] | occ[:, 1:]).any(dim=(2, 3))
        needed = torch.zeros_like(inside[:, :, 0, 0])
        needed[:, :-1] |= keep
        needed[:, 1:] |= keep
        rendered = inside[:, :-1] & keep[:, :, None, None]
    return _Samples(points, t, z, rendered, keep, needed)


def _offsets(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """(n,) fraction of a step the samples are shifted by: random (training) or 1/2 (evaluation)."""
    if generator is None:
        return torch.full((n,), 0.5, dtype=like.dtype, device=like.device)
    return torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)


def _evaluate(field: Field, points: Tensor, needed: Tensor, keep: Tensor, gradient: str,
              fd_step: float) -> tuple[Tensor, Tensor]:
    """SDF at the needed planes and gradients at the interval starts.

    Args:
        points: (P, S, k, k, 3); needed: (P, S) planes to evaluate; keep: (P, S - 1) intervals.
    Returns:
        sdf (P, S, k, k) (1.0 at planes not evaluated); grad (P, S - 1, k, k, 3) (0 where not kept).
    """
    P, S, k = points.shape[:3]
    index = None if bool(needed.all()) else needed.nonzero(as_tuple=True)
    packed = points if index is None else points[index]
    if gradient == "analytic":
        values, grad = _sdf_and_gradient(field, packed)
        grad = _unpack(grad, index, (P, S, k, k, 3), 0.0)[:, :-1]
    else:
        values = _call_field(field, packed)
    sdf = _unpack(values, index, (P, S, k, k), 1.0)
    if gradient == "dfd":
        grad = dfd_gradient(sdf, points)
    elif gradient == "fd":
        starts = None if bool(keep.all()) else keep.nonzero(as_tuple=True)
        at = points[:, :-1] if starts is None else points[:, :-1][starts]
        grad = _unpack(_fd_gradient(field, at, fd_step), starts, (P, S - 1, k, k, 3), 0.0)
    return sdf, grad


def _unpack(values: Tensor, index: tuple[Tensor, ...] | None, shape: tuple[int, ...],
            fill: float) -> Tensor:
    """Scatter packed values (M, ...) at `index` into a dense tensor of `shape` (differentiably)."""
    if index is None:
        return values
    return values.new_full(shape, fill).index_put(index, values)


def _call_field(field: Field, points: Tensor) -> Tensor:
    """(..., 3) points -> (...) SDF, calling the field once on the flattened (M, 3) points."""
    if points.numel() == 0:
        return points.new_zeros(points.shape[:-1])
    return field(points.reshape(-1, 3)).reshape(points.shape[:-1])


def _sdf_and_gradient(field: Field, points: Tensor) -> tuple[Tensor, Tensor]:
    """SDF (...) and its autograd gradient (..., 3); the gradient keeps its graph (double backward)
    when gradients are enabled, and everything is detached when they are not."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        values = _call_field(field, x)
        if values.numel() == 0 or not values.requires_grad:
            return values, torch.zeros_like(x)
        (grad,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph)
    if not create_graph:
        values, grad = values.detach(), grad.detach()
    return values, grad


def _fd_gradient(field: Field, points: Tensor, h: float) -> Tensor:
    """(..., 3) points -> (..., 3) central differences along x, y, z with step h (6 evaluations)."""
    eye = h * torch.eye(3, dtype=points.dtype, device=points.device)
    steps = torch.cat([eye, -eye]).reshape(6, *([1] * (points.dim() - 1)), 3)
    values = _call_field(field, points.detach().unsqueeze(0) + steps)  # (6, ...)
    return torch.stack([values[i] - values[i + 3] for i in range(3)], dim=-1) / (2.0 * h)


def _inv_s(variance: NeuSVariance | Tensor | float, like: Tensor) -> Tensor:
    """The sharpness as a 0-d tensor on `like`'s device and dtype."""
    value = variance() if isinstance(variance, nn.Module) else variance
    return torch.as_tensor(value, device=like.device).to(like.dtype)


def _weights(sdf: Tensor, inv_s: Tensor, rendered: Tensor) -> Tensor:
    """NeuS section opacities and weights: sdf (P, S, k, k) -> weights (P, S - 1, k, k)."""
    cdf = torch.sigmoid(sdf * inv_s)
    prev, nxt = cdf[:, :-1], cdf[:, 1:]
    alpha = ((prev - nxt + _ALPHA_EPS) / (prev + _ALPHA_EPS)).clamp(0.0, 1.0)
    alpha = torch.where(rendered, alpha, torch.zeros_like(alpha))
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
    return alpha * transmittance


def _neighbour_difference(x: Tensor, dim: int) -> Tensor:
    """x[j + 1] - x[j - 1] along `dim`, one-sided (x[1] - x[0], x[-1] - x[-2]) at the ends."""
    n = x.shape[dim]
    hi = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    lo = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    return hi - lo


def _reshape_outputs(out: dict, shape: tuple[int, ...]) -> dict:
    """Give the per-ray outputs (P, k, k, ...) the caller's leading shape."""
    for key in ("normal", "opacity", "depth", "distance"):
        if key in out:
            tail = out[key].shape[3:]
            out[key] = out[key].reshape(*shape, *tail)
    return out


def _tile(width: int, height: int, k: int, device: torch.device) -> Tensor:
    """(N, 2) top-left (column, row) of k x k patches covering a width x height image."""
    def starts(size: int) -> list[int]:
        first = list(range(0, size - k + 1, k))
        return first if first[-1] == size - k else first + [size - k]

    rows, cols = torch.meshgrid(torch.tensor(starts(height), device=device),
                                torch.tensor(starts(width), device=device), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)
