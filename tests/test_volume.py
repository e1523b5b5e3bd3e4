"""NeuS volume rendering (`zerolevel.render.volume`): the ground-truth ray caster on an analytic
sphere, a naive per-ray reference, the three gradient modes against each other and against finite
differences, batching, seeded jitter and empty-space skipping."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import binary_erosion

from zerolevel.cameras import Cameras
from zerolevel.fields.analytic import SphereSDF, TorusSDF
from zerolevel.render.raycast import render_mesh
from zerolevel.render.occupancy import OccupancyGrid, update_occupancy
from zerolevel.render.volume import (NeuSVariance, dfd_gradient, render_normals, volume_render,
                                     volume_render_patches)

CENTER = (0.05, -0.03, 0.02)
RADIUS = 0.5
SHARP = NeuSVariance(0.8)  # inv_s = exp(8) ~ 3000: a near-binary opacity


def _cameras(size: int = 64) -> Cameras:
    return Cameras.look_at([[0.0, 0.5, 3.0], [2.5, 1.0, -1.0]], fov_deg=30, width=size, height=size)


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Degrees between vectors (..., 3)."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1, 1)))


def _eroded(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    return np.stack([binary_erosion(m, iterations=iterations) for m in mask])


@pytest.fixture(scope="module")
def ground_truth() -> dict:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=RADIUS)
    mesh.apply_translation(CENTER)
    return render_mesh(mesh, _cameras())


def _sphere_fn(center: torch.Tensor, radius: torch.Tensor):
    return lambda p: torch.linalg.vector_norm(p - center, dim=-1) - radius


# ------------------------------------------------------------------ forward against ground truth


def test_variance_starts_at_neus_value():
    assert NeuSVariance()().item() == pytest.approx(math.exp(3.0), rel=1e-6)  # NeuS init 0.3
    assert NeuSVariance(0.5)().item() == pytest.approx(math.exp(5.0), rel=1e-6)  # SuperNormal's


def test_plain_rays_match_ray_caster(ground_truth):
    cams = _cameras()
    o, d = cams.image_rays()
    out = volume_render(SphereSDF(CENTER, RADIUS), o, d, variance=SHARP)
    mask, gt = out["opacity"].detach().numpy() > 0.5, ground_truth["mask"] > 0.5
    assert (mask & gt).sum() / (mask | gt).sum() > 0.99
    inner = torch.from_numpy(_eroded(gt))
    angles = _angles(out["normal"].detach(), torch.from_numpy(ground_truth["normal"]))[inner]
    # the normal of the interval crossing the surface is taken at its start, up to one step
    # (2 / 64 ~ 0.03) before the surface: ~1 degree on a sphere of radius 0.5
    assert angles.median() < 1.5 and angles.max() < 3.5


def test_patches_match_ray_caster(ground_truth):
    out = render_normals(SphereSDF(CENTER, RADIUS), _cameras(), variance=SHARP, patch_size=3)
    mask, gt = out["opacity"].numpy() > 0.5, ground_truth["mask"] > 0.5
    assert (mask & gt).sum() / (mask | gt).sum() > 0.99
    inner = torch.from_numpy(_eroded(gt))
    angles = _angles(out["normal"], torch.from_numpy(ground_truth["normal"]))[inner]
    assert angles.median() < 1.5 and angles.max() < 3.5
    depth = (out["depth"] / out["opacity"].clamp_min(1e-6)).numpy()[inner.numpy()]
    step = 2 * RADIUS * 3 / 64  # far - near spans at most the sphere of radius 1, cut in 64
    assert np.abs(depth - ground_truth["depth"][inner.numpy()]).max() < step


def _reference_ray(center, radius, inv_s, o, d, n):
    """Slow, obviously-correct NeuS on one ray: python loops over the samples, float64."""
    b, c = float(o @ d), float(o @ o) - 1.0
    near, far = max(-b - math.sqrt(b * b - c), 0.0), -b + math.sqrt(b * b - c)
    ts = [near + (i + 0.5) * (far - near) / n for i in range(n)]
    pts = [o + t * d for t in ts]
    sdf = [float(torch.linalg.vector_norm(p - center)) - radius for p in pts]
    sig = [1 / (1 + math.exp(-inv_s * f)) for f in sdf]
    normal, opacity, distance, transmittance = torch.zeros(3, dtype=torch.float64), 0.0, 0.0, 1.0
    for i in range(n - 1):
        alpha = min(max((sig[i] - sig[i + 1] + 1e-5) / (sig[i] + 1e-5), 0.0), 1.0)
        w = alpha * transmittance
        transmittance *= 1 - alpha
        normal += w * (pts[i] - center) / torch.linalg.vector_norm(pts[i] - center)
        opacity += w
        distance += w * 0.5 * (ts[i] + ts[i + 1])
    return normal, opacity, distance


def test_matches_naive_reference():
    center = torch.tensor(CENTER, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([0.0, 0.2, 3.0], dtype=torch.float64).expand(6, 3)
    d = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64) * 0.1
                                      + torch.tensor([0.0, -0.05, -1.0], dtype=torch.float64), dim=-1)
    out = volume_render(_sphere_fn(center, RADIUS), o, d, variance=40.0, n_samples=24)
    for i in range(6):
        normal, opacity, distance = _reference_ray(center, RADIUS, 40.0, o[i], d[i], 24)
        assert torch.allclose(out["normal"][i], normal, atol=1e-10)
        assert out["opacity"][i].item() == pytest.approx(opacity, abs=1e-10)
        assert out["distance"][i].item() == pytest.approx(distance, abs=1e-10)
    assert out["opacity"].max() > 0.5 and out["opacity"].min() < 0.5  # hits and misses both tested


def test_rays_missing_the_sphere_cost_nothing():
    seen = []

    def field(p):
        seen.append(p.detach().clone())
        return p.norm(dim=-1) - RADIUS

    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 0.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # hit, miss, miss
    out = volume_render(field, o, d, variance=SHARP, n_samples=16)
    assert out["evaluations"] == 16 and sum(len(p) for p in seen) == 16
    assert out["opacity"][0] > 0.99 and out["opacity"][1:].abs().max() == 0
    assert out["normal"][1:].abs().max() == 0 and out["eikonal"].shape == (15,)


# ------------------------------------------------------------------ gradient modes


def test_fd_matches_analytic():
    field = TorusSDF((0.0, 0.0, 0.0), 0.5, 0.2)
    ref = render_normals(field, _cameras(32), variance=SHARP, gradient="analytic")
    out = render_normals(field, _cameras(32), variance=SHARP, gradient="fd")
    inner = ref["opacity"] > 0.5
    assert inner.sum() > 100
    assert _angles(out["normal"], ref["normal"])[inner].max() < 0.1
    assert torch.allclose(out["opacity"], ref["opacity"])


def _naive_dfd(sdf: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Per sample, solve M g = df with M's rows the actual displacement vectors (no per-pixel
    factorisation): forward along the ray, central across the patch, one-sided at its border."""
    S, k = sdf.shape[0], sdf.shape[1]
    grads = torch.zeros(S - 1, k, k, 3, dtype=sdf.dtype)
    for s in range(S - 1):
        for i in range(k):
            for j in range(k):
                jl, jr = max(j - 1, 0), min(j + 1, k - 1)
                iu, idn = max(i - 1, 0), min(i + 1, k - 1)
                M = torch.stack([points[s + 1, i, j] - points[s, i, j],
                                 points[s, i, jr] - points[s, i, jl],
                                 points[s, idn, j] - points[s, iu, j]])
                df = torch.stack([sdf[s + 1, i, j] - sdf[s, i, j], sdf[s, i, jr] - sdf[s, i, jl],
                                  sdf[s, idn, j] - sdf[s, iu, j]])
                grads[s, i, j] = torch.linalg.solve(M, df)
    return grads


def test_dfd_gradient_matches_naive_solve():
    cams = _cameras(40).to(dtype=torch.float64)[1:]
    o, d = cams.patch_rays(torch.tensor([[14, 17]]), 4)  # (1, 1, 4, 4, 3)
    z = torch.linspace(2.2, 3.4, 9, dtype=torch.float64)
    t = z[:, None, None] / (d[0, 0] @ cams.forward[0])
    points = o[0, 0] + t[..., None] * d[0, 0]  # (9, 4, 4, 3) on planes parallel to the image
    sdf = TorusSDF((0.0, 0.0, 0.0), 0.5, 0.2).double()(points)
    fast = dfd_gradient(sdf, points)
    assert fast.shape == (8, 4, 4, 3)
    assert torch.allclose(fast, _naive_dfd(sdf, points), atol=1e-9)


@pytest.mark.parametrize("name", ["sphere", "torus"])
def test_dfd_matches_analytic_normals(name):
    field = SphereSDF(CENTER, RADIUS) if name == "sphere" else TorusSDF((0.0, 0.0, 0.0), 0.5, 0.2)
    ref = render_normals(field, _cameras(), variance=SHARP, gradient="analytic", patch_size=5)
    out = render_normals(field, _cameras(), variance=SHARP, gradient="dfd", patch_size=5)
    inner = torch.from_numpy(_eroded(ref["opacity"].numpy() > 0.5))
    angles = _angles(out["normal"], ref["normal"])
    in_patch = (torch.arange(64) % 5 > 0) & (torch.arange(64) % 5 < 4) & (torch.arange(64) < 60)
    interior = inner & in_patch[:, None] & in_patch[None, :]  # central differences both ways
    # interior: O(step) ray difference only; the border adds one-sided pixel differences (O(pixel))
    assert angles[interior].median() < 0.6 and angles[interior].quantile(0.95) < 2.0
    assert angles[inner].median() < 1.5 and angles[inner].quantile(0.95) < 3.5
    assert torch.equal(out["opacity"], ref["opacity"])  # same samples, same alpha


def _patch_outputs(mode: str, center, radius, variance, occupancy=None):
    cams = Cameras.look_at([[0.3, 0.4, 2.8]], fov_deg=30, width=24, height=24).to(dtype=torch.float64)
    inv_s = torch.func.functional_call(NeuSVariance(), {"variance": variance}, ())
    out = volume_render_patches(_sphere_fn(center, radius), cams, torch.tensor([[10, 10], [15, 4]]), 3,
                                variance=inv_s, n_samples=16, gradient=mode, occupancy=occupancy)
    return out["normal"], out["opacity"], out["depth"], out["eikonal"]


def _skipping_outputs(mode: str, center, radius, variance):
    grid = update_occupancy(SphereSDF(CENTER, RADIUS), OccupancyGrid.full(16), variance=100.0)
    assert 0 < grid.occupied.float().mean() < 0.5
    return _patch_outputs(mode, center, radius, variance, occupancy=grid)


def _plain_outputs(mode: str, center, radius, variance):
    o = torch.tensor([[0.1, 0.2, 3.0], [0.6, 0.0, 3.0], [0.0, 2.0, 3.0]], dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.tensor([[0.0, -0.05, -1.0], [0.0, -0.01, -1.0],
                                                    [0.0, 0.0, -1.0]], dtype=torch.float64), dim=-1)
    inv_s = torch.exp(10 * variance)  # centre, silhouette, and a ray missing the unit sphere
    out = volume_render(_sphere_fn(center, radius), o, d, variance=inv_s, n_samples=16, gradient=mode)
    return out["normal"], out["opacity"], out["distance"], out["eikonal"]


@pytest.mark.parametrize("mode,render", [
    ("analytic", _patch_outputs), ("fd", _patch_outputs), ("dfd", _patch_outputs),
    ("analytic", _skipping_outputs), ("fd", _skipping_outputs), ("dfd", _skipping_outputs),
    ("analytic", _plain_outputs), ("fd", _plain_outputs)])
def test_gradients_match_finite_differences(mode, render):
    """d(normals, opacity, depth, eikonal) / d(centre, radius, variance) in float64: the Jacobian
    against central differences of the same forward function (dfd: of the approximated normals)."""
    args = (torch.tensor(CENTER, dtype=torch.float64, requires_grad=True),
            torch.tensor(RADIUS, dtype=torch.float64, requires_grad=True),
            torch.tensor(0.25, dtype=torch.float64, requires_grad=True))  # inv_s ~ 12: smooth
    normal, opacity = render(mode, *args)[:2]
    assert opacity.max() > 0.5 and opacity.min() < 0.5  # inside and on the silhouette
    assert torch.autograd.gradcheck(lambda *a: render(mode, *a), args, eps=1e-6, atol=1e-6)


def test_variance_module_gradient_matches_finite_differences():
    """d(opacity and normals of DFD patches) / d(NeuSVariance.variance), the module's own parameter,
    against a central difference of the same render in float64."""
    variance = NeuSVariance(0.25).double()  # inv_s ~ 12: a soft edge, opacity between 0 and 1
    cams = _cameras(16).to(dtype=torch.float64)
    sphere = _sphere_fn(torch.tensor(CENTER, dtype=torch.float64), torch.tensor(RADIUS, dtype=torch.float64))
    weights = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64)

    def loss() -> torch.Tensor:
        out = volume_render_patches(sphere, cams, torch.tensor([[4, 4], [6, 9]]), 4, variance=variance,
                                    n_samples=16, gradient="dfd")
        return out["opacity"].sum() + (out["normal"] * weights).sum()

    loss().backward()
    analytic = variance.variance.grad.item()
    eps = 1e-6
    with torch.no_grad():
        variance.variance += eps
        up = loss().item()
        variance.variance -= 2 * eps
        down = loss().item()
    assert abs(analytic) > 1e-3  # the check below is not one of zeros
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------ batching and sampling


def test_batched_calls_equal_single_calls():
    field, cams = TorusSDF((0.0, 0.0, 0.0), 0.5, 0.2), _cameras(32)
    top_left = torch.tensor([[[8, 9], [12, 12], [20, 5]], [[3, 14], [15, 15], [10, 20]]])
    batched = volume_render_patches(field, cams, top_left, 3, variance=SHARP, gradient="dfd")
    for b in range(2):
        for n in range(3):
            single = volume_render_patches(field, cams[b], top_left[b:b + 1, n:n + 1], 3,
                                           variance=SHARP, gradient="dfd")
            for key in ("normal", "opacity", "depth"):
                assert torch.allclose(batched[key][b, n], single[key][0, 0], atol=1e-5)
    o, d = cams.image_rays()
    rays = volume_render(field, o[:, 10:12, 10:13], d[:, 10:12, 10:13], variance=SHARP)
    flat = volume_render(field, o[:, 10:12, 10:13].reshape(-1, 3), d[:, 10:12, 10:13].reshape(-1, 3),
                         variance=SHARP)
    assert rays["normal"].shape == (2, 2, 3, 3)
    assert torch.allclose(rays["normal"].reshape(-1, 3), flat["normal"], atol=1e-6)


def test_jitter_is_seeded():
    field, cams = SphereSDF(CENTER, RADIUS), _cameras(32)
    top_left = torch.tensor([[12, 12], [14, 10]])

    def render(seed):
        g = None if seed is None else torch.Generator().manual_seed(seed)
        return volume_render_patches(field, cams, top_left, 3, variance=NeuSVariance(0.3),
                                     generator=g)["depth"]

    assert torch.equal(render(1), render(1))
    assert not torch.allclose(render(1), render(2))
    assert not torch.allclose(render(1), render(None))


def test_dfd_needs_patches():
    o, d = torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="volume_render_patches"):
        volume_render(SphereSDF(), o, d, variance=SHARP, gradient="dfd")
    with pytest.raises(ValueError, match="2 x 2"):
        volume_render_patches(SphereSDF(), _cameras(8), torch.tensor([[0, 0]]), 1, variance=SHARP,
                              gradient="dfd")


# ------------------------------------------------------------------ empty-space skipping


def test_occupancy_skipping_matches_dense():
    field, cams = SphereSDF(CENTER, RADIUS), _cameras(32)
    grid = update_occupancy(field, OccupancyGrid.full(64), variance=SHARP)
    assert 0 < grid.occupied.float().mean() < 0.2
    for mode in ("analytic", "dfd"):
        top_left = torch.tensor([[3 * i, 3 * j] for i in range(10) for j in range(10)])
        dense = volume_render_patches(field, cams, top_left, 3, variance=SHARP, gradient=mode)
        skip = volume_render_patches(field, cams, top_left, 3, variance=SHARP, gradient=mode,
                                     occupancy=grid)
        assert skip["evaluations"] < 0.3 * dense["evaluations"]
        assert not skip["occupancy_fallback"]
        assert (skip["opacity"] - dense["opacity"]).abs().max() < 2e-3
        assert (skip["normal"] - dense["normal"]).norm(dim=-1).max() < 2e-3


def test_grow_into_keeps_cells_the_field_still_puts_outside():
    field = SphereSDF(CENTER, RADIUS)
    centres = OccupancyGrid.full(32).cell_centres()
    hull = ((centres - torch.tensor(CENTER)).norm(dim=-1) < 0.8).reshape(32, 32, 32)  # a bigger ball
    plain = update_occupancy(field, OccupancyGrid.full(32), variance=SHARP)
    grown = update_occupancy(field, OccupancyGrid.full(32), variance=SHARP, grow_into=hull)
    outside = (field(centres) > 0).reshape(32, 32, 32)
    assert torch.equal(grown.occupied, plain.occupied | (hull & outside))
    assert grown.occupied.sum() > 3 * plain.occupied.sum()
    deep_inside = (field(centres) < -0.2).reshape(32, 32, 32)
    assert not (grown.occupied & deep_inside).any()  # behind the surface stays skipped


def test_empty_occupancy_grid_falls_back_to_dense():
    field, cams = SphereSDF(CENTER, RADIUS), _cameras(16)
    grid = update_occupancy(lambda p: p.norm(dim=-1) + 5.0, OccupancyGrid.full(16))  # no surface
    assert not grid.occupied.any()
    top_left = torch.tensor([[4, 4], [8, 6]])
    dense = volume_render_patches(field, cams, top_left, 3, variance=SHARP, gradient="dfd")
    with pytest.warns(RuntimeWarning, match="occupancy grid"):
        out = volume_render_patches(field, cams, top_left, 3, variance=SHARP, gradient="dfd",
                                    occupancy=grid)
    assert out["occupancy_fallback"] and not dense["occupancy_fallback"]
    assert torch.equal(out["normal"], dense["normal"]) and out["evaluations"] == dense["evaluations"]


def test_batch_seeing_only_empty_space_still_backpropagates():
    field, cams = SphereSDF(CENTER, RADIUS), _cameras(16)
    grid = update_occupancy(field, OccupancyGrid.full(32), variance=SHARP)
    variance = NeuSVariance(0.8)
    out = volume_render_patches(field, cams, torch.tensor([[0, 0]]), 3, variance=variance,
                                occupancy=grid)  # a corner patch: its rays miss the sphere
    assert out["evaluations"] == 0 and out["eikonal"].numel() == 0
    assert out["opacity"].abs().max() == 0
    (out["normal"].sum() + out["opacity"].sum()).backward()  # no crash on an empty batch
    assert variance.variance.grad == 0  # nothing rendered depends on the sharpness


def test_spot_grid_matches_ray_caster():
    """A real mesh: Spot's SDF on a 64^3 grid, volume-rendered against the ray-cast mesh."""
    from zerolevel.data import example_mesh_path
    from zerolevel.fields.grid import DenseGridSDF
    from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform

    mesh = load_mesh(example_mesh_path())
    mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
    grid = DenseGridSDF.from_mesh(mesh, 64)
    cams = Cameras.look_at([[1.8, 0.9, -2.2]], fov_deg=40, width=64, height=64)
    gt = render_mesh(mesh, cams)
    out = render_normals(grid, cams, variance=SHARP, n_samples=128, gradient="analytic")
    mask, gt_mask = out["opacity"].numpy() > 0.5, gt["mask"] > 0.5
    assert (mask & gt_mask).sum() / (mask | gt_mask).sum() > 0.98
    inner = torch.from_numpy(_eroded(gt_mask))
    angles = _angles(out["normal"], torch.from_numpy(gt["normal"]))[inner]
    assert angles.median() < 3.0  # a 64^3 trilinear grid: facets of one voxel (measured 2.0)


def test_hash_grid_parameters_get_correct_gradients():
    """d(loss)/d(hash table entries and MLP weights) against central finite differences (float64)."""
    from hashgrid_checks import assert_parameter_gradients_match, small_hash_sdf

    field = small_hash_sdf()
    cams = Cameras.look_at([[0.0, 0.4, 2.5]], fov_deg=30, width=12, height=12).to(dtype=torch.float64)
    variance = NeuSVariance(0.4).double()
    top_left = torch.tensor([[3, 3], [6, 5]])

    def loss() -> torch.Tensor:
        out = volume_render_patches(field, cams, top_left, 3, variance=variance, n_samples=24,
                                    gradient="dfd")
        return (out["normal"][..., 0] * 0.7 - out["normal"][..., 2]).sum() + out["opacity"].square().sum()

    assert_parameter_gradients_match(field, loss, rel=1e-4, abs_=1e-7)


def test_dfd_patch_that_misses_the_sphere_is_finite():
    """A patch whose rays all miss the bounding sphere has an empty interval: no NaN, no inf."""
    field = SphereSDF(CENTER, RADIUS)
    field.radius.requires_grad_(True)
    cams = Cameras.look_at([[0.0, 0.0, 3.0]], fov_deg=90, width=64, height=64)
    out = volume_render_patches(field, cams, torch.tensor([[0, 0], [30, 30]]), 3, variance=SHARP,
                                n_samples=16, gradient="dfd")
    assert torch.isfinite(out["normal"]).all() and out["opacity"][0, 0].abs().max() == 0
    (out["normal"].sum() + out["opacity"].sum()).backward()
    assert torch.isfinite(field.radius.grad).all()
